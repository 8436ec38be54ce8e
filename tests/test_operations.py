"""Operating a service: log files reopened on SIGUSR1, --config files and hooks, bad settings.

Real supervisor and workers, real sockets on 127.0.0.1, real HTTP clients.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service import ROOT, Service, Services, free_port, wait_until
from tests.test_supervision import app_dir, get

OPS_APP = "tests.scripts.ops_app:app"


def start(
    services: Services,
    app: str,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[Service, int]:
    port = free_port()
    service = services.squall(app, "--bind", f"127.0.0.1:{port}", *args, cwd=cwd, env=env)
    service.wait_for_port(port)
    return service, port


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


# -- SIGUSR1: reopen the log file --------------------------------------------------------

SERVING = "DEBUG squall.server: serving on"  # a worker's last line before it is ready
APP_LINE = re.compile(r"\[(\d+)\] \[worker (\d+)\] WARNING squall\.test: ops-app says (\S+)")


def app_lines(text: str) -> list[tuple[int, int, str]]:
    """(pid, task id, message) of each line the app wrote."""
    return [(int(pid), int(task), msg) for pid, task, msg in APP_LINE.findall(text)]


def test_usr1_reopens_the_log_file_in_the_supervisor_and_every_worker(
    services: Services, tmp_path: Path
) -> None:
    log = tmp_path / "squall.log"
    rotated = tmp_path / "squall.log.1"
    service, port = start(
        services, OPS_APP, "--workers", "2", "--log-file", str(log), "--log-level", "debug"
    )
    workers = service.wait_for_workers(2)
    # Signal the workers only once they serve.
    wait_until(lambda: read(log).count(SERVING) == 2, timeout=15)
    get(port, "/log?msg=before")
    wait_until(lambda: "ops-app says before" in read(log), timeout=5)
    assert "started (pid" in read(log)
    assert service.output() == ""  # everything went to the file

    os.rename(log, rotated)  # what logrotate does
    old_text = read(rotated)
    service.send(signal.SIGUSR1)
    wait_until(lambda: "log files reopened" in read(log), timeout=10)

    # Every worker writes its lines to the new file: ask until both have answered.
    tasks_seen: set[int] = set()
    for attempt in range(400):
        get(port, f"/log?msg=after-{attempt}")
        tasks_seen = {task for _, task, msg in app_lines(read(log)) if msg.startswith("after-")}
        if tasks_seen == {0, 1}:
            break
    assert tasks_seen == {0, 1}, read(log)
    assert {pid for pid, _, _ in app_lines(read(log))} == set(workers)

    # A supervisor line after the reopen goes to the new file too.
    service.send(signal.SIGTTIN)
    wait_until(lambda: "worker 2 started" in read(log), timeout=10)
    new_text = read(log)
    assert "scaling from 2 to 3 worker(s)" in new_text
    assert "[supervisor] INFO squall.supervisor: log files reopened" in new_text
    assert "ops-app says before" not in new_text and "started (pid" in new_text

    # The rotated file has the old lines, and nothing was written to it since.
    assert read(rotated) == old_text
    assert "ops-app says before" in old_text and old_text.count(SERVING) == 2
    assert "after-" not in old_text and "log files reopened" not in old_text
    assert service.stop() == 0
    assert "all workers have exited" in read(log)


def test_usr1_while_a_successor_boots_does_not_abort_the_reload(
    services: Services, tmp_path: Path
) -> None:
    log = tmp_path / "squall.log"
    service, port = start(
        services,
        OPS_APP,
        "--workers",
        "1",
        "--log-file",
        str(log),
        env={"OPS_APP_BOOT_DELAY": "1.5"},  # each worker takes 1.5 s to import the app
    )
    (old,) = service.wait_for_workers(1)
    assert get(port, "/pid", timeout=10).json()["pid"] == old
    service.send(signal.SIGHUP)
    wait_until(lambda: len(service.workers()) == 2, timeout=5)  # the successor is booting
    service.send(signal.SIGUSR1)  # logrotate's postrotate, at an unlucky moment
    wait_until(
        lambda: "reload complete" in read(log) or "could not take over" in read(log), timeout=15
    )
    assert "could not take over" not in read(log), read(log)
    assert get(port, "/pid").json()["pid"] != old


# -- --config: settings and hooks -------------------------------------------------------

HOOKS_CONF = """\
import os

