"""HTTP/2 side by side under h2load: squall against hypercorn and granian, cleartext h2c.

    python bench/h2load.py [--duration 5] [--warm-up 1] [--rounds 3] [--servers NAME,...]
                           [--modes multiplexed,one-stream] [--clients 16] [--streams 10]
                           [--threads 1] [--workers 2] [--no-save]
    python bench/h2load.py --smoke

Every server runs --workers workers (2 by default) and answers GET / with
the 12-byte body "Hello, world" over HTTP/2 without TLS, by prior knowledge
(h2c: the client sends the HTTP/2 preface at once, which is h2load's way
for an http:// URL):

- squall `--h2c`, serving the raw ASGI app (`--interface asgi`) and its
  native handlers (`--interface squall`, bench/peers/squall_native.py);
- hypercorn `--workers N --worker-class uvloop` serving the raw ASGI app (it
  serves h2c by prior knowledge on its plain bind, next to HTTP/1.1): the
  baseline of the ratios;
- granian `--interface asgi` (raw ASGI) and `--interface rsgi`
  (bench/peers/rsgi_app.py), `--http auto` (HTTP/1.1 and h2c by prior
  knowledge on one port; `--http 2` would refuse the HTTP/1.1 request with
  which bench/compare.py's start-up waits for a server to answer).

Servers start and stop through bench/compare.py (its `serving`: a free
port, wait for an answer and for every worker; stop by PID, SIGTERM, a
bounded wait, SIGKILL), and the peers run from its venv, bench/.venv,
filled from bench/requirements-peers.txt (hypercorn included).

Two modes: `multiplexed`, many streams per connection
(`h2load -c16 -m10 -t1`), and `one-stream`, one stream at a time per
connection (`-c16 -m1`). Each run is one h2load process,
`-D DURATION --warm-up-time WARMUP`, whose output is read line by line as
it comes (through `stdbuf -oL`): the server's CPU time (utime + stime of
every process of its tree, from /proc/PID/stat) and the host's CPU steal
(/proc/stat) are read when h2load says the main duration started and again
when it says it is over, so the CPU per request covers exactly the
requests h2load counts. Per run: req/s, requests, failed, errored and
timed-out requests and non-2xx answers (all must be 0), the mean time per
request, the protocol h2load negotiated (it must be h2c), and the server's
CPU µs per request.

The runs interleave: for each round, for each mode, every server once in
the same order, each started afresh. Tables give medians over the rounds,
and ratios to hypercorn: req/s / hypercorn's, and hypercorn's CPU µs per
request / the server's (above 1 is less CPU per request). The report is
printed and written to bench/results/h2load-YYYY-MM-DD-HHMM.md with the
versions of everything. h2load and the servers share the machine's CPUs.

--smoke starts each server, sends one batch of 10 requests
(`h2load -n 10 -c 1 -m 10`), checks they came back 200 over h2c with 12
bytes each, stops the server and prints its pids, then "left: none" when
no process the script started is alive.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare
from bench.compare import Command, Server

BASELINE = "hypercorn"
APP_ASGI = "bench.peers.asgi_raw:app"
APP_RSGI = "bench.peers.rsgi_app:app"
APP_NATIVE = "bench.peers.squall_native:app"
#: mode -> (what it is, h2load -m when not set by --streams)
MODES = {
    "multiplexed": ("many streams per connection", 10),
    "one-stream": ("one stream at a time per connection", 1),
}
CLIENTS = 16
THREADS = 1
SMOKE_REQUESTS = 10
#: h2load's lines that open and close its measured window (one per thread).
MAIN_STARTED = "Main benchmark duration is started"
MAIN_OVER = "Main benchmark duration is over"
#: How long past its warm-up and duration an h2load run may take before it is killed.
H2LOAD_GRACE = 30.0


def hypercorn(app: str) -> Command:
    return lambda port, _dir, workers: [
        str(compare.VENV_PYTHON),
        "-m",
        "hypercorn",
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "uvloop",
        "--log-level",
        "warning",
        "--config",
        "python:bench.peers.hypercorn_config",
    ]


def granian(interface: str, app: str) -> Command:
    """bench/compare.py's granian command line, serving HTTP/1.1 and h2c (`--http auto`)."""
    base = compare.granian(interface, app)
    return lambda port, directory, workers: [*base(port, directory, workers), "--http", "auto"]


