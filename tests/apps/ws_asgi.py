"""A raw ASGI 3 WebSocket app, no framework, for tests/test_websocket.py.

WebSocket routes:
- `/echo`                 accept, then every message back as it came (text or bytes)
- `/scope`                accept, send the scope as JSON (bytes as latin-1 text)
- `/subprotocol`          accept with the first offered of `SUPPORTED` (or none),
                          then send the choice as text ("" for none)
- `/headers`              accept with an extra `x-accept: yes` header in the 101
- `/reject`               `websocket.close` before accept: HTTP 403
- `/deny`                 a denial response: 401 with body `denied`, in two messages
- `/raise-before-accept`  raises before accepting: HTTP 500
- `/return-before-accept` returns without accepting: HTTP 500
- `/raise-after-accept`   accepts, waits for one message, raises: close 1011
- `/return-after-accept`  accepts, waits for one message, returns: close 1000
- `/server-close?code=&reason=`  accepts, closes with that code and reason
- `/record?token=T`       accepts, echoes; on `websocket.disconnect` writes
                          `disconnect-T` ("code reason") into `SQUALL_TEST_WS_DIR`
- `/slow-reader?n=N`      accepts, sleeps 0.5 s, then reads N messages and sends
                          "count=N sum=S" (S: the sum of their integer values)
- `/flood?n=&size=`       accepts, sends n binary messages of `size` bytes each
                          (byte i % 256 for message i), then "done" as text
- `/send-after-close`     accepts, closes, then sends: records the exception's
                          type in `send-after-close` in the directory
Any other path is closed before accept (403). HTTP: `/http` answers "plain http";
any other path 404.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tests.apps import write_marker

RECORD_DIR_ENV = "SQUALL_TEST_WS_DIR"
SUPPORTED = ("chat.v2", "chat.v1")


def _record(name: str, text: str) -> None:
    directory = os.environ.get(RECORD_DIR_ENV)
    if directory:
        write_marker(Path(directory) / name, text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
    status, body = (200, b"plain http") if scope["path"] == "/http" else (404, b"not found")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def accept(receive: Any, send: Any, **extra: Any) -> None:
    message = await receive()
    assert message["type"] == "websocket.connect", message
    await send({"type": "websocket.accept", **extra})


async def echo(receive: Any, send: Any) -> dict[str, Any]:
    """Echo until the client leaves; the disconnect message."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return dict(message)
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return  # no lifespan: serving goes on without it
    if scope["type"] == "http":
        await http(scope, receive, send)
        return
    assert scope["type"] == "websocket"
    path = scope["path"]
    query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode("latin-1")).items()}

    if path == "/echo":
        await accept(receive, send)
        await echo(receive, send)

    elif path == "/scope":
        await accept(receive, send)
        data = {name: _jsonable(value) for name, value in scope.items()}
        await send({"type": "websocket.send", "text": json.dumps(data)})
        await echo(receive, send)

    elif path == "/subprotocol":
        chosen = next((p for p in scope["subprotocols"] if p in SUPPORTED), None)
        await accept(receive, send, subprotocol=chosen)
        await send({"type": "websocket.send", "text": chosen or ""})
        await echo(receive, send)

    elif path == "/headers":
        await accept(receive, send, headers=[(b"x-accept", b"yes")])
        await echo(receive, send)

    elif path == "/deny":
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"6")],
            }
        )
        await send({"type": "websocket.http.response.body", "body": b"den", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"ied"})

    elif path == "/raise-before-accept":
        await receive()
        raise RuntimeError("app failed before accepting")

    elif path == "/return-before-accept":
        await receive()

    elif path == "/raise-after-accept":
        await accept(receive, send)
        await receive()
        raise RuntimeError("app failed after accepting")

    elif path == "/return-after-accept":
        await accept(receive, send)
        await receive()

    elif path == "/server-close":
        await accept(receive, send)
        code = int(query.get("code", "1000"))
        await send({"type": "websocket.close", "code": code, "reason": query.get("reason", "")})

    elif path == "/record":
        await accept(receive, send)
        message = await echo(receive, send)
        _record(f"disconnect-{query['token']}", f"{message['code']} {message.get('reason', '')}")

    elif path == "/slow-reader":
        await accept(receive, send)
        await asyncio.sleep(0.5)
        count = total = 0
        for _ in range(int(query["n"])):
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            count += 1
            total += int(message["text"])
        await send({"type": "websocket.send", "text": f"count={count} sum={total}"})
        await echo(receive, send)

    elif path == "/flood":
        await accept(receive, send)
        size = int(query["size"])
        for i in range(int(query["n"])):
            await send({"type": "websocket.send", "bytes": bytes([i % 256]) * size})
        await send({"type": "websocket.send", "text": "done"})
        await echo(receive, send)

    elif path == "/send-after-close":
        await accept(receive, send)
        await send({"type": "websocket.close", "code": 1000})
        try:
            await send({"type": "websocket.send", "text": "too late"})
        except Exception as exc:
            _record("send-after-close", f"{type(exc).__name__} {isinstance(exc, OSError)}")
        else:
            _record("send-after-close", "no exception")

    else:
        await send({"type": "websocket.close"})
