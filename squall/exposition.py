"""What `--metrics` shows: the Prometheus text and the JSON status, from one `Snapshot`.

Every function here is pure: the plugin reads the slot table, the
supervisor and /proc into a `Snapshot`, and the views are computed from it
alone, so each one can be tested with a hand-made snapshot, without
processes or sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from squall.slot_table import (
    BUCKET,
    BUCKETS_MS,
    BYTES_OUT,
    CONNECTIONS,
    DURATION_SUM_US,
    FIELDS,
    HTTP2_CONNECTIONS,
    HTTP2_STREAMS,
    IN_FLIGHT,
    REQUESTS,
    SHED,
    STATUS,
    TIMED_OUT,
)

__all__ = [
    "CONTENT_TYPE_LATEST",
    "RESTART_CAUSES",
    "STATES",
    "STATUS_CLASSES",
    "ProcessFigures",
    "Snapshot",
    "chart_point",
    "metrics_text",
    "quantile_ms",
    "ready",
    "status",
    "worker_rows",
]

CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"
STATUS_CLASSES = ("unanswered", "1xx", "2xx", "3xx", "4xx", "5xx")
STATES = ("booting", "ready", "replacing", "draining")
RESTART_CAUSES = ("signal", "exit", "watchdog", "recycle", "memory", "reload", "manual")
#: Seconds between two points of the status page's charts.
SAMPLE_INTERVAL = 1.0

#: One point of the charts: (unix time, requests per second, p50 ms, p99 ms).
ChartPoint = tuple[float, float, float | None, float | None]
#: (labels, (queued, limit)) of one listening socket's accept queue.
ListenQueue = tuple[dict[str, str], tuple[int, int]]


@dataclass(frozen=True)
class ProcessFigures:
    """The supervisor's own process, named as prometheus_client names them."""

    pid: int
    cpu_seconds: float
    memory: tuple[int, int] | None  # (virtual, resident) bytes
    start_time: float
    open_fds: int | None
    max_fds: int


@dataclass(frozen=True)
class Snapshot:
    """Everything the views show, read at one moment."""

    state: Mapping[str, Any]  # `Supervisor.snapshot()`
    totals: Sequence[int]  # every counter, the reaped workers' included (`SlotTable.totals`)
    counters: Mapping[int, Sequence[int]]  # pid -> a live worker's counters
    worker_rss: Mapping[int, int | None]  # pid -> resident bytes
    requests_by_task: Mapping[int, int]
    listen_queues: Sequence[ListenQueue]
    process: ProcessFigures
    now: float  # unix time
    samples: Sequence[ChartPoint] = ()
    events: Sequence[tuple[float, str]] = ()


# -- statistics over the histogram --------------------------------------------------


def quantile_ms(buckets: Sequence[int], q: float) -> float | None:
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


