"""`--metrics`: shared counters, Prometheus text, /healthz, /readyz, /api/status.

The first tests drive `MetricsPlugin` in this process (slots, folding, the
endpoint's connection handling); the others run real supervisors and
workers and scrape them over 127.0.0.1, parsing with prometheus_client.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from squall import metrics
from squall.metrics import BUCKETS_MS, MetricsPlugin, quantile_ms, worker_recorder
from squall.supervisor import WorkerProcess
from tests.service import Service, Services, alive, free_port, wait_until

SCRIPTS = Path(__file__).parent / "scripts"
TIMEOUT = 5.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (name, labels), and every family's type, as Prometheus reads them."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(key)[label]: v for (n, key), v in samples.items() if n == name}


# -- in this process ----------------------------------------------------------------


class FakeLoop:
    """A clock the tests move by hand; also stands in for `metrics.clock`."""

    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeCycle:
    """What a recorder reads of a `RequestCycle`."""

    status: int
    started_at: float
    loop: FakeLoop
    bytes_sent: int = 0
    complete: bool = True
    disconnected: bool = False
    error: object = None


@dataclass
class FakeSupervisor:
    workers: list[dict[str, Any]] = field(default_factory=list)
    stopping: bool = False
    causes: dict[str, int] = field(default_factory=dict)
    listeners: None = None  # no sockets: no accept-queue gauges

    def snapshot(self) -> dict[str, object]:
        return {
            "pid": os.getpid(),
            "started_at": time.time(),
            "workers_wanted": 2,
            "degraded": False,
            "stopping": self.stopping,
            "reloading": False,
            "restarts": sum(self.causes.values()),
            "restart_causes": dict(self.causes),
            "workers": self.workers,
        }


def fake_worker(task_id: int, pid: int) -> WorkerProcess:
    return WorkerProcess(task_id, pid, channel=-1)


def spawn(plugin: MetricsPlugin, task_id: int, pid: int) -> tuple[WorkerProcess, Any]:
    """What the supervisor does around a fork; returns the worker and the child's recorder."""
    plugin.before_spawn(task_id)
    recorder = worker_recorder()  # what the child would get
    worker = fake_worker(task_id, pid)
    plugin.after_spawn(worker)
    return worker, recorder


def serve(recorder: Any, loop: FakeLoop, status: int, ms: float, size: int = 0) -> None:
    recorder.request_started()
    cycle = FakeCycle(status, loop.now, loop, bytes_sent=size)
    loop.now += ms / 1000
    real_clock, metrics.clock = metrics.clock, loop
    try:
        recorder.request_finished(cycle)
    finally:
        metrics.clock = real_clock


@pytest.fixture
def plugin() -> Iterator[MetricsPlugin]:
    made = MetricsPlugin("127.0.0.1:0", slots=3)
    selector = selectors.DefaultSelector()
    made.attach(FakeSupervisor(), selector)  # type: ignore[arg-type]
    try:
        yield made
    finally:
        made.close()
        selector.close()
        metrics._assigned = None


def scrape_plugin(plugin: MetricsPlugin) -> Samples:
    return parse(plugin.metrics_text().decode())[0]


def test_quantiles_interpolate_within_a_bucket() -> None:
    empty = [0] * (len(BUCKETS_MS) + 1)
    assert quantile_ms(empty, 0.5) is None
    fast = list(empty)
    fast[0] = 10  # all in (0, 1 ms]
    assert quantile_ms(fast, 0.5) == pytest.approx(0.5)
    mixed = list(empty)
    mixed[0], mixed[3] = 50, 50  # half in (0, 1], half in (5, 10]
    assert quantile_ms(mixed, 0.5) == pytest.approx(1.0)
    assert quantile_ms(mixed, 0.99) == pytest.approx(5 + 5 * 49 / 50)
    slow = list(empty)
    slow[-1] = 3  # beyond the last bound
    assert quantile_ms(slow, 0.99) == BUCKETS_MS[-1]


