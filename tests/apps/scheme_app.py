"""A raw ASGI app that reports how it was reached (tests/test_tls.py).

Every request gets a JSON body: the scope's `scheme` and `http_version`, the
request path and the worker's pid.
"""

from __future__ import annotations

import json
import os
from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
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
    body = json.dumps(
        {
            "scheme": scope["scheme"],
            "http_version": scope["http_version"],
            "path": scope["path"],
            "pid": os.getpid(),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
