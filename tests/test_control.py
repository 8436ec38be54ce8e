"""`squall ctl` and `--control PATH`: status, reload, scale, restart-worker, stop; bad input; uids.

Real supervisor and workers, a real unix control socket, and `squall ctl` run
as its own process, as an operator would.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from squall.control import ctl_main
from tests.service import ROOT, Service, Services, alive, free_port, wait_until

OPS_APP = "tests.scripts.ops_app:app"
DASH = "—"


def start(services: Services, control: Path, workers: int = 2, *extra: str) -> tuple[Service, int]:
    port = free_port()
    service = services.squall(
        OPS_APP,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--control",
        str(control),
        *extra,
    )
    service.wait_for_port(port)
    service.wait_for_log("is ready", count=workers)
    return service, port


def ctl(
    control: Path | str | None,
    *args: str,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    socket_args = ["--socket", str(control)] if control is not None else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "squall", "ctl", *socket_args, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def status(control: Path) -> dict[str, Any]:
    result = ctl(control, "--json", "status")
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


def ready_workers(control: Path) -> dict[int, int]:
    """task id -> pid, once every worker listed is ready (else {})."""
    workers = status(control)["workers"]
    if any(w["state"] != "ready" for w in workers):
        return {}
    return {w["task_id"]: w["pid"] for w in workers}


def converse(control: Path, *chunks: bytes, pause: float = 0.0) -> list[dict[str, Any]]:
    """Send raw bytes (in chunks), half-close, and read every reply line until EOF."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(control))
        for chunk in chunks:
            sock.sendall(chunk)
            time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while data := sock.recv(65536):
            received += data
    return [json.loads(line) for line in received.splitlines()]


def test_status_shows_a_row_per_worker_on_an_owner_only_socket(
    services: Services, tmp_path: Path
) -> None:
    control = tmp_path / "ctl.sock"
    service, port = start(services, control)
    pids = set(service.wait_for_workers(2))

    st = os.stat(control)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()

    # The socket may also come from SQUALL_CONTROL instead of --socket.
    result = ctl(None, "status", env={**os.environ, "SQUALL_CONTROL": str(control)})
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"supervisor pid {service.pid}, up ")
    assert lines[1].split() == ["WORKER", "PID", "STATE", "UPTIME", "REQUESTS", "RSS", "RESTARTS"]
    rows = [line.split() for line in lines[2:-1]]
    assert {int(row[1]) for row in rows} == pids
    assert sorted(int(row[0]) for row in rows) == [0, 1]
    for row in rows:
        # task, pid, state, uptime, requests, rss (N.N MiB), restarts
        assert row[2] == "ready"
        assert row[3].endswith("s")
        assert row[4] == DASH  # no --metrics: no request counts
        assert row[6] == "MiB" and float(row[5]) > 1
        assert row[7] == "0"
    assert lines[-1] == "2 worker(s) wanted, 2 ready; degraded: no; restarts: 0"

    reply = status(control)
    assert reply["ok"] is True and reply["pid"] == service.pid
    assert reply["metrics"] is False
    assert httpx.get(f"http://127.0.0.1:{port}/pid", timeout=5).status_code == 200


def test_status_counts_requests_when_metrics_are_on(services: Services, tmp_path: Path) -> None:
    control = tmp_path / "ctl.sock"
    _, port = start(services, control, 2, "--metrics", f"127.0.0.1:{free_port()}")
    for _ in range(10):
        assert httpx.get(f"http://127.0.0.1:{port}/pid", timeout=5).status_code == 200

    def counted() -> int:
        return sum(w["requests"] or 0 for w in status(control)["workers"])

    wait_until(lambda: counted() == 10, timeout=10)
    assert status(control)["metrics"] is True
    table = ctl(control, "status").stdout.splitlines()
    assert sum(int(line.split()[4]) for line in table[2:-1]) == 10


def test_reload_replaces_every_worker(services: Services, tmp_path: Path) -> None:
    control = tmp_path / "ctl.sock"
    service, port = start(services, control)
    old = set(ready_workers(control).values())
    assert len(old) == 2

    result = ctl(control, "reload")
    assert result.returncode == 0, result.stderr
    assert "reloading 2 worker(s)" in result.stdout
    service.wait_for_log("reload complete", timeout=20)
    wait_until(lambda: len(set(ready_workers(control).values()) - old) == 2, timeout=10)
    new = set(service.wait_for_workers(2))
    assert not (new & old)
    summary = ctl(control, "status").stdout.splitlines()[-1]
    assert "restarts: 2 (reload 2)" in summary
    assert httpx.get(f"http://127.0.0.1:{port}/pid", timeout=5).json()["pid"] in new


