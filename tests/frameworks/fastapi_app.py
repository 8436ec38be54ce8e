"""A FastAPI app for tests/test_frameworks.py: `squall tests.frameworks.fastapi_app:app`.

- `GET /items/{item_id}?q=&limit=`  path and query parameters, validated
- `POST /items`                      a pydantic model (422 on bad input)
- `GET /stream?n=&delay=&token=`    a StreamingResponse of `chunk-i;` pieces; with a token,
                                     how it ended goes into `stream-T` in the record directory
- `POST /background?token=T`         a BackgroundTasks task that waits for `go-T` in the
                                     record directory, then writes `done-T`
- `GET /lifespan`                    what the lifespan stored (app.state, its yielded state)
- `GET /teapot`                      an HTTPException (418) with a header
- `GET /headers`                     response headers and a cookie; echoes a request cookie
- `POST /upload`                     a form field and an uploaded file (needs python-multipart)
- `GET /client`                      request.client
- `WS /ws`                           echoes text until the client closes

The lifespan writes `startup-PID` and `shutdown-PID` into the record directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import (
    BackgroundTasks,
    FastAPI,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from tests.frameworks import RECORD_DIR_ENV

HAS_MULTIPART = importlib.util.find_spec("python_multipart") is not None

# What the lifespan scope carried, as squall gave it (scope["state"]["worker_id"]).
LIFESPAN_SCOPE: dict[str, Any] = {}


def record_dir() -> Path | None:
    directory = os.environ.get(RECORD_DIR_ENV)
    return Path(directory) if directory else None


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    app.state.started = True
    app.state.startup_pid = os.getpid()
    app.state.startup_env_worker = os.environ.get("SQUALL_WORKER_ID")
    directory = record_dir()
    if directory is not None:
        (directory / f"startup-{os.getpid()}").write_text(str(app.state.startup_env_worker))
    yield {"resource": "opened-in-lifespan"}
    if directory is not None:
        (directory / f"shutdown-{os.getpid()}").write_text("ok")


class LifespanScopeRecorder:
    """Pure ASGI middleware: remembers the lifespan scope's state as the server passed it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            state = scope.get("state")
            LIFESPAN_SCOPE["has_state"] = state is not None
            LIFESPAN_SCOPE["worker_id"] = None if state is None else state.get("worker_id")
        await self.app(scope, receive, send)


app = FastAPI(lifespan=lifespan)
app.add_middleware(LifespanScopeRecorder)


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    tags: list[str] = []


@app.get("/items/{item_id}")
async def read_item(
    item_id: int, q: str | None = None, limit: Annotated[int, Query(le=100)] = 10
) -> dict[str, Any]:
    return {"item_id": item_id, "q": q, "limit": limit}


@app.post("/items", status_code=201)
async def create_item(item: Item) -> dict[str, Any]:
    return {"item": item.model_dump(), "total": round(item.price * len(item.tags or [""]), 2)}


@app.get("/stream")
async def stream(n: int = 5, delay: float = 0.0, token: str | None = None) -> StreamingResponse:
    async def pieces() -> AsyncIterator[bytes]:
        outcome = "unfinished"
        try:
            for i in range(n):
                if i and delay:
                    await asyncio.sleep(delay)
                yield f"chunk-{i};".encode()
            outcome = "ran-out"
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            directory = record_dir()
            if token is not None and directory is not None:
                (directory / f"stream-{token}").write_text(outcome)

    return StreamingResponse(pieces(), media_type="text/plain")


def background_job(token: str) -> None:
    """Runs after the response: waits (bounded) for the test's go-ahead, then records it."""
    directory = record_dir()
    assert directory is not None
    go = directory / f"go-{token}"
    deadline = time.monotonic() + 10
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    (directory / f"done-{token}").write_text("saw-go" if go.exists() else "timed-out")


@app.post("/background")
async def background(token: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(background_job, token)
    return {"queued": token}


@app.get("/lifespan")
async def lifespan_state(request: Request) -> dict[str, Any]:
    return {
        "started": request.app.state.started,
        "startup_pid": request.app.state.startup_pid,
        "startup_env_worker": request.app.state.startup_env_worker,
        "resource": request.state.resource,
        "worker_id": request.state.worker_id,
        "lifespan_scope": LIFESPAN_SCOPE,
        "pid": os.getpid(),
    }


@app.get("/teapot")
async def teapot() -> None:
    raise HTTPException(status_code=418, detail="short and stout", headers={"X-Pot": "tea"})


@app.get("/headers")
async def headers(request: Request, response: Response) -> dict[str, Any]:
    response.headers["X-Custom"] = "fastapi-value"
    response.set_cookie("session", "s3cr3t", httponly=True)
    response.set_cookie("theme", "dark")
    return {"echo": request.headers.get("x-echo"), "cookie": request.cookies.get("flavour")}


if HAS_MULTIPART:

    @app.post("/upload")
    async def upload(
        note: Annotated[str, Form()], file: Annotated[UploadFile, File()]
    ) -> dict[str, Any]:
        data = await file.read()
        return {
            "note": note,
            "filename": file.filename,
            "content_type": file.content_type,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }


@app.get("/client")
async def client(request: Request) -> dict[str, Any]:
    assert request.client is not None
    return {"host": request.client.host, "port": request.client.port}


@app.websocket("/ws")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"echo:{text}")
