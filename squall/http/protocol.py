"""The asyncio side of an HTTP/1.1 connection: feeds bytes to `ServerConnection`
and writes what it returns.

One `RequestCycle` per request serves every app interface (squall's handlers,
ASGI, WSGI): it owns the request body buffer, the response state and flow
control. Pipelined requests queue behind the current one and run in order, so
responses leave in the order the requests came.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any, Protocol

from squall.http.core import (
    END_OF_MESSAGE,
    Data,
    Limits,
    Request,
    RequestError,
    ServerConnection,
    continue_response,
    error_response,
)

logger = logging.getLogger("squall.http")

# A cycle buffers at most this much unread request body before the connection
# stops reading from the socket (and resumes once the app has read it).
BODY_BUFFER_HIGH = 256 * 1024
# How often connection deadlines (keep-alive, header, body timeouts) are checked:
# a timeout fires between its value and its value plus TICK.
TICK = 0.5
# At most this many pipelined requests wait behind the current one.
MAX_PIPELINED = 32
# Held output goes out at once past this size, so that flow control
# (`pause_writing`) sees a large response as it is written.
HELD_OUTPUT_LIMIT = 64 * 1024


class App(Protocol):
    """What the connection needs of an app interface (squall, ASGI, WSGI)."""

    #: True: run as soon as the head arrives, reading the body as it comes.
    #: False: run once the whole body is in (`cycle.body`).
    streaming: bool

    def handle(self, cycle: RequestCycle) -> None:
        """Start answering `cycle`; the answer ends with `respond` or `end`."""


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


class Metrics(Protocol):
    """Counts what a worker does (`--metrics`); absent, the protocol counts nothing."""

    def connection_opened(self) -> None: ...

    def connection_closed(self) -> None: ...

    def request_started(self) -> None: ...

    def request_finished(self, cycle: RequestCycle) -> None:
        """`cycle.status`, `cycle.bytes_sent`, `cycle.started_at` (set when metrics are on)."""


class ServerState:
    """What all connections of one worker share."""

    def __init__(
        self,
        app: App,
        limits: Limits,
        keepalive_timeout: float,
        request_quota: int = 0,
        on_quota: Callable[[], object] | None = None,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        access_log: Callable[[RequestCycle], object] | None = None,
        forwarded: Callable[[RequestCycle], object] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        # Asked once: on Python 3.11 every get_running_loop() is a getpid() system call.
        self.loop = asyncio.get_running_loop()
        self.upgrade: Upgrader | None = getattr(app, "upgrade", None)
        self.limits = limits
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout  # a head begun must be complete within this
        self.body_timeout = body_timeout  # the longest silence while a body is read
        self.access_log = access_log  # called once per finished request
        self.forwarded = forwarded  # rewrites client/scheme from trusted proxy headers
        self.metrics = metrics
        self.ticker: asyncio.TimerHandle | None = None
        self.timed = access_log is not None or metrics is not None  # stamp started_at
        self.connections: set[HTTPProtocol] = set()
        # Told how many connections stay open each time one closes (`squall.steering`).
        self.on_closed: Callable[[int], object] | None = None
        self.holding: list[HTTPProtocol] = []  # connections with held output, flushed as one
        self.draining = False
        self.requests_served = 0
        self.request_quota = request_quota  # 0: no quota
        self.on_quota = on_quota

    def start_ticker(self) -> None:
        """Check every connection's deadlines a few times a second."""
        self.ticker = self.loop.call_later(TICK, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        due = [
            connection
            for connection in self.connections
            if (connection.deadline and now >= connection.deadline)
            or (connection.body_deadline and now >= connection.body_deadline)
        ]
        for connection in due:  # acting may close connections: not while iterating the set
            connection.check_deadlines(now)
        self.ticker = self.loop.call_later(TICK, self._tick)

    def remove_connection(self, connection: HTTPProtocol) -> None:
        connections = self.connections
        if connection in connections:
            connections.remove(connection)
            if self.on_closed is not None:
                self.on_closed(len(connections))

    def hold_output(self, connection: HTTPProtocol) -> None:
        """`connection` has output held back: write it after what is ready in this loop pass."""
        holding = self.holding
        holding.append(connection)
        if len(holding) == 1:
            self.loop.call_soon(self._flush_held)

    def _flush_held(self) -> None:
        holding, self.holding = self.holding, []
        for connection in holding:
            try:
                connection.flush_output()
            except Exception:  # one broken transport must not keep the others' output
                logger.exception("error writing to %s", connection.client)
                connection.close()

    def stop_ticker(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None

    def drain(self) -> None:
        """Close idle connections now and every other one after its response."""
        self.draining = True
        for connection in list(self.connections):
            connection.shutdown()


class RequestCycle:
    """One request and its response, as the app sees them."""

    __slots__ = (
        "_body_waiter",
        "_buffered",
        "_chunks",
        "_disconnect_waiter",
        "_protocol",
        "body_complete",
        "bytes_sent",
        "client",
        "complete",
        "continue_sent",
        "disconnected",
        "error",
        "reported",
        "request",
        "response_started",
        "scheme",
        "started",
        "started_at",
        "status",
    )

    def __init__(self, protocol: HTTPProtocol, request: Request | None) -> None:
        self._protocol = protocol
        self.request = request  # None only for a request that failed to parse
        self.error: RequestError | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self._disconnect_waiter: asyncio.Future[None] | None = None
        self.body_complete = False
        self.started = False
        self.response_started = False
        self.complete = False
        self.disconnected = False
        self.continue_sent = False
        # Where the request came from; a trusted proxy's headers may rewrite both.
        self.client = protocol.client
        self.scheme = protocol.scheme
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
        # Only a streaming app reads the body as it comes (`receive_body` resumes
        # reading); any other app runs once the body is whole, so pausing here
        # would wait forever. Its body is bounded by `Limits.max_body_bytes`.
        if self._buffered > BODY_BUFFER_HIGH and self._protocol.app.streaming:
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
        """The next piece of body and whether more follows; (b"", False) at the end."""
        while not self._chunks and not self.body_complete and not self.disconnected:
            if not self.continue_sent:
                self._send_continue()
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

    def _send_continue(self) -> None:
        self.continue_sent = True
        request = self.request
        if request is not None and request.expect_continue and not self.response_started:
            self._protocol.write(continue_response())

    # -- response -----------------------------------------------------------------

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Send a whole response in one write and end the cycle."""
        if self.response_started or self.request is None:
            raise RuntimeError("response already started")
        self.response_started = True
        self.status = status
        self.bytes_sent = len(body)
        protocol = self._protocol
        if protocol.state.draining:
            self.request.keep_alive = False
        data = protocol.conn.encode_response(self.request, status, headers, body)
        if self.request.keep_alive:
            protocol.write(data)
        else:  # the connection closes after it: nothing to hold it for
            protocol.write_now(data)
        self._finish()

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Send the response head; the body follows with `write` and `end`."""
        if self.response_started or self.request is None:
            raise RuntimeError("response already started")
        self.response_started = True
        self.status = status
        protocol = self._protocol
        if protocol.state.draining:
            self.request.keep_alive = False
        protocol.write(protocol.conn.start_response(self.request, status, headers))

    def write(self, data: bytes) -> None:
        if not self.response_started or self.complete or self.request is None:
            raise RuntimeError("write() outside a started response")
        if data:
            self.bytes_sent += len(data)
            protocol = self._protocol
            protocol.write(protocol.conn.encode_body(self.request, data))

    def flush(self) -> None:
        """Put what was written on the wire now, not at the end of this loop pass."""
        self._protocol.flush_output()

    def end(self) -> None:
        if not self.response_started or self.complete or self.request is None:
            raise RuntimeError("end() outside a started response")
        protocol = self._protocol
        tail = protocol.conn.end_response(self.request)
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


class HTTPProtocol(asyncio.Protocol):
    """An HTTP/1.1 server connection on an asyncio transport."""

    def __init__(
        self,
        state: ServerState,
        scheme: str = "http",
        proxy_protocol: bool = False,
        server: tuple[str, int] | None = None,
    ) -> None:
        self.state = state
        # With the PROXY protocol, the first bytes say who the client really is.
        self._proxy_header: bytes | None = b"" if proxy_protocol else None
        self.app = state.app
        self.scheme = scheme
        self.loop = state.loop
        self.conn = ServerConnection(state.limits)
        self.transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        # The listener's address when it is a specific one; else asked of the
        # socket when first needed (a system call each).
        self._server = server
        self.current: RequestCycle | None = None
        self.receiving: RequestCycle | None = None
        self.queue: deque[RequestCycle] = deque()
        self.closing = False
        self.fresh = True  # no request begun yet
        self.eof = False
        self._reading_paused = False
        self._write_paused = False
        self._writable: asyncio.Future[None] | None = None
        self.deadline = 0.0  # keep-alive idle deadline, then the deadline of a head in progress
        self._head_deadline = False  # `deadline` is a head's
        self.body_deadline = 0.0  # while a body is read: its next piece is due by then
        self.upgraded: Upgraded | None = None
        # Output is held and written once the loop has run what was ready in
        # this pass: a write wakes the client, and on a busy machine the woken
        # client would preempt this worker once per response instead of once
        # per pass. A response that ends the connection goes out at once.
        self._held: list[bytes] = []
        self._held_size = 0

    # -- transport events ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        self.client = _address(transport.get_extra_info("peername"))
        state = self.state
        state.connections.add(self)
        if state.ticker is None:
            state.start_ticker()
        if state.metrics is not None:
            state.metrics.connection_opened()
        self._start_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        state = self.state
        state.remove_connection(self)
        metrics = state.metrics
        if metrics is not None:
            for cycle in (self.current, *self.queue):
                if cycle is not None and cycle.request is not None and not cycle.reported:
                    cycle.reported = True
                    metrics.request_finished(cycle)  # unanswered: its status stays 0
            metrics.connection_closed()
        self._cancel_idle_timer()
        self._cancel_body_timer()
        self._held.clear()
        if self.upgraded is not None:
            self.upgraded.connection_lost(exc)
        for cycle in (self.current, *self.queue):
            if cycle is not None:
                cycle._disconnect()
        self.queue.clear()
        # Cycles still running keep their protocol; the protocol lets go of
        # them, its parser and its transport, so that nothing here is left for
        # the garbage collector to find.
        self.current = self.receiving = None
        self.conn.close()
        self.transport = None
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def server(self) -> tuple[str, int] | None:
        if self._server is None and self.transport is not None:
            self._server = _address(self.transport.get_extra_info("sockname"))
        return self._server

    @server.setter
    def server(self, address: tuple[str, int] | None) -> None:
        self._server = address

    def data_received(self, data: bytes) -> None:
        if self.upgraded is not None:
            self.upgraded.data_received(data)
            return
        if self._proxy_header is not None:
            rest = self._read_proxy_header(data)
            if not rest:
                return
            data = rest
        conn = self.conn
        for event in conn.receive_data(data):
            kind = type(event)
            if kind is Request:
                self._request_begun(event)  # type: ignore[arg-type]
            elif kind is Data:
                self.receiving._feed(event.data)  # type: ignore[union-attr]
                if self.body_deadline:
                    self._restart_body_timer()
            elif event is END_OF_MESSAGE:
                receiving: RequestCycle = self.receiving  # type: ignore[assignment]
                self.receiving = None
                self.body_deadline = 0.0
                receiving.body_complete = True
                if receiving._body_waiter is not None:
                    receiving._wake_body_reader()
                if receiving is self.current and not receiving.started:
                    request = receiving.request
                    if request is not None and request.upgrade and self._try_upgrade(receiving):
                        return
                    self._run(receiving)
            else:
                self._request_failed(event)  # type: ignore[arg-type]
        if conn.in_head and not self._head_deadline and not self.closing:
            self._start_head_timer()  # a head has begun: its own deadline replaces keep-alive's

    def _read_proxy_header(self, data: bytes) -> bytes:
        """Consume the PROXY protocol header; what follows it is HTTP."""
        from squall.http.proxy_protocol import ProxyProtocolError, parse_proxy_header

        buffered = (self._proxy_header or b"") + data
        try:
            header = parse_proxy_header(buffered)
        except ProxyProtocolError as exc:
            logger.warning("closing connection from %s: %s", self.client, exc)
            self.close()
            return b""
        if header is None:
            self._proxy_header = buffered  # incomplete; the parser bounds its size
            return b""
        self._proxy_header = None
        if header.client is not None:
            self.client = header.client
        if header.server is not None:
            self.server = header.server
        return buffered[header.consumed :]

    def _try_upgrade(self, cycle: RequestCycle) -> bool:
        """Hand the connection to the app's upgraded protocol, if it takes it."""
        upgrade = self.state.upgrade
        if upgrade is None or self.queue:
            return False
        self.flush_output()  # the upgraded protocol writes to the transport itself
        upgraded = upgrade(cycle, self.conn.trailing_data)
        if upgraded is None:
            return False
        cycle.started = True
        self.upgraded = upgraded
        self.state.remove_connection(self)  # it drains by its own rules
        return True

    def eof_received(self) -> bool | None:
        # The client will send nothing more; answer what it asked, then close.
        if self.upgraded is not None:
            self.upgraded.eof_received()
            return True
        if self.receiving is not None:
            # A request whose body was cut off can never be complete.
            self._request_failed(RequestError(400, "request body incomplete"))
        if self.current is None and not self.queue:
            self.close()  # after any held output
            return True
        self.eof = True
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.upgraded is not None:
            self.upgraded.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.upgraded is not None:
            self.upgraded.resume_writing()
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- request flow -------------------------------------------------------

    def _request_begun(self, request: Request) -> None:
        self.deadline = 0.0
        self._head_deadline = False
        self.fresh = False
        if request.upgrade:
            # The parser reads nothing after an Upgrade or CONNECT request and
            # no other protocol is spoken here: the connection ends with its response.
            request.keep_alive = False
        cycle = RequestCycle(self, request)
        if self.state.forwarded is not None:
            self.state.forwarded(cycle)
        if self.state.timed:
            cycle.started_at = perf_counter()  # loop.time() is only as fine as 1 ms in uvloop
            if self.state.metrics is not None:
                self.state.metrics.request_started()
        if request.body_expected and self.state.body_timeout > 0:
            self._restart_body_timer()
        self.receiving = cycle
        if self.current is None:
            self.current = cycle
            if request.expect_continue and not self.app.streaming:
                cycle._send_continue()
            if self.app.streaming and request.body_expected:
                # It reads the body as it comes. Without a body, the end of the
                # message is in this same read: it runs there, complete.
                self._run(cycle)
        else:
            self.queue.append(cycle)
            if len(self.queue) >= MAX_PIPELINED:
                self.pause_reading()

    def _request_failed(self, error: RequestError) -> None:
        receiving = self.receiving
        if receiving is not None and not receiving.body_complete:
            cycle = receiving  # the body of this request broke a rule
            cycle._disconnect()
        else:
            cycle = RequestCycle(self, None)
            if self.current is None:
                self.current = cycle
            else:
                self.queue.append(cycle)
        cycle.error = error
        self.receiving = None
        if cycle is self.current:
            self._reject(cycle)

    def _reject(self, cycle: RequestCycle) -> None:
        error = cycle.error
        assert error is not None
        if not cycle.response_started:
            cycle.response_started = True
            cycle.status = error.status
            self.write(error_response(error.status, error.reason))
        cycle.complete = True
        if self.state.timed and cycle.request is not None and not cycle.reported:
            cycle.reported = True
            if self.state.access_log is not None:
                self.state.access_log(cycle)
            if self.state.metrics is not None:
                self.state.metrics.request_finished(cycle)
        self.close()

    def _run(self, cycle: RequestCycle) -> None:
        cycle.started = True
        try:
            self.app.handle(cycle)
        except Exception:  # the interface adapters catch app errors; this is a last resort
            logger.exception("error while handling %r", cycle.request)
            if not cycle.response_started:
                cycle.error = RequestError(500, "Internal Server Error")
                self._reject(cycle)
            else:
                cycle.abort()

    def cycle_done(self, cycle: RequestCycle) -> None:
        """The response to the current request is complete: go on to the next."""
        state = self.state
        state.requests_served += 1
        if state.requests_served == state.request_quota and state.on_quota is not None:
            state.on_quota()
        if state.timed and not cycle.reported:
            cycle.reported = True
            if state.access_log is not None:
                state.access_log(cycle)
            if state.metrics is not None:
                state.metrics.request_finished(cycle)
        request = cycle.request
        if request is None or not request.keep_alive or self.closing:
            self.close()
            return
        if not cycle.body_complete:
            # The app answered without reading the whole body; reading on would
            # mean parsing the rest of it, so this connection ends here.
            self.close()
            return
        queue = self.queue
        if not queue:
            self.current = None
            if self.state.draining or self.eof:
                self.close()
            else:
                self._start_idle_timer()
            return
        if self._reading_paused and len(queue) <= MAX_PIPELINED // 2:
            self.resume_reading()
        nxt = self.current = queue.popleft()
        if nxt.error is not None:
            self._reject(nxt)
        elif self.app.streaming or nxt.body_complete:
            # From the loop, not from inside this response's call stack: a
            # pipeline of synchronous handlers would recurse once per request.
            self.loop.call_soon(self._run_current, nxt)
        elif not nxt.continue_sent:
            nxt._send_continue()  # its body waits for the 100 (Expect: 100-continue)

    def _run_current(self, cycle: RequestCycle) -> None:
        if cycle is self.current and not cycle.started and not self.closing:
            self._run(cycle)

    # -- output and flow control ------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        held = self._held
        if not held:
            self.state.hold_output(self)
        held.append(data)
        self._held_size += len(data)
        if self._held_size > HELD_OUTPUT_LIMIT:
            self.flush_output()

    def write_now(self, data: bytes) -> None:
        """Write `data` after any held output, without holding it."""
        transport = self.transport
        if transport is not None and not self.closing:
            if self._held:
                self._held.append(data)
                self.flush_output()  # one write with what was held before it
            else:
                transport.write(data)

    def flush_output(self) -> None:
        """Write the held output now."""
        held = self._held
        if held:
            data = held[0] if len(held) == 1 else b"".join(held)
            held.clear()
            self._held_size = 0
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)

    async def writable(self) -> None:
        """Return once the transport takes writes again; any number may wait at once."""
        if self._write_paused and not self.closing:
            waiter = self._writable
            if waiter is None or waiter.done():
                waiter = self._writable = self.loop.create_future()
            await asyncio.shield(waiter)

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closing:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closing:
            self._reading_paused = False
            self.transport.resume_reading()

    def shutdown(self) -> None:
        """Close after the response in flight; close an idle keep-alive connection now.

        A connection that has not yet sent its first request stays open: its
        client has sent or is sending a request that this worker accepted, and
        it gets its answer (with `Connection: close`). Closing an idle
        keep-alive connection is the race that RFC 9112 section 9.3.1 lets
        clients retry.
        """
        if self.current is None:
            if not self.fresh:
                self.close()
        elif self.current.request is not None:
            self.current.request.keep_alive = False

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self._cancel_idle_timer()
            self._cancel_body_timer()
            if self._held:
                self.flush_output()
            if self.transport is not None:
                self.transport.close()

    # Timers: deadlines are plain floats, checked by the state's ticker (`check_deadlines`),
    # so that a request costs no timer handle to create and cancel.

    def _start_idle_timer(self) -> None:
        timeout = self.state.keepalive_timeout
        self._head_deadline = False
        self.deadline = self.loop.time() + timeout if timeout > 0 else 0.0

    def _cancel_idle_timer(self) -> None:
        self.deadline = 0.0

    def _start_head_timer(self) -> None:
        """A head has begun: it must be complete within the header timeout (slowloris)."""
        self._head_deadline = True
        timeout = self.state.header_timeout
        self.deadline = self.loop.time() + timeout if timeout > 0 else 0.0

    def _restart_body_timer(self) -> None:
        self.body_deadline = self.loop.time() + self.state.body_timeout

    def _cancel_body_timer(self) -> None:
        self.body_deadline = 0.0

    def check_deadlines(self, now: float) -> None:
        """Called by the ticker: act on a deadline that has passed."""
        if self.closing or self.upgraded is not None:
            return
        if self.body_deadline and now >= self.body_deadline:
            self.body_deadline = 0.0
            if self.receiving is not None:
                self._time_out("request body timeout")
                return
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            if not self._head_deadline:
                if self.current is None:
                    self.close()  # idle keep-alive connection
            elif self.current is not None:
                self._start_head_timer()  # a pipelined head waits behind a response in progress
            elif self.conn.in_head:
                self._time_out("request header timeout")

    def _time_out(self, reason: str) -> None:
        """408 for the request being read (unless its response began), then close."""
        receiving = self.receiving
        if receiving is not None:
            receiving._disconnect()
        current = self.current
        if current is None or (current is receiving and not current.response_started):
            self.write(error_response(408, reason))
        self.close()


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None
