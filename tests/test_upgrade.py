"""Hot upgrade: `squall ctl upgrade` and SIGUSR2 re-exec the supervisor on the same sockets.

Real supervisors, workers and clients. A new supervisor is a child of the
old one until that one exits; the test learns each new pid from the control
socket and stops the last one by its pid.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from squall import handover
from squall.errors import SquallError
from tests.load import Load
from tests.service import Service, Services, alive, free_port, wait_until

MODES = {"steered (default)": [], "shared": ["--shared-socket"]}


def ctl(control: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squall", "ctl", "--socket", str(control), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def supervisor_pid(control: Path) -> int:
    reply = ctl(control, "--json", "status", timeout=10)
    return int(json.loads(reply.stdout)["pid"])


class Upgrades:
    """The supervisors a test started, the first one and its successors, stopped by pid."""

    def __init__(self) -> None:
        self.pids: list[int] = []

    def stop(self) -> None:
        for pid in reversed(self.pids):
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
        for pid in self.pids:
            try:
                wait_until(lambda pid=pid: not alive(pid), timeout=15)
            except AssertionError:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def upgrades() -> Iterator[Upgrades]:
    made = Upgrades()
    yield made
    made.stop()


def start(
    services: Services, tmp_path: Path, app: str, *args: str, env: dict[str, str] | None = None
) -> tuple[Service, int, Path]:
    port = free_port()
    control = tmp_path / "control.sock"
    service = services.squall(
        app,
        *("--bind", f"127.0.0.1:{port}", "--workers", "2", "--control", str(control), *args),
        env=env,
    )
    service.wait_for_port(port)
    service.wait_for_log("is ready", count=2)
    return service, port, control


@pytest.mark.parametrize("mode", MODES)
def test_upgrades_under_load_lose_nothing(
    services: Services, tmp_path: Path, upgrades: Upgrades, mode: str
) -> None:
    service, port, control = start(services, tmp_path, "tests.scripts.supervised:app", *MODES[mode])
    upgrades.pids.append(service.pid)
    with Load(port, keepalive=3, fresh=3, method="POST", retry=False) as load:
        load.wait_for_requests(300)
        for how in ("ctl", "SIGUSR2", "ctl"):
            old = upgrades.pids[-1]
            if how == "ctl":
                done = ctl(control, "upgrade")
                assert done.returncode == 0, done.stderr
                assert f"upgraded: supervisor pid {old} -> " in done.stdout
            else:
                os.kill(old, signal.SIGUSR2)
                wait_until(lambda old=old: supervisor_pid(control) != old, timeout=30)
            new = supervisor_pid(control)
            assert new != old
            upgrades.pids.append(new)
            wait_until(lambda old=old: not alive(old), timeout=30)  # drained and gone
            load.wait_for_requests(load.result.total + 300)
    result = load.result
    assert result.failed == 0 and result.resets == 0, result.errors
    # The last supervisor runs the service as the first did: scaling works.
    os.kill(upgrades.pids[-1], signal.SIGTTIN)
    answered: set[int] = set()
    wait_until(
        lambda: (
            answered.add(httpx.get(f"http://127.0.0.1:{port}/pid").json()["task_id"])
            or answered == {0, 1, 2}
        ),
        timeout=20,
    )
    if mode.startswith("steered") and "least-loaded worker (eBPF)" in service.output():
        assert "go at random" not in service.output()  # the program and maps came along


def test_a_new_supervisor_that_cannot_start_leaves_the_old_one_serving(
    services: Services, tmp_path: Path, upgrades: Upgrades
) -> None:
    flag = tmp_path / "down"
    service, port, control = start(
        services, tmp_path, "tests.scripts.flaky_import:app", env={"FLAKY_FLAG": str(flag)}
    )
    upgrades.pids.append(service.pid)
    workers = sorted(service.workers())
    flag.touch()  # the new supervisor's workers cannot import the app
    failed = ctl(control, "upgrade")
    assert failed.returncode == 1
    assert "upgrade failed" in failed.stderr and "the database is down" in service.output()
    assert supervisor_pid(control) == service.pid  # the control socket is still the old one's
    assert sorted(service.workers()) == workers
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    assert f"this one (pid {service.pid}) serves on" in service.output()
    flag.unlink()  # the database is back: the next upgrade goes through
    done = ctl(control, "upgrade")
    assert done.returncode == 0, done.stderr
    upgrades.pids.append(supervisor_pid(control))
    assert upgrades.pids[-1] != service.pid
    assert service.wait(timeout=30) == 0  # the old one drained and exited cleanly


def test_a_stop_during_an_upgrade_stops_the_new_supervisor_too(
    services: Services, tmp_path: Path, upgrades: Upgrades
) -> None:
    flag = tmp_path / "slow"
    service, _port, _control = start(
        services, tmp_path, "tests.scripts.slow_import:app", env={"SLOW_FLAG": str(flag)}
    )
    upgrades.pids.append(service.pid)
    flag.touch()  # the new supervisor's workers hang in the import
    service.send(signal.SIGUSR2)
    wait_until(lambda: Path(f"{flag}.importing").exists(), timeout=15)
    started = re.search(r"new supervisor started \(pid (\d+)\)", service.output())
    assert started is not None, service.output()
    successor = int(started.group(1))
    upgrades.pids.append(successor)
    service.send(signal.SIGTERM)
    assert service.wait(timeout=20) == 0
    wait_until(lambda: not alive(successor), timeout=20)
    assert "upgrade abandoned: stopping the new supervisor" in service.output()


def test_a_handover_in_another_format_is_refused_and_the_old_one_told() -> None:
    read_end, write_end = os.pipe()
    environ = {
        handover.ENV: json.dumps(
            {"format": 99, "from": os.getppid(), "report": write_end, "parts": {}}
        )
    }
    try:
        with pytest.raises(SquallError, match="handover format 99, this squall reads 1"):
            handover.inherited(environ)
        assert handover.ENV not in environ  # consumed
        told = os.read(read_end, 4096).decode()
        assert told.startswith("failed cannot take over: handover format 99"), told
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_handover_for_another_parent_is_ignored() -> None:
    read_end, write_end = os.pipe()
    environ = {handover.ENV: json.dumps({"format": 1, "from": 1, "report": write_end, "parts": {}})}
    assert handover.inherited(environ) is None
    assert os.read(read_end, 10) == b""  # its report end was closed, nothing said
    os.close(read_end)
    environ = {handover.ENV: "not json"}
    assert handover.inherited(environ) is None