def test_scale_up_then_down(services: Services, tmp_path: Path) -> None:
    control = tmp_path / "ctl.sock"
    service, _ = start(services, control)

    result = ctl(control, "scale", "3")
    assert result.returncode == 0, result.stderr
    assert "scaling from 2 to 3 worker(s)" in result.stdout
    wait_until(lambda: sorted(ready_workers(control)) == [0, 1, 2], timeout=15)
    service.wait_for_workers(3)

    result = ctl(control, "scale", "1")
    assert result.returncode == 0, result.stderr
    service.wait_for_workers(1)
    wait_until(lambda: sorted(ready_workers(control)) == [0], timeout=15)
    assert status(control)["workers_wanted"] == 1


def test_restart_worker_replaces_that_worker_only(services: Services, tmp_path: Path) -> None:
    control = tmp_path / "ctl.sock"
    service, _ = start(services, control)
    before = ready_workers(control)
    assert sorted(before) == [0, 1]

    result = ctl(control, "restart-worker", "0")
    assert result.returncode == 0, result.stderr
    assert "restarting worker 0" in result.stdout

    def replaced() -> bool:
        now = ready_workers(control)
        return sorted(now) == [0, 1] and now[0] != before[0]

    wait_until(replaced, timeout=15)
    after = ready_workers(control)
    assert after[1] == before[1]  # the other worker was left alone
    wait_until(lambda: not alive(before[0]), timeout=10)
    assert set(service.wait_for_workers(2)) == {after[0], before[1]}
    rows = {row["task_id"]: row for row in status(control)["workers"]}
    assert rows[0]["restarts"] == 1 and rows[1]["restarts"] == 0

    result = ctl(control, "restart-worker", "5")
    assert result.returncode == 1
    assert "no worker 5" in result.stderr


def test_stop_ends_the_service_and_removes_the_socket(services: Services, tmp_path: Path) -> None:
    control = tmp_path / "ctl.sock"
    service, _ = start(services, control)
    workers = service.wait_for_workers(2)

    result = ctl(control, "stop")
    assert result.returncode == 0, result.stderr
    assert "stopping gracefully" in result.stdout
    assert service.wait(timeout=20) == 0
    assert not control.exists()
    assert all(not alive(pid) for pid in workers)

    result = ctl(control, "status")
    assert result.returncode == 2
    assert f"squall ctl: cannot connect to {control}: " in result.stderr


def test_bad_requests_get_an_error_line_and_the_supervisor_lives_on(
    services: Services, tmp_path: Path
) -> None:
    control = tmp_path / "ctl.sock"
    service, _ = start(services, control)
    pids = set(service.wait_for_workers(2))

    replies = converse(
        control,
        b"this is not json\n",
        b'{"command": "frobnicate"}\n',
        b'{"command": "scale", "args": [0]}\n',
        b'{"command": "scale", "args": ["many"]}\n',
        b'{"command": "scale"}\n',
        b'{"command": "restart-worker", "args": [-1]}\n',
        b'{"command": "status", "args": "x"}\n',
        b"[1, 2, 3]\n",
        b"\xff\xfe\n",
        b"[" * 100_000 + b"\n",  # deeper than the JSON parser's recursion limit
    )
    assert [r["ok"] for r in replies] == [False] * 10, replies
    errors = [r["error"] for r in replies]
    assert errors[0].startswith("malformed request")
    assert errors[1].startswith("unknown command 'frobnicate'")
    assert errors[2] == "N must be at least 1, not 0"
    assert errors[3] == "N must be a whole number, not 'many'"
    assert errors[4] == "scale takes one argument, N"
    assert errors[5].startswith("no worker -1")
    assert errors[6] == 'malformed request: "args" must be a list'

    # A request split across reads is put together; two lines get two replies.
    replies = converse(control, b'{"command": "sta', b'tus"}\n{"command": "status"}\n', pause=0.2)
    assert [r["ok"] for r in replies] == [True, True]
    # Many lines at once: answered in turns, every one of them, in order.
    replies = converse(control, b'{"command": "status"}\n{"command": "nope"}\n' * 100)
    assert [r["ok"] for r in replies] == [True, False] * 100

    # A line past the cap: one error, then the connection is closed.
    replies = converse(control, b"x" * (70 * 1024))
    assert replies == [{"ok": False, "error": "request line longer than 65536 bytes"}]

    result = ctl(control, "scale", "0")
    assert result.returncode == 1
    assert result.stderr.strip() == "squall ctl: scale refused: N must be at least 1, not 0"

    assert set(ready_workers(control).values()) == pids  # nothing changed, all is well
    assert service.proc.poll() is None
    assert "Traceback" not in service.output()


