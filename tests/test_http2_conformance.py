"""HTTP/2 conformance, frame by frame: raw sockets against a real squall (`--h2c`).

One squall (`--workers 1 --h2c`, tests/apps/h2_conformance_app.py) serves the
module. Each test opens its own connection with `H2Client`, which speaks the
h2c preface over a plain socket, builds frames with hyperframe and header
blocks with hpack, and reads the server's frames back the same way, so
nothing a client library would hide goes unseen. The cases follow h2spec's
groups, numbered as in RFC 9113 (field compression: RFC 7541), and assert
what the RFC says the server does: the GOAWAY code of a connection error
(5.4.1), the RST_STREAM code of a stream error (5.4.2) or either one where
the RFC allows both, and the response otherwise.

After every test a fresh connection must still get a 200 from the same worker
(its pid, recorded at the start) and the log must hold no traceback: a
protocol error ends a connection or a stream, never the worker.

Every read has a deadline (`TIMEOUT`); "the server sends nothing more" is
asserted over `QUIET` seconds.
"""

from __future__ import annotations

import contextlib
import enum
import json
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.apps.h2_conformance_app import pattern
from tests.service import Service, running_squall

APP = "tests.apps.h2_conformance_app:app"
TIMEOUT = 3.0  # any single wait for the server
QUIET = 0.3  # how long "nothing more arrives" is watched
SETTLE = 1.0  # how long a window the server stopped opening must stay shut
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_FRAME = 16384

# Frame types (RFC 9113 6) and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
UNKNOWN_TYPE = 0xFA
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8

# Settings (RFC 9113 6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

#: RFC 9113 8.2.2: fields an HTTP/2 message must not carry.
CONNECTION_SPECIFIC = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
}


class Code(enum.IntEnum):
    """Error codes (RFC 9113 7), defined here so the test does not lean on the server's library."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def code_name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return hex(code)


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame as bytes, whatever its length or stream: for the frames hyperframe will not build."""
    header = struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id)
    return header + payload


def hpack_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 5.1: `value` with an N-bit prefix, `first` holding the bits above it."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def parse_frames(data: bytes) -> list[Frame]:
    """The whole frames in `data`, parsed as the server framed them."""
    frames: list[Frame] = []
    view = memoryview(data)
    while len(view) >= 9:
        frame, length = Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


# -- a raw HTTP/2 client -----------------------------------------------------------


