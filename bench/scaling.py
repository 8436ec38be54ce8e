"""Throughput against the number of workers: 1, 2 and one per CPU, under wrk.

    python bench/scaling.py [--duration 5] [--rounds 3] [--servers NAME,...]
                            [--workers 1,2,N] [--connections 64] [--threads 2]

For squall's native app, squall serving the raw ASGI app and uvicorn serving
the raw ASGI app (bench/compare.py's command lines, with only `--workers`
changed), with 1 worker, 2 workers and os.cpu_count() workers (the distinct
ones: on a 2-CPU box that is 1 and 2): `wrk -t2 -c64 -d5s --latency`
keep-alive on GET /, after a 1 s warm-up. The runs interleave: for each of
`--rounds` rounds, every server with every worker count in the same order,
each started on a free port, measured and stopped by PID. The table gives
the median req/s per worker count, the ratio to 1 worker, the server's CPU
time per request (supervisor and workers, from /proc/PID/stat) and the
spread of req/s between rounds.

wrk shares the machine's CPUs with the server, so on 2 CPUs two workers
cannot double one: the ratio is what a second worker buys when the client
needs CPU too. `uvicorn --workers 1` serves from a single process (no
supervisor); squall always runs a supervisor and its workers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare
from bench.compare import Server

SERVER_NAMES = ["squall-native", "squall-asgi", "uvicorn"]


def with_workers(server: Server, workers: int, port: int, directory: Path) -> list[str]:
    """compare.py's command line for `server`, with `--workers` set to `workers`."""
    return server.command(port, directory, workers)


def shown(server: Server, workers: int) -> str:
    """The command line, with PORT for the port."""
    argv = with_workers(server, workers, 0, Path(tempfile.gettempdir()))
    return " ".join(
        "PORT"
        if word == "0" and prev == "--port"
        else word.replace("127.0.0.1:0", "127.0.0.1:PORT")
        for prev, word in zip(["", *argv], argv, strict=False)
    )


def expected_processes(server: Server, workers: int) -> int:
    """The processes of a started server: uvicorn --workers 1 is one process, no supervisor."""
    return workers + 1 if server.runtime == "squall" or workers > 1 else 1