SERVERS = [
    Server(
        "hypercorn",
        "hypercorn --workers N --worker-class uvloop, raw ASGI (h2c on its plain bind), "
        "keep_alive_max_requests lifted (bench/peers/hypercorn_config.py)",
        hypercorn(APP_ASGI),
        "peers",
    ),
    Server(
        "granian-asgi",
        "granian --interface asgi --http auto --workers N --loop uvloop, raw ASGI",
        granian("asgi", APP_ASGI),
        "peers",
    ),
    Server(
        "granian-rsgi",
        "granian --interface rsgi --http auto --workers N --loop uvloop, RSGI "
        "(bench/peers/rsgi_app.py)",
        granian("rsgi", APP_RSGI),
        "peers",
    ),
    Server(
        "squall-asgi",
        "squall --h2c --interface asgi, raw ASGI",
        compare.squall(APP_ASGI, "asgi", "--h2c"),
        "squall",
    ),
    Server(
        "squall-native",
        "squall --h2c --interface squall, web.Application (bench/peers/squall_native.py)",
        compare.squall(APP_NATIVE, "squall", "--h2c"),
        "squall",
    ),
]
BY_NAME = {server.name: server for server in SERVERS}


# -- h2load ------------------------------------------------------------------------------------


@dataclass
class H2load:
    """What h2load printed at the end of a run."""

    protocol: str
    rps: float
    requests: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    non_2xx: int  # 3xx, 4xx and 5xx answers
    data_bytes: int
    mean_ms: float

    def problems(self, body_bytes: int | None = None) -> list[str]:
        """What is wrong with the run: not h2c, requests failed or not answered 2xx; with
        `body_bytes`, answers whose body is not that long (h2load's status codes and traffic
        count the warm-up too, so a timed run cannot check the body so)."""
        out = []
        if self.protocol != "h2c":
            out.append(f"protocol {self.protocol!r}, not h2c")
        if self.requests == 0:
            out.append("no requests")
        if self.failed or self.errored or self.timeout:
            out.append(f"{self.failed} failed, {self.errored} errored, {self.timeout} timed out")
        if self.non_2xx:
            out.append(f"{self.non_2xx} answers not 2xx")
        if body_bytes is not None and self.data_bytes != self.status_2xx * body_bytes:
            out.append(f"{self.data_bytes} bytes of data for {self.status_2xx} answers")
        return out


