"""squall.http.core.ServerConnection as a state machine, against a model of the wire.

A hypothesis `RuleBasedStateMachine` drives one `ServerConnection` from both
sides at once, interleaved at random:

- the client: requests from a small grammar (GET/HEAD/POST/PUT; no body,
  Content-Length or chunked bodies with extensions and trailers; HTTP/1.0 with
  and without keep-alive; `Connection: close`; `Expect: 100-continue`; a stray
  CRLF before a request line), pipelined into one byte stream that is fed in
  pieces cut anywhere (one byte, a few, at or around the end of a head or a
  message, all of it); at most once, a piece that must be refused (garbage, a
  malformed head or body, one over a limit of the small `LIMITS`);
- the app, answering the oldest request whose head is in: whole responses,
  streamed ones (declared Content-Length or not, too long or too short on
  purpose), 1xx interim responses, refused heads (bad status, reason, header
  names or values, Content-Length), `close_after_response`, `start_next_cycle`,
  calls out of turn, and `close()`.

What it checks:

- Every byte the core emits goes to an independent parser: one
  `h11.Connection(h11.CLIENT)` per response, in order, that has sent the
  matching request (HEAD or not). Each response must parse with exactly the
  interim statuses, final status, reason, app headers, framing headers and
  body the model accepted; a response the model calls complete must be complete
  on the wire, with nothing left over; one cut short (its Content-Length not
  reached) must not look complete when the connection ends. Heads are also
  checked line by line against RFC 9110/9112 syntax (token names, no control
  bytes but HTAB in values or reason phrases), and no header ever carries a
  byte of a refused one (every refused header holds the marker `EVIL`).
- A refused head (`ResponseError`) emits nothing and leaves `our_state` as it
  was; a refused body piece or a short end ends the connection; after a
  response that may not be followed (`MUST_CLOSE`, `ERROR`) `start_next_cycle`
  raises and every further call emits nothing.
- Events follow `(Request Data* END_OF_MESSAGE)* [Request Data*] [RequestError]`,
  with nothing after a `RequestError` or after the message of a client that
  asked to close; decoded requests equal those sent (method, target, path,
  query, version, headers without trailers, keep-alive, Expect, body) up to an
  injected error, which must come with its status once its bytes are all in
  (and not before they begin); a request whose bytes are all in has all its
  events out (nothing is held back).
- `our_state` is predicted exactly; `their_state` within what the events allow;
  both only ever move along allowed transitions.

The tests at the end of the file are the smallest failing examples the
machine found in earlier versions of core.py, kept as plain regressions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from squall.http.core import (
    CLOSED,
    DONE,
    END_OF_MESSAGE,
    ERROR,
    IDLE,
    MUST_CLOSE,
    SEND_BODY,
    Data,
    Limits,
    Request,
    RequestError,
    ResponseError,
    ServerConnection,
    checked_headers,
)

#: Small limits, so that a limit-breaking piece stays small.
LIMITS = Limits(
    max_target_bytes=128,
    max_header_bytes=2048,
    max_field_bytes=512,
    max_header_count=16,
    max_body_bytes=1024,
)

STATES = (IDLE, SEND_BODY, DONE, MUST_CLOSE, ERROR, CLOSED)
OUR_MOVES = {
    IDLE: {IDLE, SEND_BODY, DONE, MUST_CLOSE, CLOSED},
    SEND_BODY: {SEND_BODY, DONE, MUST_CLOSE, ERROR, CLOSED},
    DONE: {DONE, IDLE, CLOSED},
    MUST_CLOSE: {MUST_CLOSE, CLOSED},
    ERROR: {ERROR, CLOSED},
    CLOSED: {CLOSED},
}
THEIR_MOVES = {
    IDLE: {IDLE, SEND_BODY, DONE, MUST_CLOSE, ERROR, CLOSED},
    SEND_BODY: {SEND_BODY, DONE, MUST_CLOSE, ERROR, IDLE, CLOSED},
    DONE: {DONE, IDLE, SEND_BODY, MUST_CLOSE, ERROR, CLOSED},
    MUST_CLOSE: {MUST_CLOSE, CLOSED},
    ERROR: {ERROR, CLOSED},
    CLOSED: {CLOSED},
}
NO_BODY_STATUSES = (204, 304)
MARK = b"EVIL"  # in every refused header, reason or value: never on the wire

# RFC 9112 4 / RFC 9110 5.1, 5.5: what a response head may hold, strictly.
STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] [\t\x20-\x7e\x80-\xff]*")
FIELD_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+: [\t\x20-\x7e\x80-\xff]*")


def strict_head(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    """The status line, header fields and what follows the head in `data`,
    which must begin with a head that is valid line by line."""
    end = data.find(b"\r\n\r\n")
    assert end >= 0, f"no complete head in {data!r}"
    lines = data[:end].split(b"\r\n")
    assert STATUS_LINE.fullmatch(lines[0]), f"invalid status line {lines[0]!r}"
    fields = []
    for line in lines[1:]:
        assert FIELD_LINE.fullmatch(line), f"invalid header line {line!r} in {data!r}"
        assert MARK.lower() not in line.lower(), f"refused bytes on the wire: {line!r}"
        name, _, value = line.partition(b": ")
        fields.append((name, value))
    assert MARK.lower() not in lines[0].lower(), f"refused reason on the wire: {lines[0]!r}"
    return lines[0], fields, data[end + 4 :]


# -- the client's grammar --------------------------------------------------------


@dataclass
class ClientMsg:
    method: str
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]  # as decoded: lower-case names, trailing OWS gone
    body: bytes
    raw: bytes
    head_len: int  # through the blank line that ends the head
    keep_alive: bool
    expect_continue: bool
    body_expected: bool
    start: int = 0  # offsets in the client stream
    end: int = 0


@dataclass
class BadPiece:
    kind: str
    raw: bytes
    status: int
    may_request: bool  # its head may come out as a Request before the error
    start: int = 0
    end: int = 0


EXTRA_REQUEST_HEADERS = (
    (b"User-Agent", b"hypothesis/6"),
    (b"Accept", b"*/*"),
    (b"X-Req", b"a b\tc"),
    (b"X-Ows", b"v \t"),
    (b"X-Empty", b""),
    (b"Cookie", b"a=1; b=2"),
    (b"accept-encoding", b"gzip, br"),
)
TRAILERS = ((b"X-Checksum", b"abc"), (b"Expires", b"0"), (b"x-t", b"1 2"))


@st.composite
def client_messages(draw: Any) -> ClientMsg:
    method = draw(st.sampled_from(("GET", "HEAD", "POST", "PUT")))
    version = draw(st.sampled_from(("1.1", "1.1", "1.1", "1.0")))
    path = draw(st.text("abcxyz019-_.~/", max_size=12))
    query = draw(st.sampled_from(("", "", "?", "?a=1", "?a=1&b=two", "?x=%41")))
    target = ("/" + path + query).encode()
    headers: list[tuple[bytes, bytes]] = []
    if version == "1.1" or draw(st.booleans()):
        headers.append(
            (
                draw(st.sampled_from((b"Host", b"host", b"HOST"))),
                draw(st.sampled_from((b"example.com", b"x:8080", b"127.0.0.1"))),
            )
        )
    headers += draw(st.lists(st.sampled_from(EXTRA_REQUEST_HEADERS), max_size=3))
    framings = ("none", "length", "chunked") if version == "1.1" else ("none", "length")
    framing = draw(st.sampled_from(framings))
    body = b"" if framing == "none" else draw(st.binary(max_size=48))
    close = keep_alive_10 = False
    if version == "1.1":
        close = draw(st.integers(0, 5)) == 5
        if close:
            headers.append(
                (
                    draw(st.sampled_from((b"Connection", b"connection"))),
                    draw(st.sampled_from((b"close", b"Close"))),
                )
            )
    else:
        keep_alive_10 = draw(st.integers(0, 2)) > 0
        if keep_alive_10:
            headers.append((b"Connection", draw(st.sampled_from((b"keep-alive", b"Keep-Alive")))))
    expect = draw(st.integers(0, 3)) == 0
    if expect:
        headers.append((b"Expect", b"100-continue"))
    rest = b""
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
        rest = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        parts = []
        for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True):
            if b > a:
                size = b"%x" % (b - a)
                if draw(st.booleans()):
                    size = size.upper()
                ext = draw(st.sampled_from((b"", b"", b";ext=1", b";a")))
                parts.append(size + ext + b"\r\n" + body[a:b] + b"\r\n")
        parts.append(b"0\r\n")
        for name, value in draw(st.lists(st.sampled_from(TRAILERS), max_size=2)):
            parts.append(name + b": " + value + b"\r\n")
        parts.append(b"\r\n")
        rest = b"".join(parts)
    headers = draw(st.permutations(headers))
    lead = b"\r\n" if draw(st.integers(0, 7)) == 0 else b""
    head = (
        lead
        + method.encode()
        + b" "
        + target
        + b" HTTP/"
        + version.encode()
        + b"\r\n"
        + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        + b"\r\n"
    )
    return ClientMsg(
        method=method,
        target=target,
        version=version,
        headers=[(name.lower(), value.rstrip(b" \t")) for name, value in headers],
        body=body,
        raw=head + rest,
        head_len=len(head),
        keep_alive=(not close) if version == "1.1" else keep_alive_10,
        expect_continue=expect and version == "1.1",
        body_expected=framing == "chunked" or (framing == "length" and len(body) > 0),
    )


_HOST = b"Host: x\r\n"
_CHUNKED = b"Transfer-Encoding: chunked\r\n"
BAD_PIECES: dict[str, tuple[bytes, int, bool]] = {
    # kind: (bytes, status, may a Request come out first)
    "tls": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, False),
    "nul": (b"GET /\x00 HTTP/1.1\r\n" + _HOST + b"\r\n", 400, False),
    "no_colon": (b"GET / HTTP/1.1\r\n" + _HOST + b"NoColonHere\r\n\r\n", 400, False),
    "space_name": (b"GET / HTTP/1.1\r\n" + _HOST + b"Bad Name: 1\r\n\r\n", 400, False),
    "bad_length": (b"POST / HTTP/1.1\r\n" + _HOST + b"Content-Length: 1x\r\n\r\n", 400, False),
    "two_lengths": (
        b"POST / HTTP/1.1\r\n" + _HOST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        400,
        False,
    ),
    "length_and_chunked": (
        b"POST / HTTP/1.1\r\n" + _HOST + b"Content-Length: 3\r\n" + _CHUNKED + b"\r\n0\r\n\r\n",
        400,
        False,
    ),
    "chunked_http10": (b"POST / HTTP/1.0\r\n" + _CHUNKED + b"\r\n0\r\n\r\n", 400, False),
    "not_chunked": (
        b"POST / HTTP/1.1\r\n" + _HOST + b"Transfer-Encoding: gzip\r\n\r\n",
        400,
        False,
    ),
    "bad_chunk_size": (b"POST / HTTP/1.1\r\n" + _HOST + _CHUNKED + b"\r\nzz\r\n", 400, True),
    "no_host": (b"GET / HTTP/1.1\r\n\r\n", 400, False),
    "two_hosts": (b"GET / HTTP/1.1\r\n" + _HOST + _HOST + b"\r\n", 400, False),
    "long_target": (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n" + _HOST + b"\r\n", 414, False),
    "many_headers": (
        b"GET / HTTP/1.1\r\n" + _HOST + b"".join(b"X-%d: v\r\n" % i for i in range(20)) + b"\r\n",
        431,
        False,
    ),
    "big_field": (
        b"GET / HTTP/1.1\r\n" + _HOST + b"X-Big: " + b"b" * 600 + b"\r\n\r\n",
        431,
        False,
    ),
    "big_head": (
        b"GET / HTTP/1.1\r\n"
        + _HOST
        + b"".join(b"X-%d: " % i + b"h" * 300 + b"\r\n" for i in range(8))
        + b"\r\n",
        431,
        False,
    ),
    "big_length": (b"POST / HTTP/1.1\r\n" + _HOST + b"Content-Length: 5000\r\n\r\nabc", 413, False),
    "big_chunked": (
        b"POST / HTTP/1.1\r\n"
        + _HOST
        + _CHUNKED
        + b"\r\n"
        + b"".join(b"c8\r\n" + b"c" * 200 + b"\r\n" for _ in range(6))
        + b"0\r\n\r\n",
        413,
        True,
    ),
    "big_trailers": (
        b"POST / HTTP/1.1\r\n"
        + _HOST
        + _CHUNKED
        + b"\r\n3\r\nabc\r\n0\r\n"
        + b"".join(b"X-T%d: " % i + b"t" * 300 + b"\r\n" for i in range(8))
        + b"\r\n",
        431,
        True,
    ),
}


# -- the app's side ------------------------------------------------------------------

VALUE_BYTES = b"abcxyz0189 -_/;=,.\t\x80\xe9\xff\"'()"
good_values = st.lists(st.sampled_from(VALUE_BYTES), max_size=10).map(bytes)
GOOD_NAMES = (
    b"X-A",
    b"x-b",
    b"Content-Type",
    b"Set-Cookie",
    b"Cache-Control",
    b"Vary",
    b"X-Tok!#$%&'*+-.^_`|~",
)
plain_headers = st.tuples(st.sampled_from(GOOD_NAMES), good_values)
own_headers = st.sampled_from(
    (
        (b"Connection", b"close"),
        (b"connection", b"Close"),
        (b"Connection", b"keep-alive"),
        (b"Connection", b"upgrade"),
        (b"Connection", b"keep-alive, close"),
        (b"Transfer-Encoding", b"chunked"),
        (b"transfer-encoding", b"gzip"),
    )
)
final_headers = st.lists(
    st.one_of(plain_headers, plain_headers, plain_headers, own_headers), max_size=4
)
interim_headers = st.lists(plain_headers, max_size=3)

BAD_HEADERS: tuple[tuple[Any, Any], ...] = (
    (b"X-EVIL\r\nInjected", b"1"),
    (b"X-EVIL\nInjected", b"1"),
    (b"X-EVIL\x00", b"1"),
    (b"X EVIL", b"1"),
    (b"X-EVIL:", b"1"),
    (b"X-EVIL\t", b"1"),
    (b"X-EVIL\x7f", b"1"),
    (b"X-EVIL\xe9", b"1"),
    (b"X-EVIL(", b"1"),
    (b"", b"EVIL"),
    (b"X-A", b"EVIL\r\nInjected: 1"),
    (b"X-A", b"EVIL\n"),
    (b"X-A", b"EVIL\r"),
    (b"X-A", b"EVIL\x00"),
    (b"X-A", b"EVIL\x01"),
    (b"X-A", b"EVIL\x0b"),
    (b"X-A", b"EVIL\x0c"),
    (b"X-A", b"EVIL\x1f"),
    (b"X-A", b"EVIL\x7f"),
    ("x-evil", b"1"),
    (None, b"EVIL"),
    (5, b"EVIL"),
    (b"X-A", "EVIL"),
    (b"X-A", None),
    (b"X-A", 5),
    (b"Content-Length", b"1EVIL"),
    (b"Content-Length", b"-1"),
    (b"Content-Length", b" 1"),
    (b"Content-Length", b"+1"),
    (b"Content-Length", b"1,1"),
    (b"Content-Length", b""),
    (b"Connection", b"close\r\nEVIL: 1"),
    (b"Transfer-Encoding", b"chunked\r\n\r\nEVIL"),
)
maybe_bad_header = st.one_of(*[st.none()] * 6, st.sampled_from(BAD_HEADERS))
CONTENT_LENGTH_MODES = ("none",) * 5 + (
    "exact",
    "exact",
    "zeros",
    "other",
    "other",
    "same_twice",
    "two_values",
)
content_lengths = st.tuples(st.sampled_from(CONTENT_LENGTH_MODES), st.integers(1, 12))

GOOD_FINAL = (200, 200, 200, 201, 204, 206, 299, 304, 404, 500, 503, 599)
BAD_FINAL: tuple[Any, ...] = (100, 101, 103, 199, 99, 600, 1000, 0, -200, "200", 200.0, True, None)
final_statuses = st.sampled_from(GOOD_FINAL * 6 + BAD_FINAL)
GOOD_INTERIM = (100, 100, 103, 103, 102, 199)
BAD_INTERIM: tuple[Any, ...] = (101, 200, 204, 99, 0, "100", 100.0, None)
interim_statuses = st.sampled_from(GOOD_INTERIM * 4 + BAD_INTERIM)
GOOD_REASONS: tuple[Any, ...] = (None,) * 8 + ("Fine", b"Quite Fine", "caf\xe9", "", b"\tTab")
BAD_REASONS: tuple[Any, ...] = ("OK\r\nEVIL: 1", b"EVIL\x00", "EVIL\u20ac", b"\x7fEVIL", "EVIL\n")
reasons = st.sampled_from(GOOD_REASONS * 3 + BAD_REASONS)
bodies = st.binary(max_size=40)


def note(what: str) -> None:
    """A hypothesis statistic (pytest --hypothesis-show-statistics)."""
    hypothesis_event(what)


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True one time in `n` (and False is what hypothesis shrinks to)."""
    return st.integers(0, n - 1).map(lambda i: i == n - 1)


