"""Finished connections leave nothing for the garbage collector, and it skips the app's heap.

With a new connection per request, a connection that left a reference cycle
behind would make the collector run every few hundred requests, and each run
pauses a worker. Each test serves one interface with one worker, pauses the
collector, opens connections of several kinds, then asks the worker how much
garbage a collection found.

A worker freezes what it holds once the app has started: a full collection
then walks only what requests left (bench/gc_pauses.py measures the pauses).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.service import running_squall

ROUNDS = 40
#: Garbage the probe requests themselves may leave: far under one object per connection.
ALLOWED = ROUNDS // 2

CLOSE = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
KEEP_ALIVE = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
MALFORMED = b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n"


def _exchange(port: int, data: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        if not read:
            return b""
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def _body(port: int, path: str) -> bytes:
    answer = _exchange(
        port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    )
    return answer.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("interface", ["native", "asgi", "wsgi"])
def test_finished_connections_leave_no_garbage(tmp_path: Path, interface: str) -> None:
    app = f"tests.apps.gc_probe:{interface}"
    iface = "squall" if interface == "native" else interface
    with running_squall(tmp_path, app, "--interface", iface, workers=1) as (_service, port):
        assert _body(port, "/gc/pause") == b"paused"
        for _ in range(ROUNDS):
            assert _exchange(port, CLOSE).startswith(b"HTTP/1.1 200 ")
            answer = _exchange(port, KEEP_ALIVE * 3 + CLOSE)  # pipelined, then closed
            assert answer.count(b"HTTP/1.1 200 ") == 4
            assert _exchange(port, MALFORMED).startswith(b"HTTP/1.1 400 ")
            _exchange(port, KEEP_ALIVE, read=False)  # gone before its answer
        found = int(_body(port, "/gc/count"))
        assert found <= ALLOWED, f"{found} objects of garbage after {4 * ROUNDS} connections"


def test_a_worker_freezes_what_the_started_app_holds(tmp_path: Path) -> None:
    app = "tests.apps.gc_probe:asgi"
    with running_squall(tmp_path, app, "--interface", "asgi", workers=1) as (_service, port):
        frozen = int(_body(port, "/gc/frozen"))
    # squall, asyncio and the app: tens of thousands.
    assert frozen > 1000, f"only {frozen} objects frozen"
