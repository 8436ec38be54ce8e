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
from typing import Any, Final, cast

import httptools
from mypy_extensions import mypyc_attr

from squall.http.date import date_and_server_header
from squall.http.status import FINAL_LINES as _FINAL_LINES
from squall.http.status import LINES as _STATUS_LINES
from squall.http.status import status_line

#: What an app hands over (a status, headers, a body): typed loosely on purpose.
#: This module checks such values itself and refuses a bad one with a
#: ResponseError; a narrower annotation would have the compiled build
#: (squall.compiled) raise a TypeError at the call instead.
AppValue = Any


@dataclass(frozen=True)
class Limits:
    """Every size limit of the request parser, each with its status code."""

    max_target_bytes: int = 8192  # 414 URI Too Long (--limit-request-line)
    max_header_bytes: int = 65536  # 431 Request Header Fields Too Large, the whole block
    # 431, one header field, name and value; by default only the block bounds it
    # (gunicorn's and nginx's 8 KiB would refuse the large cookies some apps set).
    max_field_bytes: int = 65536
    max_header_count: int = 100  # 431 (--limit-request-fields)
    max_body_bytes: int = 100 * 1024 * 1024  # 413 Content Too Large (--limit-request-body)


DEFAULT_LIMITS: Final = Limits()


class Request:
    """A parsed request head. Immutable once handed out: the response's framing
    state lives in the `ServerConnection`, not here."""

    __slots__ = (
        "body_expected",
        "expect_continue",
        "headers",
        "http_version",
        "keep_alive",
        "method",
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
        upgrade: bool = False,
        body_expected: bool = False,
        expect_continue: bool = False,
        path: bytes | None = None,
        query: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        if path is not None:
            self.path: bytes = path
            self.query: bytes = query
        # (bytes.find, not `in`: on Python 3.11 `in` first tries the needle as an
        # int, which costs a formatted TypeError each time.)
        elif target[:1] == b"/" and target.find(b"#") < 0:  # origin-form, the usual case
            self.path, _, self.query = target.partition(b"?")
        elif target[:1] == b"/":  # with a fragment
            url: Any = httptools.parse_url(target)  # Any: an absent part is None
            self.path = url.path or b"/"
            self.query = url.query or b""
        else:  # authority-form (CONNECT) or asterisk-form (OPTIONS *)
            self.path = target
            self.query = b""
        self.http_version = http_version
        #: The client's wish: False after `Connection: close`, HTTP/1.0 without
        #: keep-alive, or an Upgrade or CONNECT request.
        self.keep_alive = keep_alive
        self.headers = headers
        self.upgrade = upgrade
        self.body_expected = body_expected
        self.expect_continue = expect_continue

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


END_OF_MESSAGE: Final = EndOfMessage()


class RequestError(Exception):
    """The request was malformed or over a limit; answer `status` and close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.reason!r})"


Event = Request | Data | EndOfMessage | RequestError


@mypyc_attr(native_class=False)
class ResponseError(RuntimeError):
    """The app asked for a response that would break HTTP/1.1 framing or
    inject bytes: refused before anything of it reached the wire."""


# States of each side of the conversation (h11's names). The client side is the
# parser's progress; the server side is the response being framed.
IDLE: Final = "IDLE"  # client: between messages or in a head; server: no response begun
SEND_BODY: Final = "SEND_BODY"  # a head is out, its body follows
DONE: Final = "DONE"  # the message is complete, and the connection may go on
MUST_CLOSE: Final = "MUST_CLOSE"  # the message is complete, and the connection ends after it
ERROR: Final = "ERROR"  # a rule was broken; nothing more is read or written
CLOSED: Final = "CLOSED"  # the connection is gone: what is still framed goes nowhere

_READS_NO_MORE: Final = frozenset({MUST_CLOSE, ERROR, CLOSED})
_NO_BODY_STATUSES: Final = frozenset({204, 304})
_METHODS: Final = {
    name.encode("ascii"): name
    for name in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
}
_FRAMING: Final = b"content-length"
_OWN_HEADERS: Final = frozenset({b"content-length", b"transfer-encoding", b"connection"})
_CHUNKED_END: Final = b"0\r\n\r\n"
_END_OF_HEAD: Final = b"\r\n\r\n"
#: The end of a head, or what the parser will refuse at once (a bare CR or LF
#: ending it, a control byte: a TLS handshake on a plain port, binary junk),
#: so that nothing malformed is held waiting for a CRLF CRLF that never comes.
_ODD_HEAD_END: Final = re.compile(rb"\n\r?\n|\r(?!\n)|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Body-less bytes in a chunked message (trailers, chunk-size lines) past which
#: the connection holds what comes until the next blank line and feeds it in one
#: piece: httptools joins a field's pieces one read at a time, a cost that grows
#: with the square of the number of reads.
_TRAILER_HOLD: Final = 1024
#: A field name's ASCII letters in lower case; `translate` is compiled inline, a
#: `lower()` call is a method looked up by name.
_LOWER_CASE: Final = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
#: What a closed connection holds instead of its parser: one without callbacks.
_NO_PARSER: Final = httptools.HttpRequestParser(object())

# RFC 9110 5.1 and 5.5: a field name is a token; a value holds no CR, LF, NUL or
# other control character but HTAB. Compiled patterns: no per-byte Python.
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9110 7.2 / RFC 3986 3.2.2: host [ ":" port ], no userinfo.
_HOST: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
#: How much of a connection's first head is looked at to tell an unknown method
#: (501) from junk (400): a longer request line gets 400.
_OPENING: Final = 1024
_REQUEST_LINE: Final = re.compile(
    rb"(?:\r?\n)*[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32} [^ \x00-\x20\x7f]+ HTTP/1\.[01](?:\r|\n|$)"
)
#: Host values already found valid: most requests repeat one of a few.
_VALID_HOSTS: Final[set[bytes]] = set()
#: Short header values already found safe (type and content), most of them
#: the same few again and again.
_SAFE_VALUES: Final[set[bytes]] = set()
_MAX_SAFE_VALUE: Final = 128
#: Header names already checked, mapped to their lower-case form.
_CHECKED_NAMES: Final[dict[bytes, bytes]] = {}
_MAX_CHECKED_NAMES: Final = 4096


def _field_name(name: AppValue) -> bytes:
    """`name` lower-cased, if it is a token (else ResponseError)."""
    try:
        lower = _CHECKED_NAMES.get(name)
    except TypeError:  # unhashable: a bytearray, checked below
        lower = None
    if lower is not None:
        return lower
    if type(name) is not bytes:
        if not isinstance(name, (bytearray, memoryview)):
            raise ResponseError(f"response header name {name!r} is not bytes")
        name = bytes(name)
    if _TOKEN.fullmatch(name) is None:
        raise ResponseError(f"invalid response header name {name!r}")
    lowered: bytes = name.lower()
    if len(_CHECKED_NAMES) < _MAX_CHECKED_NAMES:
        _CHECKED_NAMES[name] = lowered
    return lowered


def _check_value(name: AppValue, value: AppValue) -> None:
    try:
        unsafe = _UNSAFE_VALUE.search(value)
    except TypeError:
        raise ResponseError(f"response header {name!r}: value {value!r} is not bytes") from None
    if unsafe is not None:
        raise ResponseError(f"invalid response header {name!r}: {value!r}")


def checked_headers(headers: AppValue) -> list[tuple[AppValue, AppValue]]:
    """An app's response headers as a list of pairs, refused (ResponseError) if
    any could split or corrupt the response. The one check every interface uses:
    the core applies it to every response head, and the WebSocket handshake to
    the headers it hands to wsproto."""
    try:
        checked: list[tuple[AppValue, AppValue]] = [(name, value) for name, value in headers]
    except (TypeError, ValueError):
        raise ResponseError(f"response headers must be (name, value) pairs: {headers!r}") from None
    for name, value in checked:
        _field_name(name)
        _check_value(name, value)
    return checked


def _reason_bytes(reason: AppValue) -> bytes:
    try:
        raw = reason.encode("latin-1") if isinstance(reason, str) else bytes(reason)
    except (UnicodeError, TypeError):
        raise ResponseError(f"invalid reason phrase {reason!r}") from None
    if _UNSAFE_VALUE.search(raw) is not None:
        raise ResponseError(f"invalid reason phrase {reason!r}")
    return raw


#: Status lines with an app's own reason phrase ("200 OK" from every WSGI app).
_REASON_LINES: Final[dict[tuple[AppValue, AppValue], bytes]] = {}


def _status_line_with(status: AppValue, reason: AppValue) -> bytes:
    try:
        line = _REASON_LINES.get((status, reason))
    except TypeError:  # unhashable (a bytearray): looked up as bytes
        return _status_line_with(status, _reason_bytes(reason))
    if line is None:
        line = b"HTTP/1.1 %d %b\r\n" % (status, _reason_bytes(reason))
        if len(_REASON_LINES) < _MAX_CHECKED_NAMES:
            _REASON_LINES[(status, reason)] = line
    return line


class ServerConnection:
    """The server side of one HTTP/1.1 connection, as a state machine.

    `their_state` follows the parser through the client's messages; `our_state`
    the response being framed. Responses go out one at a time, in the order the
    requests came; after each one `start_next_cycle()` readies the next, and is
    refused unless the connection may go on. Every response head and body passes
    through here, whichever interface produced it, so the rules of the
    conversation hold for all of them: valid header fields, a body that keeps
    to its Content-Length, no body where none may be, 1xx only as interim
    responses.
    """

    # Slots: every request reads and writes these, and a connection per
    # request makes the constructor part of the hot path.
    __slots__ = (
        "_body_bytes",
        "_chunked",
        "_chunked_out",
        "_close_asked",
        "_events",
        "_fed",
        "_framed",
        "_head_bytes",
        "_headers",
        "_held",
        "_in_message",
        "_left",
        "_max_field_bytes",
        "_max_header_bytes",
        "_max_header_count",
        "_max_target_bytes",
        "_messages_done",
        "_no_body",
        "_parser",
        "_responses_done",
        "_tail",
        "_target",
        "_their_keep_alive",
        "_unframed",
        "_upgrade_body_left",
        "client_finished",
        "head_in_progress",
        "in_head",
        "keep_alive",
        "limits",
        "our_state",
        "short_by",
        "their_state",
        "trailing_data",
    )

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.their_state = IDLE
        self.our_state = IDLE
        # The client side.
        self.in_head = False  # the parser is inside a head
        #: A head (or trailer section) has begun and is not complete: in the
        #: parser or held back. Set once per read, for the connection's deadlines.
        self.head_in_progress = False
        self._in_message = False  # between a message's begin and its end
        self._chunked = False  # the message being read is chunked
        self._target = b""
        self._head_bytes = 0
        self._body_bytes = 0
        self._unframed = 0  # bytes of a chunked message fed since its last body piece
        self._framed = False  # the last feed held a head or a body piece
        #: What the parser is fed when it begins with a message: its request line's
        #: version is read there, not built as a string by `get_http_version`.
        self._fed: bytes | None = None
        self._their_keep_alive = True  # the message being read lets the connection go on
        #: Bytes held back until a blank line completes the head (or trailers) they begin.
        self._held: bytearray | None = None
        self._tail = b""  # the last bytes fed, for a blank line split across reads
        self._messages_done = 0
        self._responses_done = 0
        #: After an Upgrade request: the bytes that followed its head (the new protocol's).
        self.trailing_data = b""
        #: An Upgrade request's body still to come: llhttp skips it (a body is no
        #: upgrade's), so it is read here, and the request is served in HTTP.
        self._upgrade_body_left = 0
        #: The client's last message is whole, it said it sends no more (`Connection:
        #: close`, HTTP/1.0) and nothing followed it: closing needs no lingering.
        self.client_finished = False
        # The response being framed.
        #: Whether the connection may go on after the response being framed.
        self.keep_alive = True
        self._close_asked = False  # `close_after_response`: whatever the request wished
        self._no_body = False  # HEAD, 1xx, 204, 304: the head alone
        self._chunked_out = False
        self._left = -1  # bytes still due under a declared Content-Length; -1: none declared
        #: A response cut short by its app: the bytes it still owed.
        self.short_by = 0
        self._parser = httptools.HttpRequestParser(self)
        self._events: list[Event] = []
        self._headers: list[tuple[bytes, bytes]] = []
        # The limits checked per callback, as plain attributes (the hot path).
        self._max_target_bytes = limits.max_target_bytes
        self._max_header_count = limits.max_header_count
        self._max_header_bytes = limits.max_header_bytes
        self._max_field_bytes = limits.max_field_bytes

    # -- parsing -----------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client; return the events they complete."""
        if self._upgrade_body_left:
            return self._upgrade_body(data)
        if not data or self.their_state in _READS_NO_MORE:
            if data:
                self.client_finished = False  # it sends on after all
            return []
        events = self._events = []
        held = self._held
        if held is not None:
            # Held until a blank line ends what they begin.
            start = max(len(held) - 3, 0)
            held += data
            if _ODD_HEAD_END.search(held, start) is None:
                self._check_held(held)
                return events
            self._held = None
            data = bytes(held)
        elif self.in_head or not (self._in_message or self._messages_done):
            # A head that began in an earlier read (or a connection's first
            # head, which must be whole to tell 501 from 400) is held until the
            # blank line that ends it, then fed in one piece: a head costs one
            # pass however many reads it came in. Any other read goes to the
            # parser, and holds a whole head more often than not.
            if not self.in_head:
                data = data.lstrip(b"\r\n")  # empty lines before a request (RFC 9112 2.2)
            if (
                not data.endswith(_END_OF_HEAD)  # a whole head and no body: the usual read
                and data.find(_END_OF_HEAD) < 0
                and _ODD_HEAD_END.search(self._tail + data[:3]) is None
                and _ODD_HEAD_END.search(data) is None
            ):
                if data:
                    held = self._held = bytearray(data)
                    self.head_in_progress = True
                    self._check_held(held)
                return events
        elif (
            self._chunked
            and self._in_message
            and self._unframed > _TRAILER_HOLD
            and _ODD_HEAD_END.search(self._tail + data) is None
        ):
            held = self._held = bytearray(data)
            self.head_in_progress = True
            self._check_held(held)
            return events
        # Fed here, not in a method of its own: this is every request's path.
        self._framed = False
        self._fed = None if self._in_message else data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            # An Upgrade or CONNECT request (its Request already says so): the
            # head and message are already out as events. Anything after it is
            # another protocol, which this connection does not speak, so it
            # reads no further.
            self.their_state = MUST_CLOSE
            if self._body_skipped():
                # ... but a body first, which the parser skipped: read here.
                self._events = events
                events += self._upgrade_body(data[offset:])
                return events
            self.trailing_data = data[offset:]
            return events
        except httptools.HttpParserCallbackError as exc:
            self._fail(exc.__context__ if isinstance(exc.__context__, RequestError) else exc)
            return events
        except httptools.HttpParserInvalidMethodError:
            if self._messages_done == 0:
                # Known only of the first request, whose head (or what ends it
                # as malformed) is whole in this one read, however it was split:
                # the same bytes get the same answer.
                self._fail(_unknown_method(data[:_OPENING]))
            else:
                self._fail(RequestError(400, "malformed request: invalid method"))
            return events
        except httptools.HttpParserError as exc:
            if self.their_state is not MUST_CLOSE:
                self._fail(exc)
            self.client_finished = False  # else: data after the last message
            return events
        except RequestError as exc:
            self._fail(exc)
            return events
        self.head_in_progress = self.in_head
        if self._in_message:
            # A short read keeps the end of the one before: a CRLF CRLF may span them.
            self._tail = data[-3:] if len(data) >= 3 else (self._tail + data)[-3:]
            if self._chunked and not self.in_head:
                if self._framed:
                    self._unframed = 0
                else:  # no body in it: chunk-size lines, or a trailer section
                    self._unframed += len(data)
                    if self._unframed > self._max_header_bytes:
                        self._fail(RequestError(431, "request trailer section too large"))
        return events

    def _body_skipped(self) -> bool:
        """The parser skipped the body of the Upgrade request it just read."""
        return self._upgrade_body_left > 0

    def _upgrade_body(self, data: bytes) -> list[Event]:
        """The body of an Upgrade request, which llhttp does not read: a request
        with a body is not upgraded, and is answered in HTTP, then the connection
        closes (what follows it is not parsed)."""
        events: list[Event] = []
        left = self._upgrade_body_left
        body = data[:left]
        if body:
            events.append(Data(body))
        left -= len(body)
        self._upgrade_body_left = left
        if not left:
            self.trailing_data = data[len(body) :]
            events.append(END_OF_MESSAGE)
        return events

    def _check_held(self, held: bytearray) -> None:
        """Bound what is held: the limits apply before the parser sees any of it."""
        if len(held) <= self._max_header_bytes:
            return
        self._held = None
        if self.in_head or not self._in_message:
            if not self.in_head and held.find(b"\r\n") < 0 and len(held) > self._max_target_bytes:
                self._fail(RequestError(414, "request target too long"))
            else:
                self._fail(RequestError(431, "request header block too large"))
        else:
            self._fail(RequestError(431, "request trailer section too large"))

    def close(self) -> None:
        """Let go of the parser: a connection that is gone parses nothing more.

        The parser's callbacks are this object's own methods. Left in place,
        that cycle outlives the connection until the garbage collector finds
        it, and with a connection per request the collector runs often.
        """
        self.their_state = self.our_state = CLOSED
        self._held = None
        self.head_in_progress = False
        self._parser = _NO_PARSER

    def _fail(self, exc: BaseException) -> None:
        self.their_state = ERROR
        self._held = None
        if isinstance(exc, RequestError):
            self._events.append(exc)
        else:
            reason = str(exc) or type(exc).__name__
            self._events.append(RequestError(400, f"malformed request: {reason}"))

    # httptools callbacks; they run inside feed_data.

    def on_url(self, piece: bytes) -> None:
        if self.in_head:  # the target goes on
            self._target += piece
            if len(self._target) > self._max_target_bytes:
                raise RequestError(414, "request target too long")
            self._head_bytes += len(piece)
            return
        # A message begins.
        self._target = piece
        if len(piece) > self._max_target_bytes:
            raise RequestError(414, "request target too long")
        self._headers = []
        self._head_bytes = len(piece)
        self._body_bytes = 0
        self._unframed = 0
        self._chunked = False
        self.in_head = True
        self._in_message = True
        self.their_state = IDLE

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        if len(headers) >= self._max_header_count:
            raise RequestError(431, "too many request headers")
        size = len(name) + len(value) + 4  # name, ": ", value, CRLF
        if size > self._max_field_bytes:
            raise RequestError(431, "request header field too large")
        # Trailer fields count too, against the same limits as the head's.
        self._head_bytes += size
        if self._head_bytes > self._max_header_bytes:
            raise RequestError(431, "request header block too large")
        if not self.in_head:
            return  # a trailer field: never merged into the header section (RFC 9110 6.5.1)
        if value and value[-1] in (32, 9):  # trailing OWS, which llhttp keeps (RFC 9112 5)
            value = value.rstrip(b" \t")
        headers.append((name.translate(_LOWER_CASE), value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self._parser
        raw_method = parser.get_method()
        target = self._target
        fed = self._fed
        http_version = ""
        if fed is not None:  # the first message of this feed: its request line begins it
            self._fed = None
            # Where "HTTP/1.x" and the line's end are if the line is `method SP
            # target SP version CRLF`; if not, these bytes are not a line's end.
            at = len(raw_method) + len(target) + 2
            line_end = fed[at : at + 10]
            if line_end == b"HTTP/1.1\r\n":
                http_version = "1.1"
            elif line_end == b"HTTP/1.0\r\n":
                http_version = "1.0"
        if not http_version:
            http_version = parser.get_http_version()
        if http_version not in ("1.0", "1.1"):
            raise RequestError(400, f"unsupported HTTP version {http_version}")
        upgrade = parser.should_upgrade()
        headers = self._headers
        body_expected = expect_continue = False
        host: bytes | None = None
        hosts = 0
        declared = 0
        for name, value in headers:
            if name == b"content-length":
                if not value.isdigit():
                    raise RequestError(400, "invalid Content-Length")
                declared = int(value)
                if declared > self.limits.max_body_bytes:
                    raise RequestError(413, "request body too large")
                body_expected = value != b"0"
            elif name == b"transfer-encoding":
                body_expected = True
                if http_version == "1.0":
                    # RFC 9112 section 6.1: HTTP/1.0 framed by Transfer-Encoding is faulty.
                    raise RequestError(400, "Transfer-Encoding in an HTTP/1.0 request")
                _check_transfer_coding(value)
                self._chunked = True
            elif name == b"expect" and value.lower() == b"100-continue":
                expect_continue = http_version == "1.1"
            elif name == b"host":
                hosts += 1
                host = value
        if hosts > 1:
            raise RequestError(400, "more than one Host header")  # RFC 9112 section 3.2
        if host is None:
            if http_version == "1.1":
                raise RequestError(400, "missing Host header")
        elif host not in _VALID_HOSTS:
            if _HOST.fullmatch(host) is None:
                raise RequestError(400, "invalid Host header")
            if len(_VALID_HOSTS) < _MAX_CHECKED_NAMES:
                _VALID_HOSTS.add(host)
        path: bytes | None = None
        query = b""
        if target[0] != 47 and target.find(b"://", 0, 12) >= 0:  # not "/": origin-form
            # Absolute form: its authority wins over Host (RFC 9112 section 3.2.2).
            try:
                # Any: httptools' stub says every part is there, but an absent one is None
                # (and the compiled build checks what it is told).
                url: Any = httptools.parse_url(target)
            except httptools.HttpParserInvalidURLError:
                raise RequestError(400, "invalid request target") from None
            if not url.host:
                raise RequestError(400, "invalid request target")
            named: bytes = url.host
            port = url.port
            if named.find(b":") >= 0:  # an IPv6 literal, which parse_url unbrackets
                named = b"[%b]" % named
            authority = named if port is None else b"%b:%d" % (named, port)
            if _HOST.fullmatch(authority) is None:
                raise RequestError(400, "invalid request target")
            headers[:] = [(n, v) for n, v in headers if n != b"host"]
            headers.append((b"host", authority))
            path = url.path or b"/"
            query = url.query or b""
        self._their_keep_alive = parser.should_keep_alive()
        keep_alive = self._their_keep_alive and not upgrade
        if upgrade and body_expected:
            if self._chunked:
                raise RequestError(501, "a chunked body with Upgrade")
            # llhttp skips an Upgrade request's body: `_upgrade_body` reads it,
            # and the message ends there, not at `on_message_complete`.
            self._upgrade_body_left = declared
        self._events.append(
            Request(
                _METHODS.get(raw_method) or raw_method.decode("ascii"),
                target,
                http_version,
                headers,
                keep_alive,
                upgrade,
                body_expected,
                expect_continue,
                path,
                query,
            )
        )
        self.their_state = SEND_BODY
        self._framed = True

    def on_body(self, body: bytes) -> None:
        self._framed = True
        self._body_bytes += len(body)
        if self._body_bytes > self.limits.max_body_bytes:
            raise RequestError(413, "request body too large")
        self._events.append(Data(body))

    def on_message_complete(self) -> None:
        if not self._upgrade_body_left:
            self._events.append(END_OF_MESSAGE)
        self._in_message = False
        self._messages_done += 1
        self._tail = b""
        # After a message that closes the connection, llhttp refuses to parse
        # on (`receive_data` reads nothing more).
        self.their_state = DONE if self._their_keep_alive else MUST_CLOSE
        self.client_finished = not self._their_keep_alive and not self._parser.should_upgrade()

    # -- responses ---------------------------------------------------------

    def close_after_response(self) -> None:
        """End the connection after the current response (a draining server)."""
        self._close_asked = True
        self.keep_alive = False

    def start_next_cycle(self) -> None:
        """The response is complete and the connection goes on: ready the next one."""
        if self.our_state is not DONE:
            raise ResponseError(f"cannot start a new response after {self.our_state}")
        self.our_state = IDLE
        self.keep_alive = not self._close_asked

    def encode_informational(self, status: AppValue, headers: AppValue = ()) -> bytes:
        """An interim response (100 Continue, 103 Early Hints) before the final one.

        101 is not one of them: switching protocols is the upgrade path's.
        """
        if self.our_state is not IDLE:
            raise ResponseError("an interim response after the final one began")
        if type(status) is not int or not 100 <= status < 200 or status == 101:
            raise ResponseError(f"{status!r} is not an interim status")
        line = _STATUS_LINES.get(status) or status_line(status)
        if not headers:
            return line + b"\r\n"
        parts = [line]
        for name, value in checked_headers(headers):
            if _field_name(name) in _OWN_HEADERS:
                # RFC 9110 15.2: an interim response has no content and no framing.
                raise ResponseError(f"{name!r} in an interim response")
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def start_response(
        self,
        request: Request,
        status: AppValue,
        headers: AppValue,
        reason: AppValue = None,
    ) -> bytes:
        """The head of a response whose body follows (`encode_body`, `end_response`)."""
        return self.encode_response(request, status, headers, None, reason)

    def encode_body(self, data: AppValue) -> bytes:
        """A piece of the body; past a declared Content-Length, refused."""
        if self.our_state is not SEND_BODY and self._closed_else_refuse("response body"):
            return b""
        if self._no_body or not data:
            return b""
        if self._chunked_out:
            return b"%x\r\n%b\r\n" % (len(data), data)
        if self._left >= 0:
            self._keep_to_length(len(data))
        return cast(bytes, data)

    def _closed_else_refuse(self, what: str) -> bool:
        """Out of SEND_BODY: True after a close (nothing goes out), else `what` is refused."""
        if self.our_state is CLOSED:
            return True
        raise ResponseError(f"{what} while {self.our_state}")

    def _keep_to_length(self, size: int) -> None:
        """Count `size` more body bytes against the declared Content-Length; past it, refused."""
        left = self._left
        if size > left:
            self.our_state = ERROR
            raise ResponseError(
                f"response body longer than its Content-Length ({size - left} bytes over)"
            )
        self._left = left - size

    def end_response(self) -> bytes:
        """The end of the body. One shorter than declared ends the connection."""
        if self.our_state is not SEND_BODY and self._closed_else_refuse("end of response"):
            return b""
        left = self._left
        if left > 0 and not self._no_body:
            self.keep_alive = False
            self.short_by = left
            self._finish()
            raise ResponseError(
                f"response body shorter than its Content-Length ({left} bytes short)"
            )
        self._finish()
        if self._chunked_out and not self._no_body:
            return _CHUNKED_END
        return b""

    def _finish(self) -> None:
        self._responses_done += 1
        # Answered before the request's own body was in: reading on would mean
        # parsing the rest of that body as requests, so the connection ends.
        if self._messages_done < self._responses_done:
            self.keep_alive = False
        self.our_state = DONE if self.keep_alive else MUST_CLOSE

    def encode_response(
        self,
        request: Request,
        status: AppValue,
        headers: AppValue,
        body: AppValue,
        reason: AppValue = None,
    ) -> bytes:
        """A whole response in one piece, its length known.

        `body` None: the head of a streamed response (`start_response`), framed
        by the app's Content-Length, else chunked (HTTP/1.1) or by closing the
        connection (HTTP/1.0).
        """
        if self.our_state is CLOSED:
            return b""
        if self.our_state is not IDLE:
            raise ResponseError(f"response head while {self.our_state}")
        try:
            line = _FINAL_LINES[status]
        except (KeyError, TypeError):
            # 1xx are interim (`encode_informational`), 101 the upgrade path's.
            raise ResponseError(f"invalid final status {status!r}") from None
        if type(status) is not int:  # 200.0 == 200
            raise ResponseError(f"invalid final status {status!r}")
        if reason is not None:
            line = _status_line_with(status, reason)
        parts = [line, date_and_server_header()]
        keep_alive = request.keep_alive and not self._close_asked
        no_body = request.method == "HEAD" or status in _NO_BODY_STATUSES
        declared = -1
        checked_names = _CHECKED_NAMES
        safe_values = _SAFE_VALUES
        try:
            # `_field_name` and `_check_value`, inlined for names and values
            # seen before: two lookups per header in the usual case.
            for name, value in headers:
                lname = checked_names.get(name) or _field_name(name)
                if lname in _OWN_HEADERS:
                    # Framing and the one Connection header are this module's job (below);
                    # an app's Connection header may only ask to close.
                    if lname == _FRAMING:
                        if type(value) is not bytes:
                            _check_value(name, value)  # a str of digits is no header
                        length = int(value) if value.isdigit() else -1
                        if length < 0 or (declared >= 0 and length != declared):
                            raise ResponseError(f"invalid response Content-Length {value!r}")
                        declared = length
                    else:  # not sent, but no less a bug of the app's
                        _check_value(name, value)
                        if lname == b"connection" and value.lower().find(b"close") >= 0:
                            keep_alive = False
                    continue
                if value not in safe_values:
                    _check_value(name, value)
                    if len(value) <= _MAX_SAFE_VALUE and len(safe_values) < _MAX_CHECKED_NAMES:
                        safe_values.add(value)
                parts += (name, b": ", value, b"\r\n")
        except (TypeError, ValueError):
            # A malformed list (checked_headers says what is wrong), or bytes-like
            # names or values that are fine but are no keys of the cache.
            if not isinstance(headers, (list, tuple)):
                raise ResponseError(f"response headers {headers!r} are not a list") from None
            pairs = [(bytes(name), bytes(value)) for name, value in checked_headers(headers)]
            return self.encode_response(request, status, pairs, body, reason)

        if body is not None:
            if declared >= 0 and declared != len(body) and (body or not no_body):
                raise ResponseError(
                    f"response body of {len(body)} bytes under Content-Length {declared}"
                )
            if status not in _NO_BODY_STATUSES:
                parts.append(b"content-length: %d\r\n" % (len(body) or max(declared, 0)))
        else:
            # A streamed response: the framing its pieces keep to.
            self._no_body = no_body
            self._left = declared
            self._chunked_out = False
            if no_body or declared >= 0:
                if declared >= 0 and status not in _NO_BODY_STATUSES:
                    parts.append(b"content-length: %d\r\n" % declared)
            elif request.http_version == "1.1":
                self._chunked_out = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                keep_alive = False  # HTTP/1.0: the body ends when the connection does
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        elif request.http_version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        self.keep_alive = keep_alive
        parts.append(b"\r\n")
        if body is None:
            self.our_state = SEND_BODY
            return b"".join(parts)
        if body and not no_body:
            parts.append(body)
        self._finish()
        return b"".join(parts)


def _check_transfer_coding(value: bytes) -> None:
    """The final coding must be chunked, the one squall decodes (RFC 9112 6.3).

    Codings before it (`gzip, chunked`) reach the app still applied, with the
    header that names them, as in gunicorn and uvicorn.
    """
    if value.lower().rpartition(b",")[2].strip(b" \t") != b"chunked":
        raise RequestError(400, "chunked is not the final transfer coding")


def _unknown_method(opening: bytes) -> RequestError:
    """501 for a well-formed request line whose method squall does not know
    (RFC 9110 9.1); 400 for anything else."""
    if _REQUEST_LINE.match(opening) is not None:
        return RequestError(501, "method not implemented")
    return RequestError(400, "malformed request: invalid method")


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
