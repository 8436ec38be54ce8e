"""A Starlette app for tests/test_frameworks.py: `squall tests.frameworks.starlette_app:app`.

- `GET /`                    plain text
- `GET /json`                JSONResponse with path-free data and a query echo
- `GET /users/{name}`        a path parameter
- `GET /stream?n=`           a StreamingResponse of `part-i;` pieces
- `POST /echo`               the request body back, with its length and hash in headers
- `GET /state`               lifespan state as request.state and app.state see it
- `POST /disconnected`       reads the body, then asks request.is_disconnected()
- `GET /watch?token=T&n=`   streams n ticks, polling request.is_disconnected(); records
                             how the stream ended in `watch-T` in the record directory

Every response carries `X-Middleware: starlette` from a BaseHTTPMiddleware.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.frameworks import RECORD_DIR_ENV


def record_dir() -> Path | None:
    directory = os.environ.get(RECORD_DIR_ENV)
    return Path(directory) if directory else None


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    app.state.boot_pid = os.getpid()
    yield {"greeting": "hello from lifespan", "counter": [0]}


async def add_header(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    response = await call_next(request)
    response.headers["X-Middleware"] = "starlette"
    return response


async def index(request: Request) -> Response:
    return PlainTextResponse("hello, starlette")


async def json_view(request: Request) -> Response:
    return JSONResponse({"framework": "starlette", "q": request.query_params.get("q")})


async def user(request: Request) -> Response:
    return JSONResponse({"name": request.path_params["name"]})


async def stream(request: Request) -> Response:
    count = int(request.query_params.get("n", "5"))

    async def parts() -> AsyncIterator[str]:
        for i in range(count):
            await asyncio.sleep(0)
            yield f"part-{i};"

    return StreamingResponse(parts(), media_type="text/plain")


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(
        body,
        media_type=request.headers.get("content-type", "application/octet-stream"),
        headers={"X-Length": str(len(body)), "X-Sha256": hashlib.sha256(body).hexdigest()},
    )


async def state(request: Request) -> Response:
    counter = request.state.counter
    counter[0] += 1  # a shallow copy per request: the list is the lifespan's own
    return JSONResponse(
        {
            "greeting": request.state.greeting,
            "counter": counter[0],
            "worker_id": request.state.worker_id,
            "boot_pid": request.app.state.boot_pid,
            "pid": os.getpid(),
        }
    )


async def disconnected(request: Request) -> Response:
    body = await request.body()
    first = await request.is_disconnected()
    second = await request.is_disconnected()
    return JSONResponse({"size": len(body), "disconnected": [first, second]})


async def watch(request: Request) -> Response:
    token = request.query_params["token"]
    count = int(request.query_params.get("n", "500"))

    async def ticks() -> AsyncIterator[bytes]:
        outcome = "unfinished"
        try:
            for i in range(count):
                if await request.is_disconnected():
                    outcome = "is_disconnected"
                    return
                yield f"tick-{i};".encode()
                await asyncio.sleep(0.02)
            outcome = "ran-out"
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            directory = record_dir()
            if directory is not None:
                (directory / f"watch-{token}").write_text(outcome)

    return StreamingResponse(ticks(), media_type="text/plain")


app = Starlette(
    routes=[
        Route("/", index),
        Route("/json", json_view),
        Route("/users/{name}", user),
        Route("/stream", stream),
        Route("/echo", echo, methods=["POST"]),
        Route("/state", state),
        Route("/disconnected", disconnected, methods=["POST"]),
        Route("/watch", watch),
    ],
    middleware=[Middleware(BaseHTTPMiddleware, dispatch=add_header)],
    lifespan=lifespan,
)
