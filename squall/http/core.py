"""The server side of one HTTP/1.1 connection, without I/O.

Bytes go in through `receive_data`, which returns events (`Request`, `Data`,
`END_OF_MESSAGE`, `RequestError`); responses come out as bytes from
`encode_response` or `start_response` / `encode_body` / `end_response`.
No socket, loop or clock lives here, so every rule is testable with bytes.

Rules kept here (RFC 9112):
- httptools (llhttp) tokenizes; it already rejects Content-Length together
  with Transfer-Encoding (section 6.3), duplicate Content-Length, invalid
  chunk sizes and bad header syntax. Each is a `RequestError(400)`.
- Every limit lives in `Limits` and maps to its status: 414 for the request
  target, 431 for the header block, 413 for the body.
- After a `RequestError` the connection parses nothing more: no second
  request is ever read from the leftovers of a rejected one.
- Responses are framed by Content-Length when known, chunked for HTTP/1.1
  otherwise, and by closing the connection for HTTP/1.0 (section 6.3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httptools

from squall.http.date import date_and_server_header
from squall.http.status import LINES as _STATUS_LINES
from squall.http.status import status_line


@dataclass(frozen=True)
class Limits:
    """Every size limit of the request parser, each with its status code."""

    max_target_bytes: int = 8192  # 414 URI Too Long
    max_header_bytes: int = 65536  # 431 Request Header Fields Too Large
    max_header_count: int = 100  # 431
    max_body_bytes: int = 1 << 30  # 413 Content Too Large


DEFAULT_LIMITS = Limits()


class Request:
    """A parsed request head, plus the framing state of its response."""

    __slots__ = (
        "body_expected",
        "chunked_response",
        "expect_continue",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "no_response_body",
        "path",
        "query",
        "target",
        "upgrade",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        http_version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.target = target
        # (bytes.find, not `in`: on Python 3.11 `in` first tries the needle as an
        # int, which costs a formatted TypeError each time.)
        if target[:1] == b"/" and target.find(b"#") < 0:  # origin-form, the usual case
            path, _, query = target.partition(b"?")
            self.path: bytes = path
            self.query: bytes = query
        elif target.find(b"://", 0, 12) >= 0 or target[:1] == b"/":  # absolute-form, or a fragment
            url = httptools.parse_url(target)
            self.path = url.path or b"/"
            self.query = url.query or b""
        else:  # authority-form (CONNECT) or asterisk-form (OPTIONS *)
            self.path = target
            self.query = b""
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.expect_continue = False
        self.upgrade = False
        self.body_expected = False
        self.chunked_response = False
        self.no_response_body = method == "HEAD"

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target!r} HTTP/{self.http_version}>"


class Data:
    """A piece of request body."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Data) and other.data == self.data

    def __repr__(self) -> str:
        return f"Data({self.data!r})"


class EndOfMessage:
    """The request's body is complete."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "END_OF_MESSAGE"


END_OF_MESSAGE = EndOfMessage()


class RequestError(Exception):
    """The request was malformed or over a limit; answer `status` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.reason!r})"


Event = Request | Data | EndOfMessage | RequestError

_NO_BODY_STATUSES = frozenset({204, 304})
_METHODS = {
    name.encode("ascii"): name
    for name in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
}
_OWN_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_CHUNKED_END = b"0\r\n\r\n"
#: What a closed connection holds instead of its parser: one without callbacks.
_NO_PARSER = httptools.HttpRequestParser(object())