def final_status_ok(status: Any) -> bool:
    return type(status) is int and 200 <= status <= 599


def interim_status_ok(status: Any) -> bool:
    return type(status) is int and 100 <= status <= 199 and status != 101


def reason_bytes(reason: Any) -> bytes | None:
    """The reason phrase as it must appear, or None for the default."""
    if reason is None:
        return None
    return reason.encode("latin-1") if isinstance(reason, str) else bytes(reason)


def reason_ok(reason: Any) -> bool:
    if reason is None:
        return True
    try:
        raw = reason_bytes(reason)
    except UnicodeError:
        return False
    assert raw is not None
    return re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", raw) is None


def with_inserted(headers: list[Any], extra: list[Any], positions: int) -> list[Any]:
    """`headers` with each of `extra` put at a position derived from `positions`."""
    out = list(headers)
    for i, pair in enumerate(extra):
        out.insert((positions >> (3 * i)) % (len(out) + 1), pair)
    return out


def content_length_headers(mode: str, delta: int, length: int) -> tuple[list[Any], int, bool]:
    """(headers, declared length or -1, whether the core must refuse them)."""
    if mode == "none":
        return [], -1, False
    if mode == "exact":
        return [(b"Content-Length", b"%d" % length)], length, False
    if mode == "zeros":
        return [(b"content-length", b"%03d" % length)], length, False
    if mode == "other":
        other = length + delta if delta % 2 else max(length - delta, 0)
        return [(b"Content-Length", b"%d" % other)], other, False
    if mode == "same_twice":
        return (
            [(b"Content-Length", b"%d" % length), (b"content-length", b"%d" % length)],
            length,
            False,
        )
    assert mode == "two_values"
    return (
        [(b"Content-Length", b"%d" % length), (b"Content-Length", b"%d" % (length + delta))],
        -1,
        True,
    )


