"""A raw ASGI app for the HTTP/2 limit tests (tests/test_http2_limits.py) and bench/h2_floods.py.

- `/pid`             the worker's pid, as text
- `/sleep?s=S`       sleeps S seconds (default 2; not cut short when the client leaves), then "slept"
- `/big?size=N`      N bytes (default 1 MiB) in one `http.response.body` message
- `/upload`          reads the body as it comes; answers "<total bytes> <pieces>"
- `/hold?s=S`        reads nothing for S seconds (default 2), then the whole body;
                     answers its length
- `/read`            reads the whole body, then answers its length
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import parse_qs

BIG_SIZE = 1 << 20


def _param(scope: dict[str, Any], name: str, default: float) -> float:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get(name)
    return float(values[0]) if values else default


async def _answer(send: Any, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_all(receive: Any) -> tuple[int, int]:
    """The body's length and how many messages it came in."""
    total = pieces = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return total, pieces
        total += len(message.get("body", b""))
        pieces += 1
        if not message.get("more_body", False):
            return total, pieces


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/pid":
        await _answer(send, str(os.getpid()).encode("ascii"))
    elif path == "/sleep":
        await asyncio.sleep(_param(scope, "s", 2.0))
        await _answer(send, b"slept")
    elif path == "/big":
        size = int(_param(scope, "size", BIG_SIZE))
        await _answer(send, b"x" * size)
    elif path == "/upload":
        total, pieces = await _read_all(receive)
        await _answer(send, f"{total} {pieces}".encode("ascii"))
    elif path == "/hold":
        await asyncio.sleep(_param(scope, "s", 2.0))
        total, _ = await _read_all(receive)
        await _answer(send, str(total).encode("ascii"))
    elif path == "/read":
        total, _ = await _read_all(receive)
        await _answer(send, str(total).encode("ascii"))
    else:
        await _answer(send, b"not found", 404)