def chart_point(
    previous: Sequence[int], totals: Sequence[int], elapsed: float, at: float
) -> ChartPoint:
    """The rate and latency of the requests finished between two readings of the totals."""
    delta = [max(0, new - old) for new, old in zip(totals, previous, strict=True)]
    buckets = delta[BUCKET:FIELDS]
    rate = delta[REQUESTS] / elapsed if elapsed > 0 else 0.0
    return (
        at,
        round(rate, 2),
        _round(quantile_ms(buckets, 0.5)),
        _round(quantile_ms(buckets, 0.99)),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# -- the workers ------------------------------------------------------------------------


def ready(state: Mapping[str, Any]) -> bool:
    """Not stopping, and at least one worker ready: what /readyz answers."""
    workers = state.get("workers", [])
    return not state.get("stopping") and any(w["state"] == "ready" for w in workers)


def worker_rows(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Each worker as the supervisor lists it, with its uptime, counters and memory."""
    rows = []
    for worker in snapshot.state.get("workers", []):
        pid = worker["pid"]
        fields = snapshot.counters.get(pid) or [0] * FIELDS
        rows.append(
            {
                **worker,
                "uptime": max(0.0, snapshot.now - worker["started_at"]),
                "requests": fields[REQUESTS],
                "in_flight": max(0, fields[IN_FLIGHT]),
                "connections": max(0, fields[CONNECTIONS]),
                "rss_bytes": snapshot.worker_rss.get(pid),
            }
        )
    return rows


def _causes(state: Mapping[str, Any]) -> dict[str, int]:
    causes = dict.fromkeys(RESTART_CAUSES, 0)
    causes.update(state.get("restart_causes", {}))
    return causes


# -- Prometheus text format 0.0.4 ------------------------------------------------------------


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

    def labelled(
        self, name: str, kind: str, help_text: str, label: str, values: Mapping[str, float]
    ) -> None:
        """A family of one sample per value of `label`."""
        self.family(name, kind, help_text, [(name, {label: k}, v) for k, v in values.items()])

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode("utf-8")


def metrics_text(snapshot: Snapshot) -> bytes:
    """What /metrics answers: Prometheus text format 0.0.4."""
    out = Exposition()
    _process_families(out, snapshot.process)
    _request_families(out, snapshot)
    _worker_families(out, snapshot)
    return out.text()


def _process_families(out: Exposition, process: ProcessFigures) -> None:
    """The supervisor's own process, with prometheus_client's names."""
    out.single(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        process.cpu_seconds,
    )
    if process.memory is not None:
        virtual, resident = process.memory
        out.single(
            "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", virtual
        )
        out.single(
            "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", resident
        )
    out.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        process.start_time,
    )
    out.single("process_open_fds", "gauge", "Number of open file descriptors.", process.open_fds)
    out.single(
        "process_max_fds", "gauge", "Maximum number of open file descriptors.", process.max_fds
    )


def _request_families(out: Exposition, snapshot: Snapshot) -> None:
    """Requests, over every worker that ever ran, and the listening sockets' queues."""
    totals = snapshot.totals
    out.labelled(
        "squall_requests_total",
        "counter",
        "Requests finished, by status class (unanswered: no response was sent).",
        "status_class",
        {name: totals[STATUS + index] for index, name in enumerate(STATUS_CLASSES)},
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
    name = "squall_overload_responses_total"
    out.family(
        name,
        "counter",
        "Requests the workers refused or cut short: 503 past --limit-concurrency, "
        "504 (or a closed connection) past --request-timeout.",
        [
            (name, {"status": "503", "cause": "limit_concurrency"}, totals[SHED]),
            (name, {"status": "504", "cause": "request_timeout"}, totals[TIMED_OUT]),
        ],
    )
    out.single(
        "squall_http2_connections_total",
        "counter",
        "Client connections that spoke HTTP/2 (ALPN h2, or h2c with --h2c).",
        totals[HTTP2_CONNECTIONS],
    )
    out.single(
        "squall_http2_streams_total",
        "counter",
        "Requests that came on HTTP/2 streams (also counted in squall_requests_total).",
        totals[HTTP2_STREAMS],
    )
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
        samples = [(name, labels, values[index]) for labels, values in snapshot.listen_queues]
        out.family(name, "gauge", help_text, samples)
    out.single(
        "squall_response_bytes_total", "counter", "Response body bytes sent.", totals[BYTES_OUT]
    )
    name = "squall_request_duration_seconds"
    cumulative = 0
    histogram: list[Sample] = []
    for index, bound in enumerate((*BUCKETS_MS, float("inf"))):
        cumulative += totals[BUCKET + index]
        le = "+Inf" if bound == float("inf") else _value(bound / 1000)
        histogram.append((f"{name}_bucket", {"le": le}, cumulative))
    histogram.append((f"{name}_count", {}, cumulative))
    histogram.append((f"{name}_sum", {}, totals[DURATION_SUM_US] / 1_000_000))
    out.family(
        name, "histogram", "Time from a request's head to the end of its response.", histogram
    )


def _worker_families(out: Exposition, snapshot: Snapshot) -> None:
    """The worker processes: each one's figures, their states and restarts."""
    state = snapshot.state
    out.labelled(
        "squall_worker_requests_total",
        "counter",
        "Requests finished by the workers of each task id (replaced ones included).",
        "worker",
        {str(task): count for task, count in sorted(snapshot.requests_by_task.items())},
    )
    rows = worker_rows(snapshot)
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
    out.labelled("squall_workers", "gauge", "Worker processes by state.", "state", states)
    out.single(
        "squall_workers_wanted",
        "gauge",
        "Workers the supervisor keeps running.",
        state.get("workers_wanted", 0),
    )
    out.labelled(
        "squall_worker_restarts_total",
        "counter",
        "Workers replaced, by cause.",
        "cause",
        _causes(state),
    )
    out.single(
        "squall_degraded",
        "gauge",
        "1 once the restart budget is spent and failed workers are no longer replaced.",
        int(bool(state.get("degraded"))),
    )
    out.single(
        "squall_reloading",
        "gauge",
        "1 while a rolling reload runs.",
        int(bool(state.get("reloading"))),
    )


# -- the JSON status ----------------------------------------------------------------------


def status(snapshot: Snapshot) -> dict[str, Any]:
    """What /api/status answers: the supervisor's state, the counters and the recent samples."""
    state, totals, process = snapshot.state, snapshot.totals, snapshot.process
    samples = snapshot.samples
    return {
        "now": snapshot.now,
        "ready": ready(state),
        "supervisor": {
            "pid": state.get("pid", process.pid),
            "started_at": state.get("started_at", process.start_time),
            "rss_bytes": process.memory[1] if process.memory else None,
            "cpu_seconds": process.cpu_seconds,
        },
        "workers_wanted": state.get("workers_wanted", 0),
        "degraded": bool(state.get("degraded")),
        "stopping": bool(state.get("stopping")),
        "reloading": bool(state.get("reloading")),
        "restarts": state.get("restarts", 0),
        "restart_causes": _causes(state),
        "workers": worker_rows(snapshot),
        "totals": {
            "requests": totals[REQUESTS],
            "by_status": {
                name: totals[STATUS + index] for index, name in enumerate(STATUS_CLASSES)
            },
            "in_flight": max(0, totals[IN_FLIGHT]),
            "connections": max(0, totals[CONNECTIONS]),
            "bytes_out": totals[BYTES_OUT],
            "duration_sum_seconds": totals[DURATION_SUM_US] / 1_000_000,
            "duration_buckets": list(totals[BUCKET:FIELDS]),
        },
        "buckets_ms": list(BUCKETS_MS),
        "sample_interval": SAMPLE_INTERVAL,
        "samples": {
            "t": [round(s[0], 3) for s in samples],
            "rps": [s[1] for s in samples],
            "p50_ms": [s[2] for s in samples],
            "p99_ms": [s[3] for s in samples],
        },
        "events": [{"t": round(t, 3), "text": text} for t, text in snapshot.events],
    }