@dataclass
class Response:
    """The model of one response: what was accepted and must be on the wire."""

    request: Request
    interim: list[tuple[int, list[tuple[bytes, bytes]]]] = field(default_factory=list)
    status: int | None = None
    reason: bytes | None = None
    app_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content_length: int | None = None  # the Content-Length header due, if any
    framing: str = ""  # "length", "chunked", "close" (HTTP/1.0) or "none" (no body)
    no_body: bool = False
    head_keep_alive: bool = True
    left: int = -1  # bytes still due under a declared Content-Length
    body: bytearray = field(default_factory=bytearray)  # what the client must read
    finished: bool = False  # the app ended it, or the core refused its end
    incomplete: bool = False  # cut short: the client must not see it complete
    on_wire: bool = False  # the independent parser read all of it


def app_view(headers: list[tuple[Any, Any]]) -> list[tuple[bytes, bytes]]:
    """Headers as a client must read them: lower-case names, OWS stripped, the
    core's own (framing, Connection) left out."""
    return [
        (name.lower(), value.strip(b" \t"))
        for name, value in headers
        if name.lower() not in (b"content-length", b"transfer-encoding", b"connection")
    ]


CALLS = (
    "encode_body",
    "end_response",
    "start_next_cycle",
    "encode_response",
    "start_response",
    "encode_informational",
)


