"""Counters shared by all workers, Prometheus text, and the live status page (`--metrics`).

How the numbers travel, with no lock and no message on the request path:

- `MetricsPlugin.__init__` (in the supervisor, before any fork) maps one
  anonymous shared memory block, split into fixed slots of `SLOT_FIELDS`
  signed 64-bit integers (256 bytes, so two slots never share a cache line).
- Just before each fork, `before_spawn` picks a free slot, zeroes it and
  leaves it in a module global; the child inherits both the mapping and the
  global, and `worker_recorder()` (called in the worker) returns a recorder
  that writes only that slot. Each slot has exactly one writer: the worker's
  event loop thread.
- The supervisor only reads the slots. When a worker is reaped, `after_exit`
  folds its counters into totals the supervisor keeps (its requests still in
  flight count as unanswered), then frees the slot: the Prometheus counters
  never go down, across crashes, reloads and recycling.

The endpoint is served by the supervisor itself, from its selector, without
a thread or an event loop: non-blocking sockets, requests parsed by the
sans-IO `ServerConnection`, small responses written as the socket takes
them. It reads state and never changes it: there is no control action here.
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
from collections.abc import Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any

from squall.errors import UsageError
from squall.http.core import (
    END_OF_MESSAGE,
    Limits,
    Request,
    RequestError,
    ServerConnection,
    error_response,
)
from squall.http.state import Metrics
from squall.sockets import (
    accept_queue_and_limit,
    bind_sockets,
    bind_unix_socket,
    describe_socket,
    handed_socket,
    parse_bind,
)
from squall.supervisor import Event, PluginBase

if TYPE_CHECKING:
    from squall.http.cycle import RequestCycle
    from squall.supervisor import Supervisor, WorkerProcess

__all__ = ["BUCKETS_MS", "MetricsPlugin", "SlotRecorder", "worker_recorder"]

logger = logging.getLogger("squall.metrics")

#: A hot upgrade passes the endpoint\'s sockets here (their descriptors).
INHERIT_ENV = "SQUALL_METRICS_FDS"

# -- the shared slots -------------------------------------------------------------

#: Upper bounds of the request latency histogram, in milliseconds (then +Inf).
BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
_BOUNDS_US = tuple(round(bound * 1000) for bound in BUCKETS_MS)

# Field offsets inside one slot.
STATUS = 0  # 6 fields: [0] unanswered (status 0), [1] 1xx ... [5] 5xx
IN_FLIGHT = 6  # gauge
CONNECTIONS = 7  # gauge
BYTES_OUT = 8  # response body bytes
REQUESTS = 9  # requests finished (answered or not)
DURATION_SUM_US = 10
BUCKET = 11  # len(BUCKETS_MS) + 1 fields, not cumulative; the last is +Inf
SHED = BUCKET + len(BUCKETS_MS) + 1  # 503s of --limit-concurrency
TIMED_OUT = SHED + 1  # requests --request-timeout ended (504, or a closed connection)
FIELDS = TIMED_OUT + 1
SLOT_FIELDS = 32  # 256 bytes per slot
DEFAULT_SLOTS = 256  # workers alive at once, old and new ones together during a reload
_GAUGES = (IN_FLIGHT, CONNECTIONS)

STATUS_CLASSES = ("unanswered", "1xx", "2xx", "3xx", "4xx", "5xx")
STATES = ("booting", "ready", "replacing", "draining")
RESTART_CAUSES = ("signal", "exit", "watchdog", "recycle", "memory", "reload", "manual")

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
        c[BUCKET + bisect.bisect_left(_BOUNDS_US, elapsed)] += 1


def worker_recorder() -> Metrics | None:
    """In a worker: the recorder writing to this worker's slot, or None without --metrics."""
    if _assigned is None:
        return None
    shared, slot = _assigned
    return SlotRecorder(shared, slot)


# -- statistics over the histogram --------------------------------------------------


def quantile_ms(buckets: list[int], q: float) -> float | None:
    """The q-quantile in ms of non-cumulative bucket counts, interpolated within a bucket.

    Like Prometheus' `histogram_quantile`: linear inside the bucket that
    holds the rank; in the +Inf bucket, the highest finite bound.
    """
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index >= len(BUCKETS_MS):
                return float(BUCKETS_MS[-1])
            lower = BUCKETS_MS[index - 1] if index else 0.0
            upper = BUCKETS_MS[index]
            return float(lower + (upper - lower) * (rank - seen) / count)
        seen += count
    return float(BUCKETS_MS[-1])


