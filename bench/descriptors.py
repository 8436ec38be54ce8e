"""Out of descriptors: `ulimit -n 256` and 400 idle connections to one worker.

Counts, for this tree and optionally another (`--before DIR`):
- the idle connections the server closed without a word within 2 s;
- the worker's CPU over 3 s while exhausted (an accept spin shows here);
- what a request made while exhausted gets once 300 idle ones leave;
- the log lines about it.

    python bench/descriptors.py [--before DIR] [-- extra squall options]
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare import children, free_port, stop_supervisor  # noqa: E402

APP = ROOT / "tests" / "scripts" / "supervised.py"
LAUNCHER = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(tree: Path, extra: list[str]) -> str:
    directory = Path(tempfile.mkdtemp(prefix="squall-fds-"))
    (directory / "supervised_app.py").write_text(APP.read_text())
    port = free_port()
    log_path = directory / "squall.log"
    with open(log_path, "wb") as log:
        command = [sys.executable, "-c", LAUNCHER, "-m", "squall", "supervised_app:app"]
        command += ["--bind", f"127.0.0.1:{port}", "--workers", "1", *extra]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        proc = subprocess.Popen(command, cwd=directory, env=env, stdout=log, stderr=log)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        while "is ready" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        (worker,) = children(proc.pid)
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(400)]
        time.sleep(2)
        closed = 0
        for sock in held:
            if select.select([sock], [], [], 0)[0]:
                try:
                    closed += sock.recv(1) == b""
                except ConnectionResetError:
                    closed += 1
        before = cpu(worker)
        time.sleep(3)
        spent = cpu(worker) - before
        waiting = socket.create_connection(("127.0.0.1", port), timeout=10)
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.5)
        for sock in held[:300]:
            sock.close()
        waiting.settimeout(5)
        try:
            answer = repr(waiting.recv(100).split(b"\r\n")[0])
        except OSError as exc:
            answer = repr(exc)
        waiting.close()
    finally:
        for sock in held:
            sock.close()
        stop_supervisor(proc)
    lines = [line for line in log_path.read_text().splitlines() if "accept" in line.lower()]
    return (
        f"{tree}: {closed}/400 idle connections closed unanswered within 2 s; "
        f"worker CPU over 3 s: {spent:.2f} s; a request made meanwhile -> {answer}; "
        f"log lines about accepting: {len(lines)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", type=Path, help="another source tree, measured first")
    parser.add_argument("extra", nargs="*", help="more squall options (after --)")
    options = parser.parse_args()
    for tree in ([options.before] if options.before else []) + [ROOT]:
        print(measure(tree.resolve(), options.extra), flush=True)


if __name__ == "__main__":
    main()
