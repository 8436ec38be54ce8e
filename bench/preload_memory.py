"""How much memory `--preload` saves: PSS and USS of the supervisor and its workers.

    python bench/preload_memory.py [--rounds 3] [--workers 2] [--requests 200]

For each app (bench.apps.big_app:app, a FastAPI app with 40 routes, and the
small examples.demo:app for reference) and each mode (without and with
--preload), starts `python -m squall APP --workers 2 --bind 127.0.0.1:PORT
[--preload]` from the repository root, waits until every worker answers,
warms it up with ~200 requests spread over both workers, then reads
/proc/PID/smaps_rollup of the supervisor and of each worker (its children,
from /proc/PID/task/PID/children): PSS (`Pss:`) and USS (`Private_Clean:` +
`Private_Dirty:`). The modes run interleaved (A B A B ...), `--rounds` times
each, and one Markdown table per app gives the medians.

PSS divides each shared page among the processes that map it, so the sum of
the PSS of the supervisor and its workers is what the service really costs;
USS is what each worker alone holds, and would free if it exited.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.compare import children, free_port, stop_supervisor

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024.0
PID_RE = re.compile(rb"pid\D{1,4}(\d+)")


@dataclass(frozen=True)
class App:
    target: str
    interface: str
    label: str
    # (method, path, JSON body or None) on one keep-alive connection; the first answers with the pid.
    requests: tuple[tuple[str, str, object], ...]


BIG_APP = App(
    "bench.apps.big_app:app",
    "asgi",
    "big FastAPI app (40 routes)",
    (
        ("GET", "/", None),
        ("GET", "/users0?offset=3&limit=5&q=abc", None),
        ("GET", "/items1/7?verbose=true", None),
        ("GET", f"/orders2/3/orders/{uuid.UUID(int=42)}", None),
        ("POST", "/carts3", {"id": 1, "name": "x", "email": "x@example.org", "tags": ["a"]}),
        ("GET", "/invoices4/9", None),
        ("GET", "/mail/someone@example.org?subject=hi", None),
        ("GET", "/db/key", None),
        ("GET", "/decimal/1.2345?places=3", None),
        ("GET", "/cookies", None),
        ("GET", "/json?indent=2", None),
        ("GET", "/static/5", None),
        ("GET", "/users0/-1", None),  # 404
        ("GET", "/items1/not-a-number", None),  # 422
    ),
)
SMALL_APP = App(
    "examples.demo:app",
    "auto",
    "small demo app (examples.demo)",
    (
        ("GET", "/", None),
        ("GET", "/hello/bench", None),
        ("POST", "/echo", {"a": 1}),
    ),
)
MODES = (("without --preload", False), ("with --preload", True))


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, USS) of one process in KiB, from /proc/PID/smaps_rollup."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            fields[name] = int(rest.split()[0])
    return fields["Pss"], fields["Private_Clean"] + fields["Private_Dirty"]


def one_connection(port: int, app: App) -> int:
    """Send the app's requests on one keep-alive connection; the pid that answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        pid = 0
        for method, path, body in app.requests:
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status >= 500:
                raise RuntimeError(f"{method} {path} -> {response.status}: {data[:200]!r}")
            if not pid:
                match = PID_RE.search(data)
                if match is None:
                    raise RuntimeError(f"no pid in the answer to {path}: {data[:200]!r}")
                pid = int(match.group(1))
        return pid
    finally:
        conn.close()


@dataclass
class Run:
    """One run's memory in MiB, and its warm-up requests."""

    worker_pss: list[float]
    worker_uss: list[float]
    supervisor_pss: float
    total_pss: float
    requests: int
    served: dict[int, int]  # requests per worker pid


