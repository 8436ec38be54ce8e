"""Apps that say who they think the client is (tests/test_proxy.py, tests/test_access_log.py).

- `app` (ASGI): JSON of scope["client"], scope["scheme"] and the Host header,
  on every path; `/bytes?n=N` answers N bytes of "x" instead, and `/status/NNN`
  an empty response with that status.
- `web_app` (a squall `Application`): `/` answers JSON of `request.remote_ip`,
  `request.protocol` and `request.host`.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from squall.web import Application, RequestHandler


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
    status = 200
    if scope["path"].startswith("/status/"):
        status = int(scope["path"].rpartition("/")[2])
        body = b""
        content_type = b"text/plain"
    elif scope["path"] == "/bytes":
        query = parse_qs(scope["query_string"].decode("latin-1"))
        size = int(query.get("n", ["0"])[0])
        body = b"x" * size
        content_type = b"application/octet-stream"
    else:
        host = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
        client = scope["client"]
        body = json.dumps(
            {
                "client": list(client) if client is not None else None,
                "scheme": scope["scheme"],
                "host": host,
            }
        ).encode()
        content_type = b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type)],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RemoteIPHandler(RequestHandler):
    def get(self) -> None:
        self.write(
            {
                "remote_ip": self.request.remote_ip,
                "protocol": self.request.protocol,
                "host": self.request.host,
            }
        )


web_app = Application([(r"/", RemoteIPHandler)])
