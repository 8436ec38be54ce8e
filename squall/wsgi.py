"""WSGI (PEP 3333) on squall's request cycle: the app runs in a thread pool.

The event loop never blocks on the app: each request's app call and body
iteration run in a pool thread. The two threads meet in two bounded buffers:

- `wsgi.input` (`InputStream`) streams the request body. The app starts at the
  request's head; a read blocks its thread until the loop has fed enough. The
  loop reads the body with `cycle.receive_body` only while the stream holds
  less than `INPUT_BUFFER` unread bytes, so a slow app makes the connection
  stop reading from the client (backpressure).
- The response (`_Output`): each piece is handed to the loop, and the app's
  thread runs at most `OUTPUT_WINDOW` bytes ahead of what the transport has
  taken. Once the transport's buffer is over its high-water mark, pieces are
  acknowledged only after `cycle.drain()`, so a client that reads slowly holds
  the app's thread, not the worker's memory.

When the client goes away, reads return b"" and the response's iteration
stops (the iterable's `close()` is still called); the write() callable raises
`ClientDisconnected`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

from squall.http.protocol import RequestCycle

logger = logging.getLogger("squall.wsgi")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

DEFAULT_THREADS = 10
#: The loop stops reading the request body while wsgi.input holds this much unread.
INPUT_BUFFER = 256 * 1024
#: The app's thread may run this far ahead of what the transport has taken.
OUTPUT_WINDOW = 256 * 1024
#: Above this much in the transport's buffer, a piece is acknowledged only after a drain.
_TRANSPORT_BUSY = 64 * 1024
#: How often a blocked app thread checks that its event loop still runs.
_POLL = 1.0

_tasks: set[asyncio.Future[Any]] = set()  # the loop keeps only weak references to tasks


class ClientDisconnected(OSError):
    """The write() callable was used after the client had gone."""


class WSGIAdapter:
    """Serves a WSGI app; it starts at the request's head and streams the body."""

    streaming = True

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
        stream = environ["wsgi.input"]
        if isinstance(stream, InputStream):
            stream.begin()
        future = loop.run_in_executor(self.executor, self._call, environ, cycle, loop)
        future.add_done_callback(lambda f: _done(f, cycle, stream))

    def environ(self, cycle: RequestCycle) -> dict[str, Any]:
        request = cycle.request
        assert request is not None
        server = cycle.server or ("", 0)
        client = cycle.client
        # PEP 3333: the percent-decoded bytes as latin-1 text, never decoded as UTF-8
        # (apps and frameworks undo it with .encode("latin-1")).
        path = unquote(request.path.decode("latin-1"), encoding="latin-1")
        root = self.root_path
        stream: InputStream | io.BytesIO
        if request.body_expected and not cycle.body_complete:
            stream = InputStream(cycle)
        else:
            stream = io.BytesIO(cycle.body)
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
            "wsgi.input": stream,
            # Reads end with b"" where the body ends, however it was framed
            # (a chunked body has no CONTENT_LENGTH): the mod_wsgi extension.
            "wsgi.input_terminated": True,
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
        output = _Output(cycle, loop)

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            if exc_info is not None and output.head_sent:
                raise exc_info[1].with_traceback(exc_info[2])
            if head and exc_info is None:
                raise RuntimeError("start_response() called twice without exc_info")
            head[:] = [
                int(status.split(" ", 1)[0]),
                [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            ]
            return write

        def send(data: bytes) -> bool:
            """One piece of the body; False once the client has gone."""
            if not head:
                raise RuntimeError("write() before start_response()")
            if not output.head_sent:
                output.start(head[0], head[1])
            return output.write(bytes(data)) if data else not output.gone

        def write(data: bytes) -> None:
            if not send(data):
                raise ClientDisconnected("the client has disconnected")

        result = self.app(environ, start_response)
        try:
            chunks = result if isinstance(result, list) else None
            if chunks is not None and not output.head_sent and head:
                output.respond(head[0], head[1], b"".join(chunks))
                return
            for chunk in result:
                # PEP 3333: the head waits for the first non-empty chunk.
                if chunk and not send(chunk):
                    logger.debug("client disconnected during %s", environ["PATH_INFO"])
                    break
            if not head:
                raise RuntimeError("WSGI app returned without calling start_response()")
            if not output.head_sent:
                send(b"")
            output.end()
        except ClientDisconnected:
            logger.debug("client disconnected during %s", environ["PATH_INFO"])
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()


def _done(
    future: asyncio.Future[None], cycle: RequestCycle, stream: InputStream | io.BytesIO
) -> None:
    """On the loop, once the app's thread is done with the request."""
    if isinstance(stream, InputStream):
        stream.abandon()  # the loop reads no more body for it
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


class _Output:
    """The response's way from the app's thread to the loop, with backpressure."""

    __slots__ = (
        "_draining",
        "_in_flight",
        "_unacked",
        "_window",
        "cycle",
        "gone",
        "head_sent",
        "loop",
    )

    def __init__(self, cycle: RequestCycle, loop: asyncio.AbstractEventLoop) -> None:
        self.cycle = cycle
        self.loop = loop
        self.head_sent = False
        self.gone = False  # the client disconnected: stop producing
        # Thread side: bytes handed to the loop and not yet acknowledged.
        self._window = threading.Condition(threading.Lock())
        self._in_flight = 0
        # Loop side: a drain is under way; what it will acknowledge.
        self._draining = False
        self._unacked = 0

    # -- the app's thread ----------------------------------------------------------

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.head_sent = True
        self.loop.call_soon_threadsafe(self._start, status, headers)

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.head_sent = True
        self.loop.call_soon_threadsafe(self._respond, status, headers, body)

    def write(self, data: bytes) -> bool:
        """Hand `data` to the loop, waiting while the window is full; False if gone."""
        with self._window:
            while self._in_flight > OUTPUT_WINDOW and not self.gone:
                if self.loop.is_closed():
                    self.gone = True
                    break
                self._window.wait(_POLL)
            if self.gone:
                return False
            self._in_flight += len(data)
        self.loop.call_soon_threadsafe(self._write, data)
        return True

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self._end)

    # -- the loop --------------------------------------------------------------------

    def _usable(self) -> bool:
        cycle = self.cycle
        return not (cycle.complete or cycle.disconnected)

    def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        if self._usable() and not self.cycle.response_started:
            self.cycle.start(status, headers)

    def _respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        if self._usable() and not self.cycle.response_started:
            self.cycle.respond(status, headers, body)

    def _write(self, data: bytes) -> None:
        cycle = self.cycle
        size = len(data)
        if not self._usable() or not cycle.response_started:
            self._acknowledge(size, gone=True)
            return
        cycle.write(data)
        if self._draining:
            self._unacked += size
            return
        transport = cycle.transport
        if transport is None or transport.get_write_buffer_size() <= _TRANSPORT_BUSY:
            self._acknowledge(size)
            return
        # The client reads slower than the app writes: acknowledge this piece
        # (and any written meanwhile) once the transport has drained. One drain
        # at a time: the connection has one waiter for it.
        self._draining = True
        self._unacked = size
        task = self.loop.create_task(self._drain())
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    async def _drain(self) -> None:
        try:
            await self.cycle.drain()
        finally:
            self._draining = False
            size, self._unacked = self._unacked, 0
            self._acknowledge(size, gone=not self._usable())

    def _acknowledge(self, size: int, gone: bool = False) -> None:
        with self._window:
            self._in_flight -= size
            if gone:
                self.gone = True
            self._window.notify()

    def _end(self) -> None:
        cycle = self.cycle
        if cycle.response_started and not cycle.complete:
            cycle.end()  # on a connection that is gone, this only closes the books


