"""The seed's system, end to end: real processes, real sockets, real clients."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from squall import cpu_count
from tests.service import ROOT, Service, Services, alive, free_port, wait_until

SCRIPTS = Path(__file__).parent / "scripts"


def get_json(port: int, path: str = "/", host: str = "127.0.0.1") -> dict:
    """One request on a new connection."""
    response = httpx.get(f"http://{host}:{port}{path}", timeout=5)
    response.raise_for_status()
    return response.json()


def pids_by_task(port: int, want: int, tries: int = 400) -> dict[int, int]:
    """Ask on new connections until `want` distinct task ids have answered."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        info = get_json(port)
        seen[info["task_id"]] = info["pid"]
        if len(seen) >= want:
            break
    return seen


def exit_worker(port: int, code: int) -> dict:
    """Tell whichever worker answers to exit with `code` after answering."""
    return get_json(port, f"/?exit={code}")


def started_pids(service: Service) -> list[int]:
    return [int(pid) for pid in re.findall(r"started \(pid (\d+)\)", service.output())]


def test_seed_scenario(services: Services, tmp_path: Path) -> None:
    port = free_port()
    report = tmp_path / "parent.json"
    service = services.python(SCRIPTS / "seed_scenario.py", str(port), str(report))
    service.wait_for_port(port)
    service.wait_for_log("worker 2 (pid", timeout=10)
    assert "exited normally" in service.output()  # child 2 exited 0 and was not restarted
    first = pids_by_task(port, 2)
    assert set(first) == {0, 1}

    # A child that exits with status 2, then 3, is restarted with the same task id.
    for code, count in ((2, 1), (3, 2)):
        dead = exit_worker(port, code)
        service.wait_for_log("restarting", count=count)
        assert f"exited with status {code}, restarting" in service.output()
        wait_until(lambda d=dead: not alive(d["pid"]), timeout=5)
        again = pids_by_task(port, 2)
        assert set(again) == {0, 1}
        assert again[dead["task_id"]] != dead["pid"]  # new pid, same task id

    # Children told to exit 0 are not restarted; the parent then exits 0.
    exit_worker(port, 0)
    wait_until(lambda: service.output().count("exited normally") >= 2, timeout=5)
    exit_worker(port, 0)
    assert service.wait(timeout=10) == 0
    assert json.loads(report.read_text()) == {"task_id": None, "exit": 0}
    assert service.output().count("started (pid") == 5  # 3 at start + 2 restarts
    assert all(not alive(pid) for pid in started_pids(service))


def test_too_many_restarts_stops_everything(services: Services) -> None:
    service = services.python(SCRIPTS / "crash_loop.py", "3")
    status = service.wait(timeout=15)
    assert status != 0
    output = service.output()
    assert "too many worker restarts (more than 3)" in output
    assert output.count("exited with status 1, restarting") == 3
    assert all(not alive(pid) for pid in started_pids(service))


def test_sigkilled_worker_is_replaced_fast(services: Services) -> None:
    port = free_port()
    service = services.squall(
        "tests.scripts.asgi_basic:app", "--bind", f"127.0.0.1:{port}", "--workers", "1"
    )
    service.wait_for_port(port)
    (old,) = service.wait_for_workers(1)
    assert get_json(port)["pid"] == old

    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    deadline = killed_at + 5
    while True:  # poll as fast as a client can until the new worker answers
        try:
            pid = get_json(port)["pid"]
            if pid != old:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "worker was not replaced within 5 s"
    elapsed_ms = (time.monotonic() - killed_at) * 1000
    print(f"killed worker serving again after {elapsed_ms:.1f} ms")
    assert "killed by signal 9 (SIGKILL), restarting" in service.output()
    assert service.workers() == [pid]


def test_start_zero_forks_cpu_count_workers(services: Services) -> None:
    port, second = free_port(), free_port()
    service = services.python(SCRIPTS / "start_n.py", str(port), str(second), "0")
    service.wait_for_port(port)
    workers = service.wait_for_workers(cpu_count())
    assert len(workers) == cpu_count()
    info = get_json(second)  # the second bind() serves too
    assert info["env"] == str(info["task_id"])  # SQUALL_WORKER_ID matches task_id()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to restrict to 1")
def test_start_zero_honours_cpu_affinity(services: Services) -> None:
    port = free_port()
    service = services.python(SCRIPTS / "start_n.py", str(port), str(free_port()), "0", "0")
    service.wait_for_port(port)
    time.sleep(0.3)  # give a wrongly forked second worker the time to show up
    assert len(service.wait_for_workers(1)) == 1


def test_start_one_serves_in_process_with_no_task_id(services: Services) -> None:
    port = free_port()
    service = services.python(SCRIPTS / "start_n.py", str(port), str(free_port()), "1")
    service.wait_for_port(port)
    info = get_json(port)
    assert info["pid"] == service.pid
    assert info["task_id"] is None
    assert service.workers() == []


@pytest.mark.parametrize("listing", ["seed_listen.py", "seed_start.py", "seed_fork.py"])
def test_seed_listings_run_unchanged(services: Services, tmp_path: Path, listing: str) -> None:
    # The listings hard-code the seed's port 8888; serve them on a free port instead.
    port = free_port()
    source = (ROOT / "examples" / listing).read_text()
    assert "8888" in source
    script = tmp_path / listing
    script.write_text(source.replace("8888", str(port)))
    service = services.python(script)
    service.wait_for_port(port)
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "Hello, world"
    expected = 0 if listing == "seed_listen.py" else 2
    assert len(service.wait_for_workers(expected)) == expected
    workers = service.workers()
    assert service.stop() == 0
    assert all(not alive(pid) for pid in workers)


def test_dual_stack_bind_serves_ipv4_and_ipv6(services: Services) -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("this host has no IPv6 loopback")
    port = free_port()
    service = services.python(SCRIPTS / "dual_stack.py", str(port))
    service.wait_for_port(port)
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "127.0.0.1"
    assert httpx.get(f"http://[::1]:{port}/", timeout=5).text == "::1"


def test_fork_refused_under_running_loop(services: Services) -> None:
    service = services.python(SCRIPTS / "fork_unsafe.py", "loop")
    assert service.wait() == 0
    assert "refused: fork_processes() was called with an event loop running" in service.output()


def test_fork_warns_about_live_threads(services: Services) -> None:
    service = services.python(SCRIPTS / "fork_unsafe.py", "thread")
    assert service.wait() == 0
    assert "warned: forking with 1 other thread(s) alive (lingering)" in service.output()
