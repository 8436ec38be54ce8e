"""Streaming in both directions, served for real by `tests.apps.streaming_app`.

- squall handlers: `flush()` sends chunks as they are written, and
  `@stream_request_body` handlers get the body piece by piece;
- WSGI: `wsgi.input` delivers the body as it arrives, and a slow app makes
  the connection stop reading (backpressure);
- every interface: a client that stops reading a large response holds the
  app, not the worker's memory (RSS measured from /proc), and the worker
  serves on once the client has gone.

Each interface runs in its own service with one worker, so the worker's pid
is known and every request reaches it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.apps.streaming_app import PIECE, RECORD_DIR_ENV
from tests.service import Service, free_port, wait_until

TIMEOUT = httpx.Timeout(10.0)
MIB = 1 << 20
BIG = 200 * MIB  # the slow reader's response
RSS_GROWTH_LIMIT_KIB = 20 * 1024


@dataclass
class Served:
    service: Service
    port: int
    url: str
    pid: int
    records: Path

    def record(self, name: str, timeout: float = 10.0) -> str:
        path = self.records / name
        wait_until(path.exists, timeout=timeout)
        return path.read_text()


def _serve(tmp: Path, interface: str) -> Iterator[Served]:
    port = free_port()
    records = tmp / "records"
    records.mkdir()
    attr = {"squall": "app", "asgi": "asgi", "wsgi": "wsgi"}[interface]
    service = Service(
        [
            sys.executable,
            "-m",
            "squall",
            f"tests.apps.streaming_app:{attr}",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--interface",
            interface,
        ],
        tmp / "squall.log",
        env={RECORD_DIR_ENV: str(records)},
    )
    try:
        service.wait_for_port(port)
        (pid,) = service.wait_for_workers(1)
        yield Served(service, port, f"http://127.0.0.1:{port}", pid, records)
    finally:
        service.stop()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("stream-web"), "squall")


@pytest.fixture(scope="module")
def asgi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("stream-asgi"), "asgi")


@pytest.fixture(scope="module")
def wsgi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from _serve(tmp_path_factory.mktemp("stream-wsgi"), "wsgi")


# -- raw HTTP helpers ------------------------------------------------------------------


def connect(port: int, timeout: float = 10.0, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def read_timed(sock: socket.socket, timeout: float = 10.0) -> list[tuple[float, bytes]]:
    """Every piece received until the server closes, with its arrival time."""
    pieces = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        pieces.append((time.monotonic(), data))
    return pieces


def first_seen(pieces: list[tuple[float, bytes]], marker: bytes) -> float:
    """When `marker` had arrived in full."""
    buffered = b""
    for at, data in pieces:
        buffered += data
        if marker in buffered:
            return at
    raise AssertionError(f"{marker!r} never arrived: {buffered[:300]!r}")


def split_head(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw[:300]
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """The chunked body's data, and whether its last chunk arrived."""
    data: list[bytes] = []
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            return b"".join(data), False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return b"".join(data), rest.startswith(b"\r\n")
        if len(rest) < size + 2:
            data.append(rest[:size])
            return b"".join(data), False
        data.append(rest[:size])
        body = rest[size + 2 :]
    return b"".join(data), False


def get_pid(served: Served) -> int:
    with httpx.Client(base_url=served.url, timeout=TIMEOUT) as client:
        response = client.get("/worker")
        assert response.status_code == 200
        return int(response.json()["pid"])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def pattern(size: int) -> bytes:
    return bytes(i % 253 for i in range(size))