@contextlib.contextmanager
def serving(
    server: Server, workers: int, workdir: Path
) -> Iterator[tuple[compare.Running, int, str]]:
    """Start `server` with `workers` workers on a free port; wait until it answers and is up."""
    port = compare.free_port()
    rundir = Path(tempfile.mkdtemp(prefix=f"{server.name}-{workers}-", dir=workdir))
    log = rundir / "server.log"
    command = with_workers(server, workers, port, rundir)
    env = {**os.environ, "PYTHONPATH": str(compare.ROOT)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=compare.ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = compare.Running(server, proc, log)
    try:
        deadline = time.monotonic() + compare.START_TIMEOUT
        answer: tuple[int, bytes] | None = None
        while answer is None:
            if proc.poll() is not None:
                raise compare.StartError(
                    f"exited with status {proc.returncode}:\n{compare.log_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise compare.StartError(
                    f"no answer within {compare.START_TIMEOUT:g} s:\n{compare.log_tail(log)}"
                )
            try:
                answer = compare.ask(port)
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
        if answer != (200, compare.BODY):
            raise compare.StartError(f"wrong answer {answer!r}")
        want = expected_processes(server, workers)
        while len(running.record()) < want and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        running.record()
        yield running, port, " ".join(command)
    finally:
        running.stop()


@dataclass
class Run:
    rps: float
    cpu_us: float
    errors: int
    processes: int
    busiest: float  # the busiest worker's share of the workers' CPU time, percent (N > 1)


def measure(server: Server, workers_n: int, args: argparse.Namespace, workdir: Path) -> Run:
    with serving(server, workers_n, workdir) as (running, port, _command):
        compare.wrk(port, compare.WARMUP_SECONDS, args, [])
        before = {pid: (s, compare.cpu_ticks(pid)) for pid, s in running.record().items()}
        text = compare.wrk(port, args.duration, args, [])
        after = running.record()
        used: dict[int, int] = {}
        for pid, started in after.items():
            ticks = compare.cpu_ticks(pid)
            if ticks is None:
                continue
            start_s, start_ticks = before.get(pid, (None, None))
            used[pid] = ticks - (start_ticks or 0) if start_s == started else ticks
        # The workers: the children that did the work (not the supervisor, not a helper).
        root = running.proc.pid
        workers = sorted((p for p in used if p != root), key=lambda p: used[p], reverse=True)
        worker_ticks = [used[p] for p in workers[:workers_n]] if workers else [used.get(root, 0)]
        if running.proc.poll() is not None:
            raise RuntimeError(
                f"the server exited during the run:\n{compare.log_tail(running.log)}"
            )
    out = compare.parse_wrk(text)
    requests = int(out["requests"])
    return Run(
        rps=out["rps"],
        cpu_us=sum(used.values()) / compare.CLOCK_TICKS / requests * 1e6
        if requests
        else float("nan"),
        errors=int(out["socket_errors"] + out["non_2xx"]),
        processes=len(after),
        busiest=100 * max(worker_ticks) / sum(worker_ticks) if sum(worker_ticks) else float("nan"),
    )


# -- report ------------------------------------------------------------------------------------


def fmt(value: float, digits: int = 0) -> str:
    return compare.fmt(value, digits)


def table(
    servers: list[Server], counts: list[int], runs: dict[tuple[str, int], list[Run | None]]
) -> str:
    head = ["server"]
    head += [f"req/s, {n} worker{'s' * (n > 1)}" for n in counts]
    head += [f"{n}/{counts[0]}" for n in counts[1:]]
    head += [f"CPU µs/req, {n}" for n in counts]
    head += [f"spread, {n}" for n in counts]
    head += ["errors"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for server in servers:
        medians: dict[int, float] = {}
        cpu: dict[int, float] = {}
        spread: dict[int, float] = {}
        errors = 0
        failed = 0
        for n in counts:
            got = [r for r in runs[server.name, n] if r is not None]
            failed += len(runs[server.name, n]) - len(got)
            errors += sum(r.errors for r in got)
            if got:
                medians[n] = statistics.median(r.rps for r in got)
                cpu[n] = statistics.median(r.cpu_us for r in got)
                spread[n] = (max(r.rps for r in got) - min(r.rps for r in got)) / medians[n]
        nan = float("nan")
        cells = [server.name]
        cells += [fmt(medians.get(n, nan)) for n in counts]
        cells += [fmt(medians.get(n, nan) / medians.get(counts[0], nan), 2) for n in counts[1:]]
        cells += [fmt(cpu.get(n, nan), 1) for n in counts]
        cells += [fmt(spread.get(n, nan) * 100) + "%" for n in counts]
        cells += [f"{errors:,}" + (f" ({failed} runs failed)" if failed else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rounds_table(
    servers: list[Server],
    counts: list[int],
    runs: dict[tuple[str, int], list[Run | None]],
    rounds: int,
) -> str:
    lines = [
        "| server | workers | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " |",
        "|---|---:|" + "---:|" * rounds,
    ]
    for server in servers:
        for n in counts:
            cells = [
                f"{fmt(r.rps)} ({fmt(r.cpu_us, 1)} µs, {fmt(r.busiest)}%)" if r else "failed"
                for r in runs[server.name, n]
            ]
            lines.append(f"| {server.name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def worker_counts(text: str | None) -> list[int]:
    cpus = os.cpu_count() or 1
    if text is None:
        return sorted({1, 2, cpus})
    counts = sorted({int(n) for n in text.split(",") if n.strip()})
    if not counts or counts[0] < 1:
        raise ValueError(text)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--servers",
        default=",".join(SERVER_NAMES),
        help=f"comma list of {', '.join(compare.ALL_SERVERS)} (default {','.join(SERVER_NAMES)})",
    )
    parser.add_argument(
        "--workers", help="comma list of worker counts (default 1, 2 and os.cpu_count())"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk -c (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    args = parser.parse_args()
    try:
        counts = worker_counts(args.workers)
    except ValueError:
        parser.error("--workers: a comma list of positive integers")
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    if not names or any(n not in compare.ALL_SERVERS for n in names):
        parser.error(f"--servers: a comma list of {', '.join(compare.ALL_SERVERS)}")
    servers = [compare.ALL_SERVERS[n] for n in names]
    if any(s.runtime == "nginx" or s.name == "tornado" for s in servers):
        parser.error("--servers: nginx and tornado take their worker count another way")
    if args.rounds < 1 or args.duration <= 0 or args.connections < 1 or args.threads < 1:
        parser.error("--rounds, --duration, --connections and --threads must be positive")

    with compare.OwnedProcesses("scaling.py") as owner:
        if any(s.runtime == "peers" for s in servers):
            compare.ensure_venv()
        compare.ensure_debian(["wrk"])
        with tempfile.TemporaryDirectory(prefix="squall-scaling-") as tmp:
            owner.status = benchmark(args, servers, counts, Path(tmp))
    return owner.status


def benchmark(args: argparse.Namespace, servers: list[Server], counts: list[int], tmp: Path) -> int:
    when = datetime.datetime.now().astimezone()
    about = compare.versions(servers, tools=True)
    runs: dict[tuple[str, int], list[Run | None]] = {
        (s.name, n): [] for s in servers for n in counts
    }
    total = args.rounds * len(servers) * len(counts)
    done = failures = 0
    loads: list[float] = []
    compare.announce(
        f"scaling.py: {len(servers)} servers x workers {counts} x {args.rounds} rounds",
        total,
        args.duration,
        overhead=2,
    )
    for round_no in range(1, args.rounds + 1):
        for server in servers:
            for n in counts:
                done += 1
                loads.append(compare.load_average())
                try:
                    run: Run | None = measure(server, n, args, tmp)
                except (compare.StartError, RuntimeError, ValueError) as exc:
                    failures += 1
                    run = None
                    print(
                        f"  {server.name} {n} workers round {round_no}: FAILED: {exc}",
                        file=sys.stderr,
                    )
                runs[server.name, n].append(run)
                if run:
                    print(
                        f"  [{done}/{total}] round {round_no} {server.name:14} {n} workers "
                        f"{run.rps:9.0f} req/s  cpu {run.cpu_us:6.1f} µs/req  "
                        f"busiest worker {run.busiest:3.0f}%  errors {run.errors}  "
                        f"processes {run.processes}  load {loads[-1]:.1f}",
                        file=sys.stderr,
                        flush=True,
                    )
    cpus = os.cpu_count()
    parts = [
        f"# Throughput by worker count, {when:%Y-%m-%d %H:%M %Z}",
        "",
        f"`{' '.join(['python', 'bench/scaling.py', *sys.argv[1:]])}`: GET / answered with "
        f"the 12-byte body {compare.BODY.decode()!r}, keep-alive, `wrk -t{args.threads} "
        f"-c{args.connections} -d{args.duration:g}s --latency` after a "
        f"{compare.WARMUP_SECONDS} s warm-up; {args.rounds} round{'s' * (args.rounds > 1)}, interleaved (each round "
        f"runs every server with every worker count in this order). Worker counts "
        f"{', '.join(map(str, counts))}: 1, 2 and os.cpu_count() = {cpus}"
        + (" (the same as 2 on this machine)" if cpus == 2 else "")
        + f". wrk and the servers share the {cpus} CPUs, so more workers than CPUs "
        f"minus the client cannot scale linearly. Medians over the rounds; N/1 = median "
        f"req/s with N workers / with 1; CPU µs/req: user + system time of the supervisor "
        f"and every worker per request answered; spread: (max - min) / median req/s over "
        f"the rounds (how noisy the machine was); errors: wrk's socket errors plus non-2xx, "
        f"summed.",
        "",
        table(servers, counts, runs),
        "",
        "## Each round",
        "",
        "req/s (CPU µs per request, the busiest worker's share of the workers' CPU time: "
        "with 2 workers, 50% is an even split).",
        "",
        rounds_table(servers, counts, runs, args.rounds),
        "",
        "## Versions",
        "",
        *[f"- {name}: {value}" for name, value in about],
        f"- load average (1 min) at the start of each run: min {min(loads):.1f}, median "
        f"{statistics.median(loads):.1f}, max {max(loads):.1f} (a run itself loads the "
        f"{cpus} CPUs fully)",
        "",
        "## Commands",
        "",
    ]
    for server in servers:
        what = server.what.replace(f"--workers {compare.WORKERS} ", "").replace(
            f"-w {compare.WORKERS} ", ""
        )
        parts.append(f"- `{server.name}` ({what}):")
        parts += [f"  - {n}: `{shown(server, n)}`" for n in counts]
    print("\n".join(parts), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
