"""`--metrics`: the plugin that counts every worker's requests and serves what they add up to.

How the numbers travel, with no lock and no message on the request path:

- `MetricsPlugin.__init__` (in the supervisor, before any fork) maps the
  shared `SlotTable` (`slot_table.py`: the layout, and which worker owns
  which slot).
- Just before each fork, `before_spawn` claims a slot and leaves it in a
  module global; the child inherits both the mapping and the global, and
  `worker_recorder()` (called in the worker) returns a `SlotRecorder` that
  writes only that slot, from the worker's event loop thread.
- The supervisor only reads the slots. When a worker is reaped, `after_exit`
  has the table fold its counters into totals and free its slot.

The views (`exposition.py`) are pure functions of a `Snapshot` that this
plugin reads from the table, the supervisor and /proc. They are served over
HTTP by an `Endpoint` (`endpoint.py`) in the supervisor's selector; this
module supplies only the HTTP framing (the sans-I/O `ServerConnection`) and
the routes. It reads state and never changes it: there is no control action here.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import mmap
import os
import resource
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from squall import procfs
from squall.endpoint import Endpoint
from squall.errors import UsageError
from squall.exposition import (
    CONTENT_TYPE_LATEST,
    RESTART_CAUSES,
    SAMPLE_INTERVAL,
    ChartPoint,
    ProcessFigures,
    Snapshot,
    chart_point,
    metrics_text,
    quantile_ms,
    ready,
    status,
    worker_rows,
)
from squall.http.core import (
    END_OF_MESSAGE,
    Event,
    Limits,
    Request,
    RequestError,
    ServerConnection,
    error_response,
)
from squall.http.state import Metrics
from squall.slot_table import (
    BOUNDS_US,
    BUCKET,
    BUCKETS_MS,
    BYTES_OUT,
    CONNECTIONS,
    DEFAULT_SLOTS,
    DURATION_SUM_US,
    HTTP2_CONNECTIONS,
    HTTP2_STREAMS,
    IN_FLIGHT,
    REQUESTS,
    SHED,
    SLOT_FIELDS,
    STATUS,
    TIMED_OUT,
    SlotTable,
)
from squall.sockets import (
    accept_queue_and_limit,
    bind_sockets,
    bind_unix_socket,
    describe_socket,
    handed_socket,
    parse_bind,
)
from squall.supervisor import PluginBase, SupervisorEvent

if TYPE_CHECKING:
    from squall.http.cycle import RequestCycle
    from squall.supervisor import Supervisor, WorkerProcess

__all__ = [
    "BUCKETS_MS",
    "RESTART_CAUSES",
    "SLOT_FIELDS",
    "MetricsPlugin",
    "SlotRecorder",
    "quantile_ms",
    "worker_recorder",
]

logger = logging.getLogger("squall.metrics")

#: A hot upgrade passes the endpoint's sockets here (their descriptors).
INHERIT_ENV = "SQUALL_METRICS_FDS"

# -- in the worker: counting into its slot ---------------------------------------------
# Here, not in slot_table.py: this is the module every worker imports
# (`worker.import_worker_modules`, `cli.serve_worker`), and `_assigned` is
# this plugin's to set before a fork and the worker's to read after it.

#: The slot this process writes, set in the supervisor just before a fork (the
#: child keeps the value it had then); None when --metrics is off.
_assigned: tuple[mmap.mmap, int] | None = None

#: Where request durations are measured from: the protocol stamps `started_at` with it.
clock = time.perf_counter


class SlotRecorder:
    """In a worker: counts into its own slot of the shared block (`Metrics`)."""

    __slots__ = ("_c",)

    def __init__(self, shared: mmap.mmap, slot: int) -> None:
        base = slot * SLOT_FIELDS
        self._c = memoryview(shared).cast("q")[base : base + SLOT_FIELDS]

    def connection_opened(self) -> None:
        self._c[CONNECTIONS] += 1

    def connection_closed(self) -> None:
        self._c[CONNECTIONS] -= 1

    def request_started(self) -> None:
        self._c[IN_FLIGHT] += 1

    def request_shed(self) -> None:
        self._c[SHED] += 1

    def request_timed_out(self) -> None:
        self._c[TIMED_OUT] += 1

    def http2_connection(self) -> None:
        self._c[HTTP2_CONNECTIONS] += 1

    def http2_stream(self) -> None:
        self._c[HTTP2_STREAMS] += 1

    def request_finished(self, cycle: RequestCycle) -> None:
        # The protocol reports each request once (`RequestCycle.reported`).
        c = self._c
        c[IN_FLIGHT] -= 1
        klass = cycle.status // 100
        c[STATUS + (klass if klass < 6 else 5)] += 1
        c[BYTES_OUT] += cycle.bytes_sent
        c[REQUESTS] += 1
        elapsed = int((clock() - cycle.started_at) * 1_000_000)
        if elapsed > 0:
            c[DURATION_SUM_US] += elapsed
        c[BUCKET + bisect.bisect_left(BOUNDS_US, elapsed)] += 1


def worker_recorder() -> Metrics | None:
    """In a worker: the recorder writing to this worker's slot, or None without --metrics."""
    if _assigned is None:
        return None
    shared, slot = _assigned
    return SlotRecorder(shared, slot)


