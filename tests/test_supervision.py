"""Production supervision: graceful stop, rolling reload, watchdog, restart policy, scaling.

Real supervisor and workers, real sockets on 127.0.0.1, real HTTP clients.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.load import Load
from tests.service import (
    Service,
    Services,
    alive,
    free_port,
    listeners_on,
    wait_until,
    with_descriptor_limit,
)

SCRIPTS = Path(__file__).parent / "scripts"


def app_dir(tmp_path: Path, version: str = "1") -> Path:
    """A copy of the supervised app that the test may rewrite."""
    directory = tmp_path / "app"
    directory.mkdir()
    set_version(directory, version)
    return directory


def set_version(directory: Path, version: str) -> None:
    source = (
        (SCRIPTS / "supervised.py").read_text().replace('VERSION = "1"', f"VERSION = {version!r}")
    )
    (directory / "supervised_app.py").write_text(source)
    # A rewrite within the same second must not be served from a stale .pyc.
    shutil.rmtree(directory / "__pycache__", ignore_errors=True)


def start(services: Services, directory: Path, *args: str) -> tuple[Service, int]:
    port = free_port()
    service = services.squall(
        "supervised_app:app", "--bind", f"127.0.0.1:{port}", *args, cwd=directory
    )
    service.wait_for_port(port)
    workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
    service.wait_for_log("is ready", count=workers)  # signals before then hit booting workers
    return service, port


def get(port: int, path: str = "/", timeout: float = 5) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout)


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def test_graceful_stop_finishes_the_request_in_flight(services: Services, tmp_path: Path) -> None:
    service, port = start(services, app_dir(tmp_path), "--workers", "2")
    workers = service.wait_for_workers(2)
    answers: list[httpx.Response] = []
    slow = threading.Thread(target=lambda: answers.append(get(port, "/slow?s=2", timeout=10)))
    slow.start()
    time.sleep(0.5)  # the request is in flight
    service.send(signal.SIGTERM)
    wait_until(lambda: refused(port), timeout=2)  # new connections refused once the stop began
    slow.join(10)
    assert [(r.status_code, r.text) for r in answers] == [(200, "slow done")]
    assert answers[0].headers["connection"] == "close"
    assert service.wait(timeout=10) == 0
    assert all(not alive(pid) for pid in workers)


def test_a_stop_closes_an_idle_keep_alive_connection_soon(
    services: Services, tmp_path: Path
) -> None:
    # The drain gives an idle keep-alive connection a second to send its next
    # request, then closes it: the stop does not wait out --graceful-timeout.
    service, port = start(services, app_dir(tmp_path), "--graceful-timeout", "30")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        started = time.monotonic()
        service.send(signal.SIGTERM)
        assert sock.recv(65536) == b""  # closed unanswered: it sent nothing more
        closed_after = time.monotonic() - started
        assert service.wait(timeout=10) == 0
    assert 0.9 <= closed_after < 3.0, closed_after


SOCKET_MODES = {"reuse-port (default)": [], "shared": ["--shared-socket"]}


@pytest.mark.parametrize("mode", SOCKET_MODES)
def test_socket_per_worker_by_default_one_when_shared(
    services: Services, tmp_path: Path, mode: str
) -> None:
    service, port = start(services, app_dir(tmp_path), "--workers", "3", *SOCKET_MODES[mode])
    service.wait_for_workers(3)
    per_worker = mode != "shared"
    # Steered, the group has one more: the overflow socket that every worker serves.
    overflow = int("least-loaded worker (eBPF)" in service.output())
    expected = 3 + overflow if per_worker else 1
    assert len(listeners_on(port)) == expected
    assert ("one socket each (SO_REUSEPORT)" in service.output()) == per_worker
    service.send(signal.SIGTTOU)
    service.wait_for_workers(2)
    wait_until(lambda: len(listeners_on(port)) == expected - per_worker, timeout=10)


@pytest.mark.parametrize("mode", SOCKET_MODES)
def test_rolling_reload_under_load_loses_nothing(
    services: Services, tmp_path: Path, mode: str
) -> None:
    directory = app_dir(tmp_path)
    extra = SOCKET_MODES[mode]
    service, port = start(services, directory, "--workers", "2", *extra)
    old = set(service.wait_for_workers(2))
    with Load(port) as load:
        load.wait_for_requests(1500)
        for version in ("2", "3"):
            set_version(directory, version)
            service.send(signal.SIGHUP)
            count = 1 if version == "2" else 2
            service.wait_for_log("reload complete", count=count, timeout=20)
            wait_until(lambda v=version: get(port).text == v, timeout=10)
        load.wait_for_requests(load.result.total + 1500)
    result = load.result
    assert result.failed == 0, result.errors
    assert result.total >= 3000
    assert result.bodies["1"] > 0 and result.bodies["3"] > 0
    new = set(service.wait_for_workers(2))
    assert not (new & old)  # every worker has a new pid
    assert {get(port).text for _ in range(20)} == {"3"}
    print(f"{mode}: {result.total} requests, {result.failed} failed, {result.retried} retried")


DRAIN_MODES = {**SOCKET_MODES, "no steering": ["--no-steering"]}


@pytest.mark.parametrize("mode", DRAIN_MODES)
def test_three_reloads_under_keep_alive_posts_lose_nothing_and_reset_nothing(
    services: Services, tmp_path: Path, mode: str
) -> None:
    # No retries: a client may not resend a POST it may have delivered (a proxy
    # with upstream keep-alive answers 502 for it). A retiring worker answers
    # the next request on each kept-alive connection with Connection: close,
    # and closes no connection a client has just written to.
    directory = app_dir(tmp_path)
    service, port = start(services, directory, "--workers", "2", *DRAIN_MODES[mode])
    service.wait_for_workers(2)
    with Load(port, keepalive=4, fresh=2, method="POST", retry=False) as load:
        load.wait_for_requests(500)
        for count in (1, 2, 3):
            service.send(signal.SIGHUP)
            service.wait_for_log("reload complete", count=count, timeout=30)
            load.wait_for_requests(load.result.total + 300)
    result = load.result
    print(f"{mode}: {result.total} POSTs, {result.failed} failed, {result.resets} resets")
    assert (result.failed, result.resets) == (0, 0), result.errors
    assert result.total >= 1400


def test_reload_with_broken_code_keeps_the_old_workers(services: Services, tmp_path: Path) -> None:
    directory = app_dir(tmp_path)
    service, port = start(services, directory, "--workers", "2")
    old = set(service.wait_for_workers(2))
    (directory / "supervised_app.py").write_text("def broken(:\n")
    shutil.rmtree(directory / "__pycache__", ignore_errors=True)
    service.send(signal.SIGHUP)
    service.wait_for_log("could not take over", timeout=15)
    assert "SyntaxError" in service.output()
    assert get(port).text == "1"
    assert set(service.workers()) == old
    assert service.stop() == 0


def test_watchdog_replaces_a_worker_whose_loop_is_blocked(
    services: Services, tmp_path: Path
) -> None:
    service, port = start(services, app_dir(tmp_path), "--workers", "1", "--timeout", "2")
    (old,) = service.wait_for_workers(1)
    blocked = threading.Thread(
        target=lambda: _ignore_errors(lambda: get(port, "/block", timeout=8))
    )
    started = time.monotonic()
    blocked.start()
    wait_until(lambda: not alive(old), timeout=2 + 3)
    replaced_after = time.monotonic() - started
    wait_until(lambda: get(port, "/pid").json()["pid"] != old, timeout=5)
    blocked.join(10)
    output = service.output()
    assert "timed out: no heartbeat" in output
    assert "in block_the_loop" in output  # the stacks name the handler's blocking call
    assert replaced_after < 2 + 3
    print(f"blocked worker replaced after {replaced_after:.2f} s (timeout 2 s)")


def test_watchdog_stacks_reach_the_log_file(services: Services, tmp_path: Path) -> None:
    log = tmp_path / "squall.log"
    directory = app_dir(tmp_path)
    port = free_port()
    service = services.squall(
        "supervised_app:app",
        *("--bind", f"127.0.0.1:{port}", "--timeout", "1", "--log-file", str(log)),
        cwd=directory,
    )
    service.wait_for_port(port)
    wait_until(lambda: "is ready" in log.read_text(), timeout=10)
    (old,) = service.wait_for_workers(1)
    blocked = threading.Thread(
        target=lambda: _ignore_errors(lambda: get(port, "/block", timeout=8))
    )
    blocked.start()
    wait_until(lambda: not alive(old), timeout=6)
    blocked.join(10)
    wait_until(lambda: "in block_the_loop" in log.read_text(), timeout=5)
    assert "timed out: no heartbeat" in log.read_text()


def _ignore_errors(call: Callable[[], object]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        call()


def test_crash_loop_backs_off_then_stops(services: Services) -> None:
    port = free_port()
    service = services.squall(
        "tests.scripts.crash_after_boot:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--max-restarts",
        "5",
    )
    assert service.wait(timeout=30) == 1
    output = service.output()
    assert "squall: error: too many worker restarts (more than 5), giving up" in output
    delays = [float(d) for d in re.findall(r"restarting in ([\d.]+) s", output)]
    assert delays == sorted(delays) and len(delays) >= 3 and delays[-1] > delays[0]
    starts = [
        datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
        for stamp in re.findall(r"^(\S+ \S+) .*worker 0 started", output, re.MULTILINE)
    ]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    assert gaps[-1] > gaps[0] + 0.2  # the backoff shows in the timestamps


def test_ttin_and_ttou_change_the_number_of_workers(services: Services, tmp_path: Path) -> None:
    service, port = start(services, app_dir(tmp_path), "--workers", "2")
    service.wait_for_workers(2)
    service.send(signal.SIGTTIN)
    service.wait_for_workers(3)
    for expected in (2, 1, 1):  # never below one
        service.send(signal.SIGTTOU)
        service.wait_for_log(f"to {expected} worker(s)" if expected > 1 else "to 1 worker(s)")
        service.wait_for_workers(expected)
    assert get(port, "/pid").json()["task_id"] == 0


@pytest.mark.parametrize("mode", SOCKET_MODES)
def test_scaling_up_and_down_under_load_loses_nothing(
    services: Services, tmp_path: Path, mode: str
) -> None:
    service, port = start(services, app_dir(tmp_path), "--workers", "2", *SOCKET_MODES[mode])
    service.wait_for_workers(2)
    with Load(port, keepalive=3, fresh=3) as load:
        load.wait_for_requests(500)
        for _ in range(3):
            service.send(signal.SIGTTIN)
            service.wait_for_workers(3)
            load.wait_for_requests(load.result.total + 300)
            service.send(signal.SIGTTOU)
            service.wait_for_workers(2)
            load.wait_for_requests(load.result.total + 300)
    result = load.result
    assert result.failed == 0, result.errors
    print(f"{mode}: {result.total} requests, {result.failed} failed, {result.retried} retried")


def pid_of_task(port: int, task_id: int, timeout: float = 10.0) -> int:
    """The pid of the worker in slot `task_id`, found by asking on new connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            answer = get(port, "/pid", timeout=0.5).json()
            if answer["task_id"] == task_id:
                return int(answer["pid"])
    raise AssertionError(f"no answer from worker {task_id} within {timeout} s")