@dataclass
class StreamRecord:
    """What the server sent on one stream."""

    headers: list[tuple[str, str]] | None = None
    trailers: list[tuple[str, str]] | None = None
    data: bytearray = field(default_factory=bytearray)
    data_frames: list[int] = field(default_factory=list)  # each DATA frame's payload size
    ended: bool = False
    reset: int | None = None

    @property
    def closed(self) -> bool:
        return self.ended or self.reset is not None

    @property
    def status(self) -> int | None:
        value = self.header(":status")
        return None if value is None else int(value)

    def header(self, name: str) -> str | None:
        for key, value in self.headers or ():
            if key == name:
                return value
        return None

    def json(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(bytes(self.data))
        return loaded


class H2Client:
    """One HTTP/2 connection over a raw socket: frames out, frames in, bounded waits.

    The server's frames are kept in order (`frames`) and folded into what a
    test asks about: each stream's response (`streams`), the GOAWAY, PING
    acknowledgements, SETTINGS acknowledgements and the send windows the
    server grants. Its SETTINGS are acknowledged and, unless `auto_window` is
    off, the DATA it sends is given back as window at once.
    """

    def __init__(self, port: int, timeout: float = TIMEOUT) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.timeout = timeout
        self.buffer = bytearray()
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.frames: list[Frame] = []
        self.streams: dict[int, StreamRecord] = {}
        self.server_settings: dict[int, int] = {}
        self.settings_acks = 0
        self.ping_acks: list[bytes] = []
        self.goaway: GoAwayFrame | None = None
        self.closed = False
        self.auto_window = True
        self.ack_pings = True  # off: a client that never answers the server's PING
        self.window_updates = 0
        self._acking = False  # SETTINGS are acknowledged once our own preface went
        self._unacked = 0
        self._block: list[HeadersFrame | ContinuationFrame] = []
        self._send_windows: dict[int, int] = {0: DEFAULT_WINDOW}

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    # -- out -------------------------------------------------------------------

    def handshake(self, settings: dict[int, int] | None = None, magic: bool = True) -> H2Client:
        """Our preface (`magic`: its first 24 octets too) and SETTINGS; returns once the
        server's SETTINGS came and ours are ACKed."""
        start = PREFACE if magic else b""
        self.send_raw(start + SettingsFrame(0, settings or {}).serialize())
        self._acking = True
        for _ in range(self._unacked):
            self.send(SettingsFrame(0, flags=["ACK"]))
        self._unacked = 0
        self.wait(lambda: self.settings_acks > 0, "the server's ACK of our SETTINGS")
        first = self.frames[0]
        assert isinstance(first, SettingsFrame) and "ACK" not in first.flags, (
            f"the server's connection preface must begin with SETTINGS (RFC 9113 3.4), got {first}"
        )
        return self

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, *frames: Frame) -> None:
        self.send_raw(b"".join(frame.serialize() for frame in frames))

    def block(self, fields: Sequence[tuple[str, str]]) -> bytes:
        """A header block of `fields`, as given (no lower-casing, no checks)."""
        return self.encoder.encode(list(fields), huffman=False)

    def headers(
        self,
        stream_id: int,
        fields: Sequence[tuple[str, str]],
        *,
        end_stream: bool = True,
        end_headers: bool = True,
    ) -> HeadersFrame:
        flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
        return HeadersFrame(stream_id, data=self.block(fields), flags=flags)

    def request_fields(
        self, path: str = "/", method: str = "GET", extra: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        port = self.sock.getpeername()[1]
        fields = [(":method", method), (":scheme", "http"), (":path", path)]
        return [*fields, (":authority", f"127.0.0.1:{port}"), *extra]

    def request(
        self,
        stream_id: int,
        path: str = "/",
        method: str = "GET",
        *,
        extra: Sequence[tuple[str, str]] = (),
        end_stream: bool = True,
    ) -> None:
        fields = self.request_fields(path, method, extra)
        self.send(self.headers(stream_id, fields, end_stream=end_stream))

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """DATA, counted against the windows the server granted."""
        self._send_windows[0] -= len(data)
        self._send_windows[stream_id] = self.send_window(stream_id) - len(data)
        self.send(DataFrame(stream_id, data, flags=["END_STREAM"] if end_stream else []))

    def send_window(self, stream_id: int) -> int:
        """What the server lets us send on `stream_id` (0: the connection) as far as we know."""
        if stream_id in self._send_windows:
            return self._send_windows[stream_id]
        return self.server_settings.get(INITIAL_WINDOW_SIZE, DEFAULT_WINDOW)

    def get(self, stream_id: int, path: str = "/", method: str = "GET") -> StreamRecord:
        """A request without a body, and its whole response."""
        self.request(stream_id, path, method)
        return self.response(stream_id)

    def response(self, stream_id: int, timeout: float = TIMEOUT) -> StreamRecord:
        record = self.stream(stream_id)
        self.wait(lambda: record.closed, f"the end of stream {stream_id}", timeout)
        assert record.reset is None, (
            f"stream {stream_id} reset with {code_name(record.reset)}: {self.summary()}"
        )
        return record

    def ping(self, payload: bytes = b"pingpong") -> None:
        """A PING round trip: the connection is alive and in order."""
        self.send(PingFrame(0, opaque_data=payload))
        self.wait(lambda: payload in self.ping_acks, f"the ACK of PING {payload!r}")

    # -- in --------------------------------------------------------------------

    def stream(self, stream_id: int) -> StreamRecord:
        return self.streams.setdefault(stream_id, StreamRecord())

    def poll(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Read until `condition` holds (True), or the connection closes or time is up (False)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.closed or not self._fill(deadline):
                return condition()
        return True

    def poll_window_update(self, timeout: float) -> bool:
        """Whether a WINDOW_UPDATE arrives within `timeout` seconds."""
        seen = self.window_updates
        return self.poll(lambda: self.window_updates > seen, timeout)

    def wait(self, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        if self.poll(condition, timeout):
            return
        state = "the connection closed" if self.closed else f"nothing within {timeout} s"
        raise AssertionError(f"waiting for {what}: {state}; the server sent {self.summary()}")

    def drain(self, duration: float = QUIET) -> None:
        """Read whatever comes for `duration` seconds."""
        self.poll(lambda: False, duration)

    def wait_closed(self, timeout: float = TIMEOUT) -> None:
        """The server closes the connection (RFC 9113 5.4.1: after a connection error)."""
        self.wait(lambda: self.closed, "the server to close the connection", timeout)

    def read_raw_until_closed(self, timeout: float = TIMEOUT) -> bytes:
        """Every byte the server sends until it closes, unparsed; AssertionError if it never does."""
        deadline = time.monotonic() + timeout
        data = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"the server kept the connection open; it sent {bytes(data)!r}"
                )
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.closed = True
                return bytes(data)
            data += chunk

    def _fill(self, deadline: float) -> bool:
        """Read once and handle the whole frames that arrived; False when time is up."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
        self.buffer += chunk
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self.buffer[:9])))
            if len(self.buffer) < 9 + length:
                break
            frame.parse_body(memoryview(bytes(self.buffer[9 : 9 + length])))
            del self.buffer[: 9 + length]
            self._handle(frame)
        return True

    def _send_quietly(self, *frames: Frame) -> None:
        """An automatic reply: the server may have closed meanwhile."""
        with contextlib.suppress(OSError):
            self.send(*frames)

    def _handle(self, frame: Frame) -> None:
        self.frames.append(frame)
        if self._block:
            assert (
                isinstance(frame, ContinuationFrame) and frame.stream_id == self._block[0].stream_id
            ), f"the server broke a header block with {frame} (RFC 9113 4.3)"
        if isinstance(frame, SettingsFrame):
            if "ACK" in frame.flags:
                self.settings_acks += 1
            else:
                self.server_settings.update(frame.settings)
                if self._acking:
                    self._send_quietly(SettingsFrame(0, flags=["ACK"]))
                else:
                    self._unacked += 1
        elif isinstance(frame, (HeadersFrame, ContinuationFrame)):
            self._block.append(frame)
            if "END_HEADERS" in frame.flags:
                self._header_block()
        elif isinstance(frame, DataFrame):
            record = self.stream(frame.stream_id)
            record.data += frame.data
            record.data_frames.append(len(frame.data))
            record.ended = "END_STREAM" in frame.flags
            size = frame.flow_controlled_length
            if self.auto_window and size:
                updates: list[Frame] = [WindowUpdateFrame(0, size)]
                if not record.ended:
                    updates.append(WindowUpdateFrame(frame.stream_id, size))
                self._send_quietly(*updates)
        elif isinstance(frame, RstStreamFrame):
            self.stream(frame.stream_id).reset = frame.error_code
        elif isinstance(frame, GoAwayFrame):
            self.goaway = frame
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.ping_acks.append(bytes(frame.opaque_data))
            elif self.ack_pings:
                self._send_quietly(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, WindowUpdateFrame):
            self.window_updates += 1
            sid = frame.stream_id
            self._send_windows[sid] = self.send_window(sid) + frame.window_increment

    def _header_block(self) -> None:
        first = self._block[0]
        data = b"".join(bytes(part.data) for part in self._block)
        self._block = []
        fields = [(str(name), str(value)) for name, value in self.decoder.decode(data)]
        names = [name for name, _ in fields]
        assert all(name == name.lower() for name in names), (
            f"field names must be lowercase (RFC 9113 8.2): {names}"
        )
        assert not CONNECTION_SPECIFIC & set(names), (
            f"connection-specific fields in a response (RFC 9113 8.2.2): {names}"
        )
        pseudo = [name.startswith(":") for name in names]
        assert pseudo == sorted(pseudo, reverse=True), (
            f"pseudo-header fields must come first (RFC 9113 8.3): {names}"
        )
        record = self.stream(first.stream_id)
        if record.headers is None or (record.status or 0) < 200:
            record.headers = fields
        else:
            record.trailers = fields
        if "END_STREAM" in first.flags:
            record.ended = True

    def summary(self) -> str:
        """The frames received so far, briefly, for an assertion's message."""
        parts = []
        for frame in self.frames[-20:]:
            name = type(frame).__name__.replace("Frame", "")
            if isinstance(frame, (GoAwayFrame, RstStreamFrame)):
                name += f"({code_name(frame.error_code)})"
            parts.append(f"{name}@{frame.stream_id}")
        more = f"... ({len(self.frames) - 20} earlier) " if len(self.frames) > 20 else ""
        closed = ", then closed" if self.closed else ""
        return f"[{more}{', '.join(parts)}]{closed}"

    # -- what the RFC says must happen ---------------------------------------------------

    def expect_connection_error(self, *codes: Code) -> None:
        """RFC 9113 5.4.1: GOAWAY with one of `codes`, then the server closes the connection."""
        self.wait(lambda: self.goaway is not None, f"GOAWAY {'/'.join(c.name for c in codes)}")
        assert self.goaway is not None
        assert self.goaway.error_code in codes, (
            f"GOAWAY {code_name(self.goaway.error_code)}, expected "
            f"{'/'.join(c.name for c in codes)}: {self.summary()}"
        )
        self.wait_closed()

    def expect_stream_error(self, stream_id: int, *codes: Code) -> None:
        """RFC 9113 5.4.2: RST_STREAM on `stream_id` with one of `codes`, the connection
        going on; or, as an endpoint may always end the connection instead
        (5.4.1), GOAWAY with one of them and the close."""
        record = self.stream(stream_id)
        names = "/".join(c.name for c in codes)
        self.wait(
            lambda: record.reset is not None or self.goaway is not None,
            f"RST_STREAM {names} on stream {stream_id} (or GOAWAY {names})",
        )
        if record.reset is not None:
            assert record.reset in codes, (
                f"RST_STREAM {code_name(record.reset)} on stream {stream_id}, expected {names}"
            )
            self.ping(b"after-rs")  # a stream error leaves the connection usable
        else:
            self.expect_connection_error(*codes)

    def expect_malformed(self, stream_id: int) -> None:
        """RFC 9113 8.1.1: a malformed request is a stream error PROTOCOL_ERROR (a
        connection error accepted too); the server MAY answer it first, and 8.2.1
        says with 400. It must never reach the app, which would answer 200."""
        record = self.stream(stream_id)
        self.wait(
            lambda: record.closed or self.goaway is not None,
            f"PROTOCOL_ERROR or a 400 for malformed stream {stream_id}",
        )
        if record.reset is None and self.goaway is None:
            assert record.status == 400, (
                f"a malformed request was answered {record.status}, not refused: {self.summary()}"
            )
            return
        if record.headers is not None:
            assert record.status == 400, f"a malformed request was answered {record.status}"
        self.expect_stream_error(stream_id, Code.PROTOCOL_ERROR)


# -- the server ------------------------------------------------------------------------


@dataclass
class Server:
    service: Service
    port: int
    pid: int

    def client(self) -> H2Client:
        return H2Client(self.port)

    def connect(self, settings: dict[int, int] | None = None) -> H2Client:
        """A connection past its preface (ours ACKed)."""
        client = H2Client(self.port)
        try:
            return client.handshake(settings)
        except BaseException:
            client.sock.close()
            raise


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_dir = tmp_path_factory.mktemp("h2-conformance")
    with running_squall(log_dir, APP, "--h2c", workers=1) as (service, port):
        (worker,) = service.workers()
        with H2Client(port) as client:
            record = client.handshake().get(1)
        assert record.status == 200
        pid = record.json()["pid"]
        assert pid == worker, f"the app answered from pid {pid}, the worker is {worker}"
        yield Server(service, port, worker)


@pytest.fixture(autouse=True)
def worker_survives(server: Server) -> Iterator[None]:
    """After each case: a fresh connection gets a 200 from the same worker, and nothing crashed."""
    logged = len(server.service.output())
    yield
    with server.connect() as client:
        record = client.get(1)
    assert record.status == 200
    assert record.json()["pid"] == server.pid, "the worker was replaced"
    assert server.service.workers() == [server.pid]
    log = server.service.output()[logged:]
    assert "Traceback" not in log, f"the server logged a traceback:\n{log}"


# -- 3.4 HTTP/2 connection preface ----------------------------------------------------------


def test_server_preface_is_settings_and_does_not_wait(server: Server) -> None:
    """3.4: the server's preface is a SETTINGS frame, sent without waiting for the client's."""
    with server.client() as client:
        client.send_raw(PREFACE)
        client.wait(lambda: bool(client.frames), "the server's first frame")
        first = client.frames[0]
        assert isinstance(first, SettingsFrame)
        assert "ACK" not in first.flags
        client.handshake(magic=False)  # our SETTINGS after theirs: still a good preface
        assert client.get(1).status == 200


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"], id="bad-magic"),
        pytest.param([b"PRI * HTTP/2.0\r\n\r\n", b"XX\r\n\r\n"], id="good-start-bad-end"),
    ],
)
def test_invalid_preface_closes_connection(server: Server, pieces: list[bytes]) -> None:
    """3.4: an invalid preface is a connection error PROTOCOL_ERROR, whose GOAWAY may be omitted.

    A preface that is not HTTP/2's from its first byte may instead be read as
    HTTP/1.1 (the port serves both): then an error status, and the close.
    """
    with server.client() as client:
        for piece in pieces[:-1]:
            client.send_raw(piece)
            time.sleep(0.05)
        client.send_raw(pieces[-1] + SettingsFrame(0).serialize())
        data = client.read_raw_until_closed()
    if data.startswith(b"HTTP/1.1 "):
        status = int(data.split(b" ", 2)[1])
        assert status >= 400, f"an invalid preface was answered {data[:40]!r}"
        return
    for frame in parse_frames(data):
        assert isinstance(frame, (SettingsFrame, WindowUpdateFrame, GoAwayFrame)), frame
        if isinstance(frame, GoAwayFrame):
            assert frame.error_code == Code.PROTOCOL_ERROR, code_name(frame.error_code)


