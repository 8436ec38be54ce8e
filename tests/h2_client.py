"""A blocking HTTP/2 client on the h2 library, for tests that must see streams, resets and GOAWAY.

httpx hides what a test of a server's HTTP/2 needs to see: which stream was
reset and with which code, when GOAWAY came and which stream it named. This
client shows them. Every read has a deadline.

h2 as a client takes no frame after a GOAWAY (its connection state machine
closes), though RFC 9113 6.8 has the streams up to the GOAWAY's last one
answered after it; httpx, on h2, fails those requests. This client reads
them, as nghttp2's clients (curl, browsers) do, so that a test sees what the
server sends.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


class _ReadsAfterGoaway(h2.connection.H2ConnectionStateMachine):
    """h2's connection state machine, going on after a GOAWAY. It also sends
    after one, as a client does that has not read it yet (a test of the race)."""

    _transitions = {
        **h2.connection.H2ConnectionStateMachine._transitions,
        **{
            (h2.connection.ConnectionState.CLOSED, each): (
                None,
                h2.connection.ConnectionState.CLOSED,
            )
            for each in h2.connection.ConnectionInputs
        },
    }


@dataclass
class Stream:
    """What came back on one stream."""

    stream_id: int
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None  # the RST_STREAM error code

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class H2Client:
    """One HTTP/2 connection to 127.0.0.1: h2c with prior knowledge, or TLS with ALPN h2."""

    def __init__(
        self,
        port: int,
        tls: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        settings: dict[int, int] | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        """`sock`: a connection already open (else one is made now)."""
        self.port = port
        self.timeout = timeout
        raw = sock or socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            self.sock: socket.socket = tls.wrap_socket(raw, server_hostname="localhost")
            assert self.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
        else:
            self.sock = raw
        self.scheme = b"https" if tls is not None else b"http"
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.state_machine = _ReadsAfterGoaway()
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.streams: dict[int, Stream] = {}
        self.goaway: tuple[int, int] | None = None  # (last stream id, error code)
        self.goaways: list[tuple[int, int]] = []
        self.pings_acked: list[bytes] = []
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def request(
        self,
        path: str = "/",
        method: str = "GET",
        body: bytes = b"",
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Stream:
        stream_id = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", self.scheme),
            (b":authority", f"127.0.0.1:{self.port}".encode()),
            *headers,
        ]
        self.conn.send_headers(stream_id, fields, end_stream=not body)
        stream = self.streams[stream_id] = Stream(stream_id)
        self.flush()
        if body:
            self._send_body(stream, body)
        return stream

    def _send_body(self, stream: Stream, body: bytes) -> None:
        view = memoryview(body)
        while view:
            window = self.conn.local_flow_control_window(stream.stream_id)
            size = min(window, self.conn.max_outbound_frame_size, len(view))
            if size <= 0:
                self.pump(
                    lambda: stream.done or self.conn.local_flow_control_window(stream.stream_id) > 0
                )
                if stream.done:
                    return
                continue
            self.conn.send_data(
                stream.stream_id, view[:size].tobytes(), end_stream=size == len(view)
            )
            view = view[size:]
            self.flush()

    def get(self, path: str = "/", **kwargs: object) -> Stream:
        stream = self.request(path, **kwargs)  # type: ignore[arg-type]
        self.pump(lambda: stream.done)
        return stream

    def ping(self, data: bytes = b"12345678") -> None:
        self.conn.ping(data)
        self.flush()

    def pump(self, until: Callable[[], bool], timeout: float | None = None) -> None:
        """Read and act on frames until `until()` or the connection closes; AssertionError on timeout."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while not until():
            if self.closed:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"HTTP/2 client: condition not met in time: {until}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            self.receive(data)

    def receive(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                stream = self.streams[event.stream_id]
                for name, value in event.headers:
                    if name == b":status":
                        stream.status = int(value)
                    else:
                        stream.headers.append((name, value))
            elif isinstance(event, h2.events.DataReceived):
                self.streams[event.stream_id].body += event.data
                if event.flow_controlled_length:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, h2.events.StreamEnded):
                self.streams[event.stream_id].ended = True
            elif isinstance(event, h2.events.StreamReset):
                if event.stream_id in self.streams:
                    self.streams[event.stream_id].reset = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = (event.last_stream_id, event.error_code)
                self.goaways.append(self.goaway)
            elif isinstance(event, h2.events.PingAckReceived):
                self.pings_acked.append(event.ping_data)
        self.flush()

    def close(self) -> None:
        if not self.closed:
            try:
                self.conn.close_connection()
                self.flush()
            except h2.exceptions.ProtocolError:
                pass
        self.closed = True
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def window_settings(size: int) -> dict[int, int]:
    """SETTINGS that set the client's receive window of each stream."""
    return {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: size}