def test_a_slot_waiting_to_restart_leaves_new_connections_to_the_others(
    services: Services, tmp_path: Path
) -> None:
    service, port = start(services, app_dir(tmp_path), "--workers", "2")
    service.wait_for_workers(2)
    for _ in range(6):  # young deaths: slot 1's restart delay doubles each time
        os.kill(pid_of_task(port, 1), signal.SIGKILL)
    service.wait_for_log("restarting in 1.6 s")
    # Its socket (one per worker by default) would hold what the kernel sends it
    # until the restart; closed, every new connection reaches worker 0 at once.
    answers = [get(port, "/pid", timeout=1.0).json()["task_id"] for _ in range(20)]
    assert answers == [0] * 20
    pid_of_task(port, 1)  # and slot 1 serves again after its delay


def test_the_supervisor_has_imported_what_a_worker_runs(services: Services, tmp_path: Path) -> None:
    # Imported before the first fork, a restarted worker does not import them
    # again: uvloop's compiled loop is mapped in the supervisor itself.
    service, _port = start(services, app_dir(tmp_path), "--workers", "1")
    maps = Path(f"/proc/{service.pid}/maps").read_text()
    assert "uvloop/loop." in maps, "uvloop is not loaded in the supervisor"


def test_max_requests_recycles_without_failures(services: Services, tmp_path: Path) -> None:
    service, port = start(
        services,
        app_dir(tmp_path),
        "--workers",
        "2",
        "--max-requests",
        "200",
        "--max-requests-jitter",
        "50",
    )
    old = set(service.wait_for_workers(2))
    with Load(port, keepalive=2, fresh=2) as load:
        load.wait_for_requests(2000)
    assert load.result.failed == 0, load.result.errors
    assert "served its quota; replacing it" in service.output()
    assert not (set(service.wait_for_workers(2)) & old)