def measure(app: App, preload: bool, workers: int, requests: int) -> Run:
    """Start squall, warm it up, read the memory of every process, stop it."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "squall",
        app.target,
        "--workers",
        str(workers),
        "--interface",
        app.interface,
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
    ]
    if preload:
        command.append("--preload")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        seen: set[int] = set()
        try:
            # Start-up: every worker answers at least once (bounded).
            served: dict[int, int] = {}
            deadline = time.monotonic() + 30
            while len(served) < workers:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(
                        f"squall {app.target} did not start ({len(served)}/{workers} workers "
                        f"answered):\n{log.read().decode(errors='replace')}"
                    )
                try:
                    pid = one_connection(port, App(app.target, app.interface, "", app.requests[:1]))
                    served[pid] = served.get(pid, 0) + 1
                except OSError:
                    time.sleep(0.05)
            # Warm-up: at least `requests` requests in all and a fair part on every worker.
            per_connection = len(app.requests)
            want_each = requests // workers // 2
            total = 0
            deadline = time.monotonic() + 60
            while total < requests or min(served.values()) < want_each:
                if time.monotonic() > deadline:
                    print(f"  (warm-up incomplete: {served})", file=sys.stderr)
                    break
                pid = one_connection(port, app)
                served[pid] = served.get(pid, 0) + per_connection
                total += per_connection
            time.sleep(0.5)
            worker_pids = children(proc.pid)
            seen = set(worker_pids)
            if sorted(worker_pids) != sorted(served):
                raise SystemExit(f"workers {worker_pids} but answers came from {sorted(served)}")
            supervisor = memory_kib(proc.pid)
            per_worker = [memory_kib(pid) for pid in worker_pids]
        finally:
            stop_supervisor(proc, seen)
    return Run(
        worker_pss=[pss / MIB for pss, _ in per_worker],
        worker_uss=[uss / MIB for _, uss in per_worker],
        supervisor_pss=supervisor[0] / MIB,
        total_pss=(supervisor[0] + sum(pss for pss, _ in per_worker)) / MIB,
        requests=total,
        served=served,
    )


def summarize(runs: list[Run]) -> dict[str, float]:
    return {
        "worker_pss": statistics.median([v for run in runs for v in run.worker_pss]),
        "worker_uss": statistics.median([v for run in runs for v in run.worker_uss]),
        "supervisor_pss": statistics.median([run.supervisor_pss for run in runs]),
        "total_pss": statistics.median([run.total_pss for run in runs]),
    }


def table(app: App, results: dict[str, list[Run]], workers: int) -> str:
    keys = ("worker_pss", "worker_uss", "supervisor_pss", "total_pss")
    rounds = len(next(iter(results.values())))
    lines = [
        f"### {app.label}: `{app.target}`, {workers} workers, medians of {rounds} rounds",
        "",
        "| mode | worker PSS (MiB) | worker USS (MiB) | supervisor PSS (MiB) | total PSS (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    medians = {mode: summarize(runs) for mode, runs in results.items()}
    for mode, med in medians.items():
        lines.append(f"| {mode} | " + " | ".join(f"{med[k]:.1f}" for k in keys) + " |")
    without, with_ = (medians[mode] for mode, _ in MODES)
    cells = []
    for key in keys:
        saved = without[key] - with_[key]
        ratio = with_[key] / without[key] if without[key] else float("nan")
        cells.append(f"{saved:+.1f} MiB (x{ratio:.2f})")
    lines.append("| saving of --preload (MiB; with/without) | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Total PSS per round (MiB): "
        + "; ".join(
            f"{mode}: " + ", ".join(f"{run.total_pss:.1f}" for run in runs)
            for mode, runs in results.items()
        )
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="workers (default 2)")
    parser.add_argument(
        "--requests", type=int, default=200, help="warm-up requests per run (default 200)"
    )
    args = parser.parse_args()
    if not Path("/proc/self/smaps_rollup").exists():
        raise SystemExit("this benchmark needs Linux's /proc/PID/smaps_rollup")
    if importlib.util.find_spec("fastapi") is None:
        raise SystemExit(
            "bench/preload_memory.py needs FastAPI for bench.apps.big_app: "
            "install it with `python -m pip install fastapi` and run again"
        )
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.workers} workers, "
        f"{args.rounds} rounds per mode (interleaved), >= {args.requests} warm-up requests per run",
        flush=True,
    )
    for app in (BIG_APP, SMALL_APP):
        results: dict[str, list[Run]] = {mode: [] for mode, _ in MODES}
        for round_no in range(1, args.rounds + 1):
            for mode, preload in MODES:
                run = measure(app, preload, args.workers, args.requests)
                results[mode].append(run)
                print(
                    f"  {app.target} round {round_no} {mode}: total PSS "
                    f"{run.total_pss:.1f} MiB, worker PSS "
                    + ", ".join(f"{v:.1f}" for v in run.worker_pss)
                    + f" MiB; {run.requests} requests, per worker pid {run.served}",
                    file=sys.stderr,
                )
        print(flush=True)
        print(table(app, results, args.workers), flush=True)
    print()
    print(
        "PSS: proportional set size (shared pages divided among the processes mapping them); "
        "USS: Private_Clean + Private_Dirty. Total PSS = supervisor + all workers. "
        "Saving = without - with (negative: --preload costs more); x = with / without."
    )


if __name__ == "__main__":
    main()
