"""The client limit of the supervisor's endpoints (`squall/endpoint.py`), the same for both.

At its limit, the metrics endpoint (HTTP on 127.0.0.1) and the control socket
(JSON lines on a unix socket) let a newcomer take the place of the connection
idle longest; one mid-request is never dropped for it; when every one is
mid-request, the newcomer is refused. A real supervisor, real sockets.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from squall import control, metrics
from tests.service import Services, free_port

TIMEOUT = 5.0


@dataclass
class Endpoint:
    """How to talk to one of the two endpoints."""

    connect: Callable[[], socket.socket]
    limit: int
    request: bytes  # one whole request
    head: bytes  # a request begun...
    rest: bytes  # ...and the rest of it
    complete: Callable[[bytes], bool]  # a whole reply came in
    ok: Callable[[bytes], bool]  # and it says the request was done
    refusal: bytes  # what a refused newcomer reads before the end

    def ask(self, sock: socket.socket, data: bytes) -> bytes:
        sock.sendall(data)
        received = b""
        while not self.complete(received):
            chunk = sock.recv(65536)
            assert chunk, f"closed after {received!r}"
            received += chunk
        assert self.ok(received), received
        return received


def read_to_end(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def metrics_endpoint(port: int) -> Endpoint:
    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)

    return Endpoint(
        connect=connect,
        limit=metrics.MAX_CLIENTS,
        request=b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        head=b"GET /healthz HTTP/1.1\r\nHost: t\r\n",
        rest=b"\r\n",
        complete=lambda data: b"\r\n\r\n" in data and data.endswith(b"ok\n"),
        ok=lambda data: data.startswith(b"HTTP/1.1 200 "),
        refusal=b"",
    )


def control_endpoint(path: Path) -> Endpoint:
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        return sock

    refusal = {"ok": False, "error": "too many control clients at once; try again"}
    return Endpoint(
        connect=connect,
        limit=control.MAX_CLIENTS,
        request=b'{"command": "status"}\n',
        head=b'{"command": "sta',
        rest=b'tus"}\n',
        complete=lambda data: data.endswith(b"\n"),
        ok=lambda data: json.loads(data)["ok"] is True,
        refusal=json.dumps(refusal, separators=(",", ":")).encode() + b"\n",
    )


@pytest.fixture(params=["metrics", "control"])
def endpoint(request: pytest.FixtureRequest, services: Services, tmp_path: Path) -> Endpoint:
    port, mport, path = free_port(), free_port(), tmp_path / "ctl.sock"
    service = services.squall(
        "tests.scripts.ops_app:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--metrics",
        f"127.0.0.1:{mport}",
        "--control",
        str(path),
    )
    service.wait_for_port(port)
    service.wait_for_log("is ready")
    return metrics_endpoint(mport) if request.param == "metrics" else control_endpoint(path)


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_a_newcomer_evicts_the_longest_idle_never_one_mid_request(
    endpoint: Endpoint, held: list[socket.socket]
) -> None:
    def served(mid_request: bool) -> socket.socket:
        """A connection answered once (so the endpoint holds it), then a request begun or not."""
        sock = endpoint.connect()
        held.append(sock)
        endpoint.ask(sock, endpoint.request)
        if mid_request:
            sock.sendall(endpoint.head)
        return sock

    busy = [served(mid_request=True) for _ in range(endpoint.limit - 2)]
    oldest_idle, newer_idle = served(mid_request=False), served(mid_request=False)

    # Full: each newcomer takes the place of the connection idle longest.
    first = served(mid_request=True)
    assert read_to_end(oldest_idle) == b""
    second = served(mid_request=True)
    assert read_to_end(newer_idle) == b""

    # Every connection is mid-request now: the next one is refused.
    refused = endpoint.connect()
    held.append(refused)
    assert read_to_end(refused) == endpoint.refusal

    # And none of those mid-request was dropped: each one is answered.
    for sock in [*busy, first, second]:
        endpoint.ask(sock, endpoint.rest)