# -- flush() ---------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "delay"), [("/flush", 0.5), ("/flush-sync", 0.3)])
def test_flush_delivers_chunks_before_the_handler_finishes(
    web: Served, path: str, delay: float
) -> None:
    with connect(web.port) as sock:
        sock.sendall(
            f"GET {path}?n=3&delay={delay} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
        )
        pieces = read_timed(sock)
    raw = b"".join(data for _, data in pieces)
    status, headers, body = split_head(raw)
    assert status == "HTTP/1.1 200 OK"
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    assert headers["content-type"] == "text/plain"
    data, complete = dechunk(body)
    assert complete
    assert data == b"chunk-0;chunk-1;chunk-2;end"
    first = first_seen(pieces, b"chunk-0;")
    second = first_seen(pieces, b"chunk-1;")
    last = first_seen(pieces, b"0\r\n\r\n")
    # The handler sleeps `delay` after each flush: the first chunk is out
    # three delays before the handler ends, the second one delay later.
    assert second - first >= delay * 0.8, (second - first, delay)
    assert last - first >= 2.5 * delay, (last - first, delay)


def test_flush_keeps_the_connection(web: Served) -> None:
    with httpx.Client(base_url=web.url, timeout=TIMEOUT) as client:
        response = client.get("/flush-head")
        assert response.status_code == 200
        assert response.text == "flushed body and more"
        assert response.headers["transfer-encoding"] == "chunked"
        head = client.head("/flush-head")
        assert head.status_code == 200
        assert head.headers["x-flushed"] == "yes"
        assert head.content == b""
        # The same keep-alive connection carries on after both.
        assert client.get("/worker").json()["pid"] == web.pid


def test_error_after_flush_cuts_the_response_off(web: Served) -> None:
    with connect(web.port) as sock:
        sock.sendall(b"GET /flush-error HTTP/1.1\r\nHost: t\r\n\r\n")
        raw = b"".join(data for _, data in read_timed(sock))
    status, _, body = split_head(raw)
    assert status == "HTTP/1.1 200 OK"  # the head was out before the failure
    data, complete = dechunk(body)
    assert data == b"partial;"
    assert not complete  # no last chunk: the client can tell the response broke off
    web.service.wait_for_log("failure after flush", timeout=5)
    assert get_pid(web) == web.pid


# -- @stream_request_body ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/upload", "/upload-async"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_stream_request_body_gets_pieces(web: Served, path: str, framing: str) -> None:
    body = pattern(5 * MIB)

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    with httpx.Client(base_url=web.url, timeout=TIMEOUT) as client:
        content = body if framing == "length" else pieces()
        response = client.post(path, content=content)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["total"] == len(body)
    assert result["crc"] == zlib.crc32(body)
    assert result["pieces"] > 1, result
    assert result["prepared_before_body"] is True
    assert result["request_body"] == 0  # the body went to data_received only


def test_stream_request_body_expect_continue(web: Served) -> None:
    body = pattern(MIB)
    with connect(web.port) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n" % len(body)
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        raw = b"".join(data for _, data in read_timed(sock))
    status, _, response = split_head(raw)
    assert status == "HTTP/1.1 200 OK"
    result = json.loads(response)
    assert (result["total"], result["crc"]) == (len(body), zlib.crc32(body))


