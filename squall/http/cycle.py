"""One request and its response, as every app interface sees them.

A `RequestCycle` is the one object that squall's handlers, ASGI and WSGI all
answer through: it owns the request body buffer, the response's progress and
flow control. It frames nothing itself: every head and body piece goes through
the connection's `ServerConnection` (the core), which refuses what would break
HTTP/1.1. A refused response is logged once here, answered with a 500 when
nothing was sent yet, and otherwise ends the connection; the app's call raises
`ResponseError`.

This module knows the connection only through `Connection`, the few things a
cycle asks of it, so the asyncio shim (`protocol.py`) imports this one, never
the other way round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

from squall.http.core import (
    IDLE,
    AppValue,
    Request,
    RequestError,
    ResponseError,
    ServerConnection,
)

logger: Final = logging.getLogger("squall.http")

_ERROR_HEADERS: Final = [(b"content-type", b"text/plain; charset=utf-8")]
# A cycle buffers at most this much unread request body before the connection
# stops reading from the socket (and resumes once the app has read it).
BODY_BUFFER_HIGH: Final = 256 * 1024


class App(Protocol):
    """What the connection needs of an app interface (squall, ASGI, WSGI)."""

    def begin(self, cycle: RequestCycle) -> bool:
        """At the head of a request whose body follows: the one choice of when to run.

        True: the app has taken the request and reads its body as it comes
        (`receive_body`). False: call `handle` once the body is complete
        (`cycle.body`).
        """

    def handle(self, cycle: RequestCycle) -> None:
        """Answer a request whose body is complete; the answer ends with `respond` or `end`."""


class Upgraded(Protocol):
    """The protocol a connection speaks after an accepted Upgrade (WebSocket)."""

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...


#: An app interface may take over a connection that asks for an Upgrade: it
#: gets the cycle and the bytes that followed the head, and returns the
#: protocol that now owns the connection, or None to answer in HTTP.
Upgrader = Callable[["RequestCycle", bytes], "Upgraded | None"]


class Connection(Protocol):
    """What a cycle asks of the connection it belongs to (`HTTPProtocol`).

    Its framing (a `ServerConnection`), client address and scheme are given to
    the cycle when it is made.
    """

    loop: asyncio.AbstractEventLoop

    @property
    def server(self) -> tuple[str, int] | None: ...

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def write(self, data: bytes) -> None: ...

    def write_now(self, data: bytes) -> None: ...

    def flush_output(self) -> None: ...

    async def writable(self) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...

    def cycle_done(self, cycle: RequestCycle) -> None: ...

    def refuse(self, cycle: RequestCycle) -> None: ...


def body_fits_buffer(request: Request) -> bool:
    """A Content-Length within the connection's buffer, which never pauses below it.

    Such a body can be read whole before the app runs (`RequestCycle.body`),
    with no task or thread waiting on a slow client meanwhile.
    """
    for name, value in request.headers:
        if name == b"content-length":  # never with Transfer-Encoding: the parser refuses both
            return int(value) <= BODY_BUFFER_HIGH
    return False


class RequestCycle:
    """One request and its response, as the app sees them."""

    __slots__ = (
        "_body_waiter",
        "_buffered",
        "_chunks",
        "_conn",
        "_disconnect_waiter",
        "_protocol",
        "body_complete",
        "bytes_sent",
        "client",
        "complete",
        "continue_sent",
        "counted",
        "disconnected",
        "error",
        "reads_body",
        "reported",
        "request",
        "response_started",
        "runs_at_end",
        "scheme",
        "started",
        "started_at",
        "status",
        "task",
    )

    def __init__(
        self,
        protocol: Connection,
        request: Request | None,
        conn: ServerConnection,
        client: tuple[str, int] | None,
        scheme: str,
    ) -> None:
        # The protocol's framing and address, given, not asked of it: a
        # `Connection` is asked by name, and this is every request's path.
        self._protocol = protocol
        self._conn = conn
        self.counted = False  # in the worker's in-flight count (--limit-concurrency)
        self.task: asyncio.Future[Any] | None = None  # what runs the app, if a task (cancellable)
        self.request = request  # None only for a request that failed to parse
        self.error: RequestError | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._disconnect_waiter: asyncio.Future[None] | None = None
        self.body_complete = False
        self.started = False  # the app has been given the request
        self.reads_body = False  # the app runs from the head and reads the body as it comes
        self.runs_at_end = False  # the app chose to run once the body is complete
        self.response_started = False
        self.complete = False
        self.disconnected = False
        self.continue_sent = False
        # Where the request came from; a trusted proxy's headers may rewrite both.
        self.client = client
        self.scheme = scheme
        # For the access log and metrics; `reported` once either has seen it finish.
        self.reported = False
        self.status = 0
        self.bytes_sent = 0
        self.started_at = 0.0

    # -- facts about the connection ---------------------------------------------

    @property
    def server(self) -> tuple[str, int] | None:
        return self._protocol.server

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._protocol.transport

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._protocol.loop

    # -- request body -------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        # Only an app that reads the body as it comes resumes reading
        # (`receive_body`); any other runs once the body is whole, so pausing
        # here would wait forever. Its body is bounded by `Limits.max_body_bytes`.
        if self._buffered > BODY_BUFFER_HIGH and self.reads_body:
            self._protocol.pause_reading()
        self._wake_body_reader()

    def _wake_body_reader(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def body(self) -> bytes:
        """The whole body, for apps that run once it is complete."""
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def receive_body(self) -> tuple[bytes, bool]:
        """The next piece of body and whether more follows; (b"", False) at the end.

        At the end, `body_complete` says whether the body really ended; if not,
        the client left or broke the framing (`disconnected`).
        """
        while not self._chunks and not self.body_complete and not self.disconnected:
            if not self.continue_sent:
                self.send_continue()
            self._body_waiter = self.loop.create_future()
            try:
                await self._body_waiter
            finally:
                self._body_waiter = None
        data = b"".join(self._chunks)
        self._chunks.clear()
        if self._buffered > BODY_BUFFER_HIGH:
            self._protocol.resume_reading()
        self._buffered = 0
        return data, not (self.body_complete or self.disconnected)

    def send_continue(self) -> None:
        """Tell a client that waits (Expect: 100-continue) to send its body."""
        self.continue_sent = True
        request = self.request
        conn = self._conn
        if (
            request is not None
            and request.expect_continue
            and not self.response_started
            and conn.our_state is IDLE
        ):
            self._protocol.write(conn.encode_informational(100))

    # -- response -----------------------------------------------------------------

    def respond(
        self,
        status: AppValue,
        headers: AppValue,
        body: AppValue,
        reason: AppValue = None,
    ) -> None:
        """Send a whole response in one write and end the cycle."""
        request = self._unanswered()
        protocol = self._protocol
        conn = self._conn
        try:
            data = conn.encode_response(request, status, headers, body, reason)
        except ResponseError as exc:
            self._refused(exc)
            raise
        self.response_started = True
        self.status = status
        self.bytes_sent = len(body)
        if conn.keep_alive:
            protocol.write(data)
        else:  # the connection closes after it: nothing to hold it for
            protocol.write_now(data)
        self._finish()

    def _unanswered(self) -> Request:
        """The request, which no response has begun to answer yet."""
        request = self.request
        if self.response_started or request is None:
            raise RuntimeError("response already started")
        return request

    def start(
        self,
        status: AppValue,
        headers: AppValue,
        reason: AppValue = None,
    ) -> None:
        """Send the response head; the body follows with `write` and `end`."""
        request = self._unanswered()
        protocol = self._protocol
        try:
            data = self._conn.start_response(request, status, headers, reason)
        except ResponseError as exc:
            self._refused(exc)
            raise
        self.response_started = True
        self.status = status
        protocol.write(data)

    def write(self, data: AppValue) -> None:
        if not self.response_started or self.complete or self.request is None:
            raise RuntimeError("write() outside a started response")
        if data:
            protocol = self._protocol
            try:
                encoded = self._conn.encode_body(data)
            except ResponseError as exc:
                self._cut(exc)
                raise
            self.bytes_sent += len(data)
            protocol.write(encoded)

    def flush(self) -> None:
        """Put what was written on the wire now, not at the end of this loop pass."""
        self._protocol.flush_output()

    def end(self) -> None:
        if not self.response_started or self.complete or self.request is None:
            raise RuntimeError("end() outside a started response")
        protocol = self._protocol
        try:
            tail = self._conn.end_response()
        except ResponseError as exc:
            # Shorter than declared: the connection ends after what was sent.
            self._log_refused(exc)
            self._finish()
            raise
        if tail:
            protocol.write(tail)
        self._finish()

    async def drain(self) -> None:
        """Wait while the client reads slower than the app writes."""
        await self._protocol.writable()

    def abort(self) -> None:
        """Give up on this response and close the connection (the app failed mid-way)."""
        self.complete = True
        self._protocol.close()

    def _finish(self) -> None:
        self.complete = True
        if self._disconnect_waiter is not None:
            self._wake_disconnect_waiter()  # a receive() pending on an answered request returns
        self._protocol.cycle_done(self)

    def _log_refused(self, exc: ResponseError) -> None:
        request = self.request
        what = f"{request.method} {request.target.decode('latin-1')}" if request else "a request"
        logger.error("invalid response to %s: %s", what, exc)

    def _refused(self, exc: ResponseError) -> None:
        """Nothing was sent: the client gets a 500 in its place, and the
        connection goes on if the core allows (pipelined requests are answered)."""
        self._log_refused(exc)
        try:
            self.respond(500, _ERROR_HEADERS, b"Internal Server Error\n")
        except ResponseError:  # the connection cannot frame even that: end it
            self.error = RequestError(500, "Internal Server Error")
            self._protocol.refuse(self)

    def _cut(self, exc: ResponseError) -> None:
        """Part of the response is out: ending the connection is all that is left."""
        self._log_refused(exc)
        self.abort()

    # -- disconnect ---------------------------------------------------------------

    def _disconnect(self) -> None:
        self.disconnected = True
        self._wake_body_reader()
        self._wake_disconnect_waiter()

    def _wake_disconnect_waiter(self) -> None:
        waiter = self._disconnect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_disconnect(self) -> None:
        """Return once the client has gone (or the response is complete)."""
        if self.disconnected or self.complete:
            return
        self._disconnect_waiter = self.loop.create_future()
        await self._disconnect_waiter
