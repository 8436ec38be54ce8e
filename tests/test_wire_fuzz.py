"""Wire fuzzing: random bytes and mutated valid requests against a real squall.

One worker (`--workers 1`, short timeouts) serves `tests.apps.wire:app`. Each
hypothesis example opens a raw socket, sends its bytes in one write (and, half
the time, half-closes), then reads whatever comes back until the server closes
or stays quiet for a moment. Whatever arrived must be a sequence of complete,
well-formed HTTP/1.1 responses (checked with httptools' response parser), each
1xx, 2xx or 4xx, and never more final responses than the requests squall's own
parser finds in the bytes (plus one error). After each example the same worker
answers `GET /pid` on a fresh connection and the service log shows no error.

Responses to HEAD carry a Content-Length but no body, which a response parser
cannot know, so examples in which a HEAD request parses are rejected (HEAD on
the wire is covered in tests/test_http_wire.py).
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httptools
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from squall.http.core import Request, RequestError, ServerConnection
from tests.test_http_core import VALID
from tests.test_http_wire import Server, serve

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
QUIET = 0.3  # seconds of silence after which a connection that stays open is done
READ_LIMIT = 4.0  # seconds: the longest any example reads
SEEDS = [case.data for case in VALID]
LOG_SIGNS = ("Traceback", "Fatal error", "ERROR", "CRITICAL")


# -- reading and checking responses ----------------------------------------------------


@dataclass
class Message:
    status: int = 0
    version: str = ""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def close_delimited(self) -> bool:
        chunked = b"chunked" in (self.header(b"transfer-encoding") or b"").lower()
        return not chunked and self.header(b"content-length") is None


class ResponseReader:
    """httptools callbacks: every response in a byte stream, with its framing state."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.parser = httptools.HttpResponseParser(self)
        self.upgraded = False

    def on_message_begin(self) -> None:
        self.messages.append(Message())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.messages[-1].headers.append((name, value))

    def on_headers_complete(self) -> None:
        message = self.messages[-1]
        message.status = self.parser.get_status_code()
        message.version = self.parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        self.messages[-1].body += body

    def on_message_complete(self) -> None:
        self.messages[-1].complete = True


def parse_responses(data: bytes, closed: bool) -> list[Message]:
    """The responses in `data`; AssertionError unless every one is whole and well-formed.

    `closed`: the server ended the connection after `data`, which completes a
    response framed by the close (no Content-Length, not chunked).
    """
    reader = ResponseReader()
    try:
        reader.parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        reader.upgraded = True  # a 101: what follows is another protocol
    except httptools.HttpParserError as exc:
        raise AssertionError(f"malformed response stream ({exc}): {data[:500]!r}") from None
    messages = reader.messages
    for index, message in enumerate(messages):
        last = index == len(messages) - 1
        if not message.complete:
            if reader.upgraded and last and message.status == 101:
                continue
            assert last and closed and message.status and message.close_delimited, (
                f"incomplete response {message} in {data[:500]!r}"
            )
        assert message.version == "1.1", f"response version {message.version!r}: {data[:500]!r}"
    return messages


def test_parse_responses_accepts_well_formed_streams() -> None:
    stream = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    messages = parse_responses(stream, closed=True)
    assert [m.status for m in messages] == [100, 200, 200, 400]
    assert [m.body for m in messages] == [b"", b"ok", b"abc", b""]
    assert parse_responses(b"HTTP/1.1 200 OK\r\n\r\nto the end", closed=True)[0].body == (
        b"to the end"
    )
    assert parse_responses(b"", closed=True) == []


@pytest.mark.parametrize(
    ("stream", "closed"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok", True),  # body cut short
        (b"HTTP/1.1 200 OK\r\ncontent-le", True),  # head cut short
        (b"HTTP/1.1 200 OK\r\n\r\nto the end", False),  # close-delimited, not closed
        (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", True),  # not 1.1
        (b"garbage\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", True),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            True,
        ),  # a response after the one that said close
    ],
)
def test_parse_responses_rejects_broken_streams(stream: bytes, closed: bool) -> None:
    with pytest.raises(AssertionError):
        parse_responses(stream, closed)


def exchange(port: int, payload: bytes, half_close: bool) -> tuple[bytes, bool]:
    """Send `payload`, read until close or a quiet spell; (bytes received, closed)."""
    received = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=READ_LIMIT) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + READ_LIMIT
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], min(QUIET, left))
            if not ready:
                break  # quiet: the server waits for more, or keeps the connection alive
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                closed = True
                break
            received += chunk
    return received, closed