@pytest.mark.parametrize("cut", [1, 2, 3, 12])
def test_preface_in_pieces_is_http2(server: Server, cut: int) -> None:
    """3.4: the preface in any pieces. A first read of "P" or "PR" could begin an HTTP/1.1
    method too (the port serves both): it is held until the next byte tells them apart."""
    with server.client() as client:
        client.send_raw(PREFACE[:cut])
        time.sleep(0.1)
        client.send_raw(PREFACE[cut:])
        client.handshake(magic=False)
        assert client.get(1).status == 200


@pytest.mark.parametrize(
    ("method", "cut"), [("POST", 1), ("PROPFIND", 1), ("PROPFIND", 2), ("PUT", 2)]
)
def test_http11_request_that_begins_like_the_preface_is_http11(
    server: Server, method: str, cut: int
) -> None:
    """The first byte or two of POST, PUT and PROPFIND are the preface's: still HTTP/1.1."""
    request = f"{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    with server.client() as client:
        client.send_raw(request.encode()[:cut])
        time.sleep(0.1)
        client.send_raw(request.encode()[cut:])
        data = client.read_raw_until_closed()
    assert data.startswith(b"HTTP/1.1 200 "), data[:80]


def test_preface_in_the_middle_of_an_http11_head_is_not_http2(server: Server) -> None:
    """3.4: the preface is a connection's first bytes. Sent in a later read, inside an
    HTTP/1.1 head, it is a malformed field line: 400, not a switch to HTTP/2."""
    with server.client() as client:
        client.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.1)
        client.send_raw(PREFACE)
        data = client.read_raw_until_closed()
    assert data.startswith(b"HTTP/1.1 400 "), data[:80]


