"""Streaming in both directions, for tests/test_streaming.py.

One module, three interfaces: `app` (squall handlers), `asgi` and `wsgi`.
Where a test must see what happened inside the worker, the app writes a small
file into the directory named by `SQUALL_TEST_STREAM_DIR`.

squall (`squall tests.apps.streaming_app:app`):
- `/flush?n=&delay=`         async: n chunks `chunk-i;`, each flushed, `delay` s apart
- `/flush-sync?n=&delay=`    the same from a plain handler (time.sleep, flush() not awaited)
- `/flush-head`              flushes one chunk; for HEAD, no body goes out
- `/flush-error`             flushes, then raises: the response is cut off
- `/big?size=&token=`        async: `size` bytes in 64 KiB pieces, `await self.flush()`
                             after each; on StreamClosedError writes `web-closed-T`
- `/upload?token=`           @stream_request_body, plain data_received: JSON with the
                             pieces counted, the total, a CRC32, and whether prepare
                             ran before the first piece; a broken-off body writes
                             `upload-closed-T` (on_connection_close)
- `/upload-async`            the same with an async data_received
- `/length`                  not streaming: the length and CRC32 of the whole body
- `/worker`                  the pid

ASGI (`--interface asgi`):
- `/big?size=&token=`        `size` bytes in 64 KiB `more_body` messages; when send()
                             raises (client gone) writes `asgi-closed-T`
- `/worker`                  the pid

WSGI (`--interface wsgi`):
- `/big?size=&token=`        a generator of 64 KiB pieces; its close() writes
                             `wsgi-closed-T` with the number of pieces produced
- `/progress?token=&half=`   reads wsgi.input 64 KiB at a time; once `half` bytes are in
                             writes `half-T`; answers the total and CRC32
- `/hold?token=`             reads 64 KiB, then waits (at most 20 s) for the file `go-T`,
                             then reads the rest; answers the total
- `/cut?token=`              reads until b"" and writes `cut-T` with the total, or
                              writes `cut-T` with the error its read raised
- `/lines`                   readline(), readline(size), iteration and readlines()
                             over the body, as JSON
- `/worker`                  the pid
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from squall.web import Application, RequestHandler, StreamClosedError, stream_request_body
from tests.apps import write_marker

RECORD_DIR_ENV = "SQUALL_TEST_STREAM_DIR"
PIECE = 64 * 1024
_PIECE_BYTES = bytes(i % 251 for i in range(PIECE))


def record(name: str, text: str = "") -> None:
    value = os.environ.get(RECORD_DIR_ENV)
    if value:
        write_marker(Path(value) / name, text)


# -- squall handlers -----------------------------------------------------------------


class FlushHandler(RequestHandler):
    async def get(self) -> None:
        n = int(self.get_argument("n", "3"))
        delay = float(self.get_argument("delay", "0.5"))
        self.set_header("Content-Type", "text/plain")
        for i in range(n):
            self.write(f"chunk-{i};")
            await self.flush()
            await asyncio.sleep(delay)
        self.write("end")


class FlushSyncHandler(RequestHandler):
    def get(self) -> None:
        n = int(self.get_argument("n", "3"))
        delay = float(self.get_argument("delay", "0.3"))
        self.set_header("Content-Type", "text/plain")
        for i in range(n):
            self.write(f"chunk-{i};")
            self.flush()  # not awaited: the write happens at once
            time.sleep(delay)
        self.write("end")


class FlushHeadHandler(RequestHandler):
    async def get(self) -> None:
        self.set_header("X-Flushed", "yes")
        self.write("flushed body")
        await self.flush()
        self.write(" and more")


class FlushErrorHandler(RequestHandler):
    async def get(self) -> None:
        self.write("partial;")
        await self.flush()
        raise RuntimeError("failure after flush")


class BigHandler(RequestHandler):
    async def get(self) -> None:
        size = int(self.get_argument("size"))
        token = self.get_argument("token", "")
        self.set_header("Content-Type", "application/octet-stream")
        sent = 0
        try:
            while sent < size:
                piece = _PIECE_BYTES[: min(PIECE, size - sent)]
                self.write(piece)
                await self.flush()
                sent += len(piece)
        except StreamClosedError:
            record(f"web-closed-{token}", str(sent))
            raise


class _UploadBase(RequestHandler):
    def prepare(self) -> None:
        self.pieces = 0
        self.total = 0
        self.crc = 0
        self.prepared_before_body = True

    def on_connection_close(self) -> None:
        record(f"upload-closed-{self.get_argument('token', '')}", str(self.total))

    def _count(self, chunk: bytes) -> None:
        self.pieces += 1
        self.total += len(chunk)
        self.crc = zlib.crc32(chunk, self.crc)

    def post(self) -> None:
        self.write(
            {
                "pieces": self.pieces,
                "total": self.total,
                "crc": self.crc,
                "prepared_before_body": self.prepared_before_body,
                "request_body": len(self.request.body),
            }
        )

    put = post


@stream_request_body
class UploadHandler(_UploadBase):
    def data_received(self, chunk: bytes) -> None:
        self._count(chunk)


@stream_request_body
class AsyncUploadHandler(_UploadBase):
    async def data_received(self, chunk: bytes) -> None:
        await asyncio.sleep(0)
        self._count(chunk)


class LengthHandler(RequestHandler):
    def post(self) -> None:
        body = self.request.body
        self.write({"total": len(body), "crc": zlib.crc32(body)})


class WorkerHandler(RequestHandler):
    def get(self) -> None:
        self.write({"pid": os.getpid()})


app = Application(
    [
        (r"/flush", FlushHandler),
        (r"/flush-sync", FlushSyncHandler),
        (r"/flush-head", FlushHeadHandler),
        (r"/flush-error", FlushErrorHandler),
        (r"/big", BigHandler),
        (r"/upload", UploadHandler),
        (r"/upload-async", AsyncUploadHandler),
        (r"/length", LengthHandler),
        (r"/worker", WorkerHandler),
    ]
)


# -- ASGI ------------------------------------------------------------------------------


def _query(raw: bytes | str) -> dict[str, str]:
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    return {key: values[-1] for key, values in parse_qs(text).items()}


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = _query(scope["query_string"])
    if scope["path"] == "/worker":
        body = json.dumps({"pid": os.getpid()}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    size = int(query["size"])
    token = query.get("token", "")
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )
    sent = 0
    try:
        while sent < size:
            piece = _PIECE_BYTES[: min(PIECE, size - sent)]
            sent += len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": sent < size})
    except OSError:  # squall raises ClientDisconnected (an OSError) once the client is gone
        record(f"asgi-closed-{token}", str(sent))


# -- WSGI ------------------------------------------------------------------------------

StartResponse = Callable[..., Any]


class _Pieces:
    """The body of /big: counts what it produced; close() records it."""

    def __init__(self, size: int, token: str) -> None:
        self.size = size
        self.token = token
        self.produced = 0

    def __iter__(self) -> Iterator[bytes]:
        while self.produced < self.size:
            piece = _PIECE_BYTES[: min(PIECE, self.size - self.produced)]
            self.produced += len(piece)
            yield piece

    def close(self) -> None:
        record(f"wsgi-closed-{self.token}", str(self.produced))


def _json(start_response: StartResponse, data: Any) -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def wsgi(environ: dict[str, Any], start_response: StartResponse) -> Any:
    path = environ["PATH_INFO"]
    query = _query(environ["QUERY_STRING"])
    token = query.get("token", "")
    stream = environ["wsgi.input"]
    if path == "/worker":
        return _json(start_response, {"pid": os.getpid()})
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return _Pieces(int(query["size"]), token)
    if path == "/progress":
        half = int(query["half"])
        total = 0
        crc = 0
        recorded = False
        while True:
            data = stream.read(PIECE)
            if not data:
                break
            total += len(data)
            crc = zlib.crc32(data, crc)
            if total >= half and not recorded:
                recorded = True
                record(f"half-{token}", str(total))
        return _json(start_response, {"total": total, "crc": crc})
    if path == "/hold":
        total = len(stream.read(PIECE))
        go = Path(os.environ[RECORD_DIR_ENV]) / f"go-{token}"
        deadline = time.monotonic() + 20
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        while True:
            data = stream.read(1 << 20)
            if not data:
                break
            total += len(data)
        return _json(start_response, {"total": total})
    if path == "/cut":
        total = 0
        try:
            while True:
                data = stream.read(PIECE)
                if not data:
                    break
                total += len(data)
        except OSError as exc:  # the body can never be complete: reads raise, never b""
            record(f"cut-{token}", f"{type(exc).__name__} after {total}")
            raise
        record(f"cut-{token}", str(total))
        return _json(start_response, {"total": total})
    if path == "/lines":
        first = stream.readline()
        limited = stream.readline(4)
        rest_of_line = stream.readline()
        middle = [next(iter(stream))]
        remaining = stream.readlines()
        tail = stream.read()
        return _json(
            start_response,
            {
                "first": first.decode(),
                "limited": limited.decode(),
                "rest_of_line": rest_of_line.decode(),
                "middle": [line.decode() for line in middle],
                "remaining": [line.decode() for line in remaining],
                "tail": tail.decode(),
            },
        )
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]
