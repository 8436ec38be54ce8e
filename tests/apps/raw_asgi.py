"""A raw ASGI 3 app, no framework, for tests/test_asgi.py.

Lifespan: startup records itself in the lifespan state (and in a file, when
`SQUALL_TEST_ASGI_DIR` names a directory); shutdown writes a file there.

- `/scope`              the scope as JSON (bytes as latin-1 text)
- `/headers`            the request headers as JSON; answers with two `x-multi` headers
- `/echo`               the request body, read in chunks, back in one message
                        (`x-body-chunks`: how many `http.request` messages it took)
- `/echo-stream`        each request chunk echoed back as soon as it arrives
- `/stream?n=&delay=`   n chunks `chunk-i;`, `delay` seconds apart, more_body=True
- `/stream-length`      a streamed body whose content-length the app gives
- `/start-only`         `http.response.start` (201) and nothing else
- `/empty-body`         start, then one empty body message
- `/raise`              raises before responding
- `/raise-after-start`  sends part of a streamed body, then raises
- `/no-response`        returns without sending anything
- `/body-before-start`  sends `http.response.body` first
- `/double-start`       sends `http.response.start` twice
- `/disconnect`         the message `receive()` returns after the body
- `/stream-until-disconnect?token=T`
                        streams until send() raises (at most ~6 s), then writes
                        `disconnect-T` (the exception's type) into the directory
- `/worker`             the worker id and pid
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tests.apps import write_marker

SECRET = "asgi-secret-exception-text"
RECORD_DIR_ENV = "SQUALL_TEST_ASGI_DIR"


def _record_dir() -> Path | None:
    value = os.environ.get(RECORD_DIR_ENV)
    return Path(value) if value else None


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    state = scope["state"]
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            state["started"] = True
            state["startup_pid"] = os.getpid()
            state["startup_worker_id"] = state.get("worker_id")
            directory = _record_dir()
            if directory is not None:
                write_marker(directory / f"startup-{os.getpid()}", str(state.get("worker_id")))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            directory = _record_dir()
            if directory is not None:
                write_marker(directory / f"shutdown-{os.getpid()}", str(state.get("worker_id")))
            await send({"type": "lifespan.shutdown.complete"})
            return


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


async def send_json(send: Any, data: Any, status: int = 200) -> None:
    body = json.dumps(data).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Any) -> tuple[bytes, int]:
    chunks: list[bytes] = []
    messages = 0
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        messages += 1
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), messages


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    assert scope["type"] == "http"
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode("latin-1"))

    if path == "/scope":
        fields = (
            "type",
            "asgi",
            "http_version",
            "method",
            "scheme",
            "path",
            "raw_path",
            "query_string",
            "root_path",
            "client",
            "server",
            "state",
        )
        data = {name: _jsonable(scope.get(name)) for name in fields}
        data["has_headers"] = isinstance(scope.get("headers"), list | tuple)
        await send_json(send, data)

    elif path == "/headers":
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
        body = json.dumps(headers).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"x-multi", b"one"),
                    (b"x-multi", b"two"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    elif path == "/echo":
        body, messages = await read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"x-body-chunks", str(messages).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    elif path == "/echo-stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")],
            }
        )
        while True:
            message = await receive()
            more = message.get("more_body", False)
            await send({"type": "http.response.body", "body": message["body"], "more_body": True})
            if not more:
                break
        await send({"type": "http.response.body", "body": b""})

    elif path == "/stream":
        count = int(query.get("n", ["5"])[0])
        delay = float(query.get("delay", ["0.05"])[0])
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for i in range(count):
            await send(
                {"type": "http.response.body", "body": f"chunk-{i};".encode(), "more_body": True}
            )
            await asyncio.sleep(delay)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    elif path == "/stream-length":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"10")],
            }
        )
        await send({"type": "http.response.body", "body": b"01234", "more_body": True})
        await send({"type": "http.response.body", "body": b"56789", "more_body": False})

    elif path == "/start-only":
        await send(
            {"type": "http.response.start", "status": 201, "headers": [(b"x-start", b"only")]}
        )

    elif path == "/empty-body":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body"})

    elif path == "/modules":
        # The top-level packages this worker has imported, after serving requests.
        loaded = sorted({name.partition(".")[0] for name in sys.modules})
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(loaded).encode()})

    elif path == "/buffer-bodies":
        # Bodies as a bytearray and memoryviews, whole and streamed.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["query_string"] == b"whole":
            await send({"type": "http.response.body", "body": bytearray(b"bytearray")})
        else:
            await send(
                {"type": "http.response.body", "body": bytearray(b"one,"), "more_body": True}
            )
            await send(
                {"type": "http.response.body", "body": memoryview(b"two,"), "more_body": True}
            )
            await send({"type": "http.response.body", "body": memoryview(b"three")})

    elif path == "/raise":
        raise RuntimeError(SECRET + " (before start)")

    elif path == "/raise-after-start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError(SECRET + " (after start)")

    elif path == "/raise-cancelled":
        # A cancellation the app raises on its own (no one cancelled its task),
        # at once or after a wait.
        if scope["query_string"] == b"after-wait":
            await asyncio.sleep(0.01)
        raise asyncio.CancelledError()

    elif path == "/raise-cancelled-after-start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise asyncio.CancelledError()

    elif path == "/no-response":
        return

    elif path == "/body-before-start":
        await send({"type": "http.response.body", "body": b"too early"})

    elif path == "/double-start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.start", "status": 200, "headers": []})

    elif path == "/disconnect":
        body, _ = await read_body(receive)
        await send_json(send, {"body": body.decode("latin-1")})
        after = await asyncio.wait_for(receive(), 2)
        assert after["type"] == "http.disconnect", after

    elif path == "/stream-until-disconnect":
        token = query.get("token", ["none"])[0]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        outcome = "no-disconnect"
        try:
            for _ in range(600):
                await send({"type": "http.response.body", "body": b"tick;", "more_body": True})
                await asyncio.sleep(0.01)
        except OSError as exc:
            outcome = type(exc).__name__
        directory = _record_dir()
        if directory is not None:
            write_marker(directory / f"disconnect-{token}", outcome)

    elif path == "/worker":
        await send_json(send, {"worker_id": scope["state"].get("worker_id"), "pid": os.getpid()})

    else:
        await send(
            {
                "type": "http.response.start",
                "status": 404,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": b"not found"})
