"""HTTP/1.1 on the wire: raw sockets against real squall processes.

Each test speaks bytes to `squall tests.apps.wire:app` and reads the answers
with the small reader below (status line, headers, body framed by
Content-Length, chunked, or the end of the connection), so several responses
can be read from one connection and nothing a client library would smooth
over goes unseen. Every socket has a timeout, so every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.apps.wire import BIG_BODY, BIG_SIZE
from tests.service import Service, free_port, wait_until

APP = "tests.apps.wire:app"
TIMEOUT = 5.0


# -- a raw HTTP/1.1 client -----------------------------------------------------


@dataclass
class Response:
    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def closes(self) -> bool:
        return "close" in (self.header("connection") or "").lower()


class ServerClosed(Exception):
    """The server ended the connection before a whole response arrived."""


class Client:
    """One TCP connection, with a buffer so responses can be read one by one."""

    def __init__(self, port: int, timeout: float = TIMEOUT, rcvbuf: int | None = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.settimeout(timeout)
            sock.connect(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.timeout = timeout
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_unless_refused(self, data: bytes) -> bool:
        """Send, unless the server has already closed (it may reject a request mid-way)."""
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    def _fill(self, size: int = 65536) -> None:
        chunk = self.sock.recv(size)
        if not chunk:
            raise ServerClosed(f"connection closed; unread: {self.buffer[:200]!r}")
        self.buffer += chunk

    def _read_until(self, marker: bytes, limit: int = 1 << 20) -> bytes:
        while True:
            index = self.buffer.find(marker)
            if index >= 0:
                data, self.buffer = self.buffer[:index], self.buffer[index + len(marker) :]
                return data
            if len(self.buffer) > limit:
                raise AssertionError(f"no {marker!r} in {len(self.buffer)} bytes")
            self._fill()

    def _read_exact(self, size: int, recv_size: int = 65536, pause: float = 0.0) -> bytes:
        while len(self.buffer) < size:
            self._fill(recv_size)
            if pause:
                time.sleep(pause)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _read_to_eof(self) -> bytes:
        with contextlib.suppress(ServerClosed):
            while True:
                self._fill()
        data, self.buffer = self.buffer, b""
        return data

    def read_response(
        self, head: bool = False, recv_size: int = 65536, pause: float = 0.0
    ) -> Response:
        """The next response; `head`: it answers a HEAD request, so it has no body."""
        status_line = self._read_until(b"\r\n").decode("latin-1")
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        assert version.startswith("HTTP/1."), f"bad status line {status_line!r}"
        response = Response(int(code), reason, version)
        lines = self._read_until(b"\r\n\r\n").split(b"\r\n") if self._head_has_headers() else []
        for line in lines:
            name, sep, value = line.decode("latin-1").partition(":")
            assert sep, f"bad header line {line!r}"
            response.headers.append((name.strip().lower(), value.strip()))
        if head or response.status < 200 or response.status in (204, 304):
            return response
        length = response.header("content-length")
        if "chunked" in (response.header("transfer-encoding") or "").lower():
            response.body = self._read_chunked()
        elif length is not None:
            response.body = self._read_exact(int(length), recv_size, pause)
        else:
            response.body = self._read_to_eof()
        return response

    def _head_has_headers(self) -> bool:
        # The status line is gone; a head without headers ends with one more CRLF.
        while len(self.buffer) < 2:
            self._fill()
        if self.buffer.startswith(b"\r\n"):
            self.buffer = self.buffer[2:]
            return False
        return True

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = self._read_until(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self._read_until(b"\r\n")  # no trailers from squall: the empty line
                return b"".join(parts)
            parts.append(self._read_exact(size))
            assert self._read_exact(2) == b"\r\n"

    def request(
        self, method: str, target: str, body: bytes | None = None, /, **extra: str
    ) -> Response:
        self.send(build(method, target, body, **extra))
        return self.read_response(head=method == "HEAD")

    def wait_closed(self, timeout: float = TIMEOUT) -> float:
        """Seconds until the server closes (recv returns b""); fails on data or timeout."""
        assert self.buffer == b"", f"unread data: {self.buffer[:200]!r}"
        start = time.monotonic()
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"server kept the connection open for {timeout} s") from None
        except ConnectionResetError:
            data = b""
        finally:
            self.sock.settimeout(self.timeout)
        assert data == b"", f"expected the server to close, got {data[:200]!r}"
        return time.monotonic() - start

    def assert_open(self, wait: float = 0.3) -> None:
        """Nothing arrives and the connection is not closed for `wait` seconds."""
        assert self.buffer == b"", f"unread data: {self.buffer[:200]!r}"
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        finally:
            self.sock.settimeout(self.timeout)
        raise AssertionError(f"connection should be open and quiet, recv gave {data[:200]!r}")


def build(method: str, target: str, body: bytes | None = None, /, **extra: str) -> bytes:
    """A request; keyword arguments become headers (`content_type` -> `content-type`)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: test"]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name.replace('_', '-')}: {value}" for name, value in extra.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