class ServerConnection:
    """Parses requests and frames responses for one client connection."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._parser = httptools.HttpRequestParser(self)
        self._events: list[Event] = []
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_fed = 0
        self.in_head = False
        self._began = False
        self._body_bytes = 0
        self._broken = False
        # The limits checked per callback, as plain attributes (the hot path).
        self._max_target_bytes = limits.max_target_bytes
        self._max_header_count = limits.max_header_count
        self._max_header_bytes = limits.max_header_bytes
        #: After an Upgrade request: the bytes that followed its head (the new protocol's).
        self.trailing_data = b""

    # -- parsing -----------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client; return the events they complete."""
        if self._broken:
            return []
        events = self._events = []
        self._began = False
        try:
            self._parser.feed_data(data)
            if self.in_head and not self._began:
                # All of `data` went into a head that is still incomplete;
                # httptools holds a partial header, so bound it here.
                self._head_fed += len(data)
                self._check_head_size()
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self.trailing_data = data[offset:]
            # An Upgrade or CONNECT request (its Request already says so): the
            # head and message are already out as events. Anything after it is
            # another protocol, which this connection does not speak, so it
            # reads no further.
            self._broken = True
        except httptools.HttpParserCallbackError as exc:
            self._fail(exc.__context__ if isinstance(exc.__context__, RequestError) else exc)
        except httptools.HttpParserError as exc:
            self._fail(exc)
        except RequestError as exc:
            self._fail(exc)
        return events

    def close(self) -> None:
        """Let go of the parser: a connection that is gone parses nothing more.

        The parser's callbacks are this object's own methods. Left in place,
        that cycle outlives the connection until the garbage collector finds
        it, and with a connection per request the collector runs often.
        """
        self._broken = True
        self._parser = _NO_PARSER

    def _fail(self, exc: BaseException) -> None:
        self._broken = True
        if isinstance(exc, RequestError):
            self._events.append(exc)
        else:
            reason = str(exc) or type(exc).__name__
            self._events.append(RequestError(400, f"malformed request: {reason}"))

    def _check_head_size(self) -> None:
        if self._head_fed <= self.limits.max_header_bytes:
            return
        if not self._headers and len(self._target) >= self.limits.max_target_bytes:
            raise RequestError(414, "request target too long")
        raise RequestError(431, "request header block too large")

    # httptools callbacks; they run inside feed_data.

    def on_message_begin(self) -> None:
        self._target = b""
        self._headers = []
        self._head_bytes = 0
        self._head_fed = 0
        self._body_bytes = 0
        self.in_head = True
        self._began = True

    def on_url(self, piece: bytes) -> None:
        self._target += piece
        if len(self._target) > self._max_target_bytes:
            raise RequestError(414, "request target too long")
        self._head_bytes += len(piece)

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= self._max_header_count:
            raise RequestError(431, "too many request headers")
        # Counted here too, so the limit holds however the head was split
        # into reads (name, ": ", value, CRLF).
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_header_bytes:
            raise RequestError(431, "request header block too large")
        if not self.in_head:
            return  # a trailer field: never merged into the header section (RFC 9110 6.5.1)
        headers.append((name.lower(), value.rstrip(b" \t")))  # trailing OWS (RFC 9112 5)

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self._parser
        raw_method = parser.get_method()
        request = Request(
            _METHODS.get(raw_method) or raw_method.decode("ascii"),
            self._target,
            parser.get_http_version(),
            self._headers,
            parser.should_keep_alive(),
        )
        request.upgrade = parser.should_upgrade()
        if request.http_version not in ("1.0", "1.1"):
            raise RequestError(400, f"unsupported HTTP version {request.http_version}")
        hosts = 0
        for name, value in self._headers:
            if name == b"content-length":
                if not value.isdigit():
                    raise RequestError(400, "invalid Content-Length")
                if int(value) > self.limits.max_body_bytes:
                    raise RequestError(413, "request body too large")
                request.body_expected = value != b"0"
            elif name == b"transfer-encoding":
                request.body_expected = True
                if request.http_version == "1.0":
                    # RFC 9112 section 6.1: HTTP/1.0 framed by Transfer-Encoding is faulty.
                    raise RequestError(400, "Transfer-Encoding in an HTTP/1.0 request")
            elif name == b"expect" and value.lower() == b"100-continue":
                request.expect_continue = request.http_version == "1.1"
            elif name == b"host":
                hosts += 1
        if hosts > 1:
            raise RequestError(400, "more than one Host header")  # RFC 9112 section 3.2
        if hosts == 0 and request.http_version == "1.1":
            raise RequestError(400, "missing Host header")
        self._events.append(request)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_body_bytes:
            raise RequestError(413, "request body too large")
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        self._events.append(END_OF_MESSAGE)

    # -- responses ---------------------------------------------------------

    def encode_response(
        self,
        request: Request,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> bytes:
        """A whole response in one piece, its length known."""
        return self._head(request, status, headers, len(body), body)

    def start_response(
        self, request: Request, status: int, headers: list[tuple[bytes, bytes]]
    ) -> bytes:
        """The head of a response whose body follows in pieces."""
        length: int | None = None
        for name, value in headers:
            if name.lower() == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
        return self._head(request, status, headers, length)

    def encode_body(self, request: Request, data: bytes) -> bytes:
        if request.no_response_body or not data:
            return b""
        if request.chunked_response:
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def end_response(self, request: Request) -> bytes:
        if request.chunked_response and not request.no_response_body:
            return _CHUNKED_END
        return b""

    def _head(
        self,
        request: Request,
        status: int,
        headers: list[tuple[bytes, bytes]],
        length: int | None,
        body: bytes = b"",
    ) -> bytes:
        """The head, and `body` after it unless the response has none."""
        if status in _NO_BODY_STATUSES or status < 200:
            request.no_response_body = True
            length = None
        parts = [_STATUS_LINES.get(status) or status_line(status), date_and_server_header()]
        keep_alive = request.keep_alive
        for name, value in headers:
            lname = name.lower()
            if lname in _OWN_HEADERS:
                # Framing and the one Connection header are this module's job (below);
                # an app's Connection header may only ask to close.
                if lname == b"connection" and value.lower().find(b"close") >= 0:
                    keep_alive = False
                continue
            parts += (name, b": ", value, b"\r\n")
        if length is not None:
            parts.append(b"content-length: %d\r\n" % length)
        elif request.no_response_body:
            pass  # no body follows, so no framing to announce
        elif request.http_version == "1.1":
            request.chunked_response = True
            parts.append(b"transfer-encoding: chunked\r\n")
        else:
            keep_alive = False  # HTTP/1.0: the body ends when the connection does
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        elif request.http_version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        request.keep_alive = keep_alive
        parts.append(b"\r\n")
        if body and not request.no_response_body:
            parts.append(body)
        return b"".join(parts)


# What would split a response header; searched with a pattern, which on
# Python 3.11 costs a quarter of five `in` tests.
_UNSAFE_VALUE = re.compile(rb"[\r\n]")
_UNSAFE_NAME = re.compile(rb"[\r\n:]")


def checked_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    """An app's response headers as given (bytes-like pairs), refused if they could split it."""
    checked: list[tuple[bytes, bytes]] = headers if isinstance(headers, list) else list(headers)
    for name, value in checked:
        if _UNSAFE_VALUE.search(value) or _UNSAFE_NAME.search(name):
            raise RuntimeError(f"invalid response header {name!r}: {value!r}")
    return checked


def continue_response() -> bytes:
    """The interim response that tells a client to send its body (Expect: 100-continue)."""
    return b"HTTP/1.1 100 Continue\r\n\r\n"


def error_response(status: int, reason: str) -> bytes:
    """A complete response for a request that could not be parsed; the connection closes after."""
    body = f"{status} {reason}\n".encode("utf-8", "replace")
    return b"".join(
        (
            status_line(status),
            date_and_server_header(),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body),
            body,
        )
    )
