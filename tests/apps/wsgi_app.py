"""A plain PEP 3333 app, no framework, for tests/test_wsgi.py.

- `/echo`              the request body back, with the request's content type
- `/environ...`        selected environ keys as JSON
- `/stream?token=T`    an iterable of chunks whose close() writes `closed-T` into
                       the directory named by `SQUALL_TEST_WSGI_DIR`
- `/lazy`              a generator that calls start_response on its first step
- `/write`             uses the write() callable, then returns more chunks
- `/error`             raises before start_response
- `/error-in-iter`     start_response, then the iterable raises before its first chunk
- `/empty-then-error`  start_response, an empty chunk, then the iterable raises
- `/exc-info`          catches its own error and calls start_response again with exc_info
- `/worker`            the worker id and pid
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tests.apps import write_marker

SECRET = "wsgi-secret-exception-text"
CLOSE_DIR_ENV = "SQUALL_TEST_WSGI_DIR"

ENVIRON_KEYS = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "CONTENT_TYPE",
    "CONTENT_LENGTH",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "HTTP_HOST",
    "HTTP_X_CUSTOM",
    "wsgi.version",
    "wsgi.url_scheme",
    "wsgi.multithread",
    "wsgi.multiprocess",
    "wsgi.run_once",
    "squall.worker_id",
)

StartResponse = Callable[..., Callable[[bytes], None]]


class ClosingStream:
    """A response iterable that records its close() in a file."""

    def __init__(self, chunks: list[bytes], token: str) -> None:
        self.chunks = chunks
        self.token = token

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        directory = os.environ.get(CLOSE_DIR_ENV)
        if directory:
            write_marker(Path(directory, f"closed-{self.token}"), str(os.getpid()))


def _json(start_response: StartResponse, data: Any, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _lazy(start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"lazy "
    yield b""
    yield b"generator"


def _failing_iterable(start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    raise RuntimeError(SECRET + " (in iterable)")
    yield b"never"  # pragma: no cover


def _empty_then_error(start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b""
    raise RuntimeError(SECRET + " (after an empty chunk)")


def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
    path = environ["PATH_INFO"]
    query = parse_qs(environ["QUERY_STRING"])

    if path == "/echo":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        start_response(
            "200 OK",
            [
                ("Content-Type", environ.get("CONTENT_TYPE", "application/octet-stream")),
                ("X-Method", environ["REQUEST_METHOD"]),
            ],
        )
        return [body]

    if path.startswith("/environ"):
        data = {key: environ.get(key) for key in ENVIRON_KEYS}
        data["wsgi.input"] = hasattr(environ["wsgi.input"], "read")
        data["wsgi.errors"] = hasattr(environ["wsgi.errors"], "write")
        return _json(start_response, data)

    if path == "/stream":
        token = query.get("token", ["none"])[0]
        count = int(query.get("n", ["5"])[0])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingStream([f"part-{i};".encode() for i in range(count)], token)

    if path == "/lazy":
        return _lazy(start_response)

    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"directly ")
        return [b"then ", b"returned"]

    if path == "/error":
        raise RuntimeError(SECRET + " (before start_response)")

    if path == "/error-in-iter":
        return _failing_iterable(start_response)

    if path == "/empty-then-error":
        return _empty_then_error(start_response)

    if path == "/exc-info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("handled by the app")
        except ValueError:
            start_response("503 Service Unavailable", [("X-Handled", "yes")], sys.exc_info())
        return [b"the app's own error page"]

    if path == "/worker":
        return _json(start_response, {"worker_id": environ["squall.worker_id"], "pid": os.getpid()})

    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found"]