# -- the wire ------------------------------------------------------------------------


class WireReader:
    """Reads the emitted bytes back as responses, one h11 client per response."""

    def __init__(self, machine: CoreMachine) -> None:
        self.machine = machine
        self.buffer = b""
        self.index = 0  # the response being read
        self.client: h11.Connection | None = None
        self.events: list[Any] = []
        self.ended = False

    def _begin(self) -> None:
        requests = self.machine.requests
        assert self.index < len(requests), (
            f"bytes for response {self.index} before its request: {self.buffer!r}"
        )
        client = h11.Connection(h11.CLIENT)
        method = b"HEAD" if requests[self.index].method == "HEAD" else b"GET"
        client.send(h11.Request(method=method, target=b"/", headers=[(b"Host", b"x")]))
        client.send(h11.EndOfMessage())
        self.client = client
        self.events = []

    def feed(self, data: bytes) -> None:
        if not data:
            return
        assert not self.ended, f"bytes emitted after the connection ended: {data!r}"
        self.buffer += data
        self._pump()

    def _pump(self, eof: bool = False) -> bool:
        """Read what is buffered; True if a response ended at the EOF."""
        while True:
            if self.client is None:
                if not self.buffer:
                    return False
                self._begin()
            client = self.client
            assert client is not None
            if self.buffer:
                client.receive_data(self.buffer)
                self.buffer = b""
            if eof:
                client.receive_data(b"")
            while True:
                try:
                    event = client.next_event()
                except h11.RemoteProtocolError as exc:
                    if eof:
                        raise
                    raise AssertionError(
                        f"response {self.index} does not parse: {exc!r}; "
                        f"wire so far {self.machine.wire!r}"
                    ) from exc
                if event is h11.NEED_DATA:
                    return False
                if type(event) is h11.ConnectionClosed:
                    return False
                self.events.append(event)
                if type(event) is h11.EndOfMessage:
                    rest, _ = client.trailing_data
                    self.machine.response_on_wire(self.index, self.events)
                    self.index += 1
                    self.client = None
                    self.buffer = bytes(rest)
                    if eof:
                        assert not self.buffer, f"bytes after the last response: {rest!r}"
                        return True
                    break

    def end(self) -> str:
        """The connection ends: 'clean' (nothing pending), 'completed' (the last
        response ended with it) or 'broken' (a response was cut off)."""
        self.ended = True
        if self.client is None and not self.buffer:
            return "clean"
        try:
            return "completed" if self._pump(eof=True) else "broken"
        except h11.RemoteProtocolError:
            return "broken"


