"""`--reload`: a change to a source file reloads the workers; broken code keeps the old ones.

A real supervisor, real workers and the real watchfiles watcher process, in
a temporary copy of the supervised app that the test rewrites.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx

from tests.service import Service, Services, alive, descendants_of, free_port, wait_until
from tests.test_supervision import app_dir, get, set_version

STARTED = "started (pid"


def watcher_pid(service: Service) -> int | None:
    for pid in descendants_of(service.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"squall.watch" in command:
            return pid
    return None


def watching(pid: int) -> bool:
    """True once the process has an inotify instance with at least one watch added."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            if "inotify wd:" in Path(f"/proc/{pid}/fdinfo/{fd}").read_text():
                return True
        except OSError:
            continue
    return False


def answers(port: int, expected: str) -> bool:
    try:
        return get(port, timeout=2).text == expected
    except httpx.HTTPError:
        return False


def test_reload_follows_edits_survives_a_syntax_error_and_stops_clean(
    services: Services, tmp_path: Path
) -> None:
    directory = app_dir(tmp_path)
    port = free_port()
    service = services.squall(
        "supervised_app:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--reload",
        cwd=directory,
    )
    service.wait_for_port(port)
    seen: set[int] = set()

    def record() -> list[int]:
        pids = descendants_of(service.pid)
        seen.update(pids)
        return pids

    wait_until(lambda: watcher_pid(service) is not None, timeout=10)
    watcher = watcher_pid(service)
    assert watcher is not None
    wait_until(lambda: watching(watcher), timeout=10)  # a change from now on is seen

    def workers() -> set[int]:
        return {pid for pid in record() if pid != watcher and alive(pid)}

    wait_until(lambda: len(workers()) == 2, timeout=15)
    assert get(port).text == "1"
    assert service.output().count(STARTED) == 2

    # An edit: the workers are replaced and serve the new code.
    set_version(directory, "2")
    wait_until(lambda: answers(port, "2"), timeout=20)
    service.wait_for_log("reload complete", timeout=15)
    output = service.output()
    assert output.count("changed: supervised_app.py; reloading") == 1  # once per change
    assert output.count("reloading 2 worker(s)") == 1
    wait_until(lambda: len(workers()) == 2, timeout=15)
    serving = workers()
    assert {get(port).text for _ in range(10)} == {"2"}
    starts_after_edit = service.output().count(STARTED)
    assert starts_after_edit == 4  # two at start, two successors

    # A syntax error: one successor tries, fails once, and the old workers keep serving.
    (directory / "supervised_app.py").write_text('VERSION = "broken"\ndef broken(:\n')
    shutil.rmtree(directory / "__pycache__", ignore_errors=True)
    service.wait_for_log("could not take over", timeout=15)
    record()
    time.sleep(3)  # long enough for a reload or restart loop to show
    record()
    output = service.output()
    assert output.count("changed: supervised_app.py; reloading") == 2
    assert output.count("SyntaxError") == 1, output  # once, not a loop
    assert output.count("could not take over") == 1, output
    assert "could not take over: error while importing 'supervised_app': SyntaxError" in output
    assert "the old worker keeps serving" in output
    assert output.count(STARTED) == starts_after_edit + 1  # the one failed successor only
    assert "restarting" not in output
    assert {get(port).text for _ in range(10)} == {"2"}
    assert workers() == serving
    assert alive(watcher)

    # The fix: reloaded again, now serving the fixed code.
    set_version(directory, "3")
    wait_until(lambda: answers(port, "3"), timeout=20)
    service.wait_for_log("reload complete", count=2, timeout=15)
    wait_until(lambda: len(workers()) == 2, timeout=15)
    assert {get(port).text for _ in range(10)} == {"3"}
    assert not (workers() & serving)
    output = service.output()
    assert output.count("changed: supervised_app.py; reloading") == 3
    assert output.count("SyntaxError") == 1
    assert output.count(STARTED) == starts_after_edit + 1 + 2

    # SIGTERM stops everything: every worker ever seen, and the watcher.
    record()
    service.send(signal.SIGTERM)
    assert service.wait(timeout=20) == 0
    assert watcher in seen
    assert [pid for pid in seen if alive(pid)] == []