def test_counters_survive_worker_exits_and_slots_are_reused(plugin: MetricsPlugin) -> None:
    loop = FakeLoop()
    first, rec1 = spawn(plugin, 0, 1001)
    second, rec2 = spawn(plugin, 1, 1002)
    rec1.connection_opened()
    serve(rec1, loop, 200, 0.5, size=10)
    serve(rec1, loop, 404, 3, size=5)
    serve(rec2, loop, 503, 30)
    serve(rec2, loop, 101, 2000)
    rec2.request_started()  # in flight when the worker dies
    samples = scrape_plugin(plugin)
    classes = by_label(samples, "squall_requests_total", "status_class")
    assert classes == {"unanswered": 0, "1xx": 1, "2xx": 1, "3xx": 0, "4xx": 1, "5xx": 1}
    assert value(samples, "squall_requests_in_flight") == 1
    assert value(samples, "squall_connections_open") == 1
    assert value(samples, "squall_response_bytes_total") == 15
    buckets = by_label(samples, "squall_request_duration_seconds_bucket", "le")
    assert buckets["0.001"] == 1 and buckets["0.005"] == 2 and buckets["0.05"] == 3
    assert buckets["2.5"] == buckets["+Inf"] == 4
    assert value(samples, "squall_request_duration_seconds_count") == 4
    assert value(samples, "squall_request_duration_seconds_sum") == pytest.approx(2.0335)

    plugin.after_exit(second, signal.SIGKILL)  # killed: its in-flight request was never answered
    after = scrape_plugin(plugin)
    classes = by_label(after, "squall_requests_total", "status_class")
    assert classes == {"unanswered": 1, "1xx": 1, "2xx": 1, "3xx": 0, "4xx": 1, "5xx": 1}
    assert value(after, "squall_requests_in_flight") == 0  # a gauge: gone with the worker
    assert value(after, "squall_request_duration_seconds_count") == 4
    assert by_label(after, "squall_worker_requests_total", "worker") == {"0": 2, "1": 3}

    # The freed slot comes back zeroed for the successor, and task 1 keeps counting up.
    _, rec3 = spawn(plugin, 1, 1003)
    assert rec3._c.tolist() == [0] * metrics.SLOT_FIELDS
    serve(rec3, loop, 200, 1)
    final = scrape_plugin(plugin)
    assert by_label(final, "squall_worker_requests_total", "worker") == {"0": 2, "1": 4}
    assert by_label(final, "squall_requests_total", "status_class")["2xx"] == 2

    # Three slots, three live workers: a fourth runs uncounted rather than share a slot.
    _, rec4 = spawn(plugin, 2, 1004)
    assert rec4 is not None
    plugin.before_spawn(3)
    assert worker_recorder() is None
    plugin.after_spawn(fake_worker(3, 1005))
    plugin.after_exit(fake_worker(3, 1005), 0)  # it had no slot: nothing to fold
    plugin.after_exit(first, 0)
    _, rec6 = spawn(plugin, 0, 1006)  # a slot is free again
    assert rec6 is not None
    assert by_label(scrape_plugin(plugin), "squall_worker_requests_total", "worker") == {
        "0": 2,
        "1": 4,
        "2": 0,
    }


def test_a_fork_that_failed_leaves_no_slot_behind(plugin: MetricsPlugin) -> None:
    plugin.before_spawn(0)  # then fork() fails: no after_spawn
    for pid in (2001, 2002, 2003):
        _, recorder = spawn(plugin, 0, pid)
        assert recorder is not None


def test_the_exposition_has_every_family_with_its_type(plugin: MetricsPlugin) -> None:
    spawn(plugin, 0, 4001)
    _, types = parse(plugin.metrics_text().decode())
    assert types == {
        "process_cpu_seconds": "counter",
        "process_virtual_memory_bytes": "gauge",
        "process_resident_memory_bytes": "gauge",
        "process_start_time_seconds": "gauge",
        "process_open_fds": "gauge",
        "process_max_fds": "gauge",
        "squall_requests": "counter",
        "squall_requests_in_flight": "gauge",
        "squall_connections_open": "gauge",
        "squall_overload_responses": "counter",
        "squall_http2_connections": "counter",
        "squall_http2_streams": "counter",
        "squall_listen_queue_length": "gauge",
        "squall_listen_queue_limit": "gauge",
        "squall_response_bytes": "counter",
        "squall_request_duration_seconds": "histogram",
        "squall_worker_requests": "counter",
        "squall_worker_rss_bytes": "gauge",
        "squall_worker_connections_open": "gauge",
        "squall_worker_heartbeat_age_seconds": "gauge",
        "squall_worker_start_time_seconds": "gauge",
        "squall_workers": "gauge",
        "squall_workers_wanted": "gauge",
        "squall_worker_restarts": "counter",
        "squall_degraded": "gauge",
        "squall_reloading": "gauge",
    }