def test_preface_not_followed_by_settings(server: Server) -> None:
    """3.4: the preface MUST be followed by SETTINGS; anything else is an invalid preface."""
    with server.client() as client:
        client.send_raw(PREFACE + PingFrame(0, opaque_data=b"12345678").serialize())
        client.expect_connection_error(Code.PROTOCOL_ERROR)


# -- connection errors, one frame each ---------------------------------------------------------

Builder = Callable[[H2Client], bytes]


def _fields(client: H2Client, path: str = "/slow") -> list[tuple[str, str]]:
    return client.request_fields(path, "POST")


def _open(client: H2Client, stream_id: int = 1) -> bytes:
    """HEADERS opening `stream_id` for a body (a POST to /echo)."""
    return client.headers(stream_id, _fields(client, "/echo"), end_stream=False).serialize()


def _half(client: H2Client) -> tuple[bytes, bytes]:
    """A request's header block cut in two."""
    block = client.block(client.request_fields())
    return block[:5], block[5:]


CONNECTION_ERRORS: list[tuple[str, Builder, Code]] = [
    # 4.2 Frame Size: a frame carrying a field block too large for SETTINGS_MAX_FRAME_SIZE.
    (
        "4.2-headers-over-max-frame-size",
        lambda c: raw_frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            c.block([*c.request_fields(), ("x-big", "a" * DEFAULT_MAX_FRAME)]),
        ),
        Code.FRAME_SIZE_ERROR,
    ),
    # 4.3 / RFC 7541: a field block that does not decode.
    (
        "4.3-hpack-truncated-literal",
        lambda c: raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x40\x0aab"),
        Code.COMPRESSION_ERROR,
    ),
    (
        "4.3-hpack-index-out-of-table",
        lambda c: raw_frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack_integer(200, 7, 0x80)),
        Code.COMPRESSION_ERROR,
    ),
    (
        "4.3-hpack-table-size-update-over-limit",
        lambda c: raw_frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            hpack_integer(4097, 5, 0x20) + c.block(c.request_fields()),
        ),
        Code.COMPRESSION_ERROR,
    ),
    (
        "4.3-hpack-table-size-update-after-field",
        lambda c: raw_frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            c.block(c.request_fields()) + hpack_integer(0, 5, 0x20),
        ),
        Code.COMPRESSION_ERROR,
    ),
    # 5.1 idle: anything but HEADERS or PRIORITY.
    (
        "5.1-data-on-idle-stream",
        lambda c: raw_frame(DATA, END_STREAM, 1, b"x"),
        Code.PROTOCOL_ERROR,
    ),
    (
        "5.1-rst-stream-on-idle-stream",
        lambda c: RstStreamFrame(1, error_code=Code.CANCEL).serialize(),
        Code.PROTOCOL_ERROR,
    ),
    (
        "5.1-window-update-on-idle-stream",
        lambda c: WindowUpdateFrame(1, 100).serialize(),
        Code.PROTOCOL_ERROR,
    ),
    (
        "5.1-continuation-on-idle-stream",
        lambda c: ContinuationFrame(
            1, c.block(c.request_fields()), flags=["END_HEADERS"]
        ).serialize(),
        Code.PROTOCOL_ERROR,
    ),
    # 5.1.1 Stream Identifiers.
    (
        "5.1.1-even-stream-id",
        lambda c: c.headers(2, c.request_fields()).serialize(),
        Code.PROTOCOL_ERROR,
    ),
    (
        "5.1.1-decreasing-stream-id",
        lambda c: (
            c.headers(5, c.request_fields()).serialize()
            + c.headers(3, c.request_fields()).serialize()
        ),
        Code.PROTOCOL_ERROR,
    ),
    # 5.5 Extending HTTP/2: no extension frame inside a field block.
    (
        "5.5-unknown-frame-inside-header-block",
        lambda c: (
            raw_frame(HEADERS, END_STREAM, 1, _half(c)[0])
            + raw_frame(UNKNOWN_TYPE, 0, 1, b"12345678")
        ),
        Code.PROTOCOL_ERROR,
    ),
    # 6.1 DATA.
    ("6.1-data-on-stream-0", lambda c: raw_frame(DATA, END_STREAM, 0, b"x"), Code.PROTOCOL_ERROR),
    (
        "6.1-data-padding-too-long",
        lambda c: _open(c) + raw_frame(DATA, PADDED | END_STREAM, 1, bytes([5]) + b"abc"),
        Code.PROTOCOL_ERROR,
    ),
    # 6.2 HEADERS.
    (
        "6.2-headers-on-stream-0",
        lambda c: raw_frame(HEADERS, END_HEADERS | END_STREAM, 0, c.block(c.request_fields())),
        Code.PROTOCOL_ERROR,
    ),
    (
        "6.2-headers-padding-too-long",
        lambda c: raw_frame(
            HEADERS,
            PADDED | END_HEADERS | END_STREAM,
            1,
            bytes([255]) + c.block(c.request_fields()),
        ),
        Code.PROTOCOL_ERROR,
    ),
    # 6.3 PRIORITY.
    (
        "6.3-priority-on-stream-0",
        lambda c: raw_frame(PRIORITY, 0, 0, struct.pack(">IB", 1, 15)),
        Code.PROTOCOL_ERROR,
    ),
    # 6.4 RST_STREAM.
    (
        "6.4-rst-stream-on-stream-0",
        lambda c: raw_frame(RST_STREAM, 0, 0, struct.pack(">I", Code.CANCEL)),
        Code.PROTOCOL_ERROR,
    ),
    (
        "6.4-rst-stream-length-3",
        lambda c: _open(c) + raw_frame(RST_STREAM, 0, 1, bytes(3)),
        Code.FRAME_SIZE_ERROR,
    ),
    # 6.5 SETTINGS.
    (
        "6.5-settings-ack-with-payload",
        lambda c: raw_frame(SETTINGS, ACK, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 100)),
        Code.FRAME_SIZE_ERROR,
    ),
    ("6.5-settings-on-stream-1", lambda c: raw_frame(SETTINGS, 0, 1, b""), Code.PROTOCOL_ERROR),
    (
        "6.5-settings-length-not-multiple-of-6",
        lambda c: raw_frame(SETTINGS, 0, 0, bytes(3)),
        Code.FRAME_SIZE_ERROR,
    ),
    # 6.5.2 Defined Settings.
    (
        "6.5.2-enable-push-2",
        lambda c: SettingsFrame(0, {ENABLE_PUSH: 2}).serialize(),
        Code.PROTOCOL_ERROR,
    ),
    (
        "6.5.2-initial-window-size-over-max",
        lambda c: SettingsFrame(0, {INITIAL_WINDOW_SIZE: MAX_WINDOW + 1}).serialize(),
        Code.FLOW_CONTROL_ERROR,
    ),
    (
        "6.5.2-max-frame-size-below-16384",
        lambda c: SettingsFrame(0, {MAX_FRAME_SIZE: DEFAULT_MAX_FRAME - 1}).serialize(),
        Code.PROTOCOL_ERROR,
    ),
    (
        "6.5.2-max-frame-size-over-2^24-1",
        lambda c: SettingsFrame(0, {MAX_FRAME_SIZE: 1 << 24}).serialize(),
        Code.PROTOCOL_ERROR,
    ),
    # 6.7 PING.
    ("6.7-ping-length-7", lambda c: raw_frame(PING, 0, 0, bytes(7)), Code.FRAME_SIZE_ERROR),
    ("6.7-ping-length-9", lambda c: raw_frame(PING, 0, 0, bytes(9)), Code.FRAME_SIZE_ERROR),
    ("6.7-ping-on-stream-1", lambda c: raw_frame(PING, 0, 1, bytes(8)), Code.PROTOCOL_ERROR),
    # 6.8 GOAWAY.
    (
        "6.8-goaway-on-stream-1",
        lambda c: raw_frame(GOAWAY, 0, 1, struct.pack(">II", 0, 0)),
        Code.PROTOCOL_ERROR,
    ),
    # 6.9 WINDOW_UPDATE.
    (
        "6.9-window-update-length-3",
        lambda c: raw_frame(WINDOW_UPDATE, 0, 0, bytes(3)),
        Code.FRAME_SIZE_ERROR,
    ),
    (
        "6.9-window-update-zero-on-connection",
        lambda c: raw_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)),
        Code.PROTOCOL_ERROR,
    ),
    # 6.9.1 The flow-control window: the connection's past 2^31-1.
    (
        "6.9.1-connection-window-overflow",
        lambda c: WindowUpdateFrame(0, MAX_WINDOW).serialize(),
        Code.FLOW_CONTROL_ERROR,
    ),
    # 6.10 CONTINUATION.
    (
        "6.10-header-block-interrupted-by-ping",
        lambda c: raw_frame(HEADERS, END_STREAM, 1, _half(c)[0]) + raw_frame(PING, 0, 0, bytes(8)),
        Code.PROTOCOL_ERROR,
    ),
    (
        "6.10-continuation-on-another-stream",
        lambda c: (
            raw_frame(HEADERS, END_STREAM, 1, _half(c)[0])
            + raw_frame(CONTINUATION, END_HEADERS, 3, _half(c)[1])
        ),
        Code.PROTOCOL_ERROR,
    ),
]


