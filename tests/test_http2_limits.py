"""HTTP/2's defences, on raw sockets against real squall processes (--h2c, prior knowledge).

Frames are built with hyperframe and header blocks with hpack by the small
client below (`H2`), so a test can send what no well-behaved client would:
resets in a tight loop, endless CONTINUATION frames, floods of PING,
SETTINGS and empty DATA, frames over the size limit, a window kept shut.

Three servers of `tests.apps.h2_limits_app:app` (raw ASGI), one worker each,
so that a crashed worker shows as a new pid:

- `limits`: --h2-max-concurrent-streams 10, --h2-max-resets 50,
  --h2-max-control-frames 100, --limit-request-headers 8192,
  --body-timeout 1 (also the stall of a response on a shut window),
  --keepalive-timeout 1;
- `roomy`: --h2-max-concurrent-streams 10 and the default timeouts, for
  what takes longer than a second (slow handlers of reset streams, uploads
  whose app does not read);
- `timed`: --request-timeout 1.

Each test ends by checking that the same worker answers a request on a new
connection and logged no error. Every socket has a timeout and every loop a
deadline, so every wait is bounded.
"""

from __future__ import annotations

import contextlib
import select
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.service import Service, free_port, wait_until

APP = "tests.apps.h2_limits_app:app"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TIMEOUT = 5.0

# Error codes (RFC 9113 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

# SETTINGS identifiers (RFC 9113 6.5.2).
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_HEADER_LIST_SIZE = 0x6

MAX_STREAMS = 10
MAX_RESETS = 50
MAX_CONTROL = 100
HEADER_LIMIT = 8192
BODY_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 1.0
REQUEST_TIMEOUT = 1.0
#: A deadline fires between its value and its value plus the ticker's 0.5 s;
#: the rest is scheduling slack on a busy test machine.
LATE = 1.5
#: squall.http.cycle.BODY_BUFFER_HIGH: unread body a stream's app may have.
BODY_BUFFER = 256 * 1024
DEFAULT_WINDOW = 65535


# -- a raw HTTP/2 client -------------------------------------------------------------


class Closed(Exception):
    """The server closed the connection (FIN or RST)."""


@dataclass
class Response:
    stream_id: int
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    reset: int | None = None  # the RST_STREAM's error code, if the stream was reset
    ended: bool = False


