"""The garbage collector's pauses in a FastAPI app whose requests leave reference cycles.

    python bench/gc_pauses.py [--duration 10] [--rounds 2]

Serves bench/apps/cyclic_app.py (bench/apps/big_app.py's 40 routes plus
`GET /tree`, whose requests each leave a small parent/child cycle) with 2
workers, on squall and on uvicorn (from bench/.venv, as in compare.py), in
interleaved rounds. Each run: `wrk -t2 -c64 -dDs --latency` on /tree after a
1 s warm-up, then `GET /gc` from each worker: its collections so far per
generation, their total and longest pause (timed in the app with
`gc.callbacks`), and how many objects the collector had frozen.

squall freezes what a worker holds once the app has started (`gc.freeze()`),
so a full collection walks only what the requests left; uvicorn does not.
The table is printed and written to bench/results/gc-pauses-YYYY-MM-DD-HHMM.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare
from bench.compare import Server

APP = "bench.apps.cyclic_app:app"
SERVERS = [
    Server("squall", "squall --interface asgi", compare.squall(APP, "asgi"), "squall"),
    Server("uvicorn", "uvicorn, httptools + uvloop", compare.uvicorn(APP), "peers"),
]


@dataclass
class Run:
    rps: float
    p99_ms: float
    errors: int
    workers: list[dict[str, Any]]  # each worker's GET /gc answer


def worker_stats(port: int, workers: int, attempts: int = 50) -> list[dict[str, Any]]:
    """GET /gc from every worker: new connections, held open until each has answered."""
    seen: dict[int, dict[str, Any]] = {}
    with contextlib.ExitStack() as held:
        for _ in range(attempts):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            held.callback(conn.close)
            conn.request("GET", "/gc")
            data = json.loads(conn.getresponse().read())
            seen[data["pid"]] = data
            if len(seen) == workers:
                break
    return list(seen.values())


def measure(server: Server, args: argparse.Namespace, workdir: Path) -> Run:
    with compare.serving(server, workdir) as (running, port, _answer):
        compare.wrk(port, compare.WARMUP_SECONDS, args, [], path="/tree")
        text = compare.wrk(port, args.duration, args, [], path="/tree")
        stats = worker_stats(port, compare.WORKERS)
        if running.proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{compare.log_tail(running.log)}")
    out = compare.parse_wrk(text)
    return Run(out["rps"], out["p99_ms"], int(out["socket_errors"] + out["non_2xx"]), stats)


def generation(run: Run, gen: str, key: str) -> float:
    values = [w["generations"][gen][key] for w in run.workers]
    return float(max(values) if key == "max_ms" else sum(values))


def report(args: argparse.Namespace, runs: dict[str, list[Run]], when: datetime.datetime) -> str:
    lines = [
        f"# Garbage collector pauses, {when:%Y-%m-%d %H:%M %Z}",
        "",
        f"`python bench/gc_pauses.py --duration {args.duration:g} --rounds {args.rounds}`: "
        f"{APP}, 2 workers, wrk -t{args.threads} -c{args.connections} -d{args.duration:g}s "
        f"on GET /tree (each request leaves a parent/child cycle) after a 1 s warm-up; "
        f"{args.rounds} rounds, interleaved. Collections are counted over both workers "
        f"for the warm-up and the run; pauses are timed in the app with gc.callbacks. "
        f"Medians over the rounds.",
        "",
        "| server | req/s | p99 (ms) | errors | frozen objects per worker "
        "| full collections | longest full (ms) | all full (ms) "
        "| young collections (gen 0 + 1) | longest young (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server in SERVERS:
        got = runs[server.name]
        if not got:
            lines.append(f"| {server.name} | failed | | | | | | | | |")
            continue

        young = [generation(r, "0", "count") + generation(r, "1", "count") for r in got]
        young_max = [max(generation(r, "0", "max_ms"), generation(r, "1", "max_ms")) for r in got]
        lines.append(
            f"| {server.name} | {median([r.rps for r in got]):,.0f} | {median([r.p99_ms for r in got]):.2f} "
            f"| {sum(r.errors for r in got)} "
            f"| {median([min(w['frozen'] for w in r.workers) for r in got]):,.0f} "
            f"| {median([generation(r, '2', 'count') for r in got]):.0f} "
            f"| {median([generation(r, '2', 'max_ms') for r in got]):.2f} "
            f"| {median([generation(r, '2', 'total_ms') for r in got]):.1f} "
            f"| {median(young):.0f} | {median(young_max):.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args()
    runs: dict[str, list[Run]] = {s.name: [] for s in SERVERS}
    when = datetime.datetime.now().astimezone()
    with compare.OwnedProcesses("gc_pauses.py") as owner:
        compare.ensure_venv()
        compare.ensure_debian(["wrk"])
        with tempfile.TemporaryDirectory(prefix="squall-gc-") as tmp:
            for round_no in range(1, args.rounds + 1):
                for server in SERVERS:
                    try:
                        run = measure(server, args, Path(tmp))
                    except (compare.StartError, RuntimeError, ValueError, OSError) as exc:
                        print(f"  {server.name} round {round_no}: FAILED: {exc}", file=sys.stderr)
                        owner.status = 1
                        continue
                    runs[server.name].append(run)
                    print(
                        f"  round {round_no} {server.name:8} {run.rps:8.0f} req/s  "
                        f"p99 {run.p99_ms:6.2f} ms  full collections "
                        f"{generation(run, '2', 'count'):.0f}, longest "
                        f"{generation(run, '2', 'max_ms'):.2f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
        text = report(args, runs, when)
        print(text, flush=True)
        if not args.no_save:
            compare.save_result("gc-pauses", when, text)
    return owner.status


if __name__ == "__main__":
    sys.exit(main())