class PluginLoop:
    """The supervisor's side of the plugin, in a thread: select, dispatch, tick."""

    def __init__(self, supervisor: FakeSupervisor) -> None:
        self.plugin = MetricsPlugin("127.0.0.1:0")
        self.port = self.plugin.sockets[0].getsockname()[1]
        self.selector = selectors.DefaultSelector()
        self.plugin.attach(supervisor, self.selector)  # type: ignore[arg-type]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, mask in self.selector.select(0.05):
                key.data.on_readable(key, mask)
            self.plugin.on_event("tick")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.plugin.close()
        self.selector.close()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        return sock


@pytest.fixture
def endpoint() -> Iterator[PluginLoop]:
    running = PluginLoop(FakeSupervisor(workers=[]))
    try:
        yield running
    finally:
        running.stop()


def read_until_closed(sock: socket.socket, deadline: float = TIMEOUT) -> bytes:
    sock.settimeout(deadline)
    chunks: list[bytes] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def test_pipelined_requests_are_answered_in_order(endpoint: PluginLoop) -> None:
    with endpoint.connect() as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answer = read_until_closed(sock)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"404", b"200", b"405", b"503"]  # no worker: not ready
    assert b"# HELP" not in answer  # HEAD: no body


def test_an_oversized_or_malformed_request_is_refused_and_closed(endpoint: PluginLoop) -> None:
    with endpoint.connect() as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")
    with endpoint.connect() as sock:
        sock.sendall(b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 414 ")
    with endpoint.connect() as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 400 ")


def test_idle_connections_are_closed_and_the_oldest_make_room(
    endpoint: PluginLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "IDLE_TIMEOUT", 0.5)
    with endpoint.connect() as idle:
        started = time.monotonic()
        idle.sendall(b"GET /healthz HT")  # a head begun, never finished (slowloris)
        assert read_until_closed(idle) == b""
        assert time.monotonic() - started < 0.5 + 2

    monkeypatch.setattr(metrics, "IDLE_TIMEOUT", 60.0)
    held: list[socket.socket] = []
    try:
        for _ in range(metrics.MAX_CLIENTS + 5):  # each one served, then left open
            sock = endpoint.connect()
            held.append(sock)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        # The first ones were closed to make room for the last: still answering.
        assert (
            httpx.get(f"http://127.0.0.1:{endpoint.port}/healthz", timeout=TIMEOUT).text == "ok\n"
        )
        for sock in held[:5]:
            assert read_until_closed(sock) == b""
    finally:
        for sock in held:
            sock.close()


# -- real supervisors -----------------------------------------------------------------------


@dataclass
class Running:
    service: Service
    port: int
    mport: int

    def get(self, path: str, timeout: float = TIMEOUT) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=timeout)

    def endpoint(self, path: str, method: str = "GET") -> httpx.Response:
        return httpx.request(method, f"http://127.0.0.1:{self.mport}{path}", timeout=TIMEOUT)

    def scrape(self) -> Samples:
        response = self.endpoint("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse(response.text)[0]

    def classes(self) -> dict[str, float]:
        return by_label(self.scrape(), "squall_requests_total", "status_class")

    def causes(self) -> dict[str, float]:
        return by_label(self.scrape(), "squall_worker_restarts_total", "cause")


def app_dir(tmp_path: Path) -> Path:
    """A copy of the supervised app (/, /slow, /block, /crash), so nothing is written in tests/."""
    directory = tmp_path / "app"
    directory.mkdir(exist_ok=True)
    shutil.copy(SCRIPTS / "supervised.py", directory / "supervised.py")
    return directory


def start(services: Services, app: str, *args: str, cwd: Path | None = None) -> Running:
    port, mport = free_port(), free_port()
    service = services.squall(
        app, "--bind", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{mport}", *args, cwd=cwd
    )
    service.wait_for_port(port)
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    service.wait_for_log("is ready", count=workers)
    return Running(service, port, mport)


def eventually(check: Callable[[], object], timeout: float = 10.0) -> None:
    """`check` passes (no AssertionError) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except (AssertionError, KeyError):
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


def test_requests_by_status_class_match_what_was_sent(services: Services) -> None:
    running = start(services, "tests.apps.echo_client:app", "--workers", "2")
    sent = Counter({200: 7, 204: 2, 302: 3, 404: 5, 500: 4, 503: 1})
    with httpx.Client(timeout=TIMEOUT) as client:
        for status, count in sent.items():
            for _ in range(count):
                response = client.get(f"http://127.0.0.1:{running.port}/status/{status}")
                assert response.status_code == status
        for _ in range(3):
            assert len(client.get(f"http://127.0.0.1:{running.port}/bytes?n=1000").content) == 1000
    # Fresh connections too, so both workers serve some.
    for _ in range(6):
        assert running.get("/status/201").status_code == 201
    expected = {"unanswered": 0, "1xx": 0, "2xx": 7 + 2 + 3 + 6, "3xx": 3, "4xx": 5, "5xx": 5}

    def counted() -> None:
        assert running.classes() == expected

    eventually(counted)
    samples = running.scrape()
    total = sum(expected.values())
    assert value(samples, "squall_request_duration_seconds_count") == total
    assert value(samples, "squall_request_duration_seconds_bucket", le="+Inf") == total
    assert 0 < value(samples, "squall_request_duration_seconds_sum") < total
    assert value(samples, "squall_response_bytes_total") == 3000
    assert value(samples, "squall_requests_in_flight") == 0
    assert sum(by_label(samples, "squall_worker_requests_total", "worker").values()) == total
    assert by_label(samples, "squall_workers", "state")["ready"] == 2
    assert value(samples, "squall_workers_wanted") == 2
    pids = sorted(running.service.workers())
    rss = {
        int(dict(k)["pid"]): v for (n, k), v in samples.items() if n == "squall_worker_rss_bytes"
    }
    assert sorted(rss) == pids and all(v > 1 << 20 for v in rss.values())
    ages = by_label(samples, "squall_worker_heartbeat_age_seconds", "pid")
    assert sorted(int(p) for p in ages) == pids and all(0 <= a < 5 for a in ages.values())
    # The supervisor's own process metrics.
    assert value(samples, "process_resident_memory_bytes") > 1 << 20
    assert value(samples, "process_open_fds") > 3
    assert value(samples, "process_cpu_seconds_total") >= 0
    assert abs(value(samples, "process_start_time_seconds") - time.time()) < 120

    status = running.endpoint("/api/status").json()
    assert [w["task_id"] for w in status["workers"]] == [0, 1]
    assert sum(w["requests"] for w in status["workers"]) == total
    assert status["totals"]["by_status"] == expected
    assert status["ready"] is True
    assert running.service.stop() == 0


def test_restarts_by_cause_and_requests_cut_short(services: Services, tmp_path: Path) -> None:
    running = start(
        services,
        "supervised:app",
        "--workers",
        "2",
        "--timeout",
        "2",
        cwd=app_dir(services.tmp_path),
    )
    for _ in range(10):
        assert running.get("/").status_code == 200
    assert running.causes() == dict.fromkeys(metrics.RESTART_CAUSES, 0)

    # A client that gives up (FIN): the worker still answers, and counts that answer.
    with pytest.raises(httpx.TimeoutException):
        running.get("/slow?s=0.5", timeout=0.2)
    # A connection reset (RST) before the answer: unanswered, and counted once even
    # though the handler answers the gone client a moment later.
    with socket.create_connection(("127.0.0.1", running.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /slow?s=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    eventually(lambda: _check(running.classes()["unanswered"] == 1))
    time.sleep(1.2)  # both handlers have answered
    assert running.classes() == {
        "unanswered": 1,
        "1xx": 0,
        "2xx": 11,
        "3xx": 0,
        "4xx": 0,
        "5xx": 0,
    }
    assert value(running.scrape(), "squall_requests_in_flight") == 0

    # SIGKILL: cause "signal".
    victim = running.service.wait_for_workers(2)[0]
    os.kill(victim, signal.SIGKILL)
    eventually(lambda: _check(running.causes()["signal"] == 1))
    running.service.wait_for_log("is ready", count=3)

    # Exit status 1: cause "exit".
    assert running.get("/crash").text == "bye"
    eventually(lambda: _check(running.causes()["exit"] == 1))
    running.service.wait_for_log("is ready", count=4)

    # A blocked loop: the watchdog, and the request it held is unanswered.
    with pytest.raises(httpx.HTTPError):
        running.get("/block", timeout=10)
    eventually(lambda: _check(running.causes()["watchdog"] == 1), timeout=10)
    running.service.wait_for_log("is ready", count=5)
    assert running.causes() == {
        "signal": 1,
        "exit": 1,
        "watchdog": 1,
        "recycle": 0,
        "memory": 0,
        "reload": 0,
        "manual": 0,
    }
    samples = running.scrape()
    classes = by_label(samples, "squall_requests_total", "status_class")
    # Nothing counted before was lost with the workers that held it.
    assert classes == {"unanswered": 2, "1xx": 0, "2xx": 12, "3xx": 0, "4xx": 0, "5xx": 0}
    assert value(samples, "squall_requests_in_flight") == 0
    assert sum(by_label(samples, "squall_worker_requests_total", "worker").values()) == 14
    status = running.endpoint("/api/status").json()
    assert status["restarts"] == 3
    texts = [event["text"] for event in status["events"]]
    assert any("killed by signal 9" in text for text in texts)
    assert any("exited with status 1" in text for text in texts)
    assert any("killed by the watchdog" in text for text in texts)


def _check(condition: bool) -> None:
    assert condition


def test_readyz_answers_throughout_a_reload_and_counters_survive_it(
    services: Services,
) -> None:
    running = start(services, "supervised:app", "--workers", "2", cwd=app_dir(services.tmp_path))
    assert running.endpoint("/healthz").text == "ok\n"
    assert running.endpoint("/readyz").status_code == 200
    for _ in range(20):
        running.get("/")
    eventually(lambda: _check(running.classes()["2xx"] == 20))
    before = running.scrape()

    answers: Counter[int] = Counter()
    errors: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=TIMEOUT) as client:
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answers[client.get(f"http://127.0.0.1:{running.mport}/readyz").status_code] += 1
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(0.2)
        old = set(running.service.workers())
        running.service.send(signal.SIGHUP)
        running.service.wait_for_log("reload complete", timeout=20)
        wait_until(lambda: not old & set(running.service.workers()), timeout=10)
        time.sleep(0.2)
    finally:
        stop.set()
        poller.join(10)
    assert not errors
    assert set(answers) <= {200, 503} and answers[200] > 10
    after = running.scrape()
    assert by_label(after, "squall_worker_restarts_total", "cause")["reload"] == 2
    # Every counter is where it was: the old workers' counts were folded, not lost.
    for key, old_value in before.items():
        name = key[0]
        counter = name.endswith("_total") or "_duration_" in name
        if name.startswith("squall_") and counter and name != "squall_worker_restarts_total":
            assert after[key] == old_value, key
    for _ in range(5):
        running.get("/")
    eventually(lambda: _check(running.classes()["2xx"] == 25))
    assert running.service.stop() == 0
    assert not any(alive(pid) for pid in old)


def test_health_routes_and_no_control_action(services: Services) -> None:
    running = start(services, "supervised:app", "--workers", "1", cwd=app_dir(services.tmp_path))
    health = running.endpoint("/healthz")
    assert (health.status_code, health.text) == (200, "ok\n")
    page = running.endpoint("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<svg" in page.text and "api/status" in page.text
    assert not re.search(r"<(?:script|link|img)[^>]+(?:src|href)=", page.text)  # self-contained
    for path in ("/reload", "/stop", "/scale", "/restart-worker", "/api/reload", "/metrics/x"):
        for method in ("GET", "POST"):
            assert running.endpoint(path, method).status_code == 404, (method, path)
    for path in ("/metrics", "/healthz", "/readyz", "/api/status", "/"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            response = running.endpoint(path, method)
            assert response.status_code == 405, (method, path)
            assert response.headers["allow"] == "GET, HEAD"
    head = running.endpoint("/metrics", "HEAD")
    assert head.status_code == 200 and head.content == b""
    before = set(running.service.workers())
    assert running.causes()["manual"] == 0 and set(running.service.workers()) == before
    # Stopping: /readyz says so while the workers drain; the supervisor then exits.
    slow = threading.Thread(target=lambda: _quietly(lambda: running.get("/slow?s=1.5")))
    slow.start()
    time.sleep(0.3)
    running.service.send(signal.SIGTERM)
    eventually(lambda: _check(running.endpoint("/readyz").status_code == 503), timeout=3)
    slow.join(10)
    assert running.service.wait(10) == 0
    with pytest.raises(httpx.ConnectError):
        running.endpoint("/healthz")


def _quietly(call: Callable[[], object]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        call()


def test_unix_socket_address(services: Services, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "metrics.sock"
    service = services.squall(
        "supervised:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--metrics",
        f"unix:{path}",
        cwd=app_dir(services.tmp_path),
    )
    service.wait_for_log("is ready")
    assert (path.stat().st_mode & 0o777) == 0o600
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        assert client.get("http://metrics/healthz").text == "ok\n"
        assert client.get("http://metrics/readyz").status_code == 200
        samples = parse(client.get("http://metrics/metrics").text)[0]
    assert by_label(samples, "squall_workers", "state")["ready"] == 1
    assert service.stop() == 0
    assert not path.exists()


@pytest.mark.parametrize(
    ("address", "status", "message"),
    [
        ("nonsense", 2, "invalid --metrics value 'nonsense'"),
        ("fd://3", 2, "invalid --metrics value 'fd://3': expected HOST:PORT or unix:PATH"),
        ("127.0.0.1:99999", 2, "invalid --metrics value '127.0.0.1:99999': port must be"),
    ],
)
def test_a_bad_address_is_one_clear_error(
    services: Services, address: str, status: int, message: str
) -> None:
    port = free_port()
    service = services.squall(
        "supervised:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--metrics",
        address,
        cwd=app_dir(services.tmp_path),
    )
    assert service.wait(15) == status
    output = service.output()
    assert f"squall: error: {message}" in output and "Traceback" not in output


def test_a_metrics_port_in_use_is_an_error_before_any_fork(services: Services) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        mport = taken.getsockname()[1]
        service = services.squall(
            "supervised:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--metrics",
            f"127.0.0.1:{mport}",
            cwd=app_dir(services.tmp_path),
        )
        assert service.wait(15) == 1
    output = service.output()
    assert f"squall: error: cannot bind 127.0.0.1:{mport}: address already in use" in output
    assert "worker 0 started" not in output


@pytest.mark.parametrize("mode", [[], ["--shared-socket"]], ids=["per worker", "shared"])
def test_the_accept_queue_and_each_workers_connections(
    services: Services, tmp_path: Path, mode: list[str]
) -> None:
    # A saturated worker looks idle from inside; the kernel's queue tells.
    running = start(services, "supervised:app", *mode, cwd=app_dir(tmp_path))
    (worker,) = running.service.wait_for_workers(1)
    held = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(3)]
    queued: list[socket.socket] = []
    try:
        for sock in held:  # served and kept alive: the worker holds three
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        eventually(
            lambda: assert_equal(
                value(
                    running.scrape(), "squall_worker_connections_open", worker="0", pid=str(worker)
                ),
                3,
            )
        )
        os.kill(worker, signal.SIGSTOP)  # it accepts nothing more
        queued = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(5)]
        samples = running.scrape()
        lengths = by_label(samples, "squall_listen_queue_length", "socket")
        assert sum(lengths.values()) == 5, lengths
        limits = by_label(samples, "squall_listen_queue_limit", "socket")
        assert all(limit > 0 for limit in limits.values()), limits
        os.kill(worker, signal.SIGCONT)
        eventually(
            lambda: assert_equal(
                sum(by_label(running.scrape(), "squall_listen_queue_length", "socket").values()), 0
            )
        )
    finally:
        os.kill(worker, signal.SIGCONT)
        for sock in held + queued:
            sock.close()


def assert_equal(got: float, expected: float) -> None:
    assert got == expected, (got, expected)


def test_a_flood_never_pushes_out_a_scrape_under_way(services: Services, tmp_path: Path) -> None:
    running = start(services, "supervised:app", cwd=app_dir(tmp_path))
    scraper = socket.create_connection(("127.0.0.1", running.mport), timeout=TIMEOUT)
    flood: list[socket.socket] = []
    try:
        scraper.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")  # its head is under way
        time.sleep(0.1)
        for _ in range(3 * metrics.MAX_CLIENTS):  # idle connections, more than fit
            flood.append(socket.create_connection(("127.0.0.1", running.mport), timeout=TIMEOUT))
        time.sleep(0.3)
        scraper.sendall(b"\r\n")
        assert scraper.recv(65536).startswith(b"HTTP/1.1 200 ")
        assert running.endpoint("/healthz").status_code == 200  # a newcomer gets in too
    finally:
        for sock in [scraper, *flood]:
            sock.close()


def test_the_endpoint_answers_only_the_allowed_host_names(
    services: Services, tmp_path: Path
) -> None:
    running = start(
        services,
        "supervised:app",
        "--metrics-allowed-hosts",
        "localhost, metrics.internal",
        cwd=app_dir(tmp_path),
    )
    url = f"http://127.0.0.1:{running.mport}/metrics"
    rebound = httpx.get(url, headers={"host": "attacker.example"}, timeout=TIMEOUT)
    assert rebound.status_code == 403 and "squall_" not in rebound.text
    for host in ("localhost", f"localhost:{running.mport}", "METRICS.internal"):
        assert httpx.get(url, headers={"host": host}, timeout=TIMEOUT).status_code == 200, host
