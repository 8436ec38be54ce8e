"""What all HTTP connections of one worker share: the app, the settings, the
deadline ticker and the output held for the end of a loop pass.

It knows a connection only as `Managed` (what the ticker, the flush and the
drain call), so the asyncio shim imports this module and not the reverse.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

from squall.http.core import Limits
from squall.http.cycle import App, RequestCycle, Upgrader

logger: Final = logging.getLogger("squall.http")

# The answer to a request past --limit-concurrency: try again in a second.
SHED_HEADERS: Final = ((b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"1"))

# How often connection deadlines (keep-alive, header, body timeouts) are checked:
# a timeout fires between its value and its value plus TICK.
TICK: Final = 0.5


class Metrics(Protocol):
    """Counts what a worker does (`--metrics`); absent, the protocol counts nothing."""

    def connection_opened(self) -> None: ...

    def connection_closed(self) -> None: ...

    def request_started(self) -> None: ...

    def request_shed(self) -> None:
        """A 503 past --limit-concurrency."""

    def request_timed_out(self) -> None:
        """A request past --request-timeout."""

    def http2_connection(self) -> None:
        """A connection began to speak HTTP/2 (its opening was counted as any other's)."""

    def http2_stream(self) -> None:
        """A request came on an HTTP/2 stream (its start was counted as any other's)."""

    def request_finished(self, cycle: RequestCycle) -> None:
        """`cycle.status`, `cycle.bytes_sent`, `cycle.started_at` (set when metrics are on)."""


class Managed(Protocol):
    """A connection, as the worker-wide state sees it."""

    client: tuple[str, int] | None
    deadline: float
    body_deadline: float
    request_deadline: float

    def check_deadlines(self, now: float) -> None: ...

    def flush_output(self) -> None: ...

    def shutdown(self) -> None: ...

    def close(self) -> None: ...


class HTTP2Switch(Protocol):
    """How a connection begins to speak HTTP/2 (`squall.http.http2.HTTP2Options`)."""

    @property
    def h2c(self) -> bool:
        """Cleartext HTTP/2 is on (--h2c)."""

    def take_over(self, protocol: Any, data: bytes) -> None:
        """From now on `protocol`'s bytes are HTTP/2's, beginning with `data`."""

    def upgrade(self, protocol: Any, cycle: RequestCycle) -> bool:
        """`Upgrade: h2c`: True once the switch is made (the request is stream 1)."""


class ServerState:
    """What all connections of one worker share."""

    def __init__(
        self,
        app: App,
        limits: Limits,
        keepalive_timeout: float,
        request_quota: int = 0,
        on_quota: Callable[[], object] | None = None,
        header_timeout: float = 0.0,
        body_timeout: float = 0.0,
        access_log: Callable[[RequestCycle], object] | None = None,
        forwarded: Callable[[RequestCycle], object] | None = None,
        metrics: Metrics | None = None,
        concurrency_limit: int = 0,
        request_timeout: float = 0.0,
        body_min_rate: int = 0,
        http2: HTTP2Switch | None = None,
    ) -> None:
        self.app = app
        # Asked once: on Python 3.11 every get_running_loop() is a getpid() system call.
        self.loop = asyncio.get_running_loop()
        self.upgrade: Upgrader | None = getattr(app, "upgrade", None)
        self.limits = limits
        self.keepalive_timeout = keepalive_timeout
        # Each setting's default is the command line's (squall.config.Config); 0 here is "off".
        self.header_timeout = header_timeout  # a head begun must be complete within this
        self.body_timeout = body_timeout  # the longest silence while a body is read
        self.access_log = access_log  # called once per finished request
        self.forwarded = forwarded  # rewrites client/scheme from trusted proxy headers
        self.metrics = metrics
        self.ticker: asyncio.TimerHandle | None = None
        self.timed = access_log is not None or metrics is not None  # stamp started_at
        self.connections: set[Managed] = set()
        # Told how many connections stay open each time one closes (`squall.steering`).
        self.on_closed: Callable[[int], object] | None = None
        # Told each time one closes: a worker at --max-connections accepts again.
        self.room_freed: Callable[[], object] | None = None
        self.holding: list[Managed] = []  # connections with held output, flushed as one
        self.draining = False
        self.requests_served = 0
        # --limit-concurrency: requests the app has been given and not yet
        # answered, on connections still open; past the limit, a 503 at once.
        self.concurrency_limit = concurrency_limit
        self.request_timeout = request_timeout  # --request-timeout: 504 past it; 0: none
        self.body_min_rate = body_min_rate  # bytes/s a body keeps up after --body-timeout
        self.in_flight = 0
        # ... and those started in this pass of the event loop, finished or
        # not: an app that answers without awaiting (Python 3.12's eager
        # tasks run it inside `data_received`) is never in flight for long,
        # yet each pass must start no more than the limit, or a pass serves
        # whatever it read and the kernel's queue grows without bound.
        self.admitted_this_pass = 0
        self.request_quota = request_quota  # 0: no quota
        self.on_quota = on_quota
        # None: HTTP/1.1 only (no TLS with ALPN h2, no --h2c).
        self.http2 = http2

    def admit(self) -> bool:
        """Count a request in against --limit-concurrency; False: it is over the limit."""
        admitted = self.admitted_this_pass
        if max(self.in_flight, admitted) >= self.concurrency_limit:
            return False
        if not admitted:
            self.loop.call_soon(self._next_pass)
        self.admitted_this_pass = admitted + 1
        self.in_flight += 1
        return True

    def admit_request(self, cycle: RequestCycle) -> bool:
        """Count `cycle` in, or answer it 503 at once if the worker has its limit running."""
        if not self.admit():
            if self.metrics is not None:
                self.metrics.request_shed()
            cycle.respond(503, SHED_HEADERS, b"Service Unavailable\n")
            return False
        cycle.counted = True
        return True

    def begin_request(self, cycle: RequestCycle) -> bool | None:
        """At the head of a request with a body: ask the app whether it runs now.

        True: the app took it and reads the body as it comes. False: it runs
        once the body is in (a 100 Continue is sent if the client waits for
        one). None: refused with a 503 (`admit_request`). What the app's
        `begin` raises, the caller handles (it ends the request its own way).
        """
        cycle.started = True
        if self.concurrency_limit and not self.admit_request(cycle):
            return None
        if self.app.begin(cycle):
            cycle.reads_body = True
            return True
        cycle.started = False
        cycle.runs_at_end = True
        if not cycle.continue_sent:
            cycle.send_continue()  # its body waits for the 100 (Expect: 100-continue)
        return False

    def _next_pass(self) -> None:
        self.admitted_this_pass = 0

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
            or (connection.request_deadline and now >= connection.request_deadline)
        ]
        for connection in due:  # acting may close connections: not while iterating the set
            connection.check_deadlines(now)
        self.ticker = self.loop.call_later(TICK, self._tick)

    def stop_ticker(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            self.ticker = None

    def remove_connection(self, connection: Managed) -> None:
        connections = self.connections
        if connection in connections:
            connections.remove(connection)
            if self.on_closed is not None:
                self.on_closed(len(connections))
            if self.room_freed is not None:
                self.room_freed()

    def hold_output(self, connection: Managed) -> None:
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

    def report(self, cycle: RequestCycle) -> None:
        """The access log line and the metrics of a request that has ended."""
        if self.timed and not cycle.reported and cycle.request is not None:
            cycle.reported = True
            if self.access_log is not None:
                self.access_log(cycle)
            if self.metrics is not None:
                self.metrics.request_finished(cycle)

    def drain(self) -> None:
        """Close idle connections now and every other one after its response."""
        self.draining = True
        for connection in list(self.connections):
            connection.shutdown()