def _cases(table: list[tuple[str, Builder, Code]]) -> list[object]:
    return [pytest.param(build, code, id=name) for name, build, code in table]


@pytest.mark.parametrize(("build", "code"), _cases(CONNECTION_ERRORS))
def test_connection_error(server: Server, build: Builder, code: Code) -> None:
    with server.connect() as client:
        client.send_raw(build(client))
        client.expect_connection_error(code)


# -- 4.1 Frame Format and 5.5 Extending HTTP/2: what is ignored --------------------------------


def test_unknown_frame_type_is_ignored(server: Server) -> None:
    """4.1, 5.5: a frame of unknown type is ignored; the PING after it is answered."""
    with server.connect() as client:
        # Raw: hyperframe's ExtensionFrame.serialize writes a length of 0.
        client.send_raw(raw_frame(UNKNOWN_TYPE, 0xFF, 0, b"whatever"))
        client.ping(b"unknown!")
        assert client.goaway is None
        assert client.get(1).status == 200


def test_undefined_flags_are_ignored(server: Server) -> None:
    """4.1: flags a frame type does not define are ignored (PING with all but ACK set)."""
    with server.connect() as client:
        client.send_raw(raw_frame(PING, 0xFE, 0, b"flagsflg"))
        client.wait(lambda: b"flagsflg" in client.ping_acks, "the PING ACK")
        assert client.goaway is None


def test_reserved_bit_is_ignored(server: Server) -> None:
    """4.1: the reserved bit of the stream identifier is ignored on receipt."""
    with server.connect() as client:
        block = client.block(client.request_fields())
        client.send_raw(raw_frame(HEADERS, END_HEADERS | END_STREAM, 0x80000001, block))
        record = client.response(1)
        assert record.status == 200


# -- 4.2 Frame Size -----------------------------------------------------------------------------


def test_data_at_max_frame_size_is_accepted(server: Server) -> None:
    """4.2: a 16384-byte DATA frame (the least SETTINGS_MAX_FRAME_SIZE) is taken whole."""
    body = pattern(DEFAULT_MAX_FRAME)
    with server.connect() as client:
        client.send_raw(_open(client))
        client.send_data(1, body, end_stream=True)
        record = client.response(1)
        assert record.status == 200
        assert bytes(record.data) == body


