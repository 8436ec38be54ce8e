"""A raw ASGI 3 app: GET / answers 200 with the 12-byte body "Hello, world".

Served by uvicorn, gunicorn + UvicornWorker, granian --interface asgi and
squall --interface asgi in bench/compare.py. It answers the lifespan
protocol, so no server logs a lifespan error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # squall is not installed in bench/.venv, where the peers serve this
    from squall.asgi import Receive, Scope, Send
    from squall.asgi_types import HTTPResponseBodyEvent, HTTPResponseStartEvent

BODY = b"Hello, world"
START: HTTPResponseStartEvent = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"12")],
}
BODY_MESSAGE: HTTPResponseBodyEvent = {"type": "http.response.body", "body": BODY}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await send(START)
        await send(BODY_MESSAGE)
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