# -- in the supervisor: the endpoint ---------------------------------------------------------

#: At most this many open connections to the endpoint (`Endpoint`'s policy past it).
MAX_CLIENTS = 64
#: A connection that completes no request for this long is closed (slow or idle clients).
IDLE_TIMEOUT = 10.0
LIMITS = Limits(
    max_target_bytes=2048, max_header_bytes=16384, max_header_count=64, max_body_bytes=16384
)
#: Five minutes of points for the page's charts, one per `SAMPLE_INTERVAL`.
SAMPLES = 300
MAX_EVENTS = 30

Response = tuple[int, list[tuple[bytes, bytes]], bytes]
_TEXT = b"text/plain; charset=utf-8"
_NO_STORE = (b"cache-control", b"no-store")


class _HTTPClient:
    """One connection's HTTP/1.1 framing: requests in, whole responses out (`Conversation`)."""

    __slots__ = ("_conn", "_events", "_request", "_respond", "done")

    def __init__(self, respond: Callable[[Request], Response]) -> None:
        self._conn = ServerConnection(LIMITS)
        self._respond = respond
        self._events: deque[Event] = deque()  # parsed, not answered yet (pipelining)
        self._request: Request | None = None  # its head is in, its body not all yet
        self.done = False

    def receive(self, data: bytes) -> None:
        self._events.extend(self._conn.receive_data(data))

    def next_reply(self) -> bytes | None:
        while self._events:
            event = self._events.popleft()
            if isinstance(event, Request):
                self._request = event
            elif event is END_OF_MESSAGE:
                request, self._request = self._request, None
                if request is not None:
                    return self._answer(request)
            elif isinstance(event, RequestError):
                self.done = True
                return error_response(event.status, event.reason)
        return None

    @property
    def mid_request(self) -> bool:
        return bool(self._request is not None or self._conn.head_in_progress or self._events)

    def _answer(self, request: Request) -> bytes:
        conn = self._conn
        status, headers, body = self._respond(request)
        reply = conn.encode_response(request, status, headers, body)
        if conn.keep_alive:
            conn.start_next_cycle()
        else:
            self.done = True
        return reply


def _host(request: Request) -> str:
    """The Host header's name, without its port, lower case."""
    for name, value in request.headers:
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                return host.partition("]")[0] + "]"
            return host.rpartition(":")[0] if host.count(":") == 1 else host
    return ""