def test_data_over_max_frame_size(server: Server) -> None:
    """4.2: DATA larger than SETTINGS_MAX_FRAME_SIZE: FRAME_SIZE_ERROR (stream or connection)."""
    with server.connect() as client:
        client.send_raw(_open(client))
        client.send_raw(raw_frame(DATA, END_STREAM, 1, bytes(DEFAULT_MAX_FRAME + 1)))
        client.expect_stream_error(1, Code.FRAME_SIZE_ERROR)


def test_response_frames_fit_client_max_frame_size(server: Server) -> None:
    """4.2: the server frames a large body in DATA no larger than our SETTINGS_MAX_FRAME_SIZE."""
    size = 200_000
    with server.connect() as client:
        record = client.get(1, f"/bytes/{size}")
        assert record.status == 200
        assert record.header("content-length") == str(size)
        assert bytes(record.data) == pattern(size)
        assert max(record.data_frames) <= DEFAULT_MAX_FRAME


# -- 5.1 Stream States ----------------------------------------------------------------------------


def test_priority_on_idle_stream_is_accepted(server: Server) -> None:
    """5.1: PRIORITY is allowed on an idle stream, and opens nothing."""
    with server.connect() as client:
        client.send(PriorityFrame(3, depends_on=0, stream_weight=16))
        assert client.get(1).status == 200
        assert client.get(5).status == 200
        assert client.goaway is None


def test_headers_on_half_closed_remote_stream(server: Server) -> None:
    """5.1 half-closed (remote): HEADERS after END_STREAM is a STREAM_CLOSED error."""
    with server.connect() as client:
        client.request(1, "/slow")
        client.request(1, "/slow")
        client.expect_stream_error(1, Code.STREAM_CLOSED)


def test_data_after_end_stream(server: Server) -> None:
    """5.1 half-closed (remote): DATA after END_STREAM is a STREAM_CLOSED error."""
    with server.connect() as client:
        client.request(1, "/slow")
        client.send_raw(raw_frame(DATA, END_STREAM, 1, b"late"))
        client.expect_stream_error(1, Code.STREAM_CLOSED)


def test_data_on_closed_stream(server: Server) -> None:
    """5.1 closed: DATA on a stream both sides ended is a STREAM_CLOSED error."""
    with server.connect() as client:
        assert client.get(1).status == 200
        client.send_raw(raw_frame(DATA, END_STREAM, 1, b"late"))
        client.expect_stream_error(1, Code.STREAM_CLOSED)


def test_client_reset_leaves_connection_usable(server: Server) -> None:
    """5.1, 6.4: a stream the client resets ends alone; the connection goes on."""
    with server.connect() as client:
        client.request(1, "/slow")
        client.send(RstStreamFrame(1, error_code=Code.CANCEL))
        client.ping()
        assert client.get(3).status == 200
        client.drain(QUIET)  # /slow would have answered by now
        assert client.stream(1).headers is None, "a reset stream was answered"
        assert client.goaway is None


def test_priority_self_dependency(server: Server) -> None:
    """5.3.1: a stream depending on itself is a PROTOCOL_ERROR (stream or connection)."""
    with server.connect() as client:
        client.send(PriorityFrame(1, depends_on=1, stream_weight=16))
        client.expect_stream_error(1, Code.PROTOCOL_ERROR)


def test_priority_wrong_length(server: Server) -> None:
    """6.3: PRIORITY of other than 5 octets is a FRAME_SIZE_ERROR (stream or connection)."""
    with server.connect() as client:
        client.send_raw(raw_frame(PRIORITY, 0, 1, struct.pack(">I", 0)))
        client.expect_stream_error(1, Code.FRAME_SIZE_ERROR)


# -- 5.1.2 Stream Concurrency ----------------------------------------------------------------------


def test_concurrent_streams_are_all_answered(server: Server) -> None:
    """5.1.2: streams up to SETTINGS_MAX_CONCURRENT_STREAMS run at once, and all are answered."""
    with server.connect() as client:
        limit = client.server_settings.get(MAX_CONCURRENT_STREAMS, 100)
        assert limit >= 100, "RFC 9113 5.1.2: the limit SHOULD be at least 100"
        ids = [1 + 2 * i for i in range(100)]
        fields = client.request_fields("/slow")
        client.send_raw(b"".join(client.headers(sid, fields).serialize() for sid in ids))
        for sid in ids:
            record = client.response(sid, timeout=2 * TIMEOUT)
            assert record.status == 200
        assert max(int(str(client.streams[sid].json()["concurrent"])) for sid in ids) >= 100


def test_streams_over_the_limit_are_refused(server: Server) -> None:
    """5.1.2: a stream past the advertised limit is a PROTOCOL_ERROR or REFUSED_STREAM error."""
    with server.connect() as client:
        limit = client.server_settings[MAX_CONCURRENT_STREAMS]
        ids = [1 + 2 * i for i in range(limit + 1)]
        fields = client.request_fields("/slow")
        client.send_raw(b"".join(client.headers(sid, fields).serialize() for sid in ids))
        client.expect_stream_error(ids[-1], Code.REFUSED_STREAM, Code.PROTOCOL_ERROR)


# -- 6.5 SETTINGS ----------------------------------------------------------------------------------


def test_settings_are_acknowledged(server: Server) -> None:
    """6.5.3: every SETTINGS from the client gets exactly one ACK."""
    with server.connect() as client:
        before = client.settings_acks
        client.send(SettingsFrame(0, {MAX_HEADER_LIST_SIZE: 1 << 16}))
        client.wait(lambda: client.settings_acks == before + 1, "the ACK of our SETTINGS")
        client.ping()
        assert client.settings_acks == before + 1


def test_unknown_setting_is_ignored(server: Server) -> None:
    """6.5.2: a setting of unknown identifier is ignored (and the SETTINGS ACKed)."""
    with server.connect({0xFF: 1, 0x4242: 7}) as client:
        assert client.get(1).status == 200
        assert client.goaway is None


