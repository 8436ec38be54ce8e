"""A raw ASGI app for the HTTP/2 conformance suite (tests/test_http2_conformance.py).

Routes:
- `/` (any method): JSON with the worker's pid, the method, path and HTTP version;
- `/bytes/N`: N bytes of `pattern(N)`, so a test can check a body byte for byte;
- `/close`: a small body with `Connection: close`, `Keep-Alive` and a mixed-case
  header name, which an HTTP/2 response must not carry as they are;
- `/echo`: the request body, read as it comes, sent back;
- `/slow`: JSON after 0.3 s, with how many `/slow` requests were running when
  this one began (the concurrency the server gave them);
- `/hold`: answers after 3 s without reading the request body, so the
  server's receive window for the stream closes once its buffer is full.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

_running = 0


def pattern(size: int) -> bytes:
    """`size` bytes that differ from their neighbours, the same for the app and the test."""
    block = bytes(range(251))
    return (block * (size // len(block) + 1))[:size]


async def _send(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Any) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _running
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    json_type = [(b"content-type", b"application/json")]
    if path.startswith("/bytes/"):
        size = int(path.rsplit("/", 1)[1])
        await _send(send, 200, [(b"content-type", b"application/octet-stream")], pattern(size))
    elif path == "/close":
        headers = [
            (b"content-type", b"text/plain"),
            (b"Connection", b"close"),
            (b"Keep-Alive", b"timeout=5"),
            (b"X-Mixed-Case", b"Value"),
        ]
        await _send(send, 200, headers, b"closing\n")
    elif path == "/echo":
        body = await _read_body(receive)
        await _send(send, 200, [(b"content-type", b"application/octet-stream")], body)
    elif path == "/slow":
        _running += 1
        concurrent = _running
        try:
            await asyncio.sleep(0.3)
        finally:
            _running -= 1
        body = json.dumps({"pid": os.getpid(), "concurrent": concurrent}).encode()
        await _send(send, 200, json_type, body)
    elif path == "/hold":
        await asyncio.sleep(3.0)
        await _send(send, 200, json_type, b"{}")
    else:
        body = json.dumps(
            {
                "pid": os.getpid(),
                "method": scope["method"],
                "path": path,
                "http_version": scope["http_version"],
            }
        ).encode()
        await _send(send, 200, json_type, body)
