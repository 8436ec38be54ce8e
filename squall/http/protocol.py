"""The asyncio side of an HTTP/1.1 connection: feeds bytes to the core
(`ServerConnection`), writes what it returns, and keeps time.

It owns what needs a loop: the transport, flow control in both directions,
the queue of pipelined requests, and the deadlines. The rules of the
conversation (framing, keep-alive, what may be sent) are the core's; the
request and response as an app sees them are the cycle's (`cycle.py`).
Pipelined requests queue behind the current one and run in order, so
responses leave in the order the requests came.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import perf_counter
from typing import Any, Final

from squall.http.core import (
    DONE,
    END_OF_MESSAGE,
    Data,
    Request,
    RequestError,
    ServerConnection,
    error_response,
)
from squall.http.cycle import RequestCycle, Upgraded
from squall.http.state import ServerState

logger: Final = logging.getLogger("squall.http")

# At most this many pipelined requests wait behind the current one.
MAX_PIPELINED: Final = 32
# Held output goes out at once past this size, so that flow control
# (`pause_writing`) sees a large response as it is written.
HELD_OUTPUT_LIMIT: Final = 64 * 1024
# A draining server closes an idle keep-alive connection only after it has
# stayed idle this long since the drain began: a client that is still using it
# sends its next request within that time, and gets it answered (with
# `Connection: close`) instead of a closed connection.
DRAIN_IDLE: Final = 1.0
# A closing connection first shuts its write side, then reads and discards
# what the client still sends until its FIN or for this long: closing a
# socket with unread bytes in it sends a reset, which can destroy the
# response the client has not read yet (nginx's lingering close).
LINGER: Final = 2.0
TIMEOUT_HEADERS: Final = ((b"content-type", b"text/plain; charset=utf-8"),)
#: What a client sends first on a cleartext HTTP/2 connection (RFC 9113 3.4).
_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class HTTPProtocol(asyncio.Protocol):
    """An HTTP/1.1 server connection on an asyncio transport."""

    def __init__(
        self,
        state: ServerState,
        scheme: str = "http",
        server: tuple[str, int] | None = None,
        client: tuple[str, int] | None = None,
    ) -> None:
        self.state = state
        # Given by the acceptor: the address accept() returned, or a PROXY header's client.
        self._claimed_client = client
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
        #: "P" or "PR" read first with --h2c: the h2c preface's start, or an
        #: HTTP/1.1 method's (POST, PROPFIND); held until a third byte tells.
        self._preface_start = b""
        self.eof = False
        self._reading_paused = False
        self._write_paused = False
        self._writable: asyncio.Future[None] | None = None
        self.deadline = 0.0  # keep-alive idle deadline, then the deadline of a head in progress
        self._lingering = False  # closing: the write side is shut, reads are discarded
        self._head_deadline = False  # `deadline` is a head's
        self.body_deadline = 0.0  # while a body is read: its next piece is due by then
        self.request_deadline = 0.0  # while the app runs a request: --request-timeout
        self._body_began = 0.0  # when the body being read began (loop time)
        self._body_bytes = 0  # of it received so far
        self._body_too_slow = False  # the body deadline is the minimum rate's
        self.upgraded: Upgraded | None = None
        # Output is held and written once the loop has run what was ready in
        # this pass: a write wakes the client, and on a busy machine the woken
        # client would preempt this worker once per response instead of once
        # per pass. A response that ends the connection goes out at once.
        self._held: list[bytes] = []
        self._held_size = 0

    # -- transport events ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is not None:
            # The acceptor served the first bytes on the socket itself
            # (squall.http.direct); the loop's transport takes over from it.
            direct: Any = self.transport
            self.transport = transport  # type: ignore[assignment]
            direct.hand_over(transport, self._reading_paused)
            if self._reading_paused and not self.closing:
                # uvloop starts reading after connection_made returns, paused or not.
                self.loop.call_soon(self._pause_again)
            return
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        self.client = self._claimed_client or _address(transport.get_extra_info("peername"))
        state = self.state
        state.connections.add(self)
        if state.ticker is None:
            state.start_ticker()
        if state.metrics is not None:
            state.metrics.connection_opened()
        self._start_idle_timer()
        if self.scheme == "https" and state.http2 is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                state.http2.take_over(self, b"")

    def _pause_again(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closing:
            self.transport.pause_reading()

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
                if cycle.counted:
                    cycle.counted = False
                    state.in_flight -= 1
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
        if self.closing:
            return  # lingering: read and dropped, so that the close sends no reset
        if (
            self.fresh
            and (self._preface_start or data[:1] == b"P")
            and not self.conn.head_in_progress  # the preface is a connection's first bytes
        ):
            data = self._preface_start + data
            self._preface_start = b""
            if self._prior_knowledge(data):
                return
        conn = self.conn
        for event in conn.receive_data(data):
            kind = type(event)
            if kind is Request:
                self._request_begun(event)  # type: ignore[arg-type]
            elif kind is Data:
                self.receiving._feed(event.data)  # type: ignore[union-attr]
                if self.body_deadline:
                    self._body_bytes += len(event.data)  # type: ignore[union-attr]
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
                    if (
                        request is not None
                        and request.upgrade
                        and not request.body_expected  # a body is no upgrade's: HTTP
                        and self._try_upgrade(receiving)
                    ):
                        return
                    if not self._write_paused:
                        self._run(receiving)
            else:
                self._request_failed(event)  # type: ignore[arg-type]
        if conn.head_in_progress and not self._head_deadline and not self.closing:
            self._start_head_timer()  # a head has begun: its own deadline replaces keep-alive's

    def _prior_knowledge(self, data: bytes) -> bool:
        """The h2c preface (RFC 9113 3.3): with --h2c, HTTP/2 from the first byte."""
        http2 = self.state.http2
        if http2 is None or not http2.h2c or not _PREFACE.startswith(data[: len(_PREFACE)]):
            return False
        if len(data) < 3:
            self._preface_start = data  # not yet HTTP/2's ("PRI") nor HTTP/1.1's
            return True
        http2.take_over(self, data)
        return True

    def _try_upgrade(self, cycle: RequestCycle) -> bool:
        """Hand the connection to the app's upgraded protocol, if it takes it."""
        if self.queue:
            return False
        http2 = self.state.http2
        if http2 is not None and http2.h2c and http2.upgrade(self, cycle):
            cycle.started = True
            return True
        upgrade = self.state.upgrade
        if upgrade is None:
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
        if self.closing:
            if self.transport is not None:
                self.transport.close()  # the end of a lingering close
            return True
        self.eof = True  # so a close has nothing to linger for
        if self.receiving is not None:
            # A request whose body was cut off can never be complete.
            self._request_failed(RequestError(400, "request body incomplete"))
        if self.current is None and not self.queue:
            self.close()  # after any held output
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
        current = self.current
        if current is not None and not current.started and not self.closing:
            # A request that waited for the client to read the previous responses.
            self._start_current(current)

    # -- request flow -------------------------------------------------------

    def _request_begun(self, request: Request) -> None:
        self.deadline = 0.0
        self._head_deadline = False
        self.fresh = False
        cycle = RequestCycle(self, request, self.conn, self.client, self.scheme)
        state = self.state
        if state.forwarded is not None:
            state.forwarded(cycle)
        if state.timed:
            cycle.started_at = perf_counter()  # loop.time() is only as fine as 1 ms in uvloop
            if state.metrics is not None:
                state.metrics.request_started()
        if request.body_expected and state.body_timeout > 0:
            self._body_began = self.loop.time()
            self._body_bytes = 0
            self._restart_body_timer()
        self.receiving = cycle
        if self.current is None:
            self.current = cycle
            if state.draining:
                self.conn.close_after_response()
            if request.body_expected and not self._write_paused:
                # Without a body, the end of the message is in this same read:
                # the request runs there, complete.
                self._begin(cycle)
        else:
            self.queue.append(cycle)
            if len(self.queue) >= MAX_PIPELINED:
                self.pause_reading()

    def _begin(self, cycle: RequestCycle) -> None:
        """At the head of a request with a body: the app says whether it runs now."""
        request = cycle.request
        if request is not None and request.upgrade:
            return  # offered to `upgrade` once its message ends
        state = self.state
        try:
            taken = state.begin_request(cycle)
        except Exception:  # the interface adapters catch app errors; this is a last resort
            logger.exception("error while handling %r", cycle.request)
            self._failed(cycle)
            return
        if taken and state.request_timeout and not cycle.complete:
            self.request_deadline = self.loop.time() + state.request_timeout

    def _request_failed(self, error: RequestError) -> None:
        receiving = self.receiving
        if receiving is not None and not receiving.body_complete:
            cycle = receiving  # the body of this request broke a rule
            cycle._disconnect()
        else:
            cycle = RequestCycle(self, None, self.conn, self.client, self.scheme)
            if self.current is None:
                self.current = cycle
            else:
                self.queue.append(cycle)
        cycle.error = error
        self.receiving = None
        if cycle is self.current:
            self.refuse(cycle)

    def refuse(self, cycle: RequestCycle) -> None:
        """Answer `cycle.error` (unless a response began), then close."""
        error = cycle.error
        assert error is not None
        if not cycle.response_started:
            cycle.response_started = True
            cycle.status = error.status
            self.write(error_response(error.status, error.reason))
        cycle.complete = True
        self.state.report(cycle)
        self.close()

    def _run(self, cycle: RequestCycle) -> None:
        cycle.started = True
        state = self.state
        if state.concurrency_limit and not cycle.counted and not state.admit_request(cycle):
            return
        if state.request_timeout and not self.request_deadline:
            self.request_deadline = self.loop.time() + state.request_timeout
        try:
            self.app.handle(cycle)
        except Exception:  # the interface adapters catch app errors; this is a last resort
            logger.exception("error while handling %r", cycle.request)
            self._failed(cycle)

    def _failed(self, cycle: RequestCycle) -> None:
        if not cycle.response_started:
            cycle.error = RequestError(500, "Internal Server Error")
            self.refuse(cycle)
        else:
            cycle.abort()

    def cycle_done(self, cycle: RequestCycle) -> None:
        """The response to the current request is complete: go on to the next."""
        state = self.state
        # Counted, logged and measured here, not in a method of the state's:
        # this is every request's path.
        state.requests_served += 1
        self.request_deadline = 0.0
        if cycle.counted:
            cycle.counted = False
            state.in_flight -= 1
        if state.requests_served == state.request_quota and state.on_quota is not None:
            state.on_quota()
        if state.timed:
            state.report(cycle)
        conn = self.conn
        if conn.our_state is not DONE or self.closing:
            self.close()  # the core says this response ends the connection
            return
        conn.start_next_cycle()
        queue = self.queue
        if not queue:
            self.current = None
            if state.draining or self.eof:
                self.close()
            else:
                self._start_idle_timer()
            return
        if self._reading_paused and len(queue) <= MAX_PIPELINED // 2:
            self.resume_reading()
        nxt = self.current = queue.popleft()
        if state.draining:
            conn.close_after_response()
        if nxt.error is not None:
            self.refuse(nxt)
        elif not self._write_paused:
            # From the loop, not from inside this response's call stack: a
            # pipeline of synchronous handlers would recurse once per request.
            self.loop.call_soon(self._run_current, nxt)
        # Else the client has not read what was sent: the next request waits
        # for `resume_writing`, so one client cannot pile up responses here.

    def _run_current(self, cycle: RequestCycle) -> None:
        if cycle is self.current and not cycle.started and not self.closing:
            self._start_current(cycle)

    def _start_current(self, cycle: RequestCycle) -> None:
        if self._write_paused:
            return
        if cycle.body_complete:
            self._run(cycle)
        elif not cycle.runs_at_end:
            self._begin(cycle)

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
        """The server drains: answer the next request with `Connection: close`.

        The response in flight, or the next request's, ends the connection. A
        connection that has not yet sent its first request stays open: its
        client has sent or is sending a request that this worker accepted. An
        idle keep-alive connection is closed only once it has stayed idle for
        `DRAIN_IDLE`: a client that keeps using it sends its next request
        before then and gets an answer, where closing at once would race with
        that request (and a POST may not be retried).
        """
        if self.closing:
            return  # closed already, or lingering on its own deadline
        self.conn.close_after_response()
        if self.current is None and not self.fresh and not self._head_deadline:
            drain_deadline = self.loop.time() + DRAIN_IDLE
            if not self.deadline or drain_deadline < self.deadline:
                self.deadline = drain_deadline

    def close(self) -> None:
        """Close, lingering: shut the write side once the output is out, then
        discard what the client sends until its FIN or `LINGER` seconds.

        Lingering keeps bytes the client sends after the close from turning it
        into a reset, which would destroy the response in the client's buffer.
        A client whose last request said it sends nothing more, and did not,
        needs none (nginx's `lingering_close on` tells them apart the same way).
        """
        if not self.closing:
            self.closing = True
            self._cancel_idle_timer()
            self._cancel_body_timer()
            if self._held:
                self.flush_output()
            transport = self.transport
            if transport is None:
                return
            if (
                self.eof
                or self.conn.client_finished
                or self.upgraded is not None
                or not transport.can_write_eof()
            ):
                # Nothing more will come (the client's FIN, or its last request
                # said so and had nothing after it), or no half-close (TLS).
                transport.close()
                return
            transport.write_eof()
            self._lingering = True
            self.deadline = self.loop.time() + LINGER
            if self._reading_paused:
                self._reading_paused = False
                transport.resume_reading()

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
        """The next piece is due within --body-timeout, and, once that has passed since
        the body began, the body must keep up --body-min-rate on average (mod_reqtimeout's
        minrate: each `rate` bytes earn one more second)."""
        state = self.state
        deadline = self.loop.time() + state.body_timeout
        rate = state.body_min_rate
        if rate:
            earned = self._body_began + state.body_timeout + self._body_bytes / rate
            self._body_too_slow = earned < deadline
            if self._body_too_slow:
                deadline = earned
        self.body_deadline = deadline

    def _cancel_body_timer(self) -> None:
        self.body_deadline = 0.0

    def check_deadlines(self, now: float) -> None:
        """Called by the ticker: act on a deadline that has passed."""
        if self.closing:
            if self._lingering and now >= self.deadline and self.transport is not None:
                self._lingering = False
                self.deadline = 0.0
                self.transport.close()  # the client never sent its FIN
            return
        if self.upgraded is not None:
            return
        if self.request_deadline and now >= self.request_deadline:
            self.request_deadline = 0.0
            current = self.current
            if current is not None and current.started and not current.complete:
                self._request_timed_out(current)
                return
        if self.body_deadline and now >= self.body_deadline:
            self.body_deadline = 0.0
            if self.receiving is not None:
                slow = self._body_too_slow
                self._time_out("request body too slow" if slow else "request body timeout")
                return
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            if not self._head_deadline:
                if self.current is None:
                    self.close()  # idle keep-alive connection
            elif self.current is not None:
                self._start_head_timer()  # a pipelined head waits behind a response in progress
            elif self.conn.head_in_progress:
                self._time_out("request header timeout")

    def _request_timed_out(self, cycle: RequestCycle) -> None:
        """--request-timeout: 504 if nothing was sent yet, else close; stop the app's task."""
        request = cycle.request
        what = f"{request.method} {request.target.decode('latin-1')}" if request else "a request"
        state = self.state
        seconds = state.request_timeout
        if state.metrics is not None:
            state.metrics.request_timed_out()
        task = cycle.task
        stopped = "its task is cancelled" if task is not None else "a WSGI thread runs on"
        if cycle.response_started:
            logger.warning(
                "%s still running after %g s (--request-timeout): connection closed; %s",
                what,
                seconds,
                stopped,
            )
            cycle.abort()
        else:
            logger.warning(
                "%s still running after %g s (--request-timeout): answered 504; %s",
                what,
                seconds,
                stopped,
            )
            self.conn.close_after_response()
            cycle.respond(504, TIMEOUT_HEADERS, b"Gateway Timeout\n")
        if task is not None:
            task.cancel()

    def _time_out(self, reason: str) -> None:
        """408 for the request being read (unless its response began), then close."""
        receiving = self.receiving
        if receiving is not None:
            receiving.error = RequestError(408, reason)
            receiving._disconnect()
        current = self.current
        if current is None or (current is receiving and not current.response_started):
            self.write(error_response(408, reason))
        self.close()


class ProtocolMaker:
    """Makes a listener's connections: `make(client, server)`, each None when not known.

    `listener` is the listening socket's address when it is a specific one,
    the server address of connections that bring none (a PROXY header does).
    """

    def __init__(self, state: ServerState, scheme: str, listener: tuple[str, int] | None) -> None:
        self.state = state
        self.scheme = scheme
        self.listener = listener

    def __call__(
        self, client: tuple[str, int] | None, server: tuple[str, int] | None
    ) -> HTTPProtocol:
        return HTTPProtocol(self.state, self.scheme, server or self.listener, client)


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None