# -- the services ----------------------------------------------------------------


@dataclass
class Server:
    service: Service
    port: int

    def client(self, timeout: float = TIMEOUT, rcvbuf: int | None = None) -> Client:
        return Client(self.port, timeout, rcvbuf)

    def pid(self) -> int:
        """The pid of the worker that answers a fresh connection."""
        with self.client() as client:
            response = client.request("GET", "/pid")
        assert response.status == 200, response
        return int(response.body)


@contextlib.contextmanager
def serve(tmp_path_factory: pytest.TempPathFactory, name: str, *args: str) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp(name) / "squall.log"
    command = [sys.executable, "-m", "squall", APP, "--bind", f"127.0.0.1:{port}", *args]
    service = Service(command, log)
    try:
        service.wait_for_port(port)
        yield Server(service, port)
    finally:
        service.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One worker, so a crashed worker would show as a new pid."""
    with serve(tmp_path_factory, "wire1", "--workers", "1", "--keepalive-timeout", "5") as srv:
        srv.service.wait_for_workers(1)
        yield srv


@pytest.fixture(scope="module")
def worker_pid(server: Server) -> int:
    pid = server.pid()
    assert server.service.workers() == [pid]
    return pid


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory, "wire-idle", "--workers", "1", "--keepalive-timeout", "1") as srv:
        yield srv


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory, "wire2", "--workers", "2", "--keepalive-timeout", "5") as srv:
        srv.service.wait_for_workers(2)
        yield srv


@dataclass
class SameWorker:
    """Call it at the end of a test: the one worker still serves, and logged no error."""

    server: Server
    pid: int
    log_start: int

    def __call__(self) -> None:
        assert self.server.pid() == self.pid, "the worker was replaced"
        assert self.server.service.workers() == [self.pid]
        with open(self.server.service.log_path, "rb") as log:
            log.seek(self.log_start)
            output = log.read().decode(errors="replace")
        for sign in ("Traceback", "Fatal error", "ERROR"):
            assert sign not in output, output


@pytest.fixture
def same_worker(server: Server, worker_pid: int) -> SameWorker:
    return SameWorker(server, worker_pid, server.service.log_path.stat().st_size)


# -- keep-alive and connection close ------------------------------------------------


def test_keep_alive_serves_several_requests(server: Server) -> None:
    with server.client() as client:
        for _ in range(3):
            response = client.request("GET", "/")
            assert (response.status, response.body) == (200, b"ok")
            assert response.version == "HTTP/1.1"
            assert not response.closes
            assert response.header("content-length") == "2"
        client.assert_open()
        assert client.request("GET", "/").body == b"ok"


def test_connection_close_request(server: Server) -> None:
    with server.client() as client:
        response = client.request("GET", "/", Connection="close")
        assert (response.status, response.body) == (200, b"ok")
        assert response.header("connection") == "close"
        client.wait_closed()


def test_http10_closes_by_default(server: Server) -> None:
    with server.client() as client:
        client.send(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        response = client.read_response()
        assert (response.status, response.body) == (200, b"ok")
        assert response.closes
        client.wait_closed()


def test_http10_keep_alive(server: Server) -> None:
    with server.client() as client:
        for _ in range(2):
            client.send(b"GET / HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n")
            response = client.read_response()
            assert (response.status, response.body) == (200, b"ok")
            assert (response.header("connection") or "").lower() == "keep-alive"
        client.assert_open()


# -- pipelining -----------------------------------------------------------------------


def test_pipelined_responses_keep_request_order(server: Server, worker_pid: int) -> None:
    requests = [
        (build("GET", "/slow"), b"slow"),
        (build("GET", "/"), b"ok"),
        (build("GET", "/pid"), str(worker_pid).encode()),
        (build("POST", "/echo", b"first body"), b"first body"),
        (build("GET", "/slow"), b"slow"),
        (build("POST", "/echo", b""), b""),
        (build("GET", "/"), b"ok"),
        (build("POST", "/echo", b"x" * 3000), b"x" * 3000),
        (build("GET", "/slow"), b"slow"),
        (build("GET", "/pid"), str(worker_pid).encode()),
    ]
    with server.client() as client:
        client.send(b"".join(request for request, _ in requests))
        bodies = [client.read_response().body for _ in requests]
        assert bodies == [expected for _, expected in requests]
        client.assert_open()


def test_pipelined_small_and_large_responses_stay_in_order(server: Server) -> None:
    # Small responses made while a read is handled are held and written together;
    # a large one goes out at once. Mixed, they must still leave in request order,
    # and the held ones must reach the wire before the connection closes.
    requests = [
        (build("GET", "/"), b"ok"),
        (build("GET", "/big"), BIG_BODY),
        (build("GET", "/"), b"ok"),
        (build("POST", "/echo", b"y" * 70_000), b"y" * 70_000),
        (build("GET", "/"), b"ok"),
        (build("GET", "/", Connection="close"), b"ok"),
    ]
    with server.client() as client:
        client.send(b"".join(request for request, _ in requests))
        bodies = [client.read_response().body for _ in requests]
        assert [len(body) for body in bodies] == [len(expected) for _, expected in requests]
        assert bodies == [expected for _, expected in requests]
        client.wait_closed()


def test_pipelined_bad_request_after_good_ones(server: Server) -> None:
    # The good answers are held while the read is handled; the 400 that closes the
    # connection must follow them, not overtake or drop them.
    with server.client() as client:
        client.send(build("GET", "/") + build("GET", "/") + b"NOT HTTP AT ALL\r\n\r\n")
        assert [client.read_response().body for _ in range(2)] == [b"ok", b"ok"]
        assert client.read_response().status == 400
        client.wait_closed()


def test_long_pipeline_behind_a_slow_request(server: Server, same_worker: SameWorker) -> None:
    # Every queued request is answered once /slow is done; none may be started from
    # inside the previous response's call stack (400 deep would overflow it).
    count = 400
    with server.client() as client:
        client.send(build("GET", "/slow") + build("GET", "/") * count)
        assert client.read_response().body == b"slow"
        bodies = [client.read_response().body for _ in range(count)]
        assert bodies == [b"ok"] * count
        client.assert_open()
    same_worker()


def test_pipelined_connection_close_ends_the_pipeline(server: Server) -> None:
    with server.client() as client:
        client.send(build("GET", "/", Connection="close") + build("GET", "/pid"))
        response = client.read_response()
        assert (response.body, response.closes) == (b"ok", True)
        client.wait_closed()  # no answer to the request after the close


# -- request bodies -------------------------------------------------------------------


def test_content_length_body_echoed(server: Server) -> None:
    body = bytes(range(256)) * 40
    with server.client() as client:
        response = client.request("POST", "/echo", body)
        assert response.status == 200
        assert response.body == body
        assert response.header("x-body-length") == str(len(body))


def test_chunked_request_body_in_separate_sends(server: Server) -> None:
    chunks = [b"hello ", b"chunked ", b"x" * 1000, b" world"]
    with server.client() as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        for chunk in chunks:
            time.sleep(0.02)
            client.send(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        time.sleep(0.02)
        client.send(b"0\r\n\r\n")
        response = client.read_response()
        assert response.status == 200
        assert response.body == b"".join(chunks)
        assert response.header("x-body-length") == str(sum(map(len, chunks)))
        assert client.request("GET", "/").body == b"ok"


def test_request_in_tiny_sends(server: Server) -> None:
    body = b"0123456789" * 20
    request = build("POST", "/echo", body)
    with server.client() as client:
        for i in range(0, len(request), 3):
            client.send(request[i : i + 3])
            if i % 30 == 0:
                time.sleep(0.001)
        response = client.read_response()
        assert response.body == body
        assert response.header("x-body-length") == str(len(body))


def test_body_bigger_than_the_read_buffer_is_echoed(server: Server) -> None:
    # More than BODY_BUFFER_HIGH (256 KiB) of body for an app that reads it whole.
    body = bytes(range(256)) * (2 * 4096)  # 2 MiB
    with server.client() as client:
        client.send(build("POST", "/echo", body))
        response = client.read_response()
        assert response.status == 200
        assert response.header("x-body-length") == str(len(body))
        assert response.body == body
        assert client.request("GET", "/").body == b"ok"


def test_expect_100_continue(server: Server) -> None:
    body = b"sent after 100 Continue"
    with server.client() as client:
        client.send(
            b"POST /echo HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        interim = client.read_response()  # before any body byte is sent
        assert interim.status == 100
        assert interim.version == "HTTP/1.1"
        client.send(body)
        response = client.read_response()
        assert (response.status, response.body) == (200, body)
        assert client.request("GET", "/").body == b"ok"


def test_expect_100_continue_on_a_pipelined_request(server: Server) -> None:
    # The Expect request waits behind /slow; once its turn comes it gets its 100.
    body = b"queued body"
    with server.client() as client:
        client.send(
            build("GET", "/slow") + b"POST /echo HTTP/1.1\r\nHost: test\r\n"
            b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert client.read_response().body == b"slow"
        interim = client.read_response()
        assert interim.status == 100
        client.send(body)
        assert client.read_response().body == body


def test_expect_without_waiting_for_100(server: Server) -> None:
    # A client may send the body at once; it gets the 100 and then the response.
    body = b"no waiting"
    with server.client() as client:
        client.send(build("POST", "/echo", body, Expect="100-continue"))
        responses = [client.read_response(), client.read_response()]
        assert [r.status for r in responses] == [100, 200]
        assert responses[1].body == body


# -- HEAD -----------------------------------------------------------------------------


def test_head_has_length_but_no_body(server: Server, worker_pid: int) -> None:
    with server.client() as client:
        client.send(build("HEAD", "/") + build("HEAD", "/big") + build("GET", "/pid"))
        small = client.read_response(head=True)
        assert small.status == 200
        assert small.header("content-length") == "2"
        big = client.read_response(head=True)
        assert big.status == 200
        assert big.header("content-length") == str(BIG_SIZE)
        # Had either HEAD response carried a body, this would not parse as a status line.
        after = client.read_response()
        assert after.body == str(worker_pid).encode()
        client.assert_open()


# -- malformed requests -------------------------------------------------------------------

MALFORMED = {
    "garbage": b"THIS IS NOT HTTP AT ALL\r\n\r\n",
    "binary": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "bad-header-name": b"GET / HTTP/1.1\r\nHost: test\r\nBad Header: x\r\n\r\n",
    "header-without-colon": b"GET / HTTP/1.1\r\nHost: test\r\nNoColonHere\r\n\r\n",
    "bad-version": b"GET / HTTP/9.9\r\nHost: test\r\n\r\n",
    "cl-te-smuggling": (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /pid HTTP/1.1\r\nHost: test\r\n\r\n"
    ),
    "te-cl-smuggling": (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\nGET /pid HTTP/1.1\r\nHost: test\r\n\r\n"
    ),
    "duplicate-content-length": (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 1\r\nContent-Length: 30\r\n\r\n"
        b"aGET /pid HTTP/1.1\r\nHost: test\r\n\r\n"
    ),
    "bad-content-length": b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 1x\r\n\r\na",
    "bad-chunk-size": (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nhello\r\n0\r\n\r\nGET /pid HTTP/1.1\r\nHost: test\r\n\r\n"
    ),
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_gets_400_and_close(
    server: Server, payload: bytes, same_worker: SameWorker
) -> None:
    with server.client() as client:
        client.send(payload)
        response = client.read_response()
        assert response.status == 400, response
        assert response.closes
        # Nothing after the 400: no response to a smuggled second request.
        client.wait_closed()
    same_worker()


def test_bad_request_after_good_ones_on_a_connection(
    server: Server, same_worker: SameWorker
) -> None:
    with server.client() as client:
        client.send(build("GET", "/slow") + build("GET", "/") + b"BROKEN\x00LINE\r\n\r\n")
        assert client.read_response().body == b"slow"
        assert client.read_response().body == b"ok"
        assert client.read_response().status == 400
        client.wait_closed()
    same_worker()


UPGRADES = {
    "websocket": b"GET / HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "h2c": (
        b"GET / HTTP/1.1\r\nHost: test\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    ),
}


@pytest.mark.parametrize("payload", UPGRADES.values(), ids=UPGRADES.keys())
def test_upgrade_request_is_answered_and_never_left_hanging(
    server: Server, worker_pid: int, payload: bytes, same_worker: SameWorker
) -> None:
    # squall switches to no other protocol, so it answers the request as plain
    # HTTP/1.1; the request after it must then be answered too, or the
    # connection closed: never silently ignored until the idle timeout.
    with server.client(timeout=3.0) as client:
        client.send(payload + build("GET", "/pid"))
        first = client.read_response()
        assert (first.status, first.body) == (200, b"ok")
        if first.closes:
            client.wait_closed(timeout=3.0)
        else:
            assert client.read_response().body == str(worker_pid).encode()
    same_worker()


# -- limits ----------------------------------------------------------------------------


def test_long_request_target_is_414(server: Server, same_worker: SameWorker) -> None:
    with server.client() as client:
        client.send(build("GET", "/" + "a" * 8200))
        response = client.read_response()
        assert response.status == 414
        assert response.closes
        client.wait_closed()
    same_worker()


def test_request_target_at_the_limit_is_served(server: Server) -> None:
    with server.client() as client:
        response = client.request("GET", "/?" + "a" * (8192 - 2))
        assert (response.status, response.body) == (200, b"ok")


def test_header_block_over_64k_is_431(server: Server, same_worker: SameWorker) -> None:
    with server.client() as client:
        client.send(build("GET", "/", X_Big="v" * 70_000))
        response = client.read_response()
        assert response.status == 431
        assert response.closes
        client.wait_closed()
    same_worker()


def test_header_block_over_64k_in_pieces_is_431(server: Server, same_worker: SameWorker) -> None:
    with server.client() as client:
        client.send(b"GET / HTTP/1.1\r\nHost: test\r\n")
        # The server may answer and close before the last pieces are sent.
        for i in range(70):
            if not client.send_unless_refused(b"X-Filler-%d: %b\r\n" % (i, b"v" * 1000)):
                break
            if i % 10 == 0:
                time.sleep(0.01)
        else:
            client.send_unless_refused(b"\r\n")
        response = client.read_response()
        assert response.status == 431
        assert response.closes
        client.wait_closed()
    same_worker()


def test_endless_header_block_is_431_before_it_ends(
    server: Server, same_worker: SameWorker
) -> None:
    # The head never ends; the server must not wait for it past the limit.
    with server.client(timeout=3.0) as client:
        client.send(b"GET / HTTP/1.1\r\nHost: test\r\n")
        for i in range(70):
            if not client.send_unless_refused(b"X-Filler-%d: %b\r\n" % (i, b"v" * 1000)):
                break
            if i % 10 == 0:
                time.sleep(0.01)
        response = client.read_response()
        assert response.status == 431
        client.wait_closed(timeout=3.0)
    same_worker()


def test_101_headers_is_431(server: Server, same_worker: SameWorker) -> None:
    headers = {f"X_H{i}": "v" for i in range(100)}  # plus Host: 101 headers
    with server.client() as client:
        client.send(build("GET", "/", **headers))
        response = client.read_response()
        assert response.status == 431
        assert response.closes
        client.wait_closed()
    same_worker()


def test_100_headers_are_served(server: Server) -> None:
    headers = {f"X_H{i}": "v" for i in range(99)}  # plus Host: 100 headers
    with server.client() as client:
        response = client.request("GET", "/", **headers)
        assert (response.status, response.body) == (200, b"ok")


# -- idle connections ----------------------------------------------------------------------


def test_keepalive_timeout_closes_idle_connection(quick_server: Server) -> None:
    with quick_server.client() as client:
        assert client.request("GET", "/").body == b"ok"
        waited = client.wait_closed(timeout=5.0)
    assert 0.5 <= waited <= 3.0, waited


def test_keepalive_timeout_closes_connection_that_never_sends(quick_server: Server) -> None:
    with quick_server.client() as client:
        waited = client.wait_closed(timeout=5.0)
    assert waited <= 3.0, waited


def test_request_in_flight_outlives_keepalive_timeout(quick_server: Server) -> None:
    with quick_server.client() as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 4\r\n\r\nab")
        time.sleep(1.5)  # longer than the idle timeout, but a request is under way
        client.send(b"cd")
        assert client.read_response().body == b"abcd"


def test_slow_reader_gets_whole_response_past_keepalive_timeout(quick_server: Server) -> None:
    # Reading /big takes longer than the 1 s idle timeout; no byte may be lost.
    with quick_server.client(rcvbuf=8192) as client:
        client.send(build("GET", "/big"))
        start = time.monotonic()
        response = client.read_response(recv_size=4096, pause=0.006)
        assert time.monotonic() - start > 1.0
        assert response.body == BIG_BODY


# -- clients that go away ---------------------------------------------------------------


def test_clients_that_vanish_do_not_hurt_the_worker(
    server: Server, same_worker: SameWorker
) -> None:
    partials = [
        b"",
        b"GET /",
        b"GET / HTTP/1.1\r\nHost: te",
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nonly some",
        b"POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        build("GET", "/slow"),  # gone before the response is written
        build("GET", "/big"),  # gone without reading the response
    ]
    for partial in partials:
        with server.client() as client:
            if partial:
                client.send(partial)
    # Reset instead of FIN: SO_LINGER with a zero timeout.
    with server.client() as client:
        client.send(build("GET", "/slow"))
        client.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
    time.sleep(0.3)  # let the /slow handlers finish writing to closed connections
    same_worker()


def test_half_closed_client_still_gets_its_answer(server: Server) -> None:
    with server.client() as client:
        client.send(build("GET", "/slow") + build("GET", "/"))
        client.sock.shutdown(socket.SHUT_WR)
        assert client.read_response().body == b"slow"
        assert client.read_response().body == b"ok"
        client.wait_closed()


def test_half_close_in_the_middle_of_a_body_is_not_left_hanging(
    server: Server, same_worker: SameWorker
) -> None:
    # The body can never be complete: the server must end the connection (a 400
    # first is fine), not wait for bytes that cannot come.
    with server.client(timeout=3.0) as client:
        client.send(b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nabc")
        client.sock.shutdown(socket.SHUT_WR)
        try:
            response = client.read_response()
        except ServerClosed:
            pass
        else:
            assert response.status == 400
            assert response.closes
            client.wait_closed(timeout=3.0)
    same_worker()


# -- large responses -----------------------------------------------------------------------


def test_big_response_read_slowly(server: Server) -> None:
    with server.client(rcvbuf=8192) as client:
        client.send(build("GET", "/big"))
        response = client.read_response(recv_size=4096, pause=0.001)
        assert response.status == 200
        assert response.header("content-length") == str(BIG_SIZE)
        assert len(response.body) == BIG_SIZE
        assert response.body == BIG_BODY
        assert client.request("GET", "/").body == b"ok"


# -- several workers -------------------------------------------------------------------------


def test_two_workers_two_held_connections(two_workers: Server) -> None:
    pids = set(two_workers.service.workers())
    assert len(pids) == 2
    with two_workers.client() as first, two_workers.client() as second:
        first.send(build("GET", "/slow"))
        second.send(build("GET", "/slow"))
        assert first.read_response().body == b"slow"
        assert second.read_response().body == b"slow"
        for _ in range(3):
            for client in (first, second):
                response = client.request("GET", "/pid")
                assert response.status == 200
                assert int(response.body) in pids
        first.assert_open(0.1)
        second.assert_open(0.1)


def test_two_workers_both_serve(two_workers: Server) -> None:
    pids = set(two_workers.service.workers())
    seen: set[int] = set()

    def both_seen() -> bool:
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(two_workers.client()) for _ in range(8)]
            for client in clients:
                seen.add(int(client.request("GET", "/pid").body))
        return seen == pids

    wait_until(both_seen, timeout=10.0, interval=0.05)


# -- lingering close -----------------------------------------------------------------


def _read_all(sock: socket.socket) -> tuple[bytes, str]:
    """Everything until the server's FIN, and how it ended ("eof" or the error)."""
    received = b""
    sock.settimeout(5)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError as exc:
        return received, type(exc).__name__
    return received, "eof"