def test_signal_storm_coalesces_reloads_and_stop_wins(services: Services, tmp_path: Path) -> None:
    service, _port = start(services, app_dir(tmp_path), "--workers", "2")
    workers = service.wait_for_workers(2)
    for _ in range(3):
        service.send(signal.SIGHUP)
        time.sleep(0.002)
    service.wait_for_log("reload complete", timeout=15)
    time.sleep(0.5)
    assert service.output().count("reloading 2 worker(s)") <= 2
    service.send(signal.SIGHUP)
    service.send(signal.SIGTERM)
    assert service.wait(timeout=15) == 0
    assert all(not alive(pid) for pid in workers + service.leftovers())


def test_degrade_keeps_survivors_serving(services: Services, tmp_path: Path) -> None:
    service, port = start(
        services,
        app_dir(tmp_path),
        "--workers",
        "2",
        "--max-restarts",
        "1",
        "--on-exhausted",
        "degrade",
    )
    service.wait_for_workers(2)
    get(port, "/crash")
    service.wait_for_log("restarting")
    service.wait_for_workers(2)
    time.sleep(2.1)  # past the young-death window: the next crash is not backed off
    get(port, "/crash")
    service.wait_for_log("(degraded)")
    assert len(service.wait_for_workers(1)) == 1
    assert get(port).text == "1"
    assert service.stop() == 0


