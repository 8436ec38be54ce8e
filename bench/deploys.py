"""Deploy operations under keep-alive and new-connection POST load: what is lost.

Each operation runs against squall from a source tree (this checkout, or
`--before DIR` for another), optionally as an unprivileged user, while
`tests.load` clients send POSTs that are never retried. It prints, and with
`--save` writes to `bench/results/`, the requests sent, the failed ones and
the connection resets.

- `scale-down`: TTIN, then TTOU while the retiring worker is busy (stopped
  for 0.6 s), so that new connections wait in its socket's queue.
- `upgrade`: `squall ctl upgrade`, each time.
- `restart`: stop and start again, as a `systemctl restart` without the fd
  store does: the baseline an upgrade is measured against.

    python bench/deploys.py scale-down --rounds 5 --before /tmp/before
    python bench/deploys.py upgrade --rounds 3 --user-venv /tmp/uvenv
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.load import Load, LoadResult  # noqa: E402
from tests.service import alive, free_port  # noqa: E402

APP = ROOT / "tests" / "scripts" / "supervised.py"
NOBODY = "65534"


class Squall:
    """One service: started from a tree, as root or as nobody with a world-readable venv."""

    def __init__(self, tree: Path, venv: Path | None, directory: Path, port: int) -> None:
        self.tree, self.venv, self.directory, self.port = tree, venv, directory, port
        self.control = directory / "control.sock"
        self.log = open(directory / "squall.log", "ab")  # noqa: SIM115 - closed in stop()
        self.pid = 0
        self.started = 0

    def python(self) -> list[str]:
        if self.venv is None:
            return [sys.executable]
        user = [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        return ["setpriv", *user, "env", f"PYTHONPATH={self.tree}", str(self.venv / "bin/python")]

    def start(self) -> None:
        command = [*self.python(), "-m", "squall", "supervised_app:app", "--workers", "2"]
        command += ["--bind", f"127.0.0.1:{self.port}", "--control", str(self.control)]
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        proc = subprocess.Popen(
            command, cwd=self.directory, env=env, stdout=self.log, stderr=self.log
        )
        self.pid = proc.pid
        self.started += 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.log_text().count("is ready") < 2 * self.started:
            time.sleep(0.05)

    def log_text(self) -> str:
        return (self.directory / "squall.log").read_text(errors="replace")

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "squall", "ctl", "--socket", str(self.control), *args]
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)

    def supervisor(self) -> int:
        reply = self.ctl("--json", "status")
        return int(json.loads(reply.stdout)["pid"]) if reply.returncode == 0 else self.pid

    def stop(self) -> None:
        pid = self.supervisor()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
        self.log.close()


def task_pid(port: int, task_id: int) -> int:
    import httpx

    for _ in range(500):
        answer = httpx.get(f"http://127.0.0.1:{port}/pid", timeout=5).json()
        if answer["task_id"] == task_id:
            return int(answer["pid"])
    raise RuntimeError(f"worker {task_id} never answered")


def scale_down(service: Squall) -> None:
    os.kill(service.pid, signal.SIGTTIN)
    time.sleep(2.0)
    busy = task_pid(service.port, 2)
    os.kill(busy, signal.SIGSTOP)
    try:
        time.sleep(0.3)
        os.kill(service.pid, signal.SIGTTOU)
        time.sleep(0.3)
    finally:
        os.kill(busy, signal.SIGCONT)
    time.sleep(2.5)


def upgrade(service: Squall) -> None:
    done = service.ctl("upgrade")
    print("   ", (done.stdout + done.stderr).strip().replace("\n", " | "))
    time.sleep(1.0)


def restart(service: Squall) -> None:
    service.stop()
    service.log = open(service.directory / "squall.log", "ab")  # noqa: SIM115
    service.start()
    time.sleep(1.0)


OPERATIONS = {"scale-down": scale_down, "upgrade": upgrade, "restart": restart}


def measure(operation: str, tree: Path, venv: Path | None, rounds: int) -> LoadResult:
    directory = Path(tempfile.mkdtemp(prefix="squall-deploys-", dir="/tmp"))
    directory.chmod(0o777)
    shutil.copy(APP, directory / "supervised_app.py")
    (directory / "supervised_app.py").chmod(0o644)
    service = Squall(tree, venv, directory, free_port())
    try:
        service.start()
        with Load(service.port, keepalive=4, fresh=4, method="POST", retry=False) as load:
            load.wait_for_requests(500)
            for _ in range(rounds):
                OPERATIONS[operation](service)
        return load.result
    finally:
        service.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("operation", choices=OPERATIONS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another source tree, measured first")
    parser.add_argument("--user-venv", type=Path, help="run squall as uid 65534 with this venv")
    parser.add_argument("--save", action="store_true", help="write bench/results/deploys-*.md")
    options = parser.parse_args()
    trees = [("before", options.before)] if options.before else []
    trees.append(("this tree", ROOT))
    user = "uid 65534" if options.user_venv else f"uid {os.geteuid()}"
    rows = []
    for label, tree in trees:
        print(f"{label}: {options.operation} x{options.rounds} ({user}) ...")
        result = measure(options.operation, tree.resolve(), options.user_venv, options.rounds)
        rows.append((label, result))
        print(f"  {result.total} POSTs, {result.failed} failed, {result.resets} resets")
        for error in result.errors[:3]:
            print("   ", error)
    if options.save:
        stamp = datetime.now().strftime("%Y-%m-%d-%H%M")
        who = "-unprivileged" if options.user_venv else ""
        path = ROOT / "bench" / "results" / f"deploys-{options.operation}{who}-{stamp}.md"
        lines = [
            f"# {options.operation} x{options.rounds} under POST load ({user}), {stamp}",
            "",
            f"`python bench/deploys.py {' '.join(sys.argv[1:])}`",
            "",
            "| tree | POSTs | failed | resets |",
            "|---|---:|---:|---:|",
            *(f"| {label} | {r.total} | {r.failed} | {r.resets} |" for label, r in rows),
            "",
        ]
        path.write_text("\n".join(lines))
        print("saved", path.relative_to(ROOT))


if __name__ == "__main__":
    main()
