"""A raw ASGI app that reports its worker id and pid."""

import json
import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"worker_id": scope["state"]["worker_id"], "pid": os.getpid()}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