@pytest.mark.parametrize("on_exhausted", ["exit", "degrade"])
def test_a_replacement_that_cannot_boot_leaves_the_survivors_serving(
    services: Services, tmp_path: Path, on_exhausted: str
) -> None:
    # A worker crashes while a dependency is down: its replacement cannot even
    # import the app. That is a crash like any other (backoff, the restart
    # budget), not a reason to stop the healthy worker; once the dependency is
    # back, a retry boots.
    flag = tmp_path / "database-down"
    port = free_port()
    service = services.squall(
        "tests.scripts.flaky_import:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--on-exhausted",
        on_exhausted,
        # One queue: with a socket per worker, a connection queued on the
        # failing slot's socket between its boot attempts is lost when the
        # slot closes (scale-down's problem too; see the README).
        "--shared-socket",
        env={"FLAKY_FLAG": str(flag)},
    )
    service.wait_for_port(port)
    service.wait_for_log("is ready", count=2)  # a failure before then stops the service
    first, second = service.wait_for_workers(2)
    flag.touch()
    os.kill(first, signal.SIGKILL)
    service.wait_for_log("failed to boot", timeout=15)
    service.wait_for_log("the database is down", timeout=5)
    for _ in range(20):  # the survivor answers everything meanwhile
        assert get(port).json()["pid"] == second
    assert service.proc.poll() is None
    assert re.search(r"worker \d \(pid \d+\) failed to boot .*, restarting", service.output())
    flag.unlink()
    wait_until(lambda: len(service.workers()) == 2 and first not in service.workers(), timeout=20)
    wait_until(lambda: len({get(port).json()["pid"] for _ in range(20)}) == 2, timeout=10)
    assert service.stop() == 0


def test_boot_timeout_stops_a_first_start_that_hangs(services: Services, tmp_path: Path) -> None:
    flag = tmp_path / "slow"
    flag.touch()
    port = free_port()
    service = services.squall(
        "tests.scripts.slow_import:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--boot-timeout",
        "1.5",
        env={"SLOW_FLAG": str(flag)},
    )
    assert service.wait(timeout=20) != 0
    assert "not ready within 1.5 s (--boot-timeout)" in service.output()
    assert "slow_import.py" in service.output()  # its stack, where it hangs


def test_boot_timeout_makes_a_hung_replacement_a_crash(services: Services, tmp_path: Path) -> None:
    flag = tmp_path / "slow"
    port = free_port()
    service = services.squall(
        "tests.scripts.slow_import:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--boot-timeout",
        "1.5",
        # One queue: with a socket per worker, what the kernel queues on the
        # hung worker's own socket waits for it (see the note in the README).
        "--shared-socket",
        env={"SLOW_FLAG": str(flag)},
    )
    service.wait_for_port(port)
    service.wait_for_log("is ready", count=2)
    first, second = service.wait_for_workers(2)
    flag.touch()
    os.kill(first, signal.SIGKILL)
    service.wait_for_log("not ready within 1.5 s", timeout=15)
    assert {get(port).json()["pid"] for _ in range(10)} == {second}
    flag.unlink()
    wait_until(lambda: len({get(port).json()["pid"] for _ in range(20)}) == 2, timeout=20)
    assert service.stop() == 0