class InputStream:
    """`wsgi.input`: the request body as it arrives; reads block the app's thread.

    The loop side (`begin`, `_feed`, `abandon`) feeds a queue of pieces; the
    thread side (`read`, `readline`, `readlines`, iteration) takes them all at
    once into its own buffer. Reads follow file semantics: `read(n)` returns
    n bytes unless the body ends first; at the end, b"". A body cut off by the
    client (or by a timeout or a size limit) ends where it was cut.
    """

    def __init__(self, cycle: RequestCycle, limit: int = INPUT_BUFFER) -> None:
        self._cycle = cycle
        self._loop = cycle.loop
        self._limit = limit
        # Shared, under the lock.
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._eof = False
        self._abandoned = False
        self._wanted = False  # the feeder should start (after a 100-continue wait)
        self._space: asyncio.Future[None] | None = None  # the feeder waits for the app
        # Loop side.
        self._feeding = False
        # Thread side: what was taken from the queue, and how much of it was read.
        self._buffer = b""
        self._pos = 0

    # -- the loop ----------------------------------------------------------------------

    def begin(self) -> None:
        """At the request's head. A client that waits for 100 Continue gets it
        only when the app first reads; any other body is read at once."""
        request = self._cycle.request
        if request is None or not request.expect_continue:
            self._start_feeding()

    def _start_feeding(self) -> None:
        if self._feeding or self._abandoned:
            return
        self._feeding = True
        task = self._loop.create_task(self._feed())
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    async def _feed(self) -> None:
        cycle = self._cycle
        try:
            more = True
            while more:
                data, more = await cycle.receive_body()
                with self._lock:
                    if self._abandoned:
                        return
                    if data:
                        self._queue.append(data)
                        self._queued += len(data)
                        self._arrived.notify()
                    if not more or self._queued < self._limit:
                        continue
                    # Wait until the app has taken what is queued: meanwhile the
                    # connection buffers a little, then stops reading the socket.
                    space = self._space = self._loop.create_future()
                await space
        finally:
            with self._lock:
                self._eof = True
                self._space = None
                self._arrived.notify()

    def abandon(self) -> None:
        """The app is done with the request: stop feeding."""
        with self._lock:
            self._abandoned = True
            self._eof = True
            space, self._space = self._space, None
            self._arrived.notify()
        if space is not None and not space.done():
            space.set_result(None)

    # -- the app's thread --------------------------------------------------------------

    def _more(self) -> bool:
        """Wait for more body and take it into the buffer; False at its end."""
        with self._lock:
            if not self._wanted:
                self._wanted = True
                if not self._feeding and not self._eof:
                    self._loop.call_soon_threadsafe(self._start_feeding)
            while not self._queue and not self._eof:
                if self._loop.is_closed():
                    self._eof = True
                    break
                self._arrived.wait(_POLL)
            if not self._queue:
                return False
            pieces = list(self._queue)
            self._queue.clear()
            self._queued = 0
            space, self._space = self._space, None
        if space is not None:
            self._loop.call_soon_threadsafe(_wake, space)
        rest = self._buffer[self._pos :]
        if rest:
            pieces.insert(0, rest)
        self._buffer = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self._pos = 0
        return True

    def _available(self) -> int:
        return len(self._buffer) - self._pos

    def _take(self, size: int) -> bytes:
        start = self._pos
        self._pos = start + size
        if start == 0 and size == len(self._buffer):
            data, self._buffer, self._pos = self._buffer, b"", 0
            return data
        return self._buffer[start : start + size]

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._more():
                pass
            return self._take(self._available())
        while self._available() < size and self._more():
            pass
        return self._take(min(size, self._available()))

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        scanned = 0  # bytes past self._pos already searched for a newline
        while True:
            end = self._buffer.find(b"\n", self._pos + scanned)
            available = self._available()
            if end >= 0:
                length = end - self._pos + 1
                return self._take(length if limit < 0 else min(length, limit))
            if 0 <= limit <= available:
                return self._take(limit)
            scanned = available
            if not self._more():
                return self._take(self._available())

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """The app may close wsgi.input; the server ends the body."""


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