HOOK_LOG = {hook_log!r}


def _note(*words):
    line = " ".join(str(word) for word in (*words, os.getpid())) + "\\n"
    fd = os.open(HOOK_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def on_starting():
    _note("on_starting")


def post_fork(task_id):
    _note("post_fork", task_id)


def worker_exit(task_id, status):
    _note("worker_exit", task_id, status)


def on_reload():
    _note("on_reload")


workers = 2
"""


def hook_calls(path: Path) -> list[tuple[str, ...]]:
    """Each hook call as (hook, *arguments, pid)."""
    return [tuple(line.split()) for line in read(path).splitlines()]


def calls_of(path: Path, hook: str) -> list[tuple[str, ...]]:
    return [call[1:] for call in hook_calls(path) if call[0] == hook]


def test_hooks_run_in_the_right_process_with_the_right_arguments(
    services: Services, tmp_path: Path
) -> None:
    hook_log = tmp_path / "hooks.log"
    conf = tmp_path / "conf.py"
    conf.write_text(HOOKS_CONF.format(hook_log=str(hook_log)))
    service, port = start(
        services,
        "supervised_app:app",
        "--config",
        str(conf),
        "--log-level",
        "debug",
        cwd=app_dir(tmp_path),
    )
    first = service.wait_for_workers(2)
    supervisor = str(service.pid)
    wait_until(lambda: len(calls_of(hook_log, "post_fork")) == 2, timeout=10)
    assert calls_of(hook_log, "on_starting") == [(supervisor,)]  # once, in the supervisor
    assert hook_calls(hook_log)[0] == ("on_starting", supervisor)  # before any fork
    task_of = {int(pid): int(task) for task, pid in calls_of(hook_log, "post_fork")}
    assert sorted(task_of.values()) == [0, 1]  # in each worker, with its task id
    assert set(task_of) == set(first)
    assert calls_of(hook_log, "worker_exit") == []

    # A crash: worker_exit runs in the supervisor with the task id and the wait status.
    get(port, "/crash")
    wait_until(lambda: len(calls_of(hook_log, "worker_exit")) == 1, timeout=10)
    wait_until(lambda: len(calls_of(hook_log, "post_fork")) == 3, timeout=10)
    (crashed_pid,) = set(first) - set(service.wait_for_workers(2))
    crashed_task = task_of[crashed_pid]
    (restarted_pid,) = set(service.workers()) - set(first)
    # Reload only once the restarted worker serves: SIGTERM kills a worker that still boots.
    service.wait_for_log(f"[{restarted_pid}] [worker {crashed_task}] {SERVING}")
    (exit_call,) = calls_of(hook_log, "worker_exit")
    assert exit_call == (str(crashed_task), str(1 << 8), supervisor)  # exit status 1
    assert calls_of(hook_log, "post_fork")[-1][0] == str(crashed_task)  # the restart
    assert calls_of(hook_log, "on_reload") == []

    # A reload: on_reload once, then each old worker's exit and each successor's fork.
    service.send(signal.SIGHUP)
    service.wait_for_log("reload complete", timeout=20)
    wait_until(lambda: len(calls_of(hook_log, "worker_exit")) == 3, timeout=10)
    assert calls_of(hook_log, "on_reload") == [(supervisor,)]
    reload_calls = hook_calls(hook_log)[hook_calls(hook_log).index(("on_reload", supervisor)) :]
    assert sorted(c[1] for c in reload_calls if c[0] == "post_fork") == ["0", "1"]
    exits = sorted(c[1:] for c in reload_calls if c[0] == "worker_exit")
    assert exits == [("0", "0", supervisor), ("1", "0", supervisor)]  # exited normally
    successors = {int(c[2]) for c in reload_calls if c[0] == "post_fork"}
    assert set(service.wait_for_workers(2)) == successors

    assert service.stop() == 0
    assert len(calls_of(hook_log, "worker_exit")) == 5
    assert calls_of(hook_log, "on_starting") == [(supervisor,)]


SETTINGS_CONF = """\
workers = 3
bind = "127.0.0.1:{port}"
"""


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, 3),  # the file's setting
        (["--workers", "1"], {}, 1),  # the command line overrides the file
        ([], {"SQUALL_WORKERS": "2"}, 2),  # so does the environment
        (["--workers", "1"], {"SQUALL_WORKERS": "2"}, 1),  # the command line wins
    ],
)
def test_config_file_settings_and_their_precedence(
    services: Services, tmp_path: Path, args: list[str], env: dict[str, str], expected: int
) -> None:
    port = free_port()
    conf = tmp_path / "conf.py"
    conf.write_text(SETTINGS_CONF.format(port=port))
    service = services.squall(OPS_APP, "--config", str(conf), *args, env=env)
    service.wait_for_port(port)  # bind from the file (a single address, as a string)
    service.wait_for_log(f"with {expected} worker(s)")
    assert len(service.wait_for_workers(expected)) == expected
    assert httpx.get(f"http://127.0.0.1:{port}/pid", timeout=5).status_code == 200


def test_config_file_from_the_environment(services: Services, tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "conf.py"
    conf.write_text(SETTINGS_CONF.format(port=port))
    service = services.squall(OPS_APP, env={"SQUALL_CONFIG": str(conf)})
    service.wait_for_port(port)
    service.wait_for_log("with 3 worker(s)")
    assert len(service.wait_for_workers(3)) == 3


# -- bad values: one clear line, exit status 2 -------------------------------------------


def run_squall(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squall", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "conf", "message"),
    [
        (["--timeout", "-1"], {}, None, "--timeout must be 0 (off) or more, not -1.0"),
        (["--max-requests", "-5"], {}, None, "--max-requests must be 0 or more, not -5"),
        (
            ["--max-requests-jitter", "-1"],
            {},
            None,
            "--max-requests-jitter must be 0 or more, not -1",
        ),
        (["--reload-batch", "0"], {}, None, "--reload-batch must be 1 or more, not 0"),
        (
            ["--on-exhausted", "sometimes"],
            {},
            None,
            "argument --on-exhausted: invalid choice: 'sometimes'",
        ),
        (["--threads", "0"], {}, None, "--threads must be 1 or more, not 0"),
        (["--threads", "ten"], {}, None, "argument --threads: 'ten' is not a whole number"),
        (
            ["--config", "/no/such/file.py"],
            {},
            None,
            "--config file '/no/such/file.py' does not exist",
        ),
        (
            [],
            {"SQUALL_CONFIG": "/no/such/file.py"},
            None,
            "--config file '/no/such/file.py' does not exist",
        ),
        (
            [],
            {},
            "raise RuntimeError('no database settings')\n",
            "error in --config file {conf!r}: RuntimeError: no database settings",
        ),
        (
            [],
            {},
            "import sys\nsys.exit('not today')\n",
            "error in --config file {conf!r}: SystemExit: not today",
        ),
        ([], {}, "post_fork = 3\n", "hook post_fork must be a callable, not 3"),
        (
            [],
            {},
            "workers = 'three'\n",
            "workers in --config file {conf!r} must be a whole number, not 'three'",
        ),
        (
            [],
            {},
            "timeout = '30'\n",
            "timeout in --config file {conf!r} must be a number of seconds, not '30'",
        ),
        (
            [],
            {},
            "reuse_port = 'yes'\n",
            "reuse_port in --config file {conf!r} must be True or False, not 'yes'",
        ),
        ([], {}, "reload_batch = 0\n", "--reload-batch must be 1 or more, not 0"),
        ([], {"SQUALL_REUSE_PORT": "maybe"}, None, "invalid value 'maybe' for SQUALL_REUSE_PORT"),
        ([], {"SQUALL_TIMEOUT": "-1"}, None, "--timeout must be 0 (off) or more, not -1.0"),
        (
            [],
            {"SQUALL_ON_EXHAUSTED": "sometimes"},
            None,
            "--on-exhausted must be one of exit, degrade",
        ),
    ],
)
def test_bad_settings_give_one_clear_error(
    tmp_path: Path, args: list[str], env: dict[str, str], conf: str | None, message: str
) -> None:
    conf_path = tmp_path / "conf.py"
    if conf is not None:
        conf_path.write_text(conf)
        args = ["--config", str(conf_path), *args]
    result = run_squall("examples.demo:app", *args, env=env)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr  # one line, no traceback wall, nothing started
    assert lines[0].startswith("squall: error: ")
    assert message.format(conf=str(conf_path)) in lines[0]


BROKEN_HOOKS_CONF = """\
def _broken(name):
    def hook(*args):
        raise RuntimeError(f"hook {name} broke")

    return hook


on_starting = _broken("on_starting")
when_ready = _broken("when_ready")
worker_exit = _broken("worker_exit")
on_reload = _broken("on_reload")
worker_abort = _broken("worker_abort")
on_exit = _broken("on_exit")
workers = 2
timeout = 1
"""


def test_a_hook_that_raises_never_takes_the_supervisor_down(
    services: Services, tmp_path: Path
) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text(BROKEN_HOOKS_CONF)
    service, port = start(
        services, "supervised_app:app", "--config", str(conf), cwd=app_dir(tmp_path)
    )
    service.wait_for_log("is ready", count=2)
    service.wait_for_log("RuntimeError: hook when_ready broke")
    first = service.wait_for_workers(2)

    get(port, "/crash")  # worker_exit raises
    wait_until(lambda: len(set(service.workers()) - set(first)) == 1, timeout=10)
    service.send(signal.SIGHUP)  # on_reload raises
    service.wait_for_log("reload complete", timeout=20)
    with pytest.raises(httpx.HTTPError):
        get(port, "/block", timeout=4)  # the watchdog: worker_abort raises
    service.wait_for_log("in block_the_loop", timeout=10)  # the stacks were still dumped
    wait_until(lambda: get(port).status_code == 200, timeout=10)
    assert service.stop() == 0  # on_exit raises, and the exit is still clean

    output = service.output()
    for hook in (
        "on_starting",
        "when_ready",
        "worker_exit",
        "on_reload",
        "worker_abort",
        "on_exit",
    ):
        assert f"the {hook} hook raised; the supervisor carries on" in output, hook
        assert f"RuntimeError: hook {hook} broke" in output, hook
    assert "Traceback (most recent call last)" in output


def test_a_post_fork_that_raises_is_a_boot_error_not_a_restart_loop(
    services: Services, tmp_path: Path
) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text("def post_fork(task_id):\n    raise ValueError('no connection pool')\n")
    port = free_port()
    service = services.squall(
        "supervised_app:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--config",
        str(conf),
        cwd=app_dir(tmp_path),
    )
    assert service.wait(timeout=20) != 0
    output = service.output()
    assert "the post_fork hook raised ValueError('no connection pool')" in output
    assert output.count("started (pid") == 1  # no restart loop


def test_preload_warns_of_a_thread_started_at_import(services: Services) -> None:
    service, port = start(services, "tests.scripts.thread_at_import:app", "--preload")
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "hello"
    assert "forking with 1 other thread(s) alive (cache-refresher)" in service.output()
    assert service.stop() == 0


def test_sigterm_during_a_preload_import_exits_cleanly(services: Services, tmp_path: Path) -> None:
    flag = tmp_path / "slow"
    flag.touch()
    service = services.squall(
        "tests.scripts.slow_import:app",
        "--preload",
        "--bind",
        f"127.0.0.1:{free_port()}",
        env={"SLOW_FLAG": str(flag)},
    )
    wait_until((tmp_path / "slow.importing").exists, timeout=10)  # inside the import
    service.send(signal.SIGTERM)
    assert service.wait(timeout=10) == 0
    output = service.output()
    assert "stopped by SIGTERM while importing the app (--preload)" in output
    assert "Traceback" not in output