# -- the machine ---------------------------------------------------------------------


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.early = self.drain = self.hang_up = self.bad = False
        self.connections = 0
        self._new_connection()

    def _new_connection(self) -> None:
        """A fresh connection (the client reconnects), its model empty."""
        self.conn = ServerConnection(LIMITS)
        self.connections += 1
        # Client side.
        self.stream = bytearray()
        self.items: list[ClientMsg | BadPiece] = []
        self.fed = 0
        self.events: list[Any] = []
        self.requests: list[Request] = []
        self.eoms = 0
        self.in_body = False
        self.body = bytearray()  # of the request being read
        self.error: RequestError | None = None
        self.client_closed = False  # a message that asked to close has ended
        # App side.
        self.our = IDLE  # the model's our_state
        self.k = 0  # the response being framed
        self.responses: dict[int, Response] = {}
        self.close_asked = False
        self.dead = False  # the connection is over: nothing more may go out
        self.closed = False  # conn.close() was called
        self.wire = b""
        self.reader = WireReader(self)
        self.last_states = (IDLE, IDLE)

    # -- client ------------------------------------------------------------------

    def effective(self) -> list[ClientMsg | BadPiece]:
        """The items the parser must read: up to a bad piece or the end of a
        message that asked to close, whichever comes first."""
        out: list[ClientMsg | BadPiece] = []
        for item in self.items:
            out.append(item)
            if isinstance(item, BadPiece) or not item.keep_alive:
                break
        return out

    def _append(self, item: ClientMsg | BadPiece) -> None:
        item.start = len(self.stream)
        self.stream += item.raw
        item.end = len(self.stream)
        self.items.append(item)

    @initialize(
        msgs=st.lists(client_messages(), min_size=1, max_size=3),
        early=one_in(4),
        drain=one_in(4),
        hang_up=one_in(8),
        bad=one_in(3),
    )
    def first_requests(
        self, msgs: list[ClientMsg], early: bool, drain: bool, hang_up: bool, bad: bool
    ) -> None:
        """The first requests, and what this run may do besides (each of these
        ends keep-alive, so most runs do none of it)."""
        for msg in msgs:
            self._append(msg)
        self.early = early  # answer a request before its body is in
        self.drain = drain  # `close_after_response`, once
        self.hang_up = hang_up  # `close()`, once
        self.bad = bad  # a bad piece, once

    @precondition(lambda self: len(self.items) < 10 and not self.closed)
    @rule(msg=client_messages())
    def queue_request(self, msg: ClientMsg) -> None:
        self._append(msg)

    @precondition(
        lambda self: (
            self.bad and not self.closed and not any(isinstance(i, BadPiece) for i in self.items)
        )
    )
    @rule(kind=st.sampled_from(sorted(BAD_PIECES)))
    def queue_bad_piece(self, kind: str) -> None:
        raw, status, may_request = BAD_PIECES[kind]
        self._append(BadPiece(kind, raw, status, may_request))

    def _boundaries(self) -> list[int]:
        marks = []
        for item in self.items:
            ends = [item.end]
            if isinstance(item, ClientMsg):
                ends.append(item.start + item.head_len)
            for end in ends:
                marks += [end - 3, end - 2, end - 1, end, end + 1]
        return sorted({m for m in marks if m > self.fed})

    @precondition(lambda self: self.fed < len(self.stream))
    @rule(
        mode=st.sampled_from(("byte", "few", "some", "boundary", "boundary", "rest", "empty")),
        n=st.integers(0, 1 << 16),
    )
    def feed(self, mode: str, n: int) -> None:
        left = len(self.stream) - self.fed
        if mode == "byte":
            size = 1
        elif mode == "few":
            size = n % 8 + 1
        elif mode == "some":
            size = n % 300 + 1
        elif mode == "boundary":
            marks = self._boundaries()
            size = marks[n % len(marks)] - self.fed if marks else left
        elif mode == "empty":
            size = 0
        else:
            size = left
        size = min(size, left)
        data = bytes(self.stream[self.fed : self.fed + size])
        events = self.conn.receive_data(data)
        self.fed += size
        if not data:
            assert events == [], f"events from no bytes: {events!r}"
        for event in events:
            self._event(event)
        self._check_liveness()

    # The same rule once more: reading is most of what a connection does.
    feed_again = rule(
        mode=st.sampled_from(("byte", "few", "some", "boundary", "rest")), n=st.integers(0, 1 << 16)
    )(
        precondition(lambda self: self.fed < len(self.stream))(
            lambda self, mode, n: self.feed(mode, n)
        )
    )

    def _event(self, event: Any) -> None:
        assert self.error is None, f"{event!r} after {self.error!r}"
        assert not self.client_closed, f"{event!r} after the client's last message"
        effective = self.effective()
        if isinstance(event, Request):
            assert not self.in_body, f"{event!r} before the end of the previous message"
            i = len(self.requests)
            assert i < len(effective), (
                f"{event!r}: no such request was sent (or it follows a close)"
            )
            item = effective[i]
            if isinstance(item, BadPiece):
                assert item.may_request, f"{event!r} from the bad piece {item.kind}"
            else:
                self._check_request(event, item)
            self.requests.append(event)
            self.in_body = True
            self.body = bytearray()
        elif isinstance(event, Data):
            assert self.in_body, f"{event!r} outside a message"
            assert type(event.data) is bytes and event.data, f"empty or odd {event!r}"
            self.body += event.data
            item = effective[len(self.requests) - 1]
            if isinstance(item, ClientMsg):
                assert item.body.startswith(self.body), (
                    f"body {bytes(self.body)!r} is not of {item.body!r}"
                )
        elif event is END_OF_MESSAGE:
            assert self.in_body, "END_OF_MESSAGE outside a message"
            item = effective[len(self.requests) - 1]
            assert isinstance(item, ClientMsg), (
                f"the bad piece {item.kind} was read as a whole message"
            )
            assert bytes(self.body) == item.body, f"body {bytes(self.body)!r}, sent {item.body!r}"
            self.in_body = False
            self.eoms += 1
            if not item.keep_alive:
                self.client_closed = True
        elif isinstance(event, RequestError):
            bad = [i for i in effective if isinstance(i, BadPiece)]
            assert bad, f"{event!r} though every request sent is valid"
            assert event.status == bad[0].status, (
                f"{event!r} for {bad[0].kind}, not {bad[0].status}"
            )
            assert self.fed > bad[0].start, f"{event!r} before the bad piece"
            self.error = event
            note(f"request error {event.status}")
            self.in_body = False
        else:
            raise AssertionError(f"unknown event {event!r}")
        self.events.append(event)

    def _check_request(self, got: Request, sent: ClientMsg) -> None:
        assert got.method == sent.method, (got.method, sent.method)
        assert got.target == sent.target, (got.target, sent.target)
        path, _, query = sent.target.partition(b"?")
        assert (got.path, got.query) == (path, query), (got.path, got.query, sent.target)
        assert got.http_version == sent.version, (got.http_version, sent.version)
        assert got.headers == sent.headers, (got.headers, sent.headers)
        assert got.keep_alive is sent.keep_alive, (got, sent.headers, got.keep_alive)
        assert got.expect_continue is sent.expect_continue, (got, sent.headers)
        assert got.body_expected is sent.body_expected, (got, sent.headers)
        assert got.upgrade is False

    def _check_liveness(self) -> None:
        """Whatever is wholly fed has all its events out."""
        for i, item in enumerate(self.effective()):
            if isinstance(item, ClientMsg):
                if item.start + item.head_len <= self.fed:
                    assert len(self.requests) > i, (
                        f"head of request {i} fed, no Request: {item.raw!r}"
                    )
                if item.end <= self.fed:
                    assert self.eoms > i, f"request {i} fed, no END_OF_MESSAGE: {item.raw!r}"
            else:
                if self.fed >= item.end:
                    assert self.error is not None, f"{item.kind} fed, no RequestError"
                if self.fed <= item.start:
                    assert self.error is None

    def their_states(self) -> tuple[str, ...]:
        if self.closed:
            return (CLOSED,)
        if self.error is not None:
            return (ERROR,)
        if self.client_closed:
            return (MUST_CLOSE,)
        if self.in_body:
            return (SEND_BODY,)
        return (IDLE, DONE) if self.eoms else (IDLE,)

    # -- app -----------------------------------------------------------------------

    def answerable(self) -> bool:
        return (
            not self.dead
            and self.our is IDLE
            and (self.k < self.eoms or (self.early and self.k < len(self.requests)))
        )

    def record(self) -> Response:
        rec = self.responses.get(self.k)
        if rec is None:
            rec = self.responses[self.k] = Response(self.requests[self.k])
        return rec

    def emit(self, data: bytes) -> None:
        self.wire += data
        self.reader.feed(data)

    def refused(self, call: Any, before: str) -> None:
        with pytest.raises(ResponseError):
            call()
        assert self.conn.our_state is before, (
            f"a refused call moved our_state from {before} to {self.conn.our_state}"
        )

    def _final_head_model(
        self, status: Any, reason: Any, headers: list[Any], declared: int, whole: bool, body: bytes
    ) -> Response:
        """The model of an accepted final head."""
        request = self.requests[self.k]
        rec = self.record()
        rec.status = status
        rec.reason = reason_bytes(reason)
        rec.app_headers = app_view(headers)
        rec.no_body = request.method == "HEAD" or status in NO_BODY_STATUSES
        app_close = any(
            name.lower() == b"connection" and b"close" in value.lower() for name, value in headers
        )
        keep = request.keep_alive and not self.close_asked and not app_close
        if whole:
            if status in NO_BODY_STATUSES:
                rec.framing, rec.content_length = "none", None
            else:
                rec.framing = "length"
                if request.method == "HEAD":
                    rec.content_length = len(body) or max(declared, 0)
                else:
                    rec.content_length = len(body)
            if not rec.no_body:
                rec.body += body
        elif status in NO_BODY_STATUSES:
            rec.framing = "none"
        elif declared >= 0:
            rec.framing, rec.content_length = "length", declared
            if not rec.no_body:
                rec.left = declared
        elif rec.no_body:
            rec.framing = "none"
        elif request.http_version == "1.1":
            rec.framing = "chunked"
        else:
            rec.framing = "close"
            keep = False
        rec.head_keep_alive = keep
        return rec

    def _finished(self, rec: Response, cut: bool = False) -> None:
        """The response ended (or its end was refused, `cut`): check our_state."""
        rec.finished = True
        keep = rec.head_keep_alive and not self.close_asked and self.eoms >= self.k + 1 and not cut
        self.our = DONE if keep else MUST_CLOSE
        note(f"response ends: {self.our}{' (cut)' if cut else ''}")
        assert self.conn.our_state is self.our, (self.conn.our_state, self.our)
        assert self.conn.keep_alive is keep
        if keep or (not cut and rec.framing != "close"):
            # Self-delimited: the client has all of it now.
            assert rec.on_wire, (
                f"response {self.k} ended but is incomplete on the wire: {self.wire!r}"
            )
            assert self.reader.index == self.k + 1 and not self.reader.buffer

    def _head_checks(self, out: bytes, rec: Response, whole: bool) -> None:
        line, fields, rest = strict_head(out)
        if rec.reason is not None:
            assert line == b"HTTP/1.1 %d %b" % (rec.status, rec.reason)
        else:
            assert line.startswith(b"HTTP/1.1 %d " % rec.status)
        if whole:
            assert rest == bytes(rec.body), f"body {rest!r}, expected {bytes(rec.body)!r}"
        else:
            assert rest == b"", f"bytes after a streamed head: {rest!r}"
        assert (
            app_view([(n, v) for n, v in fields if n.lower() not in (b"date", b"server")])
            == rec.app_headers
        )

    # Rules without arguments come first in hypothesis's order, so its
    # simplest runs make progress: feed everything, answer, go on.
    @precondition(lambda self: self.fed < len(self.stream))
    @rule()
    def feed_rest(self) -> None:
        self.feed("rest", 0)

    def _final_head_case(
        self,
        status: Any,
        reason: Any,
        headers: Any,
        length: Any,
        body_length: int,
        bad: Any,
        where: int,
    ) -> tuple[Request, list[Any], int, bool]:
        """What a rule's final head is made of: the request it answers, its
        headers (the Content-Length case and any bad header inserted), the
        length it declares, and whether the core must refuse it, body aside."""
        request = self.requests[self.k]
        extra, declared, length_refused = content_length_headers(*length, body_length)
        all_headers = with_inserted(headers, extra + ([bad] if bad else []), where)
        self._check_checked_headers(all_headers, bad)
        refuse = (
            not final_status_ok(status)
            or not reason_ok(reason)
            or bad is not None
            or length_refused
        )
        return request, all_headers, declared, refuse

    @precondition(lambda self: self.answerable())
    @rule()
    def answer(self) -> None:
        self.respond_whole(
            200, None, [(b"Content-Type", b"text/plain")], ("none", 1), b"hello", None, 0
        )

    @precondition(lambda self: self.answerable())
    @rule(
        status=final_statuses,
        reason=reasons,
        headers=final_headers,
        length=content_lengths,
        body=bodies,
        bad=maybe_bad_header,
        where=st.integers(0, 1 << 12),
    )
    def respond_whole(
        self, status: Any, reason: Any, headers: Any, length: Any, body: bytes, bad: Any, where: int
    ) -> None:
        request, all_headers, declared, refuse = self._final_head_case(
            status, reason, headers, length, len(body), bad, where
        )
        refuse = refuse or (
            declared >= 0
            and declared != len(body)
            and (body or (request.method != "HEAD" and status not in NO_BODY_STATUSES))
        )
        before = self.conn.our_state
        if refuse:
            self.refused(
                lambda: self.conn.encode_response(request, status, all_headers, body, reason),
                before,
            )
            return
        out = self.conn.encode_response(request, status, all_headers, body, reason)
        rec = self._final_head_model(status, reason, all_headers, declared, True, body)
        self._head_checks(out, rec, whole=True)
        self.emit(out)
        self._finished(rec)

    @precondition(lambda self: self.answerable())
    @rule(
        status=final_statuses,
        reason=reasons,
        headers=final_headers,
        length=content_lengths,
        bad=maybe_bad_header,
        where=st.integers(0, 1 << 12),
    )
    def start_stream(
        self, status: Any, reason: Any, headers: Any, length: Any, bad: Any, where: int
    ) -> None:
        request, all_headers, declared, refuse = self._final_head_case(
            status, reason, headers, length, length[1] * 3, bad, where
        )
        before = self.conn.our_state
        if refuse:
            self.refused(
                lambda: self.conn.start_response(request, status, all_headers, reason), before
            )
            return
        out = self.conn.start_response(request, status, all_headers, reason)
        rec = self._final_head_model(status, reason, all_headers, declared, False, b"")
        self._head_checks(out, rec, whole=False)
        self.our = SEND_BODY
        assert self.conn.our_state is SEND_BODY
        self.emit(out)
        if rec.no_body or rec.framing == "none" or rec.left == 0:
            assert rec.on_wire, "a response without a body is not complete after its head"

    @precondition(lambda self: not self.dead and self.our is SEND_BODY)
    @rule(
        size=st.sampled_from(("rest", "rest", "one_less", "one_more", "any", "empty")),
        n=st.integers(0, 30),
        fill=st.binary(min_size=1, max_size=8),
    )
    def stream_piece(self, size: str, n: int, fill: bytes) -> None:
        rec = self.responses[self.k]
        left = rec.left if rec.left >= 0 else n
        length = {
            "rest": left,
            "one_less": max(left - 1, 0),
            "one_more": left + 1,
            "any": n,
            "empty": 0,
        }[size]
        data = (fill * (length // len(fill) + 1))[:length]
        if rec.framing == "length" and not rec.no_body and len(data) > rec.left:
            with pytest.raises(ResponseError):
                self.conn.encode_body(data)
            self.our = ERROR
            note("response refused: body over its Content-Length")
            assert self.conn.our_state is ERROR
            rec.finished = True
            rec.incomplete = rec.left > 0
            return
        out = self.conn.encode_body(data)
        if rec.no_body or not data:
            assert out == b"", f"body bytes {out!r} where none may be"
            return
        if rec.framing == "chunked":
            assert out == b"%x\r\n%b\r\n" % (len(data), data)
        else:
            assert out == data
            if rec.framing == "length":
                rec.left -= len(data)
        rec.body += data
        assert self.conn.our_state is SEND_BODY
        self.emit(out)

    @precondition(lambda self: not self.dead and self.our is SEND_BODY)
    @rule()
    def end_stream(self) -> None:
        rec = self.responses[self.k]
        if rec.framing == "length" and not rec.no_body and rec.left > 0:
            with pytest.raises(ResponseError):
                self.conn.end_response()
            assert self.conn.short_by == rec.left
            rec.incomplete = True
            self._finished(rec, cut=True)
            return
        out = self.conn.end_response()
        assert out == (b"0\r\n\r\n" if rec.framing == "chunked" else b"")
        self.emit(out)
        self._finished(rec)

    @precondition(lambda self: self.answerable())
    @rule(
        status=interim_statuses,
        headers=interim_headers,
        bad=maybe_bad_header,
        where=st.integers(0, 63),
    )
    def interim(self, status: Any, headers: Any, bad: Any, where: int) -> None:
        all_headers = with_inserted(headers, [bad] if bad else [], where)
        refuse = not interim_status_ok(status) or bad is not None
        before = self.conn.our_state
        if refuse:
            self.refused(lambda: self.conn.encode_informational(status, all_headers), before)
            return
        out = self.conn.encode_informational(status, all_headers)
        line, fields, rest = strict_head(out)
        assert line.startswith(b"HTTP/1.%d %d " % (1, status)), line
        assert rest == b""
        assert app_view(fields) == app_view(all_headers)
        assert self.conn.our_state is IDLE
        self.record().interim.append((status, app_view(all_headers)))
        self.emit(out)

    @precondition(lambda self: self.answerable())
    @rule(
        which=st.sampled_from(("whole", "stream", "interim")),
        what=st.sampled_from(("header", "status", "reason")),
        bad_header=st.sampled_from(BAD_HEADERS),
        bad_status=st.sampled_from(BAD_FINAL + BAD_INTERIM),
        bad_reason=st.sampled_from(BAD_REASONS),
        headers=interim_headers,
        where=st.integers(0, 63),
    )
    def refused_head(
        self,
        which: str,
        what: str,
        bad_header: Any,
        bad_status: Any,
        bad_reason: Any,
        headers: Any,
        where: int,
    ) -> None:
        request = self.requests[self.k]
        status: Any = 100 if which == "interim" else 200
        reason = None
        if what == "header":
            headers = with_inserted(headers, [bad_header], where)
        elif what == "status":
            status = bad_status
        else:
            reason = bad_reason
        if which == "whole":
            refuse = what != "status" or not final_status_ok(status)
            call = lambda: self.conn.encode_response(request, status, headers, b"body", reason)  # noqa: E731
        elif which == "stream":
            refuse = what != "status" or not final_status_ok(status)
            call = lambda: self.conn.start_response(request, status, headers, reason)  # noqa: E731
        else:
            refuse = what == "header" or not interim_status_ok(status)
            call = lambda: self.conn.encode_informational(status, headers)  # noqa: E731
        if refuse:
            self.refused(call, self.conn.our_state)

    def _check_checked_headers(self, headers: list[Any], bad: Any) -> None:
        """`checked_headers` refuses exactly the lists with a bad field."""
        bad_field = bad is not None and not (
            isinstance(bad[0], bytes)
            and bad[0].lower() == b"content-length"
            and re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", bad[1]) is None
        )
        if bad_field:
            with pytest.raises(ResponseError):
                checked_headers(headers)
        else:
            assert checked_headers(headers) == [tuple(pair) for pair in headers]

    @precondition(lambda self: self.drain and not self.close_asked and not self.dead)
    @rule()
    def close_after_response(self) -> None:
        self.conn.close_after_response()
        self.close_asked = True
        assert self.conn.keep_alive is False

    @precondition(lambda self: not self.dead and self.our in (DONE, MUST_CLOSE, ERROR))
    @rule()
    def next_cycle(self) -> None:
        if self.our is DONE:
            self.conn.start_next_cycle()
            self.our = IDLE
            self.k += 1
            assert self.conn.our_state is IDLE
        else:
            self.refused(self.conn.start_next_cycle, self.our)
            self.die()

    @precondition(lambda self: not self.dead)
    @rule(call=st.sampled_from(CALLS), which=st.integers(0, 3))
    def out_of_turn(self, call: str, which: int) -> None:
        """A call the current state does not allow: refused, nothing changes."""
        allowed = {
            IDLE: {"encode_response", "start_response", "encode_informational"},
            SEND_BODY: {"encode_body", "end_response"},
            DONE: {"start_next_cycle"},
            MUST_CLOSE: {"start_next_cycle"},  # `next_cycle` tries it
            ERROR: {"start_next_cycle"},
        }
        if call in allowed[self.our]:
            return
        # Any request will do, the one being answered or another: refused all the same.
        request = self.requests[which % len(self.requests)] if self.requests else DUMMY
        self.refused(self._call(call, request), self.conn.our_state)

    def _call(self, call: str, request: Request) -> Any:
        conn = self.conn
        return {
            "encode_body": lambda: conn.encode_body(b"x"),
            "end_response": conn.end_response,
            "start_next_cycle": conn.start_next_cycle,
            "encode_response": lambda: conn.encode_response(request, 200, [], b"x"),
            "start_response": lambda: conn.start_response(request, 200, []),
            "encode_informational": lambda: conn.encode_informational(103),
        }[call]

    @precondition(lambda self: self.hang_up and not self.closed)
    @rule()
    def close(self) -> None:
        self.hang_up = False  # once a run
        self.conn.close()
        self.closed = True
        self.our = CLOSED
        if not self.dead:
            self.die(gone=True)

    def die(self, gone: bool = False) -> None:
        """The connection is over: the client sees it end. Then it reconnects."""
        self.dead = True
        note("connection closed by close()" if gone else f"connection ends after {self.our}")
        self._check_the_end(gone)
        # Nothing goes out of a connection that is over, whatever is called.
        before = self.conn.our_state
        request = self.requests[-1] if self.requests else DUMMY
        for call in CALLS:
            try:
                out = self._call(call, request)()
            except ResponseError:
                out = b""
            assert out in (b"", None), f"{call} emitted {out!r} on a connection that is over"
            assert self.conn.our_state is before, f"{call} moved {before} to {self.conn.our_state}"
        if self.closed:
            assert self.conn.their_state is CLOSED
            assert self.conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == []
        self._new_connection()

    def _check_the_end(self, gone: bool) -> None:
        ending = self.reader.end()
        rec = self.responses.get(self.k)
        earlier_done = self.k if rec is None or not rec.on_wire else self.k + 1
        assert self.reader.index >= earlier_done, f"a response before {self.k} is incomplete"
        if rec is None or (gone and not rec.finished):
            return  # cut off by close(): anything may be missing
        if rec.incomplete:
            assert not rec.on_wire and ending == "broken", (
                f"response {self.k} was cut short but reads as complete: {self.wire!r}"
            )
        elif rec.finished:
            assert rec.on_wire, f"response {self.k} incomplete at the end ({ending}): {self.wire!r}"

    def response_on_wire(self, index: int, events: list[Any]) -> None:
        """The independent parser read response `index` whole: is it the model's?"""
        rec = self.responses.get(index)
        assert rec is not None and rec.status is not None, f"response {index} was never given"
        infos = [e for e in events if type(e) is h11.InformationalResponse]
        finals = [e for e in events if type(e) is h11.Response]
        assert [(e.status_code, app_view(list(e.headers))) for e in infos] == rec.interim
        assert len(finals) == 1, events
        final = finals[0]
        assert final.status_code == rec.status, (final, rec)
        if rec.reason is not None:
            assert final.reason == rec.reason, (final.reason, rec.reason)
        headers = list(final.headers)
        for name, value in headers:
            assert MARK.lower() not in name.lower() + value.lower(), (
                f"refused bytes on the wire: {name!r}: {value!r}"
            )
        assert [n for n, _ in headers[:2]] == [b"date", b"server"], headers
        assert app_view(headers[2:]) == rec.app_headers, (headers, rec.app_headers)
        lengths = [v for n, v in headers if n == b"content-length"]
        codings = [v for n, v in headers if n == b"transfer-encoding"]
        connection = [v for n, v in headers if n == b"connection"]
        expected_length = [] if rec.content_length is None else [b"%d" % rec.content_length]
        assert lengths == expected_length, (lengths, rec)
        assert codings == ([b"chunked"] if rec.framing == "chunked" else []), (codings, rec)
        if not rec.head_keep_alive:
            assert connection == [b"close"], (connection, rec)
        elif rec.request.http_version == "1.0":
            assert connection == [b"keep-alive"], (connection, rec)
        else:
            assert connection == [], (connection, rec)
        body = b"".join(bytes(e.data) for e in events if type(e) is h11.Data)
        assert body == bytes(rec.body), f"response {index} body {body!r}, sent {bytes(rec.body)!r}"
        if rec.no_body:
            assert body == b""
        if rec.content_length is not None and not rec.no_body:
            assert len(body) == rec.content_length
        rec.on_wire = True
        note(f"read back: {rec.framing} framing, HTTP/{rec.request.http_version}")
        if rec.no_body:
            note(
                "read back: no body (HEAD)"
                if rec.request.method == "HEAD"
                else f"read back: {rec.status}"
            )
        if rec.interim:
            note("read back: with interim responses")
        if index:
            note("read back: a response after the first")

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def states(self) -> None:
        our, their = self.conn.our_state, self.conn.their_state
        assert any(our is s for s in STATES), our
        assert any(their is s for s in STATES), their
        assert our is self.our, f"our_state {our}, the model says {self.our}"
        assert their in self.their_states(), (
            f"their_state {their}, the model says {self.their_states()}"
        )
        last_our, last_their = self.last_states
        assert our in OUR_MOVES[last_our], f"our_state moved {last_our} -> {our}"
        assert their in THEIR_MOVES[last_their], f"their_state moved {last_their} -> {their}"
        self.last_states = (our, their)

    def teardown(self) -> None:
        if not self.dead and self.our in (MUST_CLOSE, ERROR):
            self.refused(self.conn.start_next_cycle, self.our)
            self.die()


DUMMY = Request("GET", b"/", "1.1", [(b"host", b"x")], True)

CoreMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCoreStateMachine = CoreMachine.TestCase


# -- regressions: the smallest failing examples the machine led to -------------------


def _one_request(
    raw: bytes = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
) -> tuple[ServerConnection, Request]:
    conn = ServerConnection()
    events = conn.receive_data(raw)
    assert events[1:] == [END_OF_MESSAGE]
    request = events[0]
    assert isinstance(request, Request)
    return conn, request


def test_whole_response_declared_length_without_body() -> None:
    """A declared Content-Length with no body would make the next response its body."""
    conn, request = _one_request()
    with pytest.raises(ResponseError):
        conn.encode_response(request, 200, [(b"Content-Length", b"10")], b"")
    assert conn.our_state is IDLE
    # HEAD and 304 announce a length they do not send.
    out = conn.encode_response(request, 304, [(b"Content-Length", b"10")], b"")
    assert out.endswith(b"\r\n\r\n") and b"content-length" not in out.lower()


def test_head_end_split_after_a_short_read() -> None:
    """A blank line split over two one-byte reads, after a read that ended a message."""
    conn = ServerConnection()
    pipelined = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n"
    assert len(conn.receive_data(pipelined)) == 2
    events = conn.receive_data(b"\r") + conn.receive_data(b"\n")
    assert [type(e) for e in events] == [Request, type(END_OF_MESSAGE)]


def test_empty_read_in_a_body() -> None:
    conn = ServerConnection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
    assert conn.receive_data(b"") == []
    assert conn.receive_data(b"cde") == [Data(b"cde"), END_OF_MESSAGE]


@pytest.mark.parametrize(
    "header", [(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked"), (b"Connection", b"x")]
)
def test_interim_response_with_framing_headers(header: tuple[bytes, bytes]) -> None:
    """RFC 9110 15.2: a 1xx has no content, so no framing."""
    conn, _ = _one_request()
    with pytest.raises(ResponseError):
        conn.encode_informational(103, [header])
    assert conn.encode_informational(103, [(b"Link", b"</a.css>")]).startswith(b"HTTP/1.1 103 ")


def test_bytes_like_header_name_or_reason() -> None:
    conn, request = _one_request()
    assert checked_headers([(bytearray(b"X-A"), b"1")]) == [(bytearray(b"X-A"), b"1")]
    with pytest.raises(ResponseError):
        checked_headers([(bytearray(b"X-A\r\n"), b"1")])
    out = conn.encode_response(request, 200, [(bytearray(b"X-A"), b"1")], b"", bytearray(b"Fine"))
    assert out.startswith(b"HTTP/1.1 200 Fine\r\n") and b"\r\nX-A: 1\r\n" in out


@pytest.mark.parametrize("headers", [[(b"X-A", b"1", b"2")], [b"X-A"], None, [(b"X-A", 1)]])
def test_malformed_header_list_is_refused(headers: Any) -> None:
    conn, request = _one_request()
    with pytest.raises(ResponseError):
        checked_headers(headers)
    with pytest.raises(ResponseError):
        conn.start_response(request, 200, headers)
    assert conn.our_state is IDLE