class MetricsPlugin(PluginBase):
    """In the supervisor: owns the shared counters and serves /metrics, /healthz, /readyz, /.

    The address (HOST:PORT or unix:PATH) is bound here, before any fork, so
    a bad one is an error at startup.
    """

    def __init__(
        self, address: str, *, slots: int = DEFAULT_SLOTS, allowed_hosts: str = ""
    ) -> None:
        self.address = address
        #: Host names the endpoint answers to (empty: any).
        self.allowed_hosts = {h.strip().lower() for h in allowed_hosts.split(",") if h.strip()}
        self._owner = os.getpid()
        self._unix_path: str | None = None
        self._adopted_path: str | None = None  # the same, handed over, until we serve
        self._endpoint = Endpoint(
            "metrics endpoint",
            self._listen(address),
            lambda _sock: _HTTPClient(self._respond),
            max_clients=MAX_CLIENTS,
        )
        self._table = SlotTable(slots)
        self._warned_full = False
        self._supervisor: Supervisor | None = None
        self._page = resources.files("squall").joinpath("status_page.html").read_bytes()
        self._start_time = procfs.start_time() or time.time()
        self._samples: deque[ChartPoint] = deque(maxlen=SAMPLES)
        self._sampled_at = 0.0
        self._sampled: list[int] | None = None
        self._events: deque[tuple[float, str]] = deque(maxlen=MAX_EVENTS)
        self._routes: dict[bytes, Callable[[], Response]] = {
            b"/": self._status_page,
            b"/metrics": self._metrics,
            b"/healthz": self._healthz,
            b"/readyz": self._readyz,
            b"/api/status": self._api_status,
        }

    def _listen(self, address: str) -> list[socket.socket]:
        try:
            spec = parse_bind(address)
        except UsageError as exc:
            raise UsageError(str(exc).replace("--bind", "--metrics")) from None
        inherited = os.environ.pop(INHERIT_ENV, None)
        if inherited is not None:  # a hot upgrade: the old supervisor's sockets
            socks = [handed_socket(int(fd)) for fd in inherited.split(",") if fd]
            self._adopted_path = spec.path if spec.kind == "unix" else None  # ours once we serve
            return socks
        if spec.kind == "unix" and spec.path is not None:
            sock = bind_unix_socket(spec.path, backlog=64)
            self._unix_path = spec.path
            return [sock]
        if spec.kind == "tcp":
            return bind_sockets(spec.port or 0, spec.host, backlog=64)
        raise UsageError(f"invalid --metrics value {address!r}: expected HOST:PORT or unix:PATH")

    @property
    def sockets(self) -> list[socket.socket]:
        """The listening sockets (to learn an ephemeral port)."""
        return list(self._endpoint.listeners)

    # -- plugin hooks ----------------------------------------------------------------

    def attach(self, supervisor: Supervisor, selector: selectors.BaseSelector) -> None:
        self._supervisor = supervisor
        self._endpoint.attach(selector)
        self._sampled_at = time.monotonic()
        self._sampled = self._table.totals()

    def before_spawn(self, task_id: int) -> None:
        global _assigned
        try:
            slot = self._table.claim()
            if slot is None:
                _assigned = None
                if not self._warned_full:
                    self._warned_full = True
                    logger.warning("no free metrics slot: worker %d will not be counted", task_id)
                return
            _assigned = (self._table.shared, slot)
        except Exception:
            logger.exception("metrics: could not assign a slot")
            _assigned = None

    def after_spawn(self, worker: WorkerProcess) -> None:
        self._table.bind(worker.pid, worker.task_id)

    def after_exit(self, worker: WorkerProcess, status: int) -> None:
        try:
            self._event(f"worker {worker.task_id} (pid {worker.pid}) {_describe(worker, status)}")
            self._table.release(worker.pid)
        except Exception:
            logger.exception("metrics: could not fold the counters of pid %d", worker.pid)

    def handover(self) -> tuple[list[int], dict[str, str]]:
        fds = [sock.fileno() for sock in self._endpoint.listeners]
        return fds, {INHERIT_ENV: ",".join(map(str, fds))}

    def on_event(self, event: SupervisorEvent) -> None:
        if event == SupervisorEvent.UPGRADED:
            self._unix_path = None  # the socket file is the new supervisor's now
            return
        if event == SupervisorEvent.READY and self._adopted_path is not None:
            self._unix_path, self._adopted_path = self._adopted_path, None
        if event == SupervisorEvent.TICK:
            self._endpoint.close_idle(IDLE_TIMEOUT)
            now = time.monotonic()
            if now - self._sampled_at >= SAMPLE_INTERVAL:
                self._sample(now)
        elif event in (
            SupervisorEvent.RELOADING,
            SupervisorEvent.RELOADED,
            SupervisorEvent.STOPPING,
            SupervisorEvent.READY,
        ):
            text = {
                "ready": "all workers ready",
                "reloading": "reload started",
                "reloaded": "reload finished",
                "stopping": "stopping",
            }
            self._event(text[event])

    def close(self) -> None:
        """At the supervisor's exit, and in each new worker (which keeps only the mapping)."""
        self._endpoint.close()
        self._supervisor = None
        if os.getpid() != self._owner:
            return  # a worker: the shared block is its slot; never close it here
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
            self._unix_path = None

    # -- reading ----------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        if self._supervisor is None:
            return {"workers": [], "restart_causes": {}, "stopping": True}
        return self._supervisor.snapshot()

    def snapshot(self) -> Snapshot:
        """Everything the views show, read now from the slots, the supervisor and /proc."""
        state = self._state()
        pids = [worker["pid"] for worker in state.get("workers", [])]
        memory = {pid: procfs.memory(pid) for pid in pids}
        times = os.times()
        return Snapshot(
            state=state,
            totals=self._table.totals(),
            counters={pid: self._table.counters(pid) for pid in pids},
            worker_rss={pid: found[1] if found else None for pid, found in memory.items()},
            requests_by_task=self._table.requests_by_task(),
            listen_queues=self._listen_queues(),
            process=ProcessFigures(
                pid=os.getpid(),
                cpu_seconds=round(times.user + times.system, 3),
                memory=procfs.memory(),
                start_time=self._start_time,
                open_fds=procfs.open_fds(),
                max_fds=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            ),
            now=time.time(),
            samples=list(self._samples),
            events=list(self._events),
        )

    def _listen_queues(self) -> list[tuple[dict[str, str], tuple[int, int]]]:
        """(labels, (queued, limit)) for every listening TCP socket the supervisor holds."""
        supervisor = self._supervisor
        if supervisor is None or supervisor.listeners is None:
            return []
        queues = []
        for role, sock in supervisor.listeners.named().items():
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.fileno() >= 0:
                labels = {"listener": describe_socket(sock), "socket": role}
                queues.append((labels, accept_queue_and_limit(sock)))
        return queues

    def metrics_text(self) -> bytes:
        """What /metrics answers: Prometheus text format 0.0.4."""
        return metrics_text(self.snapshot())

    def status(self) -> dict[str, Any]:
        """What /api/status answers: the snapshot, the counters and the recent samples."""
        return status(self.snapshot())

    def worker_stats(self) -> dict[int, dict[str, Any]]:
        """For `squall ctl status`: each live worker's requests, by pid."""
        return {
            row["pid"]: {"requests": row["requests"], "in_flight": row["in_flight"]}
            for row in worker_rows(self.snapshot())
        }

    def _sample(self, now: float) -> None:
        totals = self._table.totals()
        previous = self._sampled or totals
        elapsed = now - self._sampled_at
        self._sampled, self._sampled_at = totals, now
        self._samples.append(chart_point(previous, totals, elapsed, time.time()))

    def _event(self, text: str) -> None:
        self._events.append((time.time(), text))

    # -- the routes -------------------------------------------------------------------

    def _respond(self, request: Request) -> Response:
        if self.allowed_hosts and _host(request) not in self.allowed_hosts:
            # --metrics-allowed-hosts: a page fetched under another name (DNS rebinding) gets nothing.
            return 403, [(b"content-type", _TEXT)], b"host not allowed\n"
        handler = self._routes.get(request.path)
        if handler is None:
            return 404, [(b"content-type", _TEXT)], b"not found\n"
        if request.method not in ("GET", "HEAD"):
            allow = (b"allow", b"GET, HEAD")
            return 405, [(b"content-type", _TEXT), allow], b"method not allowed\n"
        try:
            return handler()
        except Exception:
            logger.exception("metrics endpoint: %s failed", request.path.decode("latin-1"))
            return 500, [(b"content-type", _TEXT)], b"internal error\n"

    def _status_page(self) -> Response:
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            _NO_STORE,
            (b"x-content-type-options", b"nosniff"),
            (
                b"content-security-policy",
                b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                b"connect-src 'self'; img-src 'self' data:",
            ),
        ]
        return 200, headers, self._page

    def _healthz(self) -> Response:
        return 200, [(b"content-type", _TEXT), _NO_STORE], b"ok\n"

    def _readyz(self) -> Response:
        if ready(self._state()):
            return 200, [(b"content-type", _TEXT), _NO_STORE], b"ready\n"
        return 503, [(b"content-type", _TEXT), _NO_STORE], b"not ready\n"

    def _metrics(self) -> Response:
        content_type = (b"content-type", CONTENT_TYPE_LATEST.encode())
        return 200, [content_type, _NO_STORE], self.metrics_text()

    def _api_status(self) -> Response:
        body = json.dumps(self.status(), separators=(",", ":")).encode()
        return 200, [(b"content-type", b"application/json"), _NO_STORE], body


def _describe(worker: WorkerProcess, status: int) -> str:
    if worker.timed_out:
        return "was killed by the watchdog"
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    code = os.WEXITSTATUS(status)
    return f"exited with status {code}" if code else "exited"
