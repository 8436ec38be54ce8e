"""WSGI (PEP 3333) on squall's request cycle: the app runs in a thread pool.

The event loop never blocks on the app: each request's app call and body
iteration run in a worker thread, and every piece of the response is handed
back to the loop thread to be written.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

from squall.http.protocol import RequestCycle

logger = logging.getLogger("squall.wsgi")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

DEFAULT_THREADS = 10


class WSGIAdapter:
    """Serves a WSGI app; the request body is complete before the app runs."""

    streaming = False

    def __init__(
        self,
        app: WSGIApp,
        root_path: str = "",
        worker_id: int | None = None,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        self.app = app
        self.root_path = root_path
        self.worker_id = worker_id
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="squall-wsgi")

    def handle(self, cycle: RequestCycle) -> None:
        environ = self.environ(cycle)
        loop = cycle.loop
        future = loop.run_in_executor(self.executor, self._call, environ, cycle, loop)
        future.add_done_callback(lambda f: _log_failure(f, cycle))

    def environ(self, cycle: RequestCycle) -> dict[str, Any]:
        request = cycle.request
        assert request is not None
        server = cycle.server or ("", 0)
        client = cycle.client
        # PEP 3333: the percent-decoded bytes as latin-1 text, never decoded as UTF-8
        # (apps and frameworks undo it with .encode("latin-1")).
        path = unquote(request.path.decode("latin-1"), encoding="latin-1")
        root = self.root_path
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": root,
            "PATH_INFO": path[len(root) :] if root and path.startswith(root) else path,
            "QUERY_STRING": request.query.decode("latin-1"),
            "SERVER_NAME": server[0],
            "SERVER_PORT": str(server[1]),
            "SERVER_PROTOCOL": f"HTTP/{request.http_version}",
            "REMOTE_ADDR": client[0] if client else "",
            "REMOTE_PORT": str(client[1]) if client else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": cycle.scheme,
            "wsgi.input": io.BytesIO(cycle.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "squall.worker_id": self.worker_id,
        }
        for name, value in request.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            if key == "CONTENT_TYPE" or key == "CONTENT_LENGTH":
                environ[key] = text
                continue
            key = "HTTP_" + key
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        return environ

    def _call(
        self, environ: dict[str, Any], cycle: RequestCycle, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Runs in a pool thread."""
        head: list[Any] = []
        sent_head = False

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if exc_info is not None and sent_head:
                raise exc_info[1].with_traceback(exc_info[2])
            if head and exc_info is None:
                raise RuntimeError("start_response() called twice without exc_info")
            head[:] = [
                int(status.split(" ", 1)[0]),
                [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            ]
            return write

        def write(data: bytes) -> None:
            nonlocal sent_head
            if not head:
                raise RuntimeError("write() before start_response()")
            if not sent_head:
                sent_head = True
                loop.call_soon_threadsafe(cycle.start, head[0], head[1])
            if data:
                loop.call_soon_threadsafe(cycle.write, bytes(data))

        result = self.app(environ, start_response)
        try:
            chunks = result if isinstance(result, list) else None
            if chunks is not None and not sent_head and head:
                body = b"".join(chunks)
                loop.call_soon_threadsafe(cycle.respond, head[0], head[1], body)
                return
            for chunk in result:
                if chunk:  # PEP 3333: the head waits for the first non-empty chunk
                    write(chunk)
            if not head:
                raise RuntimeError("WSGI app returned without calling start_response()")
            if not sent_head:
                write(b"")
            loop.call_soon_threadsafe(cycle.end)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


def _log_failure(future: asyncio.Future[None], cycle: RequestCycle) -> None:
    exc = future.exception()
    if exc is None:
        return
    logger.error("exception in WSGI app (pid %d)", os.getpid(), exc_info=exc)
    if cycle.complete or cycle.disconnected:
        return
    if cycle.response_started:
        cycle.abort()
    else:
        cycle.respond(
            500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
        )
