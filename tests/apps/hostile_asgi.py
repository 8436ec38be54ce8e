"""An ASGI app that misbehaves on purpose, for tests/test_hostile_wire.py.

The same routes as tests/apps/hostile_wsgi.py, whose tables it shares:

- `/pid`                    the worker's pid, as text
- `/header/<case>`          200 with the response header `BAD_HEADERS[case]`
                            (or `GOOD_HEADERS[case]`)
- `/frame/<case>/<mode>`    declares `Content-Length: FRAMES[case][0]`, sends the
                            bytes `FRAMES[case][1]`: `whole` in one body message,
                            `stream` in two (`more_body`), then an empty last one
- `/status/<code>`          `http.response.start` with a 1xx status, then an empty body
- `/x`                      host header values, path and query string as JSON
"""

from __future__ import annotations

import json
import os
from typing import Any

from tests.apps.hostile_wsgi import BAD_HEADERS, FRAMES, GOOD_HEADERS


async def _respond(
    send: Any, body: bytes, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers if headers is not None else [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _frame(send: Any, case: str, mode: str) -> None:
    declared, body = FRAMES[case]
    headers = [(b"content-length", str(declared).encode())]
    if mode == "whole":
        await _respond(send, body, headers=headers)
        return
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body[:3], "more_body": True})
    await send({"type": "http.response.body", "body": body[3:], "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    path: str = scope["path"]
    parts = path.strip("/").split("/")

    if path == "/pid":
        await _respond(send, str(os.getpid()).encode())

    elif parts[0] == "header" and len(parts) == 2:
        name, value = BAD_HEADERS.get(parts[1]) or GOOD_HEADERS[parts[1]]
        headers = [
            (b"content-type", b"text/plain"),
            (name.encode("latin-1"), value.encode("latin-1")),
        ]
        await _respond(send, b"header sent", headers=headers)

    elif parts[0] == "frame" and len(parts) == 3:
        await _frame(send, parts[1], parts[2])

    elif parts[0] == "status" and len(parts) == 2:
        await _respond(send, b"", status=int(parts[1]), headers=[])

    elif path == "/x":
        hosts = [value.decode("latin-1") for name, value in scope["headers"] if name == b"host"]
        data = {"hosts": hosts, "path": path, "query": scope["query_string"].decode("latin-1")}
        await _respond(
            send, json.dumps(data).encode(), headers=[(b"content-type", b"application/json")]
        )

    else:
        await _respond(send, b"not found", status=404)