@pytest.mark.parametrize(
    "first",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",  # a 400
    ],
    ids=["connection-close", "bad-request"],
)
def test_a_close_with_unread_bytes_sends_no_reset(
    server: Server, worker_pid: int, first: bytes
) -> None:
    # Bytes the server will never read follow a request that ends the
    # connection. Closed with them unread, the socket would send a reset,
    # and the client's kernel would drop the response it had not read yet.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(first + b"X" * 200_000)
        time.sleep(0.3)  # the response is in the client's buffer, the junk in the server's
        received, end = _read_all(sock)
    assert end == "eof", (end, received[:200])
    status = received.split(b"\r\n", 1)[0]
    assert status in (b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"), received[:200]
    assert server.pid() == worker_pid


def _sockets_of(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in os.listdir(fds):
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            count += os.readlink(fds / fd).startswith("socket:")
    return count


def test_a_client_that_said_close_is_not_lingered_on(server: Server, worker_pid: int) -> None:
    # A client whose request said `Connection: close`, and that sent nothing
    # after it, will send nothing more: the worker closes at once instead of
    # holding the socket until the client's FIN (or LINGER). A malformed
    # request, which the client may still be sending, is lingered on.
    def hold(request: bytes, status: bytes) -> list[socket.socket]:
        held = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            held.append(sock)
            sock.sendall(request)
            received, end = _read_all(sock)  # the server's FIN; this side stays open
            assert end == "eof" and received.startswith(status), received[:200]
        return held

    time.sleep(3)  # what earlier tests left lingering is closed by now (LINGER 2 s, ticks 0.5 s)
    before = _sockets_of(worker_pid)
    clients = hold(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"HTTP/1.1 200")
    clients += hold(b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.1 200")
    try:
        assert _sockets_of(worker_pid) - before < 5
        clients += hold(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: no\r\n\r\n", b"HTTP/1.1 400")
        assert _sockets_of(worker_pid) - before >= 15  # lingering, until LINGER or the FIN
    finally:
        for sock in clients:
            sock.close()
    assert server.pid() == worker_pid


def test_a_lingering_close_ends_though_the_client_never_stops_sending(
    server: Server, worker_pid: int
) -> None:
    # Lingering reads and drops what comes, but only for so long: a client that
    # keeps sending and never sends its FIN is closed on all the same.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 10:
            try:
                sock.sendall(b"x" * 1024)
            except OSError:  # the server's close: a reset, once it stops reading
                closed_after = time.monotonic() - started
                break
            time.sleep(0.05)
    assert closed_after is not None, "the connection was never closed"
    assert closed_after < 2.0 + 2.0, closed_after  # LINGER, and the ticker's half-second
    assert server.pid() == worker_pid


# -- a new connection's first request, answered on the accepted socket ---------------
#
# The acceptor reads what a new connection brought and the protocol answers
# it on the socket itself (squall.http.direct); the loop's transport takes
# over only a connection that stays open, or an answer the socket did not
# take whole. These feed the first request in the connection's first packet.


def test_a_big_answer_to_a_first_request_that_closes_reaches_a_slow_reader(
    server: Server, worker_pid: int
) -> None:
    # The socket takes part of the 1 MiB at once; the loop's transport sends
    # the rest and then closes, as the request asked.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(build("GET", "/big", Connection="close"))
        time.sleep(0.5)  # the server is left holding what the socket did not take
        received, end = _read_all(sock)
    assert end == "eof", end
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" in head.lower()
    assert body == BIG_BODY
    assert server.pid() == worker_pid


def test_a_first_request_that_keeps_the_connection_is_followed_by_more(server: Server) -> None:
    # The first request and half of the second come in the first packet; the
    # second's rest comes after the loop's transport has taken over.
    second = build("POST", "/echo", b"x" * 3000)
    with server.client() as client:
        client.send(build("GET", "/") + second[:40])
        assert client.read_response().status == 200
        time.sleep(0.2)
        client.send(second[40:])
        echoed = client.read_response()
        assert echoed.status == 200 and echoed.body == b"x" * 3000
        client.send(build("GET", "/", Connection="close"))
        assert client.read_response().closes


def test_short_connections_leave_no_descriptor_behind(server: Server, worker_pid: int) -> None:
    # Each is answered and closed on the accepted socket, or by the loop's
    # transport; either way the worker ends up holding what it held before.
    time.sleep(3)  # what earlier tests left lingering is closed by now
    before = _sockets_of(worker_pid)
    requests = [
        build("GET", "/", Connection="close"),
        b"GET / HTTP/1.0\r\n\r\n",
        build("GET", "/"),  # keep-alive: the loop's transport, closed by this client
        build("GET", "/big", Connection="close"),
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ]
    for _ in range(40):
        for request in requests:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(request)
                received = sock.recv(65536)
                assert received.startswith(b"HTTP/1.1 "), received[:100]
    wait_until(lambda: _sockets_of(worker_pid) <= before, timeout=10)
    assert server.pid() == worker_pid