def parse_h2load(text: str) -> H2load:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise ValueError(f"h2load output without /{pattern}/:\n{text}")
        return match

    protocol = re.search(r"^Application protocol: (\S+)", text, re.MULTILINE)
    counts = find(
        r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout"
    )
    total, _started, _done, succeeded, failed, errored, timeout = map(int, counts.groups())
    codes = find(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
    return H2load(
        protocol=protocol.group(1) if protocol else "none negotiated",
        rps=float(find(r"^finished in \S+, ([\d.]+) req/s").group(1)),
        requests=total,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=int(codes.group(1)),
        non_2xx=sum(int(n) for n in codes.groups()[1:]),
        data_bytes=int(find(r"^traffic: .*\((\d+)\) data").group(1)),
        mean_ms=compare.to_ms(find(r"^time for request:\s+\S+\s+\S+\s+(\S+)").group(1)),
    )


def h2load_command(port: int, options: list[str]) -> list[str]:
    return ["stdbuf", "-oL", "h2load", *options, f"http://127.0.0.1:{port}/"]


def run_h2load(
    port: int,
    options: list[str],
    timeout: float,
    threads: int = 1,
    on_started: Callable[[], None] | None = None,
    on_over: Callable[[], None] | None = None,
) -> str:
    """Run h2load with its output line-buffered; call `on_started` at the first line saying the
    main duration started, `on_over` once every thread said it is over. Returns the output."""
    proc = subprocess.Popen(
        h2load_command(port, options),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=compare.ROOT,
        text=True,
        errors="replace",
    )
    watchdog = threading.Timer(timeout, proc.kill)  # our child, by its Popen (its pid)
    watchdog.start()
    lines: list[str] = []
    started = over = 0
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(MAIN_STARTED):
                started += 1
                if started == 1 and on_started:
                    on_started()
            elif line.startswith(MAIN_OVER):
                over += 1
                if over == threads and on_over:
                    on_over()
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            with compare.signals_held():
                proc.kill()
                proc.wait(5)
    text = "".join(lines)
    if proc.returncode != 0:
        raise RuntimeError(f"h2load exited with status {proc.returncode}:\n{text}")
    if (on_started or on_over) and (started == 0 or over < threads):
        raise RuntimeError(f"h2load's output did not mark its measured window:\n{text}")
    return text


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """The CPU ticks of every process of a server's tree, and the host's (steal, all) ticks."""

    ticks: dict[int, tuple[str, int]]
    host: tuple[int, int]


def snapshot(running: compare.Running) -> Snapshot:
    ticks = {}
    for pid, started in running.record().items():
        used = compare.cpu_ticks(pid)
        if used is not None:
            ticks[pid] = (started, used)
    return Snapshot(ticks, compare.host_cpu_ticks())


def cpu_between(before: Snapshot, after: Snapshot) -> dict[int, int]:
    """pid -> ticks of user + system time each of the server's processes used between two
    snapshots (a process new since `before` counts from its start)."""
    used = {}
    for pid, (started, ticks) in after.ticks.items():
        old = before.ticks.get(pid)
        used[pid] = ticks - old[1] if old is not None and old[0] == started else ticks
    return used


def busiest_share(used: dict[int, int], root: int, workers: int) -> float:
    """The busiest worker's share of the workers' CPU time, percent (50 is an even split of 2):
    the workers are the `workers` busiest processes but the top one (the supervisor)."""
    ticks = sorted((n for pid, n in used.items() if pid != root), reverse=True)[:workers]
    return 100 * ticks[0] / sum(ticks) if ticks and sum(ticks) else float("nan")


@dataclass
class Result:
    rps: float
    requests: int
    failed: int
    errored: int
    timeout: int
    non_2xx: int
    mean_ms: float
    cpu_us: float  # server CPU time per request, microseconds
    busiest_share: float  # the busiest worker's share of the workers' CPU time, percent
    steal_pct: float
    problems: list[str]

    @property
    def errors(self) -> int:
        return self.failed + self.non_2xx


def mode_options(mode: str, args: argparse.Namespace) -> list[str]:
    streams = args.streams if mode == "multiplexed" else MODES[mode][1]
    return [f"-c{args.clients}", f"-m{streams}", f"-t{args.threads}"]


def duration(seconds: float) -> str:
    """A duration as h2load takes it: whole seconds ("5s") or milliseconds ("500ms")."""
    return f"{seconds:g}s" if seconds == int(seconds) else f"{round(seconds * 1000)}ms"


def measure(server: Server, mode: str, args: argparse.Namespace, workdir: Path) -> Result:
    marks: dict[str, Snapshot] = {}
    options = [*mode_options(mode, args), f"-D{duration(args.duration)}"]
    if args.warm_up > 0:
        options.append(f"--warm-up-time={duration(args.warm_up)}")
    with compare.serving(server, workdir, args.workers) as (running, port, _answer):

        def started() -> None:
            marks["before"] = snapshot(running)

        def over() -> None:
            marks["after"] = snapshot(running)

        text = run_h2load(
            port,
            options,
            timeout=args.duration + args.warm_up + H2LOAD_GRACE,
            threads=args.threads,
            on_started=started,
            on_over=over,
        )
        if running.proc.poll() is not None:
            raise RuntimeError(
                f"the server exited during the run:\n{compare.log_tail(running.log)}"
            )
    got = parse_h2load(text)
    before, after = marks["before"], marks["after"]
    used = cpu_between(before, after)
    cpu_seconds = sum(used.values()) / compare.CLOCK_TICKS
    return Result(
        rps=got.rps,
        requests=got.requests,
        failed=got.failed,
        errored=got.errored,
        timeout=got.timeout,
        non_2xx=got.non_2xx,
        mean_ms=got.mean_ms,
        cpu_us=cpu_seconds / got.requests * 1e6 if got.requests else float("nan"),
        busiest_share=busiest_share(used, running.proc.pid, args.workers),
        steal_pct=compare.steal_share(before.host, after.host),
        problems=got.problems(),
    )


# -- report ------------------------------------------------------------------------------------

fmt = compare.fmt


def med(results: list[Result], key: str) -> float:
    values: list[float] = [getattr(r, key) for r in results]
    return statistics.median(values) if values else float("nan")


def steal_cell(results: list[Result]) -> str:
    worst = max((r.steal_pct for r in results if r.steal_pct == r.steal_pct), default=float("nan"))
    return f"{fmt(worst, 1)}%" + (" ⚠" if worst > compare.STEAL_FLAG_PCT else "")


Runs = dict[str, dict[str, list[Result | None]]]  # mode -> server -> one per round


def good(runs: Runs, mode: str, name: str) -> list[Result]:
    return [r for r in runs[mode].get(name, []) if r is not None]


def summary_table(servers: list[Server], modes: list[str], runs: Runs) -> str:
    times = f"\N{MULTIPLICATION SIGN} {BASELINE}"
    head = "| server |"
    rule = "|---|"
    for mode in modes:
        head += f" {mode} req/s | {times} | {mode} CPU µs/req | {times} |"
        rule += "---:|---:|---:|---:|"
    lines = [head, rule]
    for server in servers:
        cells = []
        for mode in modes:
            mine, base = good(runs, mode, server.name), good(runs, mode, BASELINE)
            rps, cpu = med(mine, "rps"), med(mine, "cpu_us")
            base_rps, base_cpu = med(base, "rps"), med(base, "cpu_us")
            cells += [
                fmt(rps),
                fmt(rps / base_rps, 2),
                fmt(cpu, 1),
                fmt(base_cpu / cpu if cpu > 0 else float("nan"), 2),
            ]
        lines.append(f"| {server.name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def mode_table(mode: str, servers: list[Server], runs: Runs) -> str:
    base = good(runs, mode, BASELINE)
    base_rps, base_cpu = med(base, "rps"), med(base, "cpu_us")
    lines = [
        f"| server | req/s | \N{MULTIPLICATION SIGN} {BASELINE} | mean ms/request | CPU µs/req "
        f"| \N{MULTIPLICATION SIGN} {BASELINE} (CPU) | failed | errored | timeout | non-2xx "
        "| req/s spread | host steal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server in servers:
        got = good(runs, mode, server.name)
        lost = len(runs[mode].get(server.name, [])) - len(got)
        if not got:
            lines.append(f"| {server.name} | failed |" + " |" * 10)
            continue
        rps, cpu = med(got, "rps"), med(got, "cpu_us")
        spread = (max(r.rps for r in got) - min(r.rps for r in got)) / rps * 100
        note = f" ({lost} runs failed)" if lost else ""
        lines.append(
            f"| {server.name}{note} | {fmt(rps)} | {fmt(rps / base_rps, 2)} "
            f"| {fmt(med(got, 'mean_ms'), 2)} | {fmt(cpu, 1)} "
            f"| {fmt(base_cpu / cpu if cpu > 0 else float('nan'), 2)} "
            f"| {sum(r.failed for r in got):,} | {sum(r.errored for r in got):,} "
            f"| {sum(r.timeout for r in got):,} | {sum(r.non_2xx for r in got):,} "
            f"| {fmt(spread)}% | {steal_cell(got)} |"
        )
    return "\n".join(lines)


def rounds_table(mode: str, servers: list[Server], runs: Runs, rounds: int) -> str:
    lines = [
        "| server | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " |",
        "|---|" + "---:|" * rounds,
    ]
    for server in servers:
        cells = [
            f"{fmt(r.rps)} ({fmt(r.cpu_us, 1)} µs, {fmt(r.mean_ms, 2)} ms, "
            f"{fmt(r.busiest_share)}%, steal {fmt(r.steal_pct, 1)}%)"
            if r
            else "failed"
            for r in runs[mode][server.name]
        ]
        lines.append(f"| {server.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions(servers: list[Server]) -> list[tuple[str, str]]:
    about = compare.versions(servers, tools=False)
    squall_side = compare.output_of([sys.executable, "-c", compare.VERSIONS_SCRIPT, "h2", "hpack"])
    about.append(("squall's HTTP/2 (this interpreter)", dict_text(squall_side)))
    if any(s.runtime == "peers" for s in servers):
        names = ["hypercorn", "h2", "hpack", "granian", "uvloop"]
        text = compare.output_of([str(compare.VENV_PYTHON), "-c", compare.VERSIONS_SCRIPT, *names])
        about.append(("HTTP/2 peers (bench/.venv)", dict_text(text)))
    package = compare.output_of(["dpkg-query", "-W", "-f=${Version}", "nghttp2-client"])
    about.append(("h2load", f"{compare.output_of(['h2load', '--version'])} (Debian {package})"))
    return about


def dict_text(text: str) -> str:
    """`{"a": "1", "b": "2"}` (VERSIONS_SCRIPT's output) as "a 1, b 2"; else as it came."""
    try:
        return ", ".join(f"{k} {v}" for k, v in json.loads(text).items())
    except (json.JSONDecodeError, AttributeError):
        return text


def report(
    args: argparse.Namespace,
    servers: list[Server],
    modes: list[str],
    runs: Runs,
    when: datetime.datetime,
    about: list[tuple[str, str]],
) -> str:
    loads = " and ".join(
        f"`{mode}` (h2load {' '.join(mode_options(mode, args))})" for mode in modes
    )
    parts = [
        f"# squall over HTTP/2 (h2c) side by side, {when:%Y-%m-%d %H:%M %Z}",
        "",
        f"`{' '.join(['python', 'bench/h2load.py', *sys.argv[1:]])}`: {args.workers} "
        f"worker{'s' if args.workers > 1 else ''} each, GET / answered with the 12-byte body "
        f"{compare.BODY.decode()!r} over cleartext HTTP/2 by prior knowledge (h2c). Modes: "
        f"{loads}, each `-D {args.duration:g} --warm-up-time {args.warm_up:g}`; "
        f"{args.rounds} rounds, interleaved (each round runs every mode, each mode every "
        "server in this order, each started afresh). h2load and the servers share the "
        "machine's CPUs. Medians over the rounds; failed, errored, timeout and non-2xx are "
        "summed over them. req/s and mean time per request are h2load's, over its measured "
        "window. CPU µs/req: user + system CPU time of every process of the server (from "
        "/proc/PID/stat), read when h2load's measured window starts and ends, per request "
        f"h2load counted. \N{MULTIPLICATION SIGN} {BASELINE}: req/s / {BASELINE}'s req/s; for "
        f"CPU, {BASELINE}'s µs / the server's (above 1 is less CPU per request). Host steal: "
        f"the most of any round, ⚠ past {compare.STEAL_FLAG_PCT:g}%. req/s spread: "
        "(max - min) / median over the rounds.",
        "",
        "## Summary",
        "",
        summary_table(servers, modes, runs),
        "",
    ]
    for mode in modes:
        parts += [
            f"## {mode}: {MODES[mode][0]} (h2load {' '.join(mode_options(mode, args))})",
            "",
            mode_table(mode, servers, runs),
            "",
        ]
    parts += [
        "## Each round",
        "",
        "req/s (CPU µs per request, mean ms per request, the busiest worker's share of the "
        "workers' CPU time: 50% is an even split of 2, host steal).",
        "",
    ]
    for mode in modes:
        parts += [f"{mode}:", "", rounds_table(mode, servers, runs, args.rounds), ""]
    problems = [
        f"- {name}, {mode}, round {i + 1}: {'; '.join(r.problems)}"
        for mode in modes
        for name, results in runs[mode].items()
        for i, r in enumerate(results)
        if r is not None and r.problems
    ]
    if problems:
        parts += ["## Runs with problems", "", *problems, ""]
    parts += ["## Versions", ""]
    parts += [f"- {name}: {value}" for name, value in about]
    parts += ["", "## Servers", "", f"N = {args.workers}.", ""]
    parts += [f"- `{s.name}`: {s.what}" for s in servers]
    return "\n".join(parts) + "\n"


# -- main --------------------------------------------------------------------------------------


def smoke(servers: list[Server], workdir: Path, workers: int) -> int:
    failed = []
    for server in servers:
        try:
            with compare.serving(server, workdir, workers) as (running, port, _answer):
                up = len(running.record())
                text = run_h2load(
                    port, [f"-n{SMOKE_REQUESTS}", "-c1", f"-m{SMOKE_REQUESTS}"], timeout=30
                )
            pids = dict(running.known)
        except (compare.StartError, RuntimeError) as exc:
            failed.append(server.name)
            print(f"{server.name}: FAILED: {exc}", flush=True)
            continue
        got = parse_h2load(text)
        problems = got.problems(len(compare.BODY))
        if got.succeeded != SMOKE_REQUESTS:
            problems.append(f"{got.succeeded} of {SMOKE_REQUESTS} succeeded")
        if up < server.processes(workers):
            problems.append(f"{up} processes, not {server.processes(workers)}")
        print(
            f"{server.name}: {'ok' if not problems else 'WRONG'} {got.protocol}, "
            f"{got.succeeded}/{got.requests} succeeded, {got.status_2xx} 2xx, "
            f"{got.data_bytes} bytes of data" + (f" ({'; '.join(problems)})" if problems else ""),
            flush=True,
        )
        gone = all(not compare.alive(pid, started) for pid, started in pids.items())
        print(
            f"{server.name}: pids "
            + " ".join(f"{pid}@{started}" for pid, started in sorted(pids.items()))
            + (" (all stopped)" if gone else " (NOT all stopped)"),
            flush=True,
        )
        if problems or not gone:
            failed.append(server.name)
    print(
        f"smoke: {len(servers) - len(set(failed))} of {len(servers)} servers answered over h2c "
        "and stopped",
        flush=True,
    )
    return 1 if failed else 0


def benchmark(args: argparse.Namespace, servers: list[Server], modes: list[str], tmp: Path) -> int:
    when = datetime.datetime.now().astimezone()
    about = versions(servers)
    runs: Runs = {mode: {s.name: [] for s in servers} for mode in modes}
    total = args.rounds * len(modes) * len(servers)
    done = failures = 0
    loads: list[float] = []
    compare.announce(
        f"h2load.py: {len(servers)} servers x {len(modes)} modes x {args.rounds} rounds",
        total,
        args.duration + args.warm_up - compare.WARMUP_SECONDS,
        overhead=2,
    )
    for round_no in range(1, args.rounds + 1):
        for mode in modes:
            for server in servers:
                done += 1
                loads.append(compare.load_average())
                try:
                    result: Result | None = measure(server, mode, args, tmp)
                except (compare.StartError, RuntimeError, ValueError) as exc:
                    failures += 1
                    result = None
                    print(
                        f"  {server.name} {mode} round {round_no}: FAILED: {exc}", file=sys.stderr
                    )
                runs[mode][server.name].append(result)
                if result:
                    if result.problems:
                        failures += 1
                    print(
                        f"  [{done}/{total}] round {round_no} {mode:11} {server.name:14} "
                        f"{result.rps:9.0f} req/s  mean {result.mean_ms:6.2f} ms  "
                        f"cpu {result.cpu_us:6.1f} µs/req  "
                        f"busiest worker {result.busiest_share:3.0f}%  failed {result.failed}  "
                        f"errored {result.errored}  steal {result.steal_pct:.1f}%  "
                        f"load {loads[-1]:.1f}"
                        + (f"  PROBLEMS: {'; '.join(result.problems)}" if result.problems else ""),
                        file=sys.stderr,
                        flush=True,
                    )
    about.append(compare.load_note(loads))
    text = report(args, servers, modes, runs, when, about)
    print(text, flush=True)
    if not args.no_save:
        compare.save_result("h2load", when, text)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="h2load -D (default 5 s)")
    parser.add_argument(
        "--warm-up", type=float, default=1.0, help="h2load --warm-up-time (default 1 s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--servers", help=f"comma list, run in this order (default all): {', '.join(BY_NAME)}"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma list (default all)")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="h2load -c (default 16)")
    parser.add_argument(
        "--streams",
        type=int,
        default=MODES["multiplexed"][1],
        help="h2load -m in the multiplexed mode (default 10; one-stream is -m1)",
    )
    parser.add_argument("--threads", type=int, default=THREADS, help="h2load -t (default 1)")
    parser.add_argument(
        "--workers", type=int, default=compare.WORKERS, help="workers of every server (default 2)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="start each server, send 10 requests, stop it"
    )
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: a comma list of {', '.join(MODES)}")
    names = [n.strip() for n in args.servers.split(",") if n.strip()] if args.servers else []
    if any(n not in BY_NAME for n in names):
        parser.error(f"--servers: a comma list of {', '.join(BY_NAME)}")
    servers = [BY_NAME[n] for n in names] if names else list(SERVERS)
    if min(args.rounds, args.clients, args.streams, args.threads, args.workers) < 1:
        parser.error("--rounds, --clients, --streams, --threads and --workers must be positive")
    if args.duration <= 0 or args.warm_up < 0:
        parser.error("--duration must be positive, --warm-up not negative")
    for tool in ("h2load", "stdbuf"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"h2load.py: {tool} not found (apt-get install nghttp2-client coreutils)"
            )

    with compare.OwnedProcesses("h2load.py") as owner:
        if any(s.runtime == "peers" for s in servers):
            compare.ensure_venv()
        with tempfile.TemporaryDirectory(prefix="squall-h2load-") as tmp:
            if args.smoke:
                owner.status = smoke(servers, Path(tmp), args.workers)
            else:
                owner.status = benchmark(args, servers, modes, Path(tmp))
    return owner.status


if __name__ == "__main__":
    sys.exit(main())
