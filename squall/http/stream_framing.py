"""The core's checks of a response, framed as the HTTP/2 fields of one stream.

A `RequestCycle` answers through its connection's `conn`: on HTTP/1.1 the
`ServerConnection`, which returns the bytes of each head and body piece. On
HTTP/2 it is a `StreamFraming`, the same class with the same rules (header
names are tokens, values hold no control bytes, a final status is 200-599,
Content-Length is kept to, no body for HEAD, 204 and 304), whose heads are
lists of fields and whose pieces go to the stream (`StreamSink`), which
frames them with h2 under flow control. Its encoders return no bytes: the
stream writes.

It is a subclass so that the cycle, compiled against `ServerConnection`,
takes it unchanged, and the HTTP/1.1 path pays nothing for HTTP/2.
"""

from __future__ import annotations

from typing import Final, Protocol

from squall.http.core import (
    _CHECKED_NAMES,
    _FRAMING,
    _NO_BODY_STATUSES,
    _OWN_HEADERS,
    CLOSED,
    DONE,
    ERROR,
    IDLE,
    SEND_BODY,
    AppValue,
    Request,
    ResponseError,
    ServerConnection,
    _check_value,
    _field_name,
    _reason_bytes,
    checked_headers,
)
from squall.http.date import SERVER_NAME, http_date
from squall.http.status import FINAL_LINES

#: RFC 9113 8.2.2: connection-specific fields have no place in HTTP/2. An
#: app's (a WSGI app's `Connection: close`, say) is checked and dropped.
CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_STATUS_VALUES: Final = {status: b"%d" % status for status in range(100, 600)}
_SERVER: Final = b"server"
_DATE: Final = b"date"

Fields = list[tuple[bytes, bytes]]


class StreamSink(Protocol):
    """Where a stream's response goes: the HTTP/2 stream that frames it."""

    def send_head(self, fields: Fields, end_stream: bool) -> None: ...

    def send_body(self, data: bytes) -> None: ...

    def send_end(self) -> None: ...

    def cut(self) -> None:
        """The response broke its own framing: reset the stream."""


def _as_bytes(data: AppValue) -> bytes:
    if type(data) is bytes:
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise ResponseError(f"response body {type(data).__name__} is not bytes")


class StreamFraming(ServerConnection):
    """One stream's response, checked as the core checks a response."""

    __slots__ = ("sink",)

    def __init__(self, sink: StreamSink) -> None:
        # Not the parent's: h2 parses the stream's request, this only answers it.
        self.sink = sink
        self.our_state = IDLE
        self.keep_alive = True
        self._close_asked = False
        self._no_body = False
        self._left = -1
        self.short_by = 0

    def close(self) -> None:
        """The stream is gone: what is still framed goes nowhere."""
        self.our_state = CLOSED

    def close_after_response(self) -> None:
        """A stream ends with its response; the connection's end is GOAWAY's."""

    def encode_informational(self, status: AppValue, headers: AppValue = ()) -> bytes:
        if self.our_state is not IDLE:
            raise ResponseError("an interim response after the final one began")
        if type(status) is not int or not 100 <= status < 200 or status == 101:
            raise ResponseError(f"{status!r} is not an interim status")
        fields: Fields = [(b":status", _STATUS_VALUES[status])]
        for name, value in checked_headers(headers):
            lname = _field_name(name)
            if lname in _OWN_HEADERS or lname in CONNECTION_SPECIFIC:
                raise ResponseError(f"{name!r} in an interim response")
            fields.append((lname, bytes(value)))
        self.sink.send_head(fields, False)
        return b""

    def encode_response(
        self,
        request: Request,
        status: AppValue,
        headers: AppValue,
        body: AppValue,
        reason: AppValue = None,
    ) -> bytes:
        """A whole response (`body` given) or the head of a streamed one (`body` None)."""
        if self.our_state is CLOSED:
            return b""
        if self.our_state is not IDLE:
            raise ResponseError(f"response head while {self.our_state}")
        if type(status) is not int or status not in FINAL_LINES:
            raise ResponseError(f"invalid final status {status!r}")
        if reason is not None:
            _reason_bytes(reason)  # checked as on HTTP/1.1; HTTP/2 carries no reason phrase
        fields: Fields = [
            (b":status", _STATUS_VALUES[status]),
            (_DATE, http_date()),
            (_SERVER, SERVER_NAME),
        ]
        no_body = request.method == "HEAD" or status in _NO_BODY_STATUSES
        declared = -1
        try:
            for name, value in headers:
                lname = _CHECKED_NAMES.get(name) or _field_name(name)
                if type(value) is not bytes:
                    _check_value(name, value)  # a str is refused here, bytes-likes below
                    value = bytes(value)
                if lname == _FRAMING:
                    length = int(value) if value.isdigit() else -1
                    if length < 0 or (declared >= 0 and length != declared):
                        raise ResponseError(f"invalid response Content-Length {value!r}")
                    declared = length
                    continue
                _check_value(name, value)
                if lname in CONNECTION_SPECIFIC:
                    continue
                fields.append((lname, value))
        except (TypeError, ValueError):
            if not isinstance(headers, (list, tuple)):
                raise ResponseError(f"response headers {headers!r} are not a list") from None
            pairs = [(bytes(name), bytes(value)) for name, value in checked_headers(headers)]
            return self.encode_response(request, status, pairs, body, reason)
        sink = self.sink
        if body is None:
            self._no_body = no_body
            self._left = declared
            if declared >= 0 and status not in _NO_BODY_STATUSES:
                fields.append((b"content-length", b"%d" % declared))
            self.our_state = SEND_BODY
            sink.send_head(fields, False)
            return b""
        data = _as_bytes(body)
        if declared >= 0 and declared != len(data) and (data or not no_body):
            raise ResponseError(
                f"response body of {len(data)} bytes under Content-Length {declared}"
            )
        if status not in _NO_BODY_STATUSES:
            fields.append((b"content-length", b"%d" % (len(data) or max(declared, 0))))
        self.our_state = DONE
        if data and not no_body:
            sink.send_head(fields, False)
            sink.send_body(data)
            sink.send_end()
        else:
            sink.send_head(fields, True)
        return b""

    def encode_body(self, data: AppValue) -> bytes:
        if self.our_state is not SEND_BODY and self._closed_else_refuse("response body"):
            return b""
        if self._no_body or not data:
            return b""
        piece = _as_bytes(data)
        if self._left >= 0:
            self._keep_to_length(len(piece))
        self.sink.send_body(piece)
        return b""

    def end_response(self) -> bytes:
        if self.our_state is not SEND_BODY and self._closed_else_refuse("end of response"):
            return b""
        left = self._left
        if left > 0 and not self._no_body:
            self.short_by = left
            self.our_state = ERROR
            self.sink.cut()
            raise ResponseError(
                f"response body shorter than its Content-Length ({left} bytes short)"
            )
        self.our_state = DONE
        self.sink.send_end()
        return b""
