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

A request body that ends without being complete (the client disconnected
or half-closed early, a chunk broke the framing, the body timed out or went
over its size limit) never reads as a short complete body: the read that needs
more than really arrived raises `RequestBodyError` (an `OSError`), and so does
every read after it. Reads that the bytes which did arrive can satisfy return
them first. An app that lets it propagate gets one log line, no traceback; the
server has already answered the request itself (400, 408 or 413) or the client
is gone, so nothing else is sent.

When the client goes away, the response's iteration stops (the iterable's
`close()` is still called); the write() callable raises `ClientDisconnected`.

Request header names that contain "_" are left out of the environ, as nginx
and gunicorn do: `X_Forwarded_For` would otherwise become
`HTTP_X_FORWARDED_FOR`, indistinguishable from `X-Forwarded-For`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from mypy_extensions import mypyc_attr

from squall.http.core import ResponseError
from squall.http.cycle import body_fits_buffer

if TYPE_CHECKING:
    from squall.http.cycle import RequestCycle

logger: Final = logging.getLogger("squall.wsgi")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

DEFAULT_THREADS: Final = 10
#: The loop stops reading the request body while wsgi.input holds this much unread.
INPUT_BUFFER: Final = 256 * 1024
#: The app's thread may run this far ahead of what the transport has taken.
OUTPUT_WINDOW: Final = 256 * 1024
#: Above this much in the transport's buffer, a piece is acknowledged only after a drain.
_TRANSPORT_BUSY: Final = 64 * 1024
#: How often a blocked app thread checks that its event loop still runs.
_POLL: Final = 1.0

_tasks: Final[set[asyncio.Future[Any]]] = set()  # the loop keeps only weak references to tasks


#: PEP 3333's status: a three-digit code, one space, a reason phrase (maybe empty) of
#: latin-1 text without control characters other than HTAB.
_STATUS: Final = re.compile(r"([1-9][0-9][0-9]) ([\t\x20-\x7e\x80-\xff]*)")


@mypyc_attr(native_class=False)
class ClientDisconnected(OSError):
    """The write() callable was used after the client had gone."""


@mypyc_attr(native_class=False)
class RequestBodyError(OSError):
    """`wsgi.input`: the request body ended without being complete.

    Raised by the read that needs more body than really arrived, and by every
    read after it. Its message says why: the client disconnected, the body
    broke a framing rule (or a size limit), or it timed out.
    """


def _body_failure(cycle: RequestCycle) -> str:
    """Why the body of `cycle` ended without being complete: the message to raise."""
    error = cycle.error
    if error is None:
        return "client disconnected before the request body was complete"
    if error.status == 408:
        return f"request body timed out ({error.reason})"
    if error.status == 400 and "incomplete" in error.reason:
        # The connection's read side ended (EOF, a half-close) mid-body.
        return "client disconnected before the request body was complete"
    return f"request body invalid ({error.status} {error.reason})"


class WSGIAdapter:
    """Serves a WSGI app; it starts at the request's head and streams the body."""

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

    def begin(self, cycle: RequestCycle) -> bool:
        """At the head of a request with a body: when to take a thread.

        A Content-Length within the connection's buffer (`BODY_BUFFER_HIGH`)
        is read by the event loop first, and the app runs once it is complete:
        a slow client then holds a coroutine, not one of the `--threads`.
        A larger or chunked body streams to the app as it comes
        (`InputStream`), under --body-min-rate.
        """
        head = cycle.request
        assert head is not None
        if body_fits_buffer(head):
            return False
        self.handle(cycle)
        return True

    def handle(self, cycle: RequestCycle) -> None:
        """Run the app for `cycle`: at its head (see `begin`), or with its body complete."""
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
            # It would pass for the same name with "-" (see the module's doc). (find,
            # not `in`: on 3.11 `in` first tries b"_" as an int, a formatted TypeError.)
            if name.find(b"_") >= 0:
                continue
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
        output = _Output(cycle, loop)
        responder = _Responder(output)
        head = responder.head
        send = responder.send
        result = self.app(environ, responder.start_response)
        try:
            chunks = result if isinstance(result, list) else None
            if chunks is not None and not output.head_sent and head:
                output.respond(head[0], head[1], head[2], b"".join(chunks))
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