def requests_in(payload: bytes) -> tuple[list[Request], bool]:
    """What squall's parser makes of `payload`: its requests and whether an error ends it."""
    events = ServerConnection().receive_data(payload)
    requests = [event for event in events if isinstance(event, Request)]
    return requests, any(isinstance(event, RequestError) for event in events)


# -- the service ------------------------------------------------------------------------


@dataclass
class FuzzTarget:
    server: Server
    pid: int

    def check_worker(self, log_start: int, context: bytes) -> None:
        assert self.server.pid() == self.pid, f"the worker was replaced after {context[:300]!r}"
        assert self.server.service.workers() == [self.pid]
        with open(self.server.service.log_path, "rb") as log:
            log.seek(log_start)
            output = log.read().decode(errors="replace")
        for sign in LOG_SIGNS:
            assert sign not in output, f"after {context[:300]!r}:\n{output}"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    with serve(
        tmp_path_factory,
        "fuzz",
        "--workers",
        "1",
        "--keepalive-timeout",
        "2",
        "--header-timeout",
        "2",
        "--body-timeout",
        "2",
    ) as srv:
        srv.service.wait_for_workers(1)
        pid = srv.pid()
        assert srv.service.workers() == [pid]
        yield FuzzTarget(srv, pid)


# -- payloads --------------------------------------------------------------------------------

TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b" ",
    b"\t",
    b":",
    b"\x00",
    b"\xff",
    b"0",
    b"-1",
    b"ffffffffffffffffff",
    b";ext=1",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: identity\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b"Host: x\r\n",
    b" folded\r\n",
    b"0\r\n\r\n",
    b"5\r\nhello\r\n",
    b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.0",
    b"HTTP/1.1",
    b"HTTP/2.0",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(
            st.sampled_from(["flip", "insert", "token", "delete", "dup", "cut", "lf", "join"])
        )
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "dup":
            data[at:at] = data[at : at + draw(st.integers(1, 32))]
        elif op == "cut":
            del data[at:]
        elif op == "lf":
            data = bytearray(bytes(data).replace(b"\r\n", b"\n", draw(st.integers(1, 3))))
        elif op == "join":
            data += draw(st.sampled_from(SEEDS))
    return bytes(data)


payloads = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(TOKENS), max_size=12).map(b"".join),
    mutated(),
    mutated(),
    mutated(),
)


# -- the fuzz test ------------------------------------------------------------------------------


@FUZZ
@given(payload=payloads, half_close=st.booleans())
def test_wire_fuzz(target: FuzzTarget, payload: bytes, half_close: bool) -> None:
    requests, errored = requests_in(payload)
    # A response to HEAD cannot be framed by a response parser alone (see above).
    assume(all(request.method != "HEAD" for request in requests))
    log_start = target.server.service.log_path.stat().st_size
    received, closed = exchange(target.server.port, payload, half_close)
    messages = parse_responses(received, closed)
    finals = [m for m in messages if m.status >= 200 or m.status == 101]
    for message in messages:
        assert (
            message.status in (100, 101)
            or 200 <= message.status < 300
            or (400 <= message.status < 500)
            or message.status == 501  # a well-formed request line with an unknown method
        ), f"status {message.status} for {payload[:300]!r}: {received[:500]!r}"
    # No answer to anything squall's parser did not see as a request.
    assert len(finals) <= len(requests) + int(errored), (payload, received[:1000])
    for message in messages:
        if message.header(b"connection") and b"close" in message.header(b"connection").lower():
            assert message is messages[-1], (payload, received[:1000])
    target.check_worker(log_start, payload)


def test_seeds_are_served(target: FuzzTarget) -> None:
    # The unmutated corpus: every request gets a final response, none a 5xx.
    for seed in SEEDS:
        requests, errored = requests_in(seed)
        assert not errored
        if any(request.method == "HEAD" for request in requests):
            continue
        log_start = target.server.service.log_path.stat().st_size
        received, closed = exchange(target.server.port, seed, half_close=True)
        messages = parse_responses(received, closed)
        finals = [m for m in messages if m.status >= 200 or m.status == 101]
        assert finals, (seed, received)
        assert all(m.status < 500 for m in messages), (seed, received)
        target.check_worker(log_start, seed)