def test_header_table_size_zero_is_honoured(server: Server) -> None:
    """6.5.2, RFC 7541 4.2: with SETTINGS_HEADER_TABLE_SIZE 0 the server's encoder keeps no table."""
    with server.connect({HEADER_TABLE_SIZE: 0}) as client:
        client.decoder.max_allowed_table_size = 0  # a larger table fails the decode
        for sid in (1, 3, 5):
            record = client.get(sid)
            assert record.status == 200
        assert client.decoder.header_table_size == 0


# -- 6.7 PING and 6.8 GOAWAY --------------------------------------------------------------------------


def test_ping_is_acknowledged_with_its_payload(server: Server) -> None:
    """6.7: PING gets an ACK carrying the same 8 octets."""
    with server.connect() as client:
        payload = bytes(range(1, 9))
        client.send(PingFrame(0, opaque_data=payload))
        client.wait(lambda: bool(client.ping_acks), "the PING ACK")
        assert client.ping_acks == [payload]
        ack = next(f for f in client.frames if isinstance(f, PingFrame))
        assert "ACK" in ack.flags and ack.stream_id == 0


def test_ping_ack_is_not_answered(server: Server) -> None:
    """6.7: a PING with ACK set gets no answer."""
    with server.connect() as client:
        client.send(PingFrame(0, opaque_data=b"ackedalr", flags=["ACK"]))
        client.ping(b"realping")
        assert client.ping_acks == [b"realping"]


def test_goaway_from_client_is_answered_then_closed(server: Server) -> None:
    """6.8: streams opened before the client's GOAWAY are answered; then the connection ends."""
    with server.connect() as client:
        client.request(1, "/slow")
        client.send(GoAwayFrame(0, last_stream_id=0, error_code=Code.NO_ERROR))
        record = client.response(1)
        assert record.status == 200
        assert record.json()["pid"] == server.pid
        client.wait_closed()


# -- 6.9 WINDOW_UPDATE and flow control ------------------------------------------------------------------


def test_window_update_zero_on_stream(server: Server) -> None:
    """6.9: an increment of 0 on a stream is a PROTOCOL_ERROR (stream or connection)."""
    with server.connect() as client:
        client.request(1, "/slow")
        client.send_raw(raw_frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0)))
        client.expect_stream_error(1, Code.PROTOCOL_ERROR)


def test_stream_window_overflow(server: Server) -> None:
    """6.9.1: a stream window past 2^31-1 is a FLOW_CONTROL_ERROR (stream or connection)."""
    with server.connect() as client:
        client.request(1, "/slow")
        client.send(WindowUpdateFrame(1, MAX_WINDOW))
        client.expect_stream_error(1, Code.FLOW_CONTROL_ERROR)


def _assert_data_stays(client: H2Client, stream_id: int, size: int) -> None:
    """Exactly `size` bytes arrived on the stream, and no more come while nothing is granted."""
    record = client.stream(stream_id)
    client.wait(lambda: len(record.data) >= size, f"{size} bytes on stream {stream_id}")
    client.drain(QUIET)
    assert len(record.data) == size, f"{len(record.data)} bytes sent on a window of {size}"
    assert not record.closed


def test_small_initial_window_is_kept_to(server: Server) -> None:
    """6.9.1, 6.9.2: with SETTINGS_INITIAL_WINDOW_SIZE 1 the server sends 1 byte, then as
    much as each WINDOW_UPDATE allows, and the body completes exactly."""
    size = 1000
    with server.connect({INITIAL_WINDOW_SIZE: 1}) as client:
        client.auto_window = False
        client.request(1, f"/bytes/{size}")
        client.wait(lambda: client.stream(1).headers is not None, "the response's HEADERS")
        _assert_data_stays(client, 1, 1)
        client.send(WindowUpdateFrame(1, 99))
        _assert_data_stays(client, 1, 100)
        client.send(WindowUpdateFrame(1, size - 100))
        record = client.response(1)
        assert record.status == 200
        assert bytes(record.data) == pattern(size)


def test_connection_window_is_kept_to(server: Server) -> None:
    """6.9.1: with stream windows of 0, then a large one, the server stops at the connection's
    65535 bytes until the connection window opens too."""
    size = 100_000
    with server.connect({INITIAL_WINDOW_SIZE: 0}) as client:
        client.auto_window = False
        client.request(1, f"/bytes/{size}")
        client.wait(lambda: client.stream(1).headers is not None, "the response's HEADERS")
        client.drain(QUIET)
        assert len(client.stream(1).data) == 0, "DATA sent on a window of 0"
        client.send(WindowUpdateFrame(1, size))
        _assert_data_stays(client, 1, DEFAULT_WINDOW)
        client.send(WindowUpdateFrame(0, size - DEFAULT_WINDOW))
        record = client.response(1)
        assert bytes(record.data) == pattern(size)


def test_window_made_negative_by_settings(server: Server) -> None:
    """6.9.2: a smaller SETTINGS_INITIAL_WINDOW_SIZE can make a stream's window negative; the
    server sends again only once WINDOW_UPDATEs bring it above 0."""
    size = 20
    with server.connect({INITIAL_WINDOW_SIZE: 3}) as client:
        client.auto_window = False
        client.request(1, f"/bytes/{size}")
        _assert_data_stays(client, 1, 3)
        acks = client.settings_acks
        client.send(SettingsFrame(0, {INITIAL_WINDOW_SIZE: 1}))  # the window: 1 - 3 = -2
        client.wait(lambda: client.settings_acks > acks, "the ACK of our SETTINGS")
        client.send(WindowUpdateFrame(1, 2))  # -2 + 2 = 0
        _assert_data_stays(client, 1, 3)
        client.send(WindowUpdateFrame(1, 1))
        _assert_data_stays(client, 1, 4)
        client.send(WindowUpdateFrame(1, size))
        record = client.response(1)
        assert bytes(record.data) == pattern(size)


def test_data_beyond_the_servers_window(server: Server) -> None:
    """6.9.1: DATA past the window the server advertised is a FLOW_CONTROL_ERROR.

    /hold does not read its body, so once the cycle's buffer is full the
    server stops opening the stream's window; the client sends exactly what
    the server grants until the grants stop, then one byte more.
    """
    with server.connect() as client:
        client.send_raw(client.headers(1, _fields(client, "/hold"), end_stream=False).serialize())
        sent = 0
        while True:
            window = min(client.send_window(1), client.send_window(0))
            if window > 0:
                piece = min(window, DEFAULT_MAX_FRAME)
                client.send_data(1, bytes(piece))
                sent += piece
                continue
            if not client.poll_window_update(SETTLE):
                break
            assert sent < 8 << 20, "the server kept opening the window of a stream nobody reads"
        assert client.goaway is None and client.stream(1).reset is None
        client.send_raw(raw_frame(DATA, 0, 1, b"x"))
        client.expect_stream_error(1, Code.FLOW_CONTROL_ERROR)