class _Responder:
    """`start_response` and the `write` it returns, for one request (PEP 3333).

    A class, not closures in `_call`: compiled, closures that call each other
    would share one environment object with a reference to each, a cycle left
    for the garbage collector by every request.
    """

    __slots__ = ("head", "output")

    def __init__(self, output: _Output) -> None:
        self.output = output
        #: [status, encoded headers, reason] once start_response() was called.
        self.head: list[Any] = []

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self.output.head_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        if self.head and exc_info is None:
            raise RuntimeError("start_response() called twice without exc_info")
        match = _STATUS.fullmatch(status) if isinstance(status, str) else None
        if match is None:
            raise ValueError(
                "start_response(): status must be 'NNN reason' (a str: a three-digit "
                f"code, one space, a reason phrase), not {status!r}"
            )
        try:
            encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        except (AttributeError, TypeError, ValueError) as exc:
            raise _header_error(headers) from exc
        self.head[:] = [int(match[1]), encoded, match[2]]
        return self.write

    def send(self, data: bytes) -> bool:
        """One piece of the body; False once the client has gone."""
        head = self.head
        if not head:
            raise RuntimeError("write() before start_response()")
        output = self.output
        if not output.head_sent:
            output.start(head[0], head[1], head[2])
        return output.write(bytes(data)) if data else not output.gone

    def write(self, data: bytes) -> None:
        if not self.send(data):
            raise ClientDisconnected("the client has disconnected")


def _header_error(headers: Any) -> Exception:
    """What is wrong with the headers given to start_response(), as an exception to raise."""
    try:
        items = list(headers)
    except TypeError:
        return TypeError(f"start_response(): headers must be a list, not {type(headers).__name__}")
    for header in items:
        try:
            name, value = header
        except (TypeError, ValueError):
            return TypeError(
                f"start_response(): each header must be a (name, value) tuple, not {header!r}"
            )
        if not isinstance(name, str) or not isinstance(value, str):
            return TypeError(
                "start_response(): header names and values must be str (PEP 3333), "
                f"not {type(name).__name__} and {type(value).__name__} in {header!r}"
            )
        try:
            name.encode("latin-1")
            value.encode("latin-1")
        except UnicodeEncodeError:
            return ValueError(f"start_response(): header {header!r} is not latin-1 text")
    return TypeError(f"start_response(): invalid headers {headers!r}")


def _done(
    future: asyncio.Future[None], cycle: RequestCycle, stream: InputStream | io.BytesIO
) -> None:
    """On the loop, once the app's thread is done with the request."""
    if isinstance(stream, InputStream):
        stream.abandon()  # the loop reads no more body for it
    exc = future.exception()
    if exc is None:
        return
    if isinstance(exc, RequestBodyError):
        # Not a bug in the app: the client's body was cut off or broken. One line.
        request = cycle.request
        logger.info(
            "WSGI app stopped on an incomplete request body: %s %s: %s",
            request.method if request is not None else "-",
            request.path.decode("latin-1") if request is not None else "-",
            exc,
        )
    else:
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

    def start(self, status: int, headers: list[tuple[bytes, bytes]], reason: str) -> None:
        self.head_sent = True
        self.loop.call_soon_threadsafe(self._start, status, headers, reason)

    def respond(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: str, body: bytes
    ) -> None:
        self.head_sent = True
        self.loop.call_soon_threadsafe(self._respond, status, headers, reason, body)

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

    # The core refuses a response that would break HTTP/1.1 (`ResponseError`): the
    # cycle has logged it and answered 500 or closed the connection; the app's
    # thread is told the client is gone, so that it stops producing.

    def _start(self, status: int, headers: list[tuple[bytes, bytes]], reason: str) -> None:
        if self._usable() and not self.cycle.response_started:
            try:
                self.cycle.start(status, headers, reason)
            except ResponseError:
                self._acknowledge(0, gone=True)

    def _respond(
        self, status: int, headers: list[tuple[bytes, bytes]], reason: str, body: bytes
    ) -> None:
        if self._usable() and not self.cycle.response_started:
            try:
                self.cycle.respond(status, headers, body, reason)
            except ResponseError:
                self._acknowledge(0, gone=True)

    def _write(self, data: bytes) -> None:
        cycle = self.cycle
        size = len(data)
        if not self._usable() or not cycle.response_started:
            self._acknowledge(size, gone=True)
            return
        try:
            cycle.write(data)
        except ResponseError:  # more than the declared Content-Length: the connection ends
            self._acknowledge(size, gone=True)
            return
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
            with contextlib.suppress(ResponseError):  # shorter than declared: logged, closed
                cycle.end()  # on a connection that is gone, this only closes the books


