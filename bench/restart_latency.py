"""How long until a SIGKILLed worker's replacement answers a request.

    python bench/restart_latency.py [--rounds 20]

Runs `squall` with one worker, so no other worker can answer in the
meantime; each round kills the worker, sends a request at once on a new
connection (the kernel queues it in the listening socket's backlog), and
times the answer from the new worker. Prints the min, median and max.
Between rounds it waits until the new worker is past the supervisor's
young-death window (STABLE_AGE, 2 s), so that every kill is answered by an
immediate restart rather than the backoff meant for a crash loop.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare import free_port, stop_supervisor  # noqa: E402
from squall.supervisor import STABLE_AGE  # noqa: E402

APP = "tests.scripts.asgi_basic:app"


def ask_pid(port: int, timeout: float = 5.0) -> int:
    """The pid of the worker that answers one GET on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    body = data.split(b"\r\n\r\n", 1)[1]
    return int(body.split(b'"pid": ', 1)[1].split(b"}", 1)[0])


def wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            ask_pid(port, timeout=1)
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit("squall did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "squall",
            APP,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--max-restarts",
            str(args.rounds + 5),
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, time.monotonic() + 15)
        timings = []
        for _ in range(args.rounds):
            old = ask_pid(port)
            start = time.perf_counter()
            os.kill(old, signal.SIGKILL)
            new = ask_pid(port)
            timings.append((time.perf_counter() - start) * 1000)
            assert new != old, "the killed worker answered"
            time.sleep(STABLE_AGE + 0.1)
        print(
            f"killed worker -> replacement answers: rounds={len(timings)} "
            f"min={min(timings):.1f} ms median={statistics.median(timings):.1f} ms "
            f"max={max(timings):.1f} ms"
        )
    finally:
        stop_supervisor(proc)


if __name__ == "__main__":
    main()