class H2:
    """One HTTP/2 connection spoken frame by frame.

    `read_frame` acknowledges the server's SETTINGS, decodes header blocks (in
    order, as HPACK requires) into `responses`, and, unless `auto_window` is
    off, gives back the window of every DATA frame read.
    """

    def __init__(
        self,
        port: int,
        settings: dict[int, int] | None = None,
        timeout: float = TIMEOUT,
        auto_window: bool = True,
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.timeout = timeout
        self.auto_window = auto_window
        self.buffer = bytearray()
        self.closed = False
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.server_settings: dict[int, int] = {}
        self.responses: dict[int, Response] = {}
        self.frames: list[Frame] = []  # every frame read, in order
        self.next_stream = 1
        self._block: list[bytes] = []  # a header block awaiting its CONTINUATION
        # What the server lets this client send (RFC 9113 6.9): per stream and in all.
        self.send_window: dict[int, int] = {}
        self.connection_window = DEFAULT_WINDOW
        self.initial_window = DEFAULT_WINDOW
        self.sent_data: dict[int, int] = {}
        self.window_updates: dict[int, int] = {}  # stream -> sum of increments read
        self.send(PREFACE + SettingsFrame(0, settings or {}).serialize())

    def __enter__(self) -> H2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    # -- sending -------------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Send; False when the server has closed (its RST ends our send)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.closed = True
            return False
        return True

    def send_frames(self, *frames: Frame) -> bool:
        return self.send(b"".join(frame.serialize() for frame in frames))

    def block(self, path: str, method: str = "GET", extra: Iterable[tuple[str, str]] = ()) -> bytes:
        fields = [
            (":method", method),
            (":scheme", "http"),
            (":authority", "127.0.0.1"),
            (":path", path),
            *extra,
        ]
        return bytes(self.encoder.encode(fields))

    def new_stream(self) -> int:
        stream_id = self.next_stream
        self.next_stream += 2
        self.send_window[stream_id] = self.initial_window
        return stream_id

    def headers_frame(
        self,
        path: str,
        method: str = "GET",
        end_stream: bool = True,
        extra: Iterable[tuple[str, str]] = (),
    ) -> HeadersFrame:
        """A HEADERS frame opening the next stream (its id: `.stream_id`)."""
        flags = ["END_HEADERS", "END_STREAM"] if end_stream else ["END_HEADERS"]
        return HeadersFrame(self.new_stream(), self.block(path, method, extra), flags=flags)

    def request(
        self,
        path: str,
        method: str = "GET",
        end_stream: bool = True,
        extra: Iterable[tuple[str, str]] = (),
    ) -> int:
        """Open a stream with a request; its id."""
        frame = self.headers_frame(path, method, end_stream, extra)
        self.send_frames(frame)
        return frame.stream_id

    def data(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        self.sent_data[stream_id] = self.sent_data.get(stream_id, 0) + len(data)
        self.send_window[stream_id] = self.send_window.get(stream_id, 0) - len(data)
        self.connection_window -= len(data)
        flags = ["END_STREAM"] if end_stream else []
        return self.send_frames(DataFrame(stream_id, data, flags=flags))

    def upload(self, stream_id: int, body: bytes, deadline: float) -> None:
        """Send `body` as the windows allow, reading frames for WINDOW_UPDATE; then END_STREAM."""
        view = memoryview(body)
        offset = 0
        while offset < len(view):
            room = min(self.send_window.get(stream_id, 0), self.connection_window, 16384)
            if room <= 0:
                if time.monotonic() > deadline:
                    raise AssertionError(f"window shut after {offset} bytes: {self.summary()}")
                try:
                    self.read_frame(timeout=max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    continue
                except Closed:
                    raise AssertionError(
                        f"closed after {offset} bytes of the body: {self.summary()}"
                    ) from None
                continue
            piece = bytes(view[offset : offset + room])
            offset += len(piece)
            self.data(stream_id, piece, end_stream=offset == len(view))

    # -- reading ---------------------------------------------------------------------

    def _fill(self, timeout: float) -> None:
        if self.closed:
            raise Closed("already closed")
        self.sock.settimeout(max(timeout, 0.001))
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""
        finally:
            self.sock.settimeout(self.timeout)
        if not chunk:
            self.closed = True
            raise Closed(f"closed; unread {bytes(self.buffer[:100])!r}")
        self.buffer += chunk

    def read_frame(self, timeout: float | None = None) -> Frame:
        """The next frame; TimeoutError when none within `timeout`, Closed at the end."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while len(self.buffer) < 9:
            self._fill(deadline - time.monotonic())
        frame, length = Frame.parse_frame_header(memoryview(bytes(self.buffer[:9])))
        while len(self.buffer) < 9 + length:
            self._fill(deadline - time.monotonic())
        frame.parse_body(memoryview(bytes(self.buffer[9 : 9 + length])))
        del self.buffer[: 9 + length]
        self._note(frame)
        return frame

    def _note(self, frame: Frame) -> None:
        self.frames.append(frame)
        sid = frame.stream_id
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                self.server_settings.update(frame.settings)
                if INITIAL_WINDOW_SIZE in frame.settings:
                    change = frame.settings[INITIAL_WINDOW_SIZE] - self.initial_window
                    self.initial_window = frame.settings[INITIAL_WINDOW_SIZE]
                    for stream in self.send_window:
                        self.send_window[stream] += change
                self.send_frames(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, WindowUpdateFrame):
            if sid == 0:
                self.connection_window += frame.window_increment
            else:
                self.send_window[sid] = self.send_window.get(sid, 0) + frame.window_increment
                self.window_updates[sid] = self.window_updates.get(sid, 0) + frame.window_increment
        elif isinstance(frame, HeadersFrame | ContinuationFrame):
            self._block.append(frame.data)
            if "END_HEADERS" in frame.flags:
                fields = self.decoder.decode(b"".join(self._block), raw=True)
                self._block.clear()
                response = self.responses.setdefault(sid, Response(sid))
                for name, value in fields:
                    assert isinstance(name, bytes) and isinstance(value, bytes)
                    if name == b":status":
                        response.status = int(value)
                    else:
                        response.headers.append((name, value))
            if isinstance(frame, HeadersFrame) and "END_STREAM" in frame.flags:
                self.responses.setdefault(sid, Response(sid)).ended = True
        elif isinstance(frame, DataFrame):
            response = self.responses.setdefault(sid, Response(sid))
            response.body += frame.data
            if "END_STREAM" in frame.flags:
                response.ended = True
            size = frame.flow_controlled_length
            if self.auto_window and size and not self.closed:
                updates = [WindowUpdateFrame(0, window_increment=size)]
                if not response.ended:
                    updates.append(WindowUpdateFrame(sid, window_increment=size))
                self.send_frames(*updates)
        elif isinstance(frame, RstStreamFrame):
            self.responses.setdefault(sid, Response(sid)).reset = frame.error_code
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            self.send_frames(PingFrame(0, frame.opaque_data, flags=["ACK"]))

    def until(self, predicate: Callable[[Frame], bool], timeout: float = TIMEOUT) -> Frame:
        """Read frames until one satisfies `predicate`; AssertionError on timeout or close."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no such frame within {timeout} s: {self.summary()}")
            try:
                frame = self.read_frame(left)
            except TimeoutError:
                continue
            except Closed:
                raise AssertionError(f"closed before such a frame: {self.summary()}") from None
            if predicate(frame):
                return frame

    def goaway(self, timeout: float = TIMEOUT) -> GoAwayFrame:
        frame = self.until(lambda f: isinstance(f, GoAwayFrame), timeout)
        assert isinstance(frame, GoAwayFrame)
        return frame

    def response(self, stream_id: int, timeout: float = TIMEOUT) -> Response:
        """The stream's whole response (or its reset)."""

        def done() -> bool:
            got = self.responses.get(stream_id)
            return got is not None and (got.ended or got.reset is not None)

        if not done():
            self.until(lambda _frame: done(), timeout)
        return self.responses[stream_id]

    def wait_closed(self, timeout: float = TIMEOUT) -> float:
        """Seconds until the server closes, reading (and keeping) the frames before."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"still open after {timeout} s: {self.summary()}")
            try:
                self.read_frame(left)
            except TimeoutError:
                continue
            except Closed:
                return time.monotonic() - start

    def summary(self) -> str:
        """The frames read so far, briefly (for failure messages)."""
        kinds: list[str] = []
        for frame in self.frames[-30:]:
            text = f"{type(frame).__name__}({frame.stream_id}"
            if isinstance(frame, GoAwayFrame | RstStreamFrame):
                text += f", code={frame.error_code:#x}"
            kinds.append(text + ")")
        return f"{len(self.frames)} frames, last: {', '.join(kinds)}; closed={self.closed}"


def count(frames: Iterable[Frame], kind: type[Frame], ack: bool | None = None) -> int:
    return sum(
        1
        for frame in frames
        if isinstance(frame, kind) and (ack is None or ("ACK" in frame.flags) == ack)
    )


# -- the servers -------------------------------------------------------------------


@dataclass
class Server:
    service: Service
    port: int
    pid: int = 0

    def client(self, settings: dict[int, int] | None = None, auto_window: bool = True) -> H2:
        return H2(self.port, settings, auto_window=auto_window)

    def ask_pid(self) -> int:
        """The pid of the worker that answers GET /pid on a fresh HTTP/2 connection."""
        with H2(self.port) as client:
            response = client.response(client.request("/pid"))
        assert response.status == 200, response
        return int(response.body)

    def log_size(self) -> int:
        return self.service.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.service.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def rss_kib(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} for {self.pid}")


@contextlib.contextmanager
def serve(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp(name) / "squall.log"
    command = [sys.executable, "-m", "squall", APP, "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", "1", "--interface", "asgi", "--h2c", *args]
    service = Service(command, log)
    try:
        service.wait_for_port(port)
        service.wait_for_workers(1)
        server = Server(service, port)
        wait_until(lambda: _answers(server), timeout=10)
        server.pid = server.ask_pid()
        assert service.workers() == [server.pid]
        yield server
    finally:
        service.stop()


def _answers(server: Server) -> bool:
    try:
        server.ask_pid()
    except (OSError, AssertionError):
        return False
    return True


@pytest.fixture(scope="module")
def limits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(
        tmp_path_factory,
        "h2-limits",
        "--h2-max-concurrent-streams",
        str(MAX_STREAMS),
        "--h2-max-resets",
        str(MAX_RESETS),
        "--h2-max-control-frames",
        str(MAX_CONTROL),
        "--limit-request-headers",
        str(HEADER_LIMIT),
        "--body-timeout",
        str(BODY_TIMEOUT),
        "--keepalive-timeout",
        str(KEEPALIVE_TIMEOUT),
    ) as server:
        yield server


@pytest.fixture(scope="module")
def roomy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(
        tmp_path_factory, "h2-roomy", "--h2-max-concurrent-streams", str(MAX_STREAMS)
    ) as server:
        yield server


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory, "h2-timed", "--request-timeout", str(REQUEST_TIMEOUT)) as server:
        yield server


class Survives:
    """Call it at the end of a test: the one worker still serves, and logged no error."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.log_start = server.log_size()

    def __call__(self) -> None:
        server = self.server
        assert server.ask_pid() == server.pid, "the worker was replaced"
        assert server.service.workers() == [server.pid]
        output = server.log_since(self.log_start)
        for sign in ("Traceback", "Fatal error", "ERROR"):
            assert sign not in output, output


@pytest.fixture
def on_limits(limits: Server) -> Survives:
    return Survives(limits)


@pytest.fixture
def on_roomy(roomy: Server) -> Survives:
    return Survives(roomy)


@pytest.fixture
def on_timed(timed: Server) -> Survives:
    return Survives(timed)


def send_until_closed(client: H2, chunk: bytes, total: int, limit: float = 5.0) -> int:
    """Send `chunk` again and again (reading nothing) until `total` bytes went, the server
    closed, or `limit` seconds passed; the bytes sent."""
    sent = 0
    deadline = time.monotonic() + limit
    client.sock.settimeout(0.2)
    try:
        while sent < total and time.monotonic() < deadline:
            try:
                sent += client.sock.send(chunk)
            except TimeoutError:
                readable, _, _ = select.select([client.sock], [], [], 0)
                if readable:
                    break  # the server answers (a GOAWAY): it reads no more
            except (BrokenPipeError, ConnectionResetError):
                break
    finally:
        client.sock.settimeout(client.timeout)
    return sent


# -- 1. rapid reset (CVE-2023-44487) ------------------------------------------------


def test_rapid_reset_flood_ends_in_enhance_your_calm(limits: Server, on_limits: Survives) -> None:
    """HEADERS then RST_STREAM(CANCEL), 500 times in one send: GOAWAY(ENHANCE_YOUR_CALM),
    and the connection closes."""
    with limits.client() as client:
        client.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        pairs: list[bytes] = []
        for _ in range(500):
            frame = client.headers_frame("/pid")
            pairs.append(frame.serialize())
            pairs.append(RstStreamFrame(frame.stream_id, error_code=CANCEL).serialize())
        client.send(b"".join(pairs))
        goaway = client.goaway()
        client.wait_closed()
    assert goaway.error_code == ENHANCE_YOUR_CALM, client.summary()
    print(f"rapid reset, one send: GOAWAY last_stream_id={goaway.last_stream_id}")
    on_limits()


def goaway_or_ack(token: bytes) -> Callable[[Frame], bool]:
    """A GOAWAY, or the ACK of the PING that carried `token`."""

    def wanted(frame: Frame) -> bool:
        if isinstance(frame, GoAwayFrame):
            return True
        return isinstance(frame, PingFrame) and "ACK" in frame.flags and frame.opaque_data == token

    return wanted


def test_rapid_reset_budget_is_the_flag(limits: Server, on_limits: Survives) -> None:
    """The same, one pair at a time, each followed by a PING whose ACK is awaited (so the
    server has read the pair): the GOAWAY comes right after --h2-max-resets (50) resets."""
    with limits.client() as client:
        client.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        calmed_at = 0
        for n in range(1, 3 * MAX_RESETS):
            frame = client.headers_frame("/pid")
            token = b"%08d" % n
            client.send_frames(
                frame, RstStreamFrame(frame.stream_id, error_code=CANCEL), PingFrame(0, token)
            )
            answer = client.until(goaway_or_ack(token))
            if isinstance(answer, GoAwayFrame):
                assert answer.error_code == ENHANCE_YOUR_CALM, client.summary()
                calmed_at = n
                break
        client.wait_closed()
    # The budget refills at 50 per 10 s: a reset or two more may pass meanwhile.
    assert MAX_RESETS < calmed_at <= MAX_RESETS + 5, calmed_at
    on_limits()


def test_reset_streams_whose_handlers_still_run_count_against_the_limit(
    roomy: Server, on_roomy: Survives
) -> None:
    """10 slow handlers (2 s) whose streams the client reset still hold the 10 stream slots:
    the 11th stream is refused (REFUSED_STREAM) until they end, then served."""
    with roomy.client() as client:
        client.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        started = time.monotonic()
        frames: list[Frame] = []
        for _ in range(MAX_STREAMS):
            frame = client.headers_frame("/sleep?s=2")
            frames += [frame, RstStreamFrame(frame.stream_id, error_code=CANCEL)]
        client.send_frames(*frames)
        time.sleep(0.2)  # the resets are read before the next stream comes
        refused = client.response(client.request("/pid"), timeout=2.0)
        assert refused.reset == REFUSED_STREAM, (refused, client.summary())
        assert time.monotonic() - started < 1.5, "the handlers ended before the check"
        # Once the handlers end, the slots are free again, on the same connection.
        time.sleep(max(0.0, started + 2.3 - time.monotonic()))
        served = client.response(client.request("/pid"))
        assert served.status == 200, (served, client.summary())
        assert int(served.body) == roomy.pid
    on_roomy()


# -- 2. CONTINUATION flood ------------------------------------------------------------


def test_continuation_flood_is_cut_off_with_bounded_memory(
    limits: Server, on_limits: Survives
) -> None:
    """HEADERS without END_HEADERS, then CONTINUATION frames of 16 KiB without end:
    GOAWAY and close after a bounded number (h2 takes 64), the worker's memory bounded."""
    Path(f"/proc/{limits.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = limits.rss_kib()
    piece = b"\x00\x05x-pad\x7f" + b"a" * (16384 - 8)  # never decoded: the block never ends
    with limits.client() as client:
        client.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        stream_id = client.new_stream()
        first = HeadersFrame(stream_id, client.block("/pid"))  # no END_HEADERS
        client.send_frames(first)
        flood = b"".join(ContinuationFrame(stream_id, piece).serialize() for _ in range(64))
        sent = send_until_closed(client, flood, 64 << 20)  # 64 MiB of CONTINUATION at most
        goaway = client.goaway()
        client.wait_closed()
    print(f"CONTINUATION flood: GOAWAY {goaway.error_code:#x} after {sent} bytes sent")
    assert goaway.error_code != NO_ERROR, client.summary()  # h2 says PROTOCOL_ERROR
    assert sent < 16 << 20, f"the server took {sent} bytes of CONTINUATION"
    growth_mib = (limits.rss_kib("VmHWM") - before) / 1024
    assert growth_mib < 8, f"peak RSS grew by {growth_mib:.1f} MiB"
    on_limits()


# -- 3. control-frame floods -------------------------------------------------------------


def _ping_flood(client: H2) -> None:
    client.send(b"".join(PingFrame(0, b"%08d" % i).serialize() for i in range(3000)))


def _settings_flood(client: H2) -> None:
    client.send(SettingsFrame(0, {INITIAL_WINDOW_SIZE: DEFAULT_WINDOW}).serialize() * 3000)


def _empty_data_flood(client: H2) -> None:
    stream_id = client.request("/read", "POST", end_stream=False)
    client.send(DataFrame(stream_id, b"").serialize() * 3000)


@pytest.mark.parametrize(
    "flood",
    [_ping_flood, _settings_flood, _empty_data_flood],
    ids=["PING", "SETTINGS", "empty DATA"],
)
def test_control_frame_flood_ends_in_enhance_your_calm(
    limits: Server, on_limits: Survives, flood: Callable[[H2], None]
) -> None:
    """3000 frames sent at once, nothing read meanwhile: GOAWAY(ENHANCE_YOUR_CALM) once
    --h2-max-control-frames (100) are spent, and the connection closes."""
    with limits.client() as client:
        client.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        flood(client)
        goaway = client.goaway()
        client.wait_closed()
    assert goaway.error_code == ENHANCE_YOUR_CALM, client.summary()
    print(
        f"{flood.__name__}: {count(client.frames, PingFrame, ack=True)} PING ACKs, "
        f"{count(client.frames, SettingsFrame, ack=True)} SETTINGS ACKs before the GOAWAY"
    )
    on_limits()


def test_control_frames_within_the_budget_are_answered(limits: Server, on_limits: Survives) -> None:
    """The budget is not a ban: 50 PINGs (half of it) are each acknowledged, and the
    connection goes on serving."""
    with limits.client() as client:
        client.send(b"".join(PingFrame(0, b"%08d" % i).serialize() for i in range(50)))
        stream_id = client.request("/pid")
        assert client.response(stream_id).status == 200
        if count(client.frames, PingFrame, ack=True) < 50:
            client.until(lambda _f: count(client.frames, PingFrame, ack=True) >= 50)
        assert not any(isinstance(f, GoAwayFrame) for f in client.frames), client.summary()
    on_limits()


# -- 4. concurrent streams ----------------------------------------------------------------


def test_max_concurrent_streams_is_advertised(limits: Server, on_limits: Survives) -> None:
    with limits.client() as client:
        client.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        assert client.server_settings.get(MAX_CONCURRENT_STREAMS) == MAX_STREAMS
        assert client.server_settings.get(MAX_HEADER_LIST_SIZE) == HEADER_LIMIT
    on_limits()


def test_stream_over_the_limit_is_refused_and_the_others_are_served(
    limits: Server, on_limits: Survives
) -> None:
    """11 streams at once, 10 allowed: the 11th is a stream error (REFUSED_STREAM or
    PROTOCOL_ERROR, RFC 9113 5.1.2), not the connection's; the 10 others are answered."""
    with limits.client() as client:
        client.until(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
        frames = [client.headers_frame("/sleep?s=0.5") for _ in range(MAX_STREAMS + 1)]
        client.send_frames(*frames)
        ids = [frame.stream_id for frame in frames]
        last = client.response(ids[-1], timeout=3)
        print(f"stream over the limit: RST_STREAM {last.reset}, frames: {client.summary()}")
        assert last.reset in (REFUSED_STREAM, PROTOCOL_ERROR), client.summary()
        for stream_id in ids[:-1]:
            response = client.response(stream_id, timeout=3)
            assert response.status == 200 and response.body == b"slept", response
    on_limits()


# -- 5. header list size -------------------------------------------------------------------


def test_header_list_under_the_limit_is_served(limits: Server, on_limits: Survives) -> None:
    with limits.client() as client:
        stream_id = client.request("/pid", extra=[("x-fill", "a" * (HEADER_LIMIT // 2))])
        assert client.response(stream_id).status == 200
    on_limits()


def test_header_list_over_the_limit_is_refused(limits: Server, on_limits: Survives) -> None:
    """A 9 KiB header field against --limit-request-headers 8192: the stream gets 431 or
    the connection a GOAWAY; either way the request never reaches the app."""
    with limits.client() as client:
        stream_id = client.request("/pid", extra=[("x-fill", "a" * (HEADER_LIMIT + 1024))])
        outcome = _refusal(client, stream_id)
    print(f"header list over the limit: {outcome}")
    on_limits()


def test_hpack_bomb_is_refused(limits: Server, on_limits: Survives) -> None:
    """A header block of a few dozen bytes that decodes to ~47 KB (one 3900-byte field in
    the dynamic table, referenced 12 times): refused like a large one, by the size it
    decodes to (and by --limit-request-headers, below h2's own 64 KiB)."""
    bomb = ("x-bomb", "b" * 3900)
    with limits.client() as client:
        # The first block puts the field in the dynamic table: alone it fits the limit.
        first = client.request("/pid", extra=[bomb])
        assert client.response(first).status == 200
        block = client.block("/pid", extra=[bomb] * 12)
        assert len(block) < 100, len(block)
        stream_id = client.new_stream()
        client.send_frames(HeadersFrame(stream_id, block, flags=["END_HEADERS", "END_STREAM"]))
        outcome = _refusal(client, stream_id)
    print(f"HPACK bomb: {outcome}")
    on_limits()


def _refusal(client: H2, stream_id: int) -> str:
    """Wait for the stream's 431, its reset or the connection's GOAWAY; what came."""
    frame = client.until(
        lambda f: (
            isinstance(f, GoAwayFrame)
            or (f.stream_id == stream_id and isinstance(f, HeadersFrame | RstStreamFrame))
        )
    )
    if isinstance(frame, GoAwayFrame):
        client.wait_closed()
        assert frame.error_code in (ENHANCE_YOUR_CALM, PROTOCOL_ERROR), client.summary()
        return f"GOAWAY {frame.error_code:#x}, closed"
    response = client.response(stream_id)
    if response.reset is not None:
        return f"RST_STREAM {response.reset:#x}"
    assert response.status == 431, response
    return "431"


# -- 6. frame size ------------------------------------------------------------------------


def test_data_frame_over_16k_is_a_frame_size_error(limits: Server, on_limits: Survives) -> None:
    with limits.client() as client:
        stream_id = client.request("/read", "POST", end_stream=False)
        client.send_frames(DataFrame(stream_id, b"x" * 16385))
        goaway = client.goaway()
        client.wait_closed()
    assert goaway.error_code == FRAME_SIZE_ERROR, client.summary()
    on_limits()


# -- 7. idle timeout -----------------------------------------------------------------------


def test_idle_connection_gets_goaway_and_close(limits: Server, on_limits: Survives) -> None:
    """--keepalive-timeout 1: a connection with no stream gets GOAWAY(NO_ERROR) and is
    closed within ~2.5 s, also after it has served a request (the last GOAWAY names it)."""
    for requests in (0, 1):
        with limits.client() as client:
            for _ in range(requests):
                assert client.response(client.request("/pid")).status == 200
            started = time.monotonic()
            client.wait_closed(timeout=KEEPALIVE_TIMEOUT + LATE + 1)
            took = time.monotonic() - started
        goaways = [f for f in client.frames if isinstance(f, GoAwayFrame)]
        assert goaways, client.summary()
        assert all(f.error_code == NO_ERROR for f in goaways), client.summary()
        assert goaways[-1].last_stream_id == (2 * requests - 1 if requests else 0), goaways
        assert KEEPALIVE_TIMEOUT - 0.2 <= took <= KEEPALIVE_TIMEOUT + LATE, took
    on_limits()


# -- 8. body timeout -------------------------------------------------------------------------


def test_silent_body_times_out_and_other_streams_go_on(limits: Server, on_limits: Survives) -> None:
    """--body-timeout 1: HEADERS without END_STREAM and no DATA: 408 (or RST_STREAM) within
    ~2.5 s; streams opened on the connection before and after are served."""
    with limits.client() as client:
        started = time.monotonic()
        silent = client.request("/read", "POST", end_stream=False)
        before = client.response(client.request("/pid"))
        assert before.status == 200
        timed_out = client.response(silent, timeout=BODY_TIMEOUT + LATE + 1)
        took = time.monotonic() - started
        assert timed_out.status == 408 or timed_out.reset is not None, timed_out
        what = f"RST_STREAM {timed_out.reset:#x}" if timed_out.reset is not None else "408"
        print(f"silent body: {what} after {took:.2f} s")
        assert BODY_TIMEOUT - 0.2 <= took <= BODY_TIMEOUT + LATE, took
        after = client.response(client.request("/pid"))
        assert after.status == 200
    on_limits()


def test_empty_data_frames_do_not_hold_off_the_body_timeout(
    limits: Server, on_limits: Survives
) -> None:
    """An empty DATA frame every 0.3 s (well within the control-frame budget) is no body:
    the stream still times out within --body-timeout plus the tick."""
    with limits.client() as client:
        _drip_until_refused(client, lambda stream_id: client.send_frames(DataFrame(stream_id, b"")))
    on_limits()


def _drip_until_refused(client: H2, drip: Callable[[int], object]) -> None:
    """A POST to /read whose body comes as `drip` sends it, every 0.3 s: it must end in
    408 (or a reset) within --body-timeout and its slack."""
    started = time.monotonic()
    stream_id = client.request("/read", "POST", end_stream=False)
    deadline = started + BODY_TIMEOUT + LATE + 1
    while time.monotonic() < deadline:
        got = client.responses.get(stream_id)
        if got is not None and (got.status or got.reset is not None):
            break
        drip(stream_id)
        with contextlib.suppress(TimeoutError):
            client.read_frame(0.3)
    took = time.monotonic() - started
    got = client.responses.get(stream_id)
    assert got is not None and (got.status == 408 or got.reset is not None), client.summary()
    assert took <= BODY_TIMEOUT + LATE, took


def test_body_timeout_does_not_blame_the_client_for_a_window_the_server_withholds(
    limits: Server, on_limits: Survives
) -> None:
    """--body-timeout 1, an app that reads nothing for 2 s and a 1 MiB upload: once the app
    has 256 KiB unread the server gives back no window, so the client cannot send; that
    is no silence of the client's, and the upload completes once the app reads."""
    body = b"h" * (1 << 20)
    with limits.client() as client:
        stream_id = client.request("/hold?s=2", "POST", end_stream=False)
        client.upload(stream_id, body, deadline=time.monotonic() + 8)
        response = client.response(stream_id)
    assert response.status == 200 and int(response.body) == len(body), response
    on_limits()


def test_slow_drip_body_is_held_to_the_min_rate(limits: Server, on_limits: Survives) -> None:
    """One byte every 0.3 s never leaves --body-timeout (1 s) of silence, but is far below
    --body-min-rate (500 B/s by default): as on HTTP/1.1, 408 once --body-timeout has passed."""
    with limits.client() as client:
        _drip_until_refused(client, lambda stream_id: client.data(stream_id, b"d"))
    on_limits()


# -- 9. a response stalled on a shut window -----------------------------------------------------


def test_zero_window_stall_is_reset_and_the_connection_goes_on(
    limits: Server, on_limits: Survives
) -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE 0 and GET /big (1 MiB): the response cannot move, and
    after --body-timeout (1 s) the stream is reset (CANCEL); a new stream whose window the
    client opens is served on the same connection."""
    with limits.client(settings={INITIAL_WINDOW_SIZE: 0}, auto_window=False) as client:
        started = time.monotonic()
        stalled = client.request("/big")
        response = client.response(stalled, timeout=BODY_TIMEOUT + LATE + 1)
        took = time.monotonic() - started
        assert response.status == 200 and response.body == b"", response
        assert response.reset == CANCEL, response
        assert BODY_TIMEOUT - 0.2 <= took <= BODY_TIMEOUT + LATE, took
        fresh = client.request("/pid")
        client.send_frames(WindowUpdateFrame(fresh, window_increment=DEFAULT_WINDOW))
        answer = client.response(fresh)
        assert answer.status == 200 and int(answer.body) == limits.pid, answer
    on_limits()


# -- 10. request timeout -----------------------------------------------------------------------


def test_request_timeout_is_504_on_the_stream_only(timed: Server, on_timed: Survives) -> None:
    with timed.client() as client:
        started = time.monotonic()
        slow = client.request("/sleep?s=3")
        quick = client.response(client.request("/pid"))
        assert quick.status == 200
        response = client.response(slow, timeout=REQUEST_TIMEOUT + LATE + 1)
        took = time.monotonic() - started
        assert response.status == 504, response
        assert REQUEST_TIMEOUT - 0.2 <= took <= REQUEST_TIMEOUT + LATE, took
        after = client.response(client.request("/pid"))
        assert after.status == 200
    on_timed()


# -- 11. flow control of uploads --------------------------------------------------------------


def test_large_upload_is_read_as_it_comes(roomy: Server, on_roomy: Survives) -> None:
    """4 MiB sent as the server's windows allow (its WINDOW_UPDATEs keep it going)."""
    body = bytes(range(256)) * (4 * 4096)
    with roomy.client() as client:
        stream_id = client.request("/upload", "POST", end_stream=False)
        client.upload(stream_id, body, deadline=time.monotonic() + 20)
        response = client.response(stream_id, timeout=10)
    assert response.status == 200, response
    total, pieces = response.body.split()
    assert int(total) == len(body)
    print(f"4 MiB upload: {int(pieces)} body messages")
    on_roomy()


def test_upload_to_an_app_that_does_not_read_is_held_by_the_window(
    roomy: Server, on_roomy: Survives
) -> None:
    """An app that reads nothing for 2 s: the server gives back the stream's window only
    until the app has its buffer's worth (256 KiB) unread, so the client's window shuts
    at most a window (64 KiB) beyond; once the app reads, the rest goes through."""
    body = b"u" * (1 << 20)
    with roomy.client() as client:
        started = time.monotonic()
        stream_id = client.request("/hold?s=2", "POST", end_stream=False)
        view = memoryview(body)
        offset = 0
        shut_since = 0.0
        while time.monotonic() - started < 1.5 and offset < len(view):
            room = min(client.send_window[stream_id], client.connection_window, 16384)
            if room > 0:
                shut_since = 0.0
                client.data(stream_id, bytes(view[offset : offset + room]))
                offset += room
                continue
            shut_since = shut_since or time.monotonic()
            with contextlib.suppress(TimeoutError):
                client.read_frame(0.05)
        held = offset
        given = client.window_updates.get(stream_id, 0)
        assert offset < len(view), "the whole body went through while the app read nothing"
        assert shut_since and time.monotonic() - shut_since > 0.5, "the window did not stay shut"
        assert given <= BODY_BUFFER + DEFAULT_WINDOW, given
        assert held <= BODY_BUFFER + 2 * DEFAULT_WINDOW, held
        print(f"app not reading: {held} bytes taken, {given} of stream window given back")
        client.upload(stream_id, bytes(view[offset:]), deadline=time.monotonic() + 10)
        response = client.response(stream_id, timeout=10)
    assert response.status == 200 and int(response.body) == len(body), response
    on_roomy()