# -- /proc ----------------------------------------------------------------------------

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _statm(pid: int | str) -> tuple[int, int] | None:
    """(virtual, resident) memory in bytes, from /proc/PID/statm."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[0]) * _PAGE_SIZE, int(fields[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def _process_start_time() -> float | None:
    """When this process started (Unix time), from /proc, as prometheus_client computes it."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat.rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return int(line.split()[1]) + ticks / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        pass
    return None


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


# -- Prometheus text format 0.0.4 ------------------------------------------------------------

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"


def _value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


Sample = tuple[str, dict[str, str], float]


class Exposition:
    """Builds the text: one family at a time, `# HELP` and `# TYPE` first."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        help_text = help_text.replace("\\", r"\\").replace("\n", r"\n")
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for sample_name, labels, value in samples:
            if labels:
                text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
                self.lines.append(f"{sample_name}{{{text}}} {_value(value)}")
            else:
                self.lines.append(f"{sample_name} {_value(value)}")

    def single(self, name: str, kind: str, help_text: str, value: float | None) -> None:
        if value is not None:
            self.family(name, kind, help_text, [(name, {}, value)])

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode("utf-8")


# -- the endpoint's connections ------------------------------------------------------------

#: At most this many open connections to the endpoint; more are closed at once.
MAX_CLIENTS = 64
#: A connection that completes no request for this long is closed (slow or idle clients).
IDLE_TIMEOUT = 10.0
#: Stop answering pipelined requests once this much output waits to be sent.
MAX_PENDING_OUTPUT = 1 << 20
READ_SIZE = 16384
LIMITS = Limits(
    max_target_bytes=2048, max_header_bytes=16384, max_header_count=64, max_body_bytes=16384
)
#: One sample per second, for the page's charts: five minutes of them.
SAMPLE_INTERVAL = 1.0
SAMPLES = 300
MAX_EVENTS = 30

Response = tuple[int, list[tuple[bytes, bytes]], bytes]
_TEXT = b"text/plain; charset=utf-8"
_NO_STORE = (b"cache-control", b"no-store")


def _busy(client: _Client) -> bool:
    """A request under way: part of one read, or an answer not yet all sent."""
    return bool(client.request is not None or client.conn.head_in_progress or client.out)


def _host(request: Request) -> str:
    """The Host header's name, without its port, lower case."""
    for name, value in request.headers:
        if name == b"host":
            host = value.decode("latin-1").strip().lower()
            if host.startswith("["):
                return host.partition("]")[0] + "]"
            return host.rpartition(":")[0] if host.count(":") == 1 else host
    return ""