# -- 8 HTTP semantics --------------------------------------------------------------------------------------

Fields = list[tuple[str, str]]
BASE: Fields = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "h")]


def _without(name: str) -> Fields:
    return [(k, v) for k, v in BASE if k != name]


def _replace(name: str, value: str) -> Fields:
    return [(k, value if k == name else v) for k, v in BASE]


MALFORMED: list[tuple[str, Fields]] = [
    ("8.2.1-uppercase-field-name", [*BASE, ("X-Upper", "1")]),
    ("8.2.1-field-value-with-cr", [*BASE, ("x-value", "a\rb")]),
    ("8.2.1-field-value-with-nul", [*BASE, ("x-value", "a\x00b")]),
    ("8.2.2-connection-keep-alive", [*BASE, ("connection", "keep-alive")]),
    ("8.2.2-transfer-encoding", [*BASE, ("transfer-encoding", "chunked")]),
    ("8.2.2-upgrade", [*BASE, ("upgrade", "h2c")]),
    ("8.2.2-te-gzip", [*BASE, ("te", "gzip")]),
    ("8.3-unknown-pseudo-header", [*BASE, (":foo", "bar")]),
    ("8.3-response-pseudo-header", [*BASE, (":status", "200")]),
    ("8.3-pseudo-after-regular", [*BASE[:2], ("x-a", "1"), *BASE[2:]]),
    ("8.3.1-missing-method", _without(":method")),
    ("8.3.1-missing-scheme", _without(":scheme")),
    ("8.3.1-missing-path", _without(":path")),
    ("8.3.1-duplicate-method", [*BASE[:3], (":method", "GET"), *BASE[3:]]),
    ("8.3.1-duplicate-path", [*BASE[:3], (":path", "/"), *BASE[3:]]),
    ("8.3.1-empty-path", _replace(":path", "")),
]


@pytest.mark.parametrize("fields", [pytest.param(fields, id=name) for name, fields in MALFORMED])
def test_malformed_request(server: Server, fields: Fields) -> None:
    """8.1.1: a malformed request is a PROTOCOL_ERROR (or a 400), never the app's."""
    with server.connect() as client:
        client.send(client.headers(1, fields))
        client.expect_malformed(1)


def test_te_trailers_is_allowed(server: Server) -> None:
    """8.2.2: TE may be sent, with the value "trailers"."""
    with server.connect() as client:
        client.send(client.headers(1, [*BASE, ("te", "trailers")]))
        assert client.response(1).status == 200


@pytest.mark.parametrize(("declared", "body"), [(10, b"abc"), (2, b"abcd")], ids=["short", "long"])
def test_content_length_mismatch(server: Server, declared: int, body: bytes) -> None:
    """8.1.1: content-length not the sum of the DATA payloads makes the request malformed."""
    with server.connect() as client:
        fields = client.request_fields("/echo", "POST", [("content-length", str(declared))])
        client.send(client.headers(1, fields, end_stream=False))
        client.send_data(1, body, end_stream=True)
        client.expect_malformed(1)


def test_content_length_matching_is_answered(server: Server) -> None:
    """8.1.1: a content-length matching the DATA is fine, body intact."""
    with server.connect() as client:
        fields = client.request_fields("/echo", "POST", [("content-length", "7")])
        client.send(client.headers(1, fields, end_stream=False))
        client.send_data(1, b"abc")
        client.send_data(1, b"defg", end_stream=True)
        record = client.response(1)
        assert bytes(record.data) == b"abcdefg"


def test_trailers_are_accepted(server: Server) -> None:
    """8.1: a request's trailer section: HEADERS with END_STREAM after the DATA."""
    with server.connect() as client:
        client.send_raw(_open(client))
        client.send_data(1, b"body")
        client.send(client.headers(1, [("x-trailer", "yes")]))
        record = client.response(1)
        assert bytes(record.data) == b"body"


def test_trailers_without_end_stream(server: Server) -> None:
    """8.1: a second HEADERS without END_STREAM makes the request malformed."""
    with server.connect() as client:
        client.send_raw(_open(client))
        client.send_data(1, b"body")
        client.send(client.headers(1, [("x-trailer", "yes")], end_stream=False))
        client.expect_malformed(1)


def test_trailers_with_pseudo_header(server: Server) -> None:
    """8.1, 8.3: pseudo-header fields in trailers make the request malformed."""
    with server.connect() as client:
        client.send_raw(_open(client))
        client.send_data(1, b"body")
        client.send(client.headers(1, [(":path", "/"), ("x-trailer", "yes")]))
        client.expect_malformed(1)


def test_request_with_end_stream_gets_full_response(server: Server) -> None:
    """8.1: HEADERS with END_STREAM is a whole request; the response ends its stream."""
    with server.connect() as client:
        record = client.get(1)
        assert record.status == 200
        assert record.ended
        data = record.json()
        assert data["method"] == "GET" and data["http_version"] == "2"
        # The same connection goes on, the encoder's dynamic table in use (RFC 7541).
        assert client.get(3).status == 200


def test_response_fields_are_lowercase_without_connection_specific(server: Server) -> None:
    """8.2, 8.2.2: names lowercase and no Connection, Keep-Alive... even when the app sets them;
    the app's `Connection: close` ends neither the stream's connection nor anything else."""
    with server.connect() as client:
        record = client.get(1, "/close")
        assert record.status == 200
        names = [name for name, _ in record.headers or ()]
        assert names[0] == ":status"
        assert record.header("x-mixed-case") == "Value"
        assert not CONNECTION_SPECIFIC & set(names)
        assert bytes(record.data) == b"closing\n"
        assert client.get(3).status == 200


def test_head_has_no_body(server: Server) -> None:
    """8.1, RFC 9110 9.3.2: the response to HEAD carries no content."""
    with server.connect() as client:
        record = client.get(1, "/", "HEAD")
        assert record.status == 200
        assert bytes(record.data) == b""
        assert record.ended