def test_stream_request_body_broken_off(web: Served) -> None:
    with connect(web.port) as sock:
        sock.sendall(
            b"PUT /upload?token=cut HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (5 * MIB)
        )
        sock.sendall(pattern(MIB))
        time.sleep(0.2)
    received = int(web.record("upload-closed-cut"))
    assert 0 < received <= MIB
    assert get_pid(web) == web.pid


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_plain_handler_still_gets_the_whole_body(web: Served, framing: str) -> None:
    # Above the connection's 256 KiB buffer (read by a task) and below it (run
    # by the connection once the body is in), with either framing.
    with httpx.Client(base_url=web.url, timeout=TIMEOUT) as client:
        for size in (100, 3 * MIB):
            body = pattern(size)
            content = body if framing == "length" else iter([body[: size // 2], body[size // 2 :]])
            response = client.post("/length", content=content)
            assert response.json() == {"total": size, "crc": zlib.crc32(body)}
        assert client.get("/worker").json()["pid"] == web.pid


# -- WSGI input ------------------------------------------------------------------------


def test_wsgi_input_is_read_before_the_upload_ends(wsgi: Served) -> None:
    half = 512 * 1024
    body = pattern(2 * half)
    with connect(wsgi.port) as sock:
        sock.sendall(
            b"POST /progress?token=p&half=%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (half, len(body))
        )
        sock.sendall(body[:half])
        # The app has read the first half while the second is not even sent.
        assert int(wsgi.record("half-p", timeout=5)) == half
        sock.sendall(body[half:])
        raw = b"".join(data for _, data in read_timed(sock))
    status, _, response = split_head(raw)
    assert status == "HTTP/1.1 200 OK"
    assert json.loads(response) == {"total": len(body), "crc": zlib.crc32(body)}


def test_wsgi_input_chunked_and_expect_continue(wsgi: Served) -> None:
    body = pattern(700 * 1024)
    with connect(wsgi.port) as sock:
        sock.sendall(
            b"POST /progress?token=c&half=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = sock.recv(100)  # the app reads wsgi.input: the 100 comes
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        for start in range(0, len(body), 100_000):
            piece = body[start : start + 100_000]
            sock.sendall(b"%x\r\n%b\r\n" % (len(piece), piece))
        sock.sendall(b"0\r\n\r\n")
        raw = b"".join(data for _, data in read_timed(sock))
    status, _, response = split_head(raw)
    assert status == "HTTP/1.1 200 OK"
    assert json.loads(response) == {"total": len(body), "crc": zlib.crc32(body)}


def test_wsgi_pipelined_bodies(wsgi: Served) -> None:
    # Two requests with bodies in one send: each app call gets its own body.
    first, second = pattern(300 * 1024), pattern(1000)[::-1]
    requests = b"".join(
        b"POST /progress?half=1 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%b\r\n%b"
        % (len(body), extra, body)
        for body, extra in ((first, b""), (second, b"Connection: close\r\n"))
    )
    with connect(wsgi.port) as sock:
        sock.sendall(requests)
        raw = b"".join(data for _, data in read_timed(sock))
    answers = []
    while raw:
        status, headers, rest = split_head(raw)
        assert status == "HTTP/1.1 200 OK"
        length = int(headers["content-length"])
        answers.append(json.loads(rest[:length]))
        raw = rest[length:]
    assert answers == [
        {"total": len(first), "crc": zlib.crc32(first)},
        {"total": len(second), "crc": zlib.crc32(second)},
    ]


def test_wsgi_input_lines(wsgi: Served) -> None:
    pieces = [b"first ", b"line\nabcd", b"efgh\nmid", b"dle\nr1\n", b"r2\ntail-no-newline"]
    with connect(wsgi.port) as sock:
        sock.sendall(
            b"POST /lines HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )
        for piece in pieces:  # lines split across pieces that arrive apart
            sock.sendall(b"%x\r\n%b\r\n" % (len(piece), piece))
            time.sleep(0.05)
        sock.sendall(b"0\r\n\r\n")
        raw = b"".join(data for _, data in read_timed(sock))
    status, _, response = split_head(raw)
    assert status == "HTTP/1.1 200 OK"
    assert json.loads(response) == {
        "first": "first line\n",
        "limited": "abcd",
        "rest_of_line": "efgh\n",
        "middle": ["middle\n"],
        "remaining": ["r1\n", "r2\n", "tail-no-newline"],
        "tail": "",
    }


def test_wsgi_input_backpressure(wsgi: Served) -> None:
    # The app reads 64 KiB and then stops: the worker must stop reading the
    # socket instead of buffering the upload, and the client's sends stall.
    size = 96 * MIB  # under the default body limit (100 MiB)
    rss_before = rss_kib(wsgi.pid)
    chunk = bytes(MIB)
    with connect(wsgi.port) as sock:
        sock.sendall(b"POST /hold?token=h HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
        sock.settimeout(0.5)
        sent = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and sent < size:
            # A send that times out has stalled: the server has stopped reading.
            with contextlib.suppress(TimeoutError, BlockingIOError):
                sent += sock.send(chunk[: min(MIB, size - sent)])
        rss_during = rss_kib(wsgi.pid)
        print(
            f"\nWSGI held upload: client got {sent / MIB:.1f} MiB of {size // MIB} MiB out; "
            f"worker RSS {rss_before} -> {rss_during} KiB (+{rss_during - rss_before} KiB)"
        )
        assert sent < size // 4, f"{sent} bytes sent: the upload was not held back"
        assert rss_during - rss_before < RSS_GROWTH_LIMIT_KIB
        (wsgi.records / "go-h").write_text("")
        sock.settimeout(10)
        while sent < size:
            sent += sock.send(chunk[: min(MIB, size - sent)])
        raw = b""
        deadline = time.monotonic() + 10
        while b"}" not in raw and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            raw += data
    status, _, response = split_head(raw)
    assert status == "HTTP/1.1 200 OK"
    assert json.loads(response) == {"total": size}


def test_wsgi_input_cut_off_raises(wsgi: Served) -> None:
    with connect(wsgi.port) as sock:
        sock.sendall(
            b"POST /cut?token=x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (4 * MIB)
        )
        sock.sendall(pattern(300 * 1024))
        time.sleep(0.2)
    # Once the client was gone, the app's read raised (an OSError) where it needed
    # more than had come: a body cut short never looks complete.
    error, _, total = wsgi.record("cut-x").partition(" after ")
    assert error == "RequestBodyError" and int(total) <= 300 * 1024
    assert get_pid(wsgi) == wsgi.pid


# -- the slow reader -----------------------------------------------------------------------


def read_response(served: Served, path: str) -> bytes:
    with connect(served.port) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        raw = b"".join(data for _, data in read_timed(sock))
    status, _, body = split_head(raw)
    assert status == "HTTP/1.1 200 OK"
    data, complete = dechunk(body)
    assert complete
    return data


@pytest.mark.parametrize("interface", ["web", "asgi", "wsgi"])
def test_slow_reader_does_not_grow_the_worker(
    request: pytest.FixtureRequest, interface: str
) -> None:
    served: Served = request.getfixturevalue(interface)
    closed_record = {"web": "web-closed", "asgi": "asgi-closed", "wsgi": "wsgi-closed"}[interface]
    # Warm up the same path (threads, buffers), fully read.
    assert len(read_response(served, f"/big?size={4 * MIB}&token=warm")) == 4 * MIB
    rss_before = rss_kib(served.pid)

    with connect(served.port, rcvbuf=64 * 1024) as sock:
        sock.sendall(f"GET /big?size={BIG}&token=slow HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        received = b""
        while len(received) < 8192:
            data = sock.recv(4096)
            assert data, "closed early"
            received += data
        assert received.startswith(b"HTTP/1.1 200 OK\r\n")
        time.sleep(2.0)  # read nothing while the app would produce 200 MiB
        rss_stalled = rss_kib(served.pid)
    produced = int(served.record(f"{closed_record}-slow"))
    rss_after = rss_kib(served.pid)
    print(
        f"\n{interface} slow reader: worker RSS {rss_before} KiB before, "
        f"{rss_stalled} KiB after 2 s stalled (+{rss_stalled - rss_before} KiB), "
        f"{rss_after} KiB after the client left; the app produced "
        f"{produced / MIB:.1f} MiB of {BIG // MIB} MiB"
    )
    assert rss_stalled - rss_before < RSS_GROWTH_LIMIT_KIB
    assert produced < BIG // 4  # it stopped when the client left
    # The worker (the same process) serves the next request normally.
    assert get_pid(served) == served.pid
    assert len(read_response(served, f"/big?size={PIECE * 3 + 5}&token=next")) == PIECE * 3 + 5
