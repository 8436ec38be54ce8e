"""Python cost of one request through squall's HTTP layers, without the kernel.

    python bench/request_path.py [--requests 200000]

Feeds GET requests straight into `HTTPProtocol.data_received` (with a
transport that only collects the bytes written) for squall's native handler
API and a raw ASGI app, and prints the CPU time per request: keep-alive (one
connection, request after request) and new connection (a protocol made,
connected, fed one `Connection: close` request and lost, per request). It
leaves out what every server pays alike (recv, send, epoll), so a change to
squall's own code shows clearly even on a busy machine; the end-to-end
figures come from bench/compare.py.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from squall.asgi import ASGIAdapter
from squall.http.core import DEFAULT_LIMITS
from squall.http.protocol import HTTPProtocol, ServerState
from squall.worker import new_event_loop

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
CLOSING_REQUEST = REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")


class SinkTransport:
    """Enough of an asyncio transport for the protocol: it keeps nothing."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def new_connections(app: Any, requests: int) -> float:
    state = ServerState(app, DEFAULT_LIMITS, keepalive_timeout=5.0)
    server = ("127.0.0.1", 8080)

    def one() -> tuple[HTTPProtocol, SinkTransport]:
        protocol = HTTPProtocol(state, server=server)
        transport = SinkTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        protocol.data_received(CLOSING_REQUEST)
        return protocol, transport

    for _ in range(1000):  # warm up
        one()
        await asyncio.sleep(0)
    gc.collect()
    written = 0
    start = time.process_time()
    for _ in range(requests):
        protocol, transport = one()
        await asyncio.sleep(0)
        protocol.connection_lost(None)
        written += transport.written
    elapsed = time.process_time() - start
    state.stop_ticker()
    assert written >= requests, "not every request was answered"
    return elapsed / requests * 1e6


async def keep_alive(app: Any, requests: int) -> float:
    state = ServerState(app, DEFAULT_LIMITS, keepalive_timeout=5.0)
    protocol = HTTPProtocol(state)
    transport = SinkTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    for _ in range(1000):  # warm up
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)
    gc.collect()
    start = time.process_time()
    for _ in range(requests):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # let a task-based app finish, as the loop would between reads
    elapsed = time.process_time() - start
    state.stop_ticker()
    assert transport.written >= requests, "not every request was answered"
    return elapsed / requests * 1e6


async def raw_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"Hello, world"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers.squall_native import app as native

    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    cases = {"squall native": native, "raw ASGI": ASGIAdapter(raw_asgi)}
    for name, app in cases.items():
        for mode, run in (("keep-alive", keep_alive), ("new connection", new_connections)):
            per_request = loop.run_until_complete(run(app, args.requests))
            print(f"{name}, {mode}: {per_request:.2f} µs/request of Python")
    loop.close()


if __name__ == "__main__":
    main()