WITHOUT_BPF_CAPABILITY = ["setpriv", "--bounding-set", "-bpf,-sys_admin"]
SCALE_DOWN_MODES = {
    "steered": ([], []),
    "without CAP_BPF": (WITHOUT_BPF_CAPABILITY, []),
    "no-steering": ([], ["--no-steering"]),
}


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
@pytest.mark.parametrize("mode", SCALE_DOWN_MODES)
def test_scale_down_serves_what_waits_for_the_retiring_worker(
    services: Services, tmp_path: Path, mode: str
) -> None:
    # A busy worker (stopped here) has connections waiting in its socket's
    # queue when the service scales down. Closing the socket then resets
    # them, unless the kernel moves them (eBPF select-or-migrate, or
    # net.ipv4.tcp_migrate_req); the retiring worker must take them first.
    prefix, args = SCALE_DOWN_MODES[mode]
    directory = app_dir(tmp_path)
    port = free_port()
    service = services.start(
        [
            *prefix,
            sys.executable,
            "-m",
            "squall",
            "supervised_app:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "3",
            *args,
        ],
        cwd=directory,
    )
    service.wait_for_port(port)
    service.wait_for_log("is ready", count=3)
    retiring = pid_of_task(port, 2)
    body = b"x" * 100
    request = b"POST / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 100\r\n\r\n"
    clients: list[socket.socket] = []
    os.kill(retiring, signal.SIGSTOP)
    try:
        for _ in range(30):  # about a third wait for the stopped worker
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(request + body)
            clients.append(client)
        service.send(signal.SIGTTOU)
        service.wait_for_log("to 2 worker(s)")
        time.sleep(0.3)
    finally:
        os.kill(retiring, signal.SIGCONT)
    answers: Counter[str] = Counter()
    for client in clients:
        with client:
            data = b""
            try:
                while chunk := client.recv(65536):
                    data += chunk
            except ConnectionResetError:
                answers["reset"] += 1
                continue
            answers[
                "200" if data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"1") else "bad"
            ] += 1
    service.wait_for_workers(2)
    assert answers == {"200": 30}, answers


def test_a_worker_over_max_worker_memory_is_replaced_gracefully(
    services: Services, tmp_path: Path
) -> None:
    metrics_port = free_port()
    service, port = start(
        services,
        app_dir(tmp_path),
        *("--workers", "2", "--max-worker-memory", "150"),
        *("--metrics", f"127.0.0.1:{metrics_port}"),
    )
    workers = set(service.wait_for_workers(2))
    with Load(port, keepalive=2, fresh=2) as load:
        load.wait_for_requests(200)
        leaker = get(port, "/leak?mb=200", timeout=10).json()["pid"]  # one worker only
        service.wait_for_log("over --max-worker-memory; replacing it")
        wait_until(lambda: not alive(leaker), timeout=15)
        load.wait_for_requests(load.result.total + 200)
    assert load.result.failed == 0, load.result.errors
    now = set(service.wait_for_workers(2))
    assert now - workers and leaker not in now and (workers - {leaker}) <= now  # only the leaker
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'squall_worker_restarts_total{cause="memory"} 1' in metrics


def test_a_supervisor_out_of_descriptors_retries_a_worker_and_lives(
    services: Services, tmp_path: Path
) -> None:
    # A supervisor with 24 descriptors, most of them taken by idle control
    # clients when a worker dies: the pipe for its replacement cannot be made.
    # The supervisor says so, serves on with the other worker, and starts the
    # replacement once descriptors free.
    directory = app_dir(tmp_path)
    control = tmp_path / "control.sock"
    port = free_port()
    service = services.start(
        [
            *with_descriptor_limit(24),
            "-m",
            "squall",
            "supervised_app:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--shared-socket",
            "--control",
            str(control),
        ],
        cwd=directory,
    )
    service.wait_for_port(port)
    service.wait_for_log("is ready", count=2)
    clients: list[socket.socket] = []
    try:
        for _ in range(30):  # until the supervisor cannot take one more
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(control))
            clients.append(client)
        time.sleep(0.5)
        victim = pid_of_task(port, 1)
        os.kill(victim, signal.SIGKILL)
        service.wait_for_log("cannot start worker 1", timeout=10)
        assert alive(service.pid)
        assert get(port, "/pid").json()["task_id"] == 0  # the other one serves
    finally:
        for client in clients:
            client.close()
    service.wait_for_log("worker 1 started", count=2, timeout=20)  # started again, later
    wait_until(lambda: len(service.workers()) == 2, timeout=20)