class _Client:
    __slots__ = ("closing", "conn", "last_active", "mask", "out", "request", "sock")

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.conn = ServerConnection(LIMITS)
        self.out = bytearray()
        self.request: Request | None = None
        self.closing = False
        self.last_active = now
        self.mask = selectors.EVENT_READ


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
        self._listeners = self._listen(address)
        self._shared = mmap.mmap(-1, slots * SLOT_FIELDS * 8)
        self._counters = memoryview(self._shared).cast("q")
        self._free = list(range(slots - 1, -1, -1))  # pop() takes the lowest
        self._pending: int | None = None  # the slot of a fork in progress
        self._slot_of: dict[int, tuple[int, int]] = {}  # pid -> (slot, task id)
        self._retired = [0] * FIELDS  # counters of reaped workers
        self._retired_by_task: dict[int, int] = {}  # requests of reaped workers, by task id
        self._warned_full = False
        self._supervisor: Supervisor | None = None
        self._selector: selectors.BaseSelector | None = None
        self._clients: dict[int, _Client] = {}
        self._page = resources.files("squall").joinpath("status_page.html").read_bytes()
        self._start_time = _process_start_time() or time.time()
        self._samples: deque[tuple[float, float, float | None, float | None]] = deque(
            maxlen=SAMPLES
        )
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
        return list(self._listeners)

    # -- plugin hooks ----------------------------------------------------------------

    def attach(self, supervisor: Supervisor, selector: selectors.BaseSelector) -> None:
        self._supervisor = supervisor
        self._selector = selector
        for sock in self._listeners:
            selector.register(sock, selectors.EVENT_READ, self)
        self._sampled_at = time.monotonic()
        self._sampled = self._totals()

    def before_spawn(self, task_id: int) -> None:
        global _assigned
        try:
            slot = self._pending
            if slot is None and self._free:
                slot = self._free.pop()
            self._pending = slot
            if slot is None:
                _assigned = None
                if not self._warned_full:
                    self._warned_full = True
                    logger.warning("no free metrics slot: worker %d will not be counted", task_id)
                return
            start = slot * SLOT_FIELDS * 8
            self._shared[start : start + SLOT_FIELDS * 8] = bytes(SLOT_FIELDS * 8)
            _assigned = (self._shared, slot)
        except Exception:
            logger.exception("metrics: could not assign a slot")
            _assigned = None

    def after_spawn(self, worker: WorkerProcess) -> None:
        if self._pending is not None:
            self._slot_of[worker.pid] = (self._pending, worker.task_id)
            self._pending = None

    def after_exit(self, worker: WorkerProcess, status: int) -> None:
        try:
            self._event(f"worker {worker.task_id} (pid {worker.pid}) {_describe(worker, status)}")
            found = self._slot_of.pop(worker.pid, None)
            if found is None:
                return
            slot = found[0]
            fields = self._slot(slot)
            # Whatever was in flight when the worker died was never answered.
            lost = max(0, fields[IN_FLIGHT])
            fields[STATUS] += lost
            fields[REQUESTS] += lost
            for index in range(FIELDS):
                if index not in _GAUGES:
                    self._retired[index] += fields[index]
            task = worker.task_id
            self._retired_by_task[task] = self._retired_by_task.get(task, 0) + fields[REQUESTS]
            self._free.append(slot)
            self._free.sort(reverse=True)
        except Exception:
            logger.exception("metrics: could not fold the counters of pid %d", worker.pid)

    def handover(self) -> tuple[list[int], dict[str, str]]:
        fds = [sock.fileno() for sock in self._listeners]
        return fds, {INHERIT_ENV: ",".join(map(str, fds))}

    def on_event(self, event: Event) -> None:
        if event == "upgraded":
            self._unix_path = None  # the socket file is the new supervisor's now
            return
        if event == "ready" and self._adopted_path is not None:
            self._unix_path, self._adopted_path = self._adopted_path, None
        if event == "tick":
            now = time.monotonic()
            self._close_idle(now)
            if now - self._sampled_at >= SAMPLE_INTERVAL:
                self._sample(now)
        elif event in ("reloading", "reloaded", "stopping", "ready"):
            text = {
                "ready": "all workers ready",
                "reloading": "reload started",
                "reloaded": "reload finished",
                "stopping": "stopping",
            }
            self._event(text[event])

    def on_readable(self, key: selectors.SelectorKey, mask: int) -> None:
        sock = key.fileobj
        try:
            if sock in self._listeners:
                assert isinstance(sock, socket.socket)
                self._accept(sock)
                return
            client = self._clients.get(key.fd)
            if client is None:
                return
        except Exception:
            logger.exception("metrics endpoint failed")
            return
        try:
            if mask & selectors.EVENT_READ and not client.out:
                self._read(client)
            if client.out or client.closing:
                self._flush(client)
        except Exception:
            logger.exception("metrics endpoint failed on a connection")
            self._drop(client)

    def close(self) -> None:
        """At the supervisor's exit, and in each new worker (which keeps only the mapping)."""
        for client in list(self._clients.values()):
            client.sock.close()
        self._clients.clear()
        for sock in self._listeners:
            sock.close()
        self._listeners = []
        self._selector = None
        self._supervisor = None
        if os.getpid() != self._owner:
            return  # a worker: the shared block is its slot; never close it here
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)
            self._unix_path = None

    # -- reading the slots -------------------------------------------------------------

    def _slot(self, slot: int) -> list[int]:
        base = slot * SLOT_FIELDS
        return self._counters[base : base + FIELDS].tolist()

    def _totals(self) -> list[int]:
        """Every counter over the reaped workers and the live ones."""
        totals = list(self._retired)
        for slot, _ in self._slot_of.values():
            for index, value in enumerate(self._slot(slot)):
                totals[index] += value
        return totals

    def _sample(self, now: float) -> None:
        totals = self._totals()
        previous = self._sampled or totals
        elapsed = now - self._sampled_at
        self._sampled, self._sampled_at = totals, now
        delta = [max(0, new - old) for new, old in zip(totals, previous, strict=True)]
        buckets = delta[BUCKET:FIELDS]
        rate = delta[REQUESTS] / elapsed if elapsed > 0 else 0.0
        self._samples.append(
            (
                time.time(),
                round(rate, 2),
                _round(quantile_ms(buckets, 0.5)),
                _round(quantile_ms(buckets, 0.99)),
            )
        )

    def _event(self, text: str) -> None:
        self._events.append((time.time(), text))

    # -- the connections ---------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(MAX_CLIENTS):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, or the client gave up already
                logger.warning("metrics endpoint: accept failed: %s", exc)
                return
            if self._selector is None:
                sock.close()
                return
            if len(self._clients) >= MAX_CLIENTS:
                # Full: the connection that has been idle longest makes room, never
                # one with a request under way; if every one has, this one waits
                # no more than being turned away.
                idle = [c for c in self._clients.values() if not _busy(c)]
                if not idle:
                    sock.close()
                    continue
                self._drop(min(idle, key=lambda c: c.last_active))
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = _Client(sock, time.monotonic())
            self._clients[sock.fileno()] = client
            self._selector.register(sock, selectors.EVENT_READ, self)

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if not data:
            self._drop(client)
            return
        for event in client.conn.receive_data(data):
            if isinstance(event, Request):
                client.request = event
            elif event is END_OF_MESSAGE:
                request, client.request = client.request, None
                if request is not None:
                    self._answer(client, request)
            elif isinstance(event, RequestError):
                client.out += error_response(event.status, event.reason)
                client.closing = True
            if client.closing:
                break

    def _answer(self, client: _Client, request: Request) -> None:
        conn = client.conn
        if len(client.out) >= MAX_PENDING_OUTPUT:
            conn.close_after_response()
        if self.allowed_hosts and _host(request) not in self.allowed_hosts:
            # --metrics-allowed-hosts: a page fetched under another name (DNS rebinding) gets nothing.
            status, headers, body = 403, [(b"content-type", _TEXT)], b"host not allowed\n"
        else:
            status, headers, body = self._route(request)
        client.out += conn.encode_response(request, status, headers, body)
        client.last_active = time.monotonic()
        if conn.keep_alive:
            conn.start_next_cycle()
        else:
            client.closing = True

    def _route(self, request: Request) -> Response:
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

    def _flush(self, client: _Client) -> None:
        if client.out:
            try:
                sent = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(client)
                return
            if sent:
                del client.out[:sent]
                client.last_active = time.monotonic()
        if not client.out and client.closing:
            self._drop(client)
            return
        mask = selectors.EVENT_WRITE if client.out else selectors.EVENT_READ
        if mask != client.mask and self._selector is not None:
            client.mask = mask
            self._selector.modify(client.sock, mask, self)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if self._clients.pop(fd, None) is None:
            return
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(client.sock)
        client.sock.close()

    def _close_idle(self, now: float) -> None:
        for client in list(self._clients.values()):
            if now - client.last_active > IDLE_TIMEOUT:
                self._drop(client)

    # -- the routes -------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        if self._supervisor is None:
            return {"workers": [], "restart_causes": {}, "stopping": True}
        return self._supervisor.snapshot()

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

    def _ready(self, snapshot: dict[str, Any]) -> bool:
        workers = snapshot.get("workers", [])
        return not snapshot.get("stopping") and any(w["state"] == "ready" for w in workers)

    def _readyz(self) -> Response:
        if self._ready(self._snapshot()):
            return 200, [(b"content-type", _TEXT), _NO_STORE], b"ready\n"
        return 503, [(b"content-type", _TEXT), _NO_STORE], b"not ready\n"

    def _worker_rows(self, snapshot: dict[str, Any]) -> list[dict[str, Any]]:
        rows = []
        now = time.time()
        for worker in snapshot.get("workers", []):
            pid = worker["pid"]
            found = self._slot_of.get(pid)
            fields = self._slot(found[0]) if found is not None else [0] * FIELDS
            memory = _statm(pid)
            rows.append(
                {
                    **worker,
                    "uptime": max(0.0, now - worker["started_at"]),
                    "requests": fields[REQUESTS],
                    "in_flight": max(0, fields[IN_FLIGHT]),
                    "connections": max(0, fields[CONNECTIONS]),
                    "rss_bytes": memory[1] if memory else None,
                }
            )
        return rows

    def _metrics(self) -> Response:
        return (
            200,
            [(b"content-type", CONTENT_TYPE_LATEST.encode()), _NO_STORE],
            self.metrics_text(),
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
        snapshot = self._snapshot()
        rows = self._worker_rows(snapshot)
        totals = self._totals()
        out = Exposition()

        # The supervisor's own process, with prometheus_client's names.
        times = os.times()
        memory = _statm("self")
        out.single(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            round(times.user + times.system, 3),
        )
        if memory is not None:
            out.single(
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                memory[0],
            )
            out.single(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                memory[1],
            )
        out.single(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self._start_time,
        )
        out.single("process_open_fds", "gauge", "Number of open file descriptors.", _open_fds())
        out.single(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        )

        # Requests, over every worker that ever ran.
        out.family(
            "squall_requests_total",
            "counter",
            "Requests finished, by status class (unanswered: no response was sent).",
            [
                ("squall_requests_total", {"status_class": name}, totals[STATUS + index])
                for index, name in enumerate(STATUS_CLASSES)
            ],
        )
        out.single(
            "squall_requests_in_flight",
            "gauge",
            "Requests begun and not finished yet.",
            max(0, totals[IN_FLIGHT]),
        )
        out.single(
            "squall_connections_open",
            "gauge",
            "Client connections open in the workers.",
            max(0, totals[CONNECTIONS]),
        )
        out.family(
            "squall_overload_responses_total",
            "counter",
            "Requests the workers refused or cut short: 503 past --limit-concurrency, "
            "504 (or a closed connection) past --request-timeout.",
            [
                (
                    "squall_overload_responses_total",
                    {"status": "503", "cause": "limit_concurrency"},
                    totals[SHED],
                ),
                (
                    "squall_overload_responses_total",
                    {"status": "504", "cause": "request_timeout"},
                    totals[TIMED_OUT],
                ),
            ],
        )
        queues = self._listen_queues()
        for name, index, help_text in (
            (
                "squall_listen_queue_length",
                0,
                "Connections in a listening socket's accept queue, not taken by a worker yet "
                "(the kernel's count).",
            ),
            (
                "squall_listen_queue_limit",
                1,
                "The length at which a listening socket's accept queue is full (its backlog).",
            ),
        ):
            samples = [(name, labels, values[index]) for labels, values in queues]
            out.family(name, "gauge", help_text, samples)
        out.single(
            "squall_response_bytes_total",
            "counter",
            "Response body bytes sent.",
            totals[BYTES_OUT],
        )
        cumulative = 0
        histogram: list[Sample] = []
        for index, bound in enumerate((*BUCKETS_MS, float("inf"))):
            cumulative += totals[BUCKET + index]
            le = "+Inf" if bound == float("inf") else _value(bound / 1000)
            histogram.append(("squall_request_duration_seconds_bucket", {"le": le}, cumulative))
        histogram.append(("squall_request_duration_seconds_count", {}, cumulative))
        histogram.append(
            ("squall_request_duration_seconds_sum", {}, totals[DURATION_SUM_US] / 1_000_000)
        )
        out.family(
            "squall_request_duration_seconds",
            "histogram",
            "Time from a request's head to the end of its response.",
            histogram,
        )

        # The workers.
        by_task = dict(self._retired_by_task)
        for slot, task in self._slot_of.values():
            by_task[task] = by_task.get(task, 0) + self._counters[slot * SLOT_FIELDS + REQUESTS]
        out.family(
            "squall_worker_requests_total",
            "counter",
            "Requests finished by the workers of each task id (replaced ones included).",
            [
                ("squall_worker_requests_total", {"worker": str(task)}, count)
                for task, count in sorted(by_task.items())
            ],
        )

        for name, key, help_text in (
            ("squall_worker_rss_bytes", "rss_bytes", "Resident memory of each worker process."),
            (
                "squall_worker_connections_open",
                "connections",
                "Client connections open in each worker process.",
            ),
            (
                "squall_worker_heartbeat_age_seconds",
                "heartbeat_age",
                "Seconds since each worker process last reported to the supervisor.",
            ),
            (
                "squall_worker_start_time_seconds",
                "started_at",
                "When each worker process started, since unix epoch in seconds.",
            ),
        ):
            samples = [
                (name, {"worker": str(row["task_id"]), "pid": str(row["pid"])}, row[key])
                for row in rows
                if row[key] is not None
            ]
            out.family(name, "gauge", help_text, samples)

        states = dict.fromkeys(STATES, 0)
        for row in rows:
            states[row["state"]] = states.get(row["state"], 0) + 1
        out.family(
            "squall_workers",
            "gauge",
            "Worker processes by state.",
            [("squall_workers", {"state": state}, count) for state, count in states.items()],
        )
        out.single(
            "squall_workers_wanted",
            "gauge",
            "Workers the supervisor keeps running.",
            snapshot.get("workers_wanted", 0),
        )
        causes = dict.fromkeys(RESTART_CAUSES, 0)
        causes.update(snapshot.get("restart_causes", {}))
        out.family(
            "squall_worker_restarts_total",
            "counter",
            "Workers replaced, by cause.",
            [
                ("squall_worker_restarts_total", {"cause": cause}, count)
                for cause, count in causes.items()
            ],
        )
        out.single(
            "squall_degraded",
            "gauge",
            "1 once the restart budget is spent and failed workers are no longer replaced.",
            int(bool(snapshot.get("degraded"))),
        )
        out.single(
            "squall_reloading",
            "gauge",
            "1 while a rolling reload runs.",
            int(bool(snapshot.get("reloading"))),
        )
        return out.text()

    def status(self) -> dict[str, Any]:
        """What /api/status answers: the snapshot, the counters and the recent samples."""
        snapshot = self._snapshot()
        totals = self._totals()
        rows = self._worker_rows(snapshot)
        memory = _statm("self")
        times = os.times()
        causes = dict.fromkeys(RESTART_CAUSES, 0)
        causes.update(snapshot.get("restart_causes", {}))
        samples = list(self._samples)
        return {
            "now": time.time(),
            "ready": self._ready(snapshot),
            "supervisor": {
                "pid": snapshot.get("pid", os.getpid()),
                "started_at": snapshot.get("started_at", self._start_time),
                "rss_bytes": memory[1] if memory else None,
                "cpu_seconds": round(times.user + times.system, 3),
            },
            "workers_wanted": snapshot.get("workers_wanted", 0),
            "degraded": bool(snapshot.get("degraded")),
            "stopping": bool(snapshot.get("stopping")),
            "reloading": bool(snapshot.get("reloading")),
            "restarts": snapshot.get("restarts", 0),
            "restart_causes": causes,
            "workers": rows,
            "totals": {
                "requests": totals[REQUESTS],
                "by_status": {
                    name: totals[STATUS + index] for index, name in enumerate(STATUS_CLASSES)
                },
                "in_flight": max(0, totals[IN_FLIGHT]),
                "connections": max(0, totals[CONNECTIONS]),
                "bytes_out": totals[BYTES_OUT],
                "duration_sum_seconds": totals[DURATION_SUM_US] / 1_000_000,
                "duration_buckets": totals[BUCKET:FIELDS],
            },
            "buckets_ms": list(BUCKETS_MS),
            "sample_interval": SAMPLE_INTERVAL,
            "samples": {
                "t": [round(s[0], 3) for s in samples],
                "rps": [s[1] for s in samples],
                "p50_ms": [s[2] for s in samples],
                "p99_ms": [s[3] for s in samples],
            },
            "events": [{"t": round(t, 3), "text": text} for t, text in self._events],
        }

    def _api_status(self) -> Response:
        body = json.dumps(self.status(), separators=(",", ":")).encode()
        return 200, [(b"content-type", b"application/json"), _NO_STORE], body


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _describe(worker: WorkerProcess, status: int) -> str:
    if worker.timed_out:
        return "was killed by the watchdog"
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    code = os.WEXITSTATUS(status)
    return f"exited with status {code}" if code else "exited"