class InputStream:
    """`wsgi.input`: the request body as it arrives; reads block the app's thread.

    The loop side (`begin`, `_feed`, `abandon`) feeds a queue of pieces; the
    thread side (`read`, `readline`, `readlines`, iteration) takes them all at
    once into its own buffer. Reads follow file semantics: `read(n)` returns
    n bytes unless the body ends first; at the end, b"".

    A body that ends without being complete (`cycle.body_complete` false when
    `receive_body` says no more follows: the client disconnected, a framing
    rule or size limit broke, a timeout) has no end: the first read that needs
    more than arrived (`read()`, `read(n)` short of n, `readline()` short of a
    newline, and so `readlines()` and iteration) raises `RequestBodyError`,
    and so does every read after it. Reads that what arrived can satisfy
    return it first.
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
        self._failure: str | None = None  # set with _eof: why the body is incomplete
        self._abandoned = False
        self._wanted = False  # the feeder should start (after a 100-continue wait)
        self._space: asyncio.Future[None] | None = None  # the feeder waits for the app
        # Loop side.
        self._feeding = False
        # Thread side: what was taken from the queue, and how much of it was read.
        self._buffer = b""
        self._pos = 0
        self._raised: str | None = None  # a read raised: every later one raises too

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
        more = True
        try:
            while more:
                data, more = await cycle.receive_body()
                with self._lock:
                    if self._abandoned:
                        return
                    if data:
                        self._queue.append(data)
                        self._queued += len(data)
                        self._arrived.notify()
                    space = None
                    if more and self._queued >= self._limit:
                        # Wait until the app has taken what is queued: meanwhile the
                        # connection buffers a little, then stops reading the socket.
                        space = self._space = self._loop.create_future()
                if space is not None:
                    await space
        finally:
            # Ended without its proper end: a disconnect, a body error, a timeout,
            # or this task cancelled (the worker stops).
            failure = None if cycle.body_complete else _body_failure(cycle)
            with self._lock:
                if not self._eof:
                    self._failure = failure
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
                    self._failure = "the worker stopped before the request body was complete"
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

    def _check(self) -> None:
        """Before a read: raise if an earlier read raised."""
        if self._raised is not None:
            raise RequestBodyError(self._raised)

    def _ended(self) -> None:
        """The body has ended where the reader wanted more: raise if it was incomplete."""
        failure = self._failure  # final once _more() has returned False
        if failure is not None:
            self._raised = failure
            raise RequestBodyError(failure)

    def _take(self, size: int) -> bytes:
        start = self._pos
        self._pos = start + size
        if start == 0 and size == len(self._buffer):
            data, self._buffer, self._pos = self._buffer, b"", 0
            return data
        return self._buffer[start : start + size]

    def read(self, size: int | None = -1) -> bytes:
        self._check()
        if size is None or size < 0:
            while self._more():
                pass
            self._ended()
            return self._take(self._available())
        while self._available() < size:
            if not self._more():
                self._ended()
                break
        return self._take(min(size, self._available()))

    def readline(self, size: int | None = -1) -> bytes:
        self._check()
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
                self._ended()
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