def test_an_idle_client_does_not_block_the_others(services: Services, tmp_path: Path) -> None:
    control = tmp_path / "ctl.sock"
    start(services, control, 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(control))
        idle.sendall(b'{"command": "sta')  # and then nothing
        started = time.monotonic()
        assert status(control)["workers_wanted"] == 1
        assert time.monotonic() - started < 5


def test_a_reader_that_leaves_early_gets_no_traceback(services: Services, tmp_path: Path) -> None:
    """`squall ctl status | head -1`: the pipe closes before the table is written."""
    control = tmp_path / "control.sock"
    start(services, control)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the client has even connected
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "squall", "ctl", "--socket", str(control), "status"],
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.decode()
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_usage_errors_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SQUALL_CONTROL"}
    result = ctl(None, "status", env=env)
    assert result.returncode == 2
    assert "squall ctl: no control socket: give --socket PATH or set SQUALL_CONTROL" in (
        result.stderr
    )

    result = ctl("/nonexistent/squall.sock", "status")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "squall ctl: cannot connect to /nonexistent/squall.sock: No such file or directory"
    )

    for args in (["frobnicate"], [], ["scale"], ["scale", "many"], ["restart-worker"]):
        result = ctl("/nonexistent/squall.sock", *args)
        assert result.returncode == 2, args
        assert "usage: squall ctl" in result.stderr


def test_a_stale_socket_is_replaced_and_anything_else_is_refused(
    services: Services, tmp_path: Path
) -> None:
    control = tmp_path / "ctl.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(control))  # a crashed service's file: nobody listens on it
    stale.close()
    assert control.exists()
    service, _ = start(services, control, 1)
    assert status(control)["pid"] == service.pid

    # A second service on the same path must not steal the live socket.
    other = services.squall(
        OPS_APP, "--bind", f"127.0.0.1:{free_port()}", "--control", str(control)
    )
    assert other.wait(timeout=15) == 1
    assert "another process answers on it" in other.output()
    assert status(control)["pid"] == service.pid

    # Somebody's file is never removed.
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    refused = services.squall(
        OPS_APP, "--bind", f"127.0.0.1:{free_port()}", "--control", str(precious)
    )
    assert refused.wait(timeout=15) == 1
    assert "is not a socket; refusing to replace it" in refused.output()
    assert precious.read_text() == "keep me"


# -- another uid ----------------------------------------------------------------------

NOBODY = 65534


def ctl_as_nobody(control: Path, *args: str) -> tuple[int, str, str]:
    """`squall ctl` run as uid/gid 65534: (exit status, stdout, stderr).

    A forked copy of this process drops to nobody and runs the real `ctl_main`:
    exec'ing a fresh interpreter as nobody could fail for reasons of its own
    (the interpreter and its packages may live under root's 0700 home).
    """
    if os.geteuid() != 0:
        pytest.skip("running a client as another uid needs root")
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns about fork() beside threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read_fd)
            out, err = io.StringIO(), io.StringIO()
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = ctl_main(["--socket", str(control), "--timeout", "10", *args])
            os.write(write_fd, json.dumps([code, out.getvalue(), err.getvalue()]).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        received = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_fd], [], [], 0.1)
            if ready:
                chunk = os.read(read_fd, 65536)
                if not chunk:
                    break
                received += chunk
    finally:
        os.close(read_fd)
        if os.waitpid(pid, os.WNOHANG) == (0, 0):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert received, "the client run as nobody said nothing"
    code, out, err = json.loads(received)
    return int(code), str(out), str(err)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anybody may traverse (pytest's tmp_path is the owner's alone)."""
    directory = Path(tempfile.mkdtemp(prefix="squall-ctl-"))
    directory.chmod(0o711)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_another_uid_cannot_connect(services: Services, open_dir: Path) -> None:
    control = open_dir / "ctl.sock"
    service, _ = start(services, control, 1)
    code, out, err = ctl_as_nobody(control, "status")
    assert code == 2, out + err
    assert err.strip() == f"squall ctl: cannot connect to {control}: Permission denied"
    assert service.proc.poll() is None


def test_another_uid_is_refused_even_if_the_mode_lets_it_in(
    services: Services, open_dir: Path
) -> None:
    """Defence in depth: with the mode opened by mistake, SO_PEERCRED still turns it away."""
    control = open_dir / "ctl.sock"
    service, _ = start(services, control, 1)
    control.chmod(0o666)
    code, out, err = ctl_as_nobody(control, "stop")
    assert code == 1, out + err
    assert f"permission denied: uid {NOBODY} is neither the socket's owner" in err
    service.wait_for_log(f"refused a client of uid {NOBODY}")
    assert service.proc.poll() is None  # the stop was not carried out
    assert status(control)["stopping"] is False
