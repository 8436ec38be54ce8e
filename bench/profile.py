"""Where a request's CPU time goes: kernel, C and Python, in µs per request, under perf.

    python bench/profile.py [--duration 5] [--rounds 3] [--servers NAME,...]
                            [--modes keepalive,close] [--connections 16] [--threads 1]
                            [--symbols] [--peers-python PATH] [--save]

Each server runs ONE worker and answers GET / with the 12-byte body "Hello,
world" (bench/peers/): squall's native app, squall serving the raw ASGI
app, uvicorn serving it (`--http httptools --loop uvloop`, from bench/.venv
or --peers-python), and the two squall servers again with
SQUALL_PURE_PYTHON=1 in their environment (squall's pure-Python modules
even where compiled ones exist: the same run gives before and after). wrk
drives it (`wrk -t1 -c16`, keep-alive, and a new connection per request
with `-H "Connection: close"`, as bench/compare.py does) after a 1 s
warm-up. The worker is the supervisor's child (the busiest one over the
warm-up); `uvicorn --workers 1` is a single process, which is then the
worker.

Per run, two measurements over the same wrk run of --duration seconds:

- the worker's CPU time per request: its utime + stime (/proc/PID/stat,
  every thread) from just before wrk starts to just after it ends, divided
  by the requests wrk counted over that run (so the count is exact, not a
  rate scaled to a window);
- where that time goes: `perf record -e cpu-clock -F 999 -p WORKER`
  (every thread of it; cpu-clock on every machine, so that a sample's
  period is CPU time in ns), started before wrk with its events off, which
  perf's control descriptors switch on from 0.5 s into wrk's run until
  0.5 s before its end (the steady part); then `perf report --sort
  dso,sym`, each sample weighted by its period. The worker's CPU time is
  read too when the events go on and off: the samples should account for
  all of it (the "sampled" figure of each round).

Samples in the kernel ([k], and [vdso]) count as kernel; user samples in
libpython*.so or the python executable as Python (the interpreter: the
eval loop, the object implementations, the allocator, the GC and the
modules built into libpython); every other user sample as C (httptools'
parser, uvloop's loop, libc, _asyncio and the other lib-dynload modules,
and squall's own compiled modules once they exist).

The shares times the CPU per request give kernel, C and Python µs per
request. The runs interleave (for each round, for each mode, every server
in the same order). The table gives the median CPU per request over the
rounds, split by the shares of all rounds' samples pooled; the report also
gives the DSOs, each round (with the share of the worker's CPU time over
the perf window that the samples account for, the stime share and the
host's steal) and, with --symbols, the top 15 C and Python symbols.
--save writes it to bench/results/profile-YYYY-MM-DD-HHMM.md.

Every process is stopped by PID, as in bench/compare.py (OwnedProcesses).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a script, this file's directory is sys.path[0], where bench/profile.py
# would stand in for the standard library's `profile` (cProfile imports it).
if sys.path and Path(sys.path[0] or os.curdir).resolve() == HERE:
    del sys.path[0]
sys.path.insert(0, str(HERE.parent))

from bench import compare, scaling  # noqa: E402
from bench.compare import Server  # noqa: E402

PURE_ENV = "SQUALL_PURE_PYTHON"
FREQUENCY = 999  # perf record -F
CONTROL_TIMEOUT = 10.0  # seconds perf may take to acknowledge enable / disable
STOP_TIMEOUT = 60.0  # ... and to write its file once told to stop
MARGIN = 0.5  # seconds of wrk's run left out of the perf window, at each end
TOP_SYMBOLS = 15
DSO_FLOOR = 0.5  # percent: a DSO below this share everywhere goes into "other"
COVERAGE_FLAG = (90.0, 110.0)  # percent of the window's CPU time the samples account for
PARTS = ("kernel", "C", "Python")
MODES = {"keepalive": "keep-alive", "close": "new connection"}
PYTHON_DSO = re.compile(r"(lib)?python[0-9][0-9.]*(\.so.*)?|python")
UNRESOLVED = re.compile(r"0x[0-9a-f]+")
PERF_USUAL = re.compile(r"\[ perf record: (Woken up|Captured and wrote) ")


# -- the servers -------------------------------------------------------------------------------


Command = Callable[[int, Path, int], list[str]]  # (port, directory, workers) -> argv


def pure(command: Command) -> Command:
    """`command` with SQUALL_PURE_PYTHON=1 in its environment (env execs: the pid stays)."""
    return lambda port, directory, workers: [
        "env",
        f"{PURE_ENV}=1",
        *command(port, directory, workers),
    ]


def servers(peers_python: str) -> dict[str, tuple[str, Server]]:
    """--servers name -> (the table's label, the server); compare.py's commands, 1 worker."""
    native = compare.ALL_SERVERS["squall-native"]
    asgi = compare.ALL_SERVERS["squall-asgi"]
    uvicorn = compare.uvicorn("bench.peers.asgi_raw:app")
    return {
        "squall-native": ("squall native", native),
        "squall-asgi": ("squall ASGI", asgi),
        "uvicorn": (
            "uvicorn ASGI",
            Server(
                "uvicorn",
                f"uvicorn --http httptools --loop uvloop, raw ASGI ({peers_python})",
                lambda port, directory, workers: [
                    peers_python,
                    *uvicorn(port, directory, workers)[1:],
                ],
                "peers",
            ),
        ),
        "squall-native-pure": (
            "squall native (pure)",
            Server(
                "squall-native-pure",
                f"{native.what}, {PURE_ENV}=1",
                pure(native.command),
                "squall",
            ),
        ),
        "squall-asgi-pure": (
            "squall ASGI (pure)",
            Server("squall-asgi-pure", f"{asgi.what}, {PURE_ENV}=1", pure(asgi.command), "squall"),
        ),
    }


# -- perf --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Profile:
    """What perf sampled in one window: (dso, symbol with its [k]/[.] mark) -> ns of CPU."""

    periods: dict[tuple[str, str], int]
    lost: int
    record_log: str

    @property
    def sampled_ns(self) -> int:
        return sum(self.periods.values())


def part(dso: str, symbol: str) -> str:
    """kernel, C or Python, for a sample in `dso` at `symbol` ("[k] name" or "[.] name")."""
    if symbol.startswith("[k]") or dso.startswith("[kernel") or dso == "[vdso]":
        return "kernel"
    return "Python" if PYTHON_DSO.fullmatch(dso) else "C"


class Recorder:
    """`perf record` of one process (every thread), its events off until `window` turns them on.

    The events are switched through perf's control descriptors (`-D -1 --control
    fd:CTL,ACK`), so the worker's CPU time is read at the instants sampling starts
    and stops. The `sleep` perf runs only bounds it; `stop` ends it with SIGINT.
    """

    def __init__(self, pid: int, data: Path, bound: float) -> None:
        self.pid = pid
        self.log = ""
        ctl_read, self.ctl = os.pipe()
        self.ack, ack_write = os.pipe()
        command = ["perf", "record", "-e", "cpu-clock", "-F", str(FREQUENCY), "-p", str(pid)]
        command += ["-o", str(data)]
        command += ["--no-buildid-cache", "-D", "-1", "--control", f"fd:{ctl_read},{ack_write}"]
        command += ["--", "sleep", f"{bound:g}"]
        try:
            self.proc = subprocess.Popen(
                command,
                pass_fds=(ctl_read, ack_write),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError:
            os.close(self.ctl)
            os.close(self.ack)
            raise
        finally:
            os.close(ctl_read)
            os.close(ack_write)

    def command(self, word: str) -> None:
        """Send perf `word` and wait (bounded) for its acknowledgement."""
        os.write(self.ctl, f"{word}\n".encode())
        ready, _, _ = select.select([self.ack], [], [], CONTROL_TIMEOUT)
        if not ready or not os.read(self.ack, 64).startswith(b"ack"):
            raise RuntimeError(f"perf record did not acknowledge {word!r}:\n{self.stop()}")

    def window(self, seconds: float) -> int:
        """Sample for `seconds`; the worker's CPU ticks meanwhile."""
        self.command("enable")
        before = sum(worker_ticks(self.pid))
        time.sleep(seconds)
        self.command("disable")
        return sum(worker_ticks(self.pid)) - before

    def stop(self) -> str:
        """SIGINT perf (it writes its file and ends its sleep), bounded; what it said."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _out, err = self.proc.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _out, err = self.proc.communicate(timeout=STOP_TIMEOUT)
        for fd in (self.ctl, self.ack):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.log = "\n".join(
            line for line in err.strip().splitlines() if not line.startswith("Events ")
        )
        return self.log


def read(data: Path, record_log: str) -> Profile:
    """`perf report` of `data` by DSO and symbol, with the sample periods."""
    command = ["perf", "report", "-i", str(data), "--stdio", "-g", "none", "--sort", "dso,sym"]
    command += ["-F", "period,dso,sym", "--field-separator", "\t", "--percent-limit", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"perf report exited with status {done.returncode}:\n{done.stderr}")
    periods: dict[tuple[str, str], int] = defaultdict(int)
    lost = 0
    for line in done.stdout.splitlines():
        if line.startswith("#"):
            found = re.match(r"# Total Lost Samples: (\d+)", line)
            lost += int(found.group(1)) if found else 0
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) == 3 and fields[0].isdigit():
            periods[fields[1], fields[2]] += int(fields[0])
    if not periods:
        raise RuntimeError(f"perf report found no samples:\n{done.stderr[-2000:]}")
    return Profile(dict(periods), lost, record_log)


# -- measuring ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    requests: int
    rps: float
    errors: int
    user_ticks: int  # the worker's, over wrk's run
    system_ticks: int
    window_ticks: int  # the worker's utime + stime over the perf window
    steal_pct: float
    profile: Profile

    @property
    def cpu_us(self) -> float:
        seconds = (self.user_ticks + self.system_ticks) / compare.CLOCK_TICKS
        return seconds / self.requests * 1e6 if self.requests else float("nan")

    @property
    def system_pct(self) -> float:
        ticks = self.user_ticks + self.system_ticks
        return 100 * self.system_ticks / ticks if ticks else float("nan")

    @property
    def coverage_pct(self) -> float:
        """The sampled CPU time as a share of the worker's CPU time over the perf window."""
        window_ns = self.window_ticks / compare.CLOCK_TICKS * 1e9
        return 100 * self.profile.sampled_ns / window_ns if window_ns else float("nan")


def worker_ticks(pid: int) -> tuple[int, int]:
    """utime, stime of `pid` (all its threads), in clock ticks."""
    fields = compare.proc_stat(pid)
    if fields is None:
        raise RuntimeError(f"the worker {pid} exited")
    return int(fields[11]), int(fields[12])


def find_worker(running: compare.Running, warm_up: dict[int, int | None]) -> int:
    """The child that did the warm-up's work; the top process if it has none (uvicorn -w 1)."""
    root = running.proc.pid
    used: dict[int, int] = {}
    for pid in running.record():
        ticks = compare.cpu_ticks(pid)
        if pid != root and ticks is not None:
            used[pid] = ticks - (warm_up.get(pid) or 0)
    return max(used, key=lambda pid: used[pid]) if used else root


def measure(server: Server, mode: str, args: argparse.Namespace, workdir: Path, tag: str) -> Run:
    headers = compare.MODES[mode][1]
    data = workdir / f"{server.name}-{mode}-{tag}.data"
    with scaling.serving(server, 1, workdir) as (running, port, _command):
        warm_up = {pid: compare.cpu_ticks(pid) for pid in running.record()}
        compare.wrk(port, compare.WARMUP_SECONDS, args, headers)
        worker = find_worker(running, warm_up)
        started = compare.start_time(worker)
        perf = Recorder(worker, data, bound=args.duration + 60)
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                host_before = compare.host_cpu_ticks()
                before = worker_ticks(worker)
                began = time.monotonic()
                load = pool.submit(compare.wrk, port, args.duration, args, headers)
                time.sleep(MARGIN)
                # From MARGIN into wrk's run to MARGIN before its end, however long perf took.
                window_ticks = perf.window(began + args.duration - MARGIN - time.monotonic())
                text = load.result(timeout=args.duration + 60)
                after = worker_ticks(worker)
                steal = compare.steal_share(host_before, compare.host_cpu_ticks())
        finally:
            log = perf.stop()
        if not compare.alive(worker, started) or running.proc.poll() is not None:
            raise RuntimeError(
                f"the server exited during the run:\n{compare.log_tail(running.log)}"
            )
    out = compare.parse_wrk(text)
    if not data.exists():
        raise RuntimeError(f"perf record wrote nothing:\n{log}")
    profile = read(data, log)
    data.unlink()
    return Run(
        requests=int(out["requests"]),
        rps=out["rps"],
        errors=int(out["socket_errors"] + out["non_2xx"]),
        user_ticks=after[0] - before[0],
        system_ticks=after[1] - before[1],
        window_ticks=window_ticks,
        steal_pct=steal,
        profile=profile,
    )


# -- report ------------------------------------------------------------------------------------


def fmt(value: float, digits: int = 0) -> str:
    return compare.fmt(value, digits)


@dataclasses.dataclass
class Cell:
    """One server in one mode over the rounds: the median CPU per request, pooled samples."""

    runs: list[Run]

    @property
    def cpu_us(self) -> float:
        return statistics.median(r.cpu_us for r in self.runs)

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.runs)

    def periods(self) -> dict[tuple[str, str], int]:
        pooled: dict[tuple[str, str], int] = defaultdict(int)
        for run in self.runs:
            for key, ns in run.profile.periods.items():
                pooled[key] += ns
        return pooled

    def shares(self, key: str) -> dict[str, float]:
        """Percent of the pooled samples by part ("part"), DSO ("dso") or (dso, symbol)."""
        periods = self.periods()
        total = sum(periods.values())
        out: dict[str, float] = defaultdict(float)
        for (dso, symbol), ns in periods.items():
            name = {"part": part(dso, symbol), "dso": dso}.get(key, f"{dso}\t{symbol}")
            out[name] += 100 * ns / total
        return out


def run_shares(run: Run) -> dict[str, float]:
    return Cell([run]).shares("part")


def main_table(rows: list[tuple[str, str, Cell | None]]) -> str:
    lines = [
        "| server | connection | req/s | µs/req | kernel µs | C µs | Python µs "
        "| kernel | C | Python |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, mode, cell in rows:
        if cell is None:
            lines.append(f"| {label} | {MODES[mode]} | failed | | | | | | | |")
            continue
        shares = cell.shares("part")
        total = cell.cpu_us
        micros = " | ".join(fmt(total * shares[p] / 100, 1) for p in PARTS)
        percents = " | ".join(f"{fmt(shares[p])}%" for p in PARTS)
        lines.append(
            f"| {label} | {MODES[mode]} | {fmt(cell.rps)} | {fmt(total, 1)} | {micros} | {percents} |"
        )
    return "\n".join(lines)


def dso_table(labels: list[str], cells: list[Cell | None]) -> str:
    """µs per request in each DSO above DSO_FLOOR somewhere (share in brackets); the rest as other."""
    shares = [cell.shares("dso") if cell else {} for cell in cells]
    seen: dict[str, float] = defaultdict(float)
    for got in shares:
        for dso, share in got.items():
            seen[dso] = max(seen[dso], share)
    shown = sorted((d for d, s in seen.items() if s >= DSO_FLOOR), key=lambda d: -seen[d])
    lines = [
        "| DSO | part | " + " | ".join(labels) + " |",
        "|---|---|" + "---:|" * len(labels),
    ]
    for dso in [*shown, "other"]:
        cells_text = []
        for cell, got in zip(cells, shares, strict=True):
            if cell is None:
                cells_text.append("failed")
                continue
            if dso != "other" and dso not in got:
                cells_text.append("-")
                continue
            share = sum(s for d, s in got.items() if d not in shown) if dso == "other" else got[dso]
            cells_text.append(f"{fmt(cell.cpu_us * share / 100, 2)} ({fmt(share, 1)}%)")
        kind = "" if dso == "other" else part(dso, "[.]")
        lines.append(f"| `{dso}` | {kind} | " + " | ".join(cells_text) + " |")
    return "\n".join(lines)


def symbols_table(cell: Cell) -> str:
    shares = cell.shares("symbol")
    user = {k: s for k, s in shares.items() if part(*k.split("\t", 1)) != "kernel"}
    top = sorted(user, key=lambda k: -user[k])[:TOP_SYMBOLS]
    lines = ["| share | µs/req | part | DSO | symbol |", "|---:|---:|---|---|---|"]
    for key in top:
        dso, symbol = key.split("\t", 1)
        lines.append(
            f"| {fmt(user[key], 1)}% | {fmt(cell.cpu_us * user[key] / 100, 2)} "
            f"| {part(dso, symbol)} | `{dso}` | `{symbol.removeprefix('[.] ')}` |"
        )
    return "\n".join(lines)


def round_cell(run: Run | None) -> str:
    if run is None:
        return "failed"
    shares = run_shares(run)
    low, high = COVERAGE_FLAG
    odd = "" if low <= run.coverage_pct <= high else " ⚠"
    steal = " ⚠" if run.steal_pct > compare.STEAL_FLAG_PCT else ""
    lost = f"; {run.profile.lost} samples lost ⚠" if run.profile.lost else ""
    errors = f"; {run.errors:,} wrk errors ⚠" if run.errors else ""
    return (
        f"{fmt(run.cpu_us, 1)} µs, {fmt(run.rps)} req/s; "
        + "/".join(fmt(shares[p]) for p in PARTS)
        + f"%; sampled {fmt(run.coverage_pct)}%{odd}; stime {fmt(run.system_pct)}%; "
        + f"steal {fmt(run.steal_pct, 1)}%{steal}{lost}{errors}"
    )


def unresolved_share(cells: list[Cell]) -> float:
    """The most any cell has in user-space samples perf could not name (a bare address)."""
    worst = 0.0
    for cell in cells:
        shares = cell.shares("symbol")
        hidden = sum(
            share
            for key, share in shares.items()
            if UNRESOLVED.fullmatch(key.split("\t", 1)[1].removeprefix("[.] ").strip())
        )
        worst = max(worst, hidden)
    return worst


def report(
    args: argparse.Namespace,
    chosen: list[tuple[str, Server]],
    modes: list[str],
    runs: dict[tuple[str, str], list[Run | None]],
    when: datetime.datetime,
    about: list[tuple[str, str]],
) -> str:
    def cell(name: str, mode: str) -> Cell | None:
        got = [r for r in runs[name, mode] if r is not None]
        return Cell(got) if got else None

    rows = [(label, mode, cell(s.name, mode)) for mode in modes for label, s in chosen]
    parts = [
        f"# Where a request's CPU time goes, {when:%Y-%m-%d %H:%M %Z}",
        "",
        f"`{' '.join(['python', 'bench/profile.py', *sys.argv[1:]])}`: one worker per server, "
        f"GET / answered with the 12-byte body {compare.BODY.decode()!r}; `wrk -t{args.threads} "
        f"-c{args.connections} -d{args.duration:g}s` (keep-alive, and a new connection per "
        f"request with `-H 'Connection: close'`) after a {compare.WARMUP_SECONDS} s warm-up; "
        f"{args.rounds} round{'s' * (args.rounds > 1)}, interleaved. µs/req: the worker's user + system CPU time "
        f"(/proc/PID/stat) from just before wrk starts to just after it ends, per request wrk "
        f"counted; median over the rounds. Split by `perf record -e cpu-clock -F {FREQUENCY} -p "
        f"WORKER` over the middle of the same wrk run (its events on from {MARGIN:g} s "
        f"after wrk starts to {MARGIN:g} s before it ends), samples weighted by their period "
        f"and pooled over the rounds: kernel = samples in the kernel and [vdso]; Python = user "
        f"samples in libpython / the python executable (the interpreter, the object "
        f"implementations, the allocator, the GC and the modules built into libpython); C = "
        f"every other user sample (httptools, uvloop, libc, _asyncio and the other extension "
        f"modules, squall's compiled modules). The worker's kernel time includes the loopback's "
        f"delivery of what it sends to wrk's socket. wrk shares the machine's CPUs.",
        "",
        main_table(rows),
        "",
        "## By shared object",
        "",
        f"µs per request (share of the samples; - where the DSO has none); DSOs under "
        f"{DSO_FLOOR:g}% everywhere are in other.",
        "",
    ]
    labels = [label for label, _s in chosen]
    for mode in modes:
        parts += [
            f"{MODES[mode]}:",
            "",
            dso_table(labels, [cell(s.name, mode) for _l, s in chosen]),
            "",
        ]
    parts += [
        "## Each round",
        "",
        "µs/req, req/s; kernel/C/Python shares; sampled: the CPU time the samples account for, "
        "as a share of the worker's CPU time over the perf window (⚠ outside "
        f"{COVERAGE_FLAG[0]:g}-{COVERAGE_FLAG[1]:g}%); stime: system time's share of the "
        "worker's CPU time (compare with the kernel share); steal: the host's, over the run "
        f"(⚠ past {compare.STEAL_FLAG_PCT:g}%). Lost samples and wrk errors are flagged.",
        "",
        "| server | connection | "
        + " | ".join(f"round {i + 1}" for i in range(args.rounds))
        + " |",
        "|---|---|" + "---|" * args.rounds,
    ]
    for mode in modes:
        for label, server in chosen:
            cells = " | ".join(round_cell(r) for r in runs[server.name, mode])
            parts.append(f"| {label} | {MODES[mode]} | {cells} |")
    parts.append("")
    if args.symbols:
        parts += [
            "## Top C and Python symbols",
            "",
            f"The {TOP_SYMBOLS} user-space symbols with the most samples; share of all the "
            "samples (the kernel's included), and µs per request.",
            "",
        ]
        for label, mode, got in rows:
            if got is not None:
                parts += [f"### {label}, {MODES[mode]}", "", symbols_table(got), ""]
    done = [c for _l, _m, c in rows if c is not None]
    warnings = sorted(
        {
            re.sub(r"\d+", "N", line)
            for c in done
            for r in c.runs
            for line in r.profile.record_log.splitlines()
            if not PERF_USUAL.match(line)
        }
    )
    parts += [
        "## Versions",
        "",
        *[f"- {name}: {value}" for name, value in about],
        f"- user-space samples perf could not name (a bare address), the most in any row: "
        f"{fmt(unresolved_share(done), 2)}%",
        f"- samples lost, over all runs: {sum(r.profile.lost for c in done for r in c.runs)}",
        "- perf record's warnings (past its usual lines): " + (" / ".join(warnings) or "none"),
        "",
        "## Servers",
        "",
        *[f"- {label} (`{s.name}`): `{scaling.shown(s, 1)}`" for label, s in chosen],
    ]
    return "\n".join(parts) + "\n"


def versions(chosen: list[Server], peers_python: str) -> list[tuple[str, str]]:
    about = compare.versions([s for s in chosen if s.runtime == "squall"], tools=True)
    compiled = sorted(
        str(p.relative_to(compare.ROOT)) for p in (compare.ROOT / "squall").rglob("*.so")
    )
    about.append(("squall's compiled modules", ", ".join(compiled) if compiled else "none"))
    if any(s.runtime == "peers" for s in chosen):
        text = compare.output_of(
            [peers_python, "-c", compare.VERSIONS_SCRIPT, "uvicorn", "uvloop", "httptools"]
        )
        with contextlib.suppress(json.JSONDecodeError):
            text = ", ".join(f"{k} {v}" for k, v in json.loads(text).items())
        about.append((f"peers ({peers_python})", text))
    about.append(("perf", compare.output_of(["perf", "version"])))
    return about


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    names = list(servers("python"))
    parser.add_argument(
        "--servers", default=",".join(names), help=f"comma list of {', '.join(names)} (default all)"
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)} (default both)"
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (default 16)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (default 1)")
    parser.add_argument(
        "--symbols", action="store_true", help=f"also the top {TOP_SYMBOLS} C and Python symbols"
    )
    parser.add_argument(
        "--peers-python",
        help="the interpreter with uvicorn, uvloop and httptools "
        "(default bench/.venv, made and filled as bench/compare.py does)",
    )
    parser.add_argument("--save", action="store_true", help="write bench/results/profile-*.md")
    args = parser.parse_args()
    if args.rounds < 1 or args.connections < 1 or args.threads < 1:
        parser.error("--rounds, --connections and --threads must be positive")
    if args.duration < 2 * MARGIN + 1:
        parser.error(
            f"--duration: at least {2 * MARGIN + 1:g} s (perf leaves out {MARGIN:g} s at each end)"
        )
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: a comma list of {', '.join(MODES)}")
    peers_python = args.peers_python or str(compare.VENV_PYTHON)
    known = servers(peers_python)
    picked = [n.strip() for n in args.servers.split(",") if n.strip()]
    if not picked or any(n not in known for n in picked):
        parser.error(f"--servers: a comma list of {', '.join(known)}")
    chosen = [known[n] for n in picked]
    if shutil.which("perf") is None:
        raise SystemExit("profile.py needs perf (Debian: apt-get install linux-perf)")

    with compare.OwnedProcesses("profile.py") as owner:
        if any(s.runtime == "peers" for _l, s in chosen) and args.peers_python is None:
            compare.ensure_venv()
        compare.ensure_debian(["wrk"])
        with tempfile.TemporaryDirectory(prefix="squall-profile-") as tmp:
            owner.status = benchmark(args, chosen, modes, peers_python, Path(tmp))
    return owner.status


def benchmark(
    args: argparse.Namespace,
    chosen: list[tuple[str, Server]],
    modes: list[str],
    peers_python: str,
    tmp: Path,
) -> int:
    when = datetime.datetime.now().astimezone()
    about = versions([s for _l, s in chosen], peers_python)
    runs: dict[tuple[str, str], list[Run | None]] = {
        (s.name, m): [] for _l, s in chosen for m in modes
    }
    total = args.rounds * len(modes) * len(chosen)
    done = failures = 0
    compare.announce(
        f"profile.py: {len(chosen)} servers x {len(modes)} modes x {args.rounds} rounds",
        total,
        args.duration,
        overhead=4,
    )
    for round_no in range(1, args.rounds + 1):
        for mode in modes:
            for label, server in chosen:
                done += 1
                try:
                    run: Run | None = measure(server, mode, args, tmp, str(round_no))
                except (compare.StartError, RuntimeError, ValueError, OSError) as exc:
                    failures += 1
                    run = None
                    print(f"  {label} {mode} round {round_no}: FAILED: {exc}", file=sys.stderr)
                except subprocess.TimeoutExpired as exc:
                    failures += 1
                    run = None
                    print(f"  {label} {mode} round {round_no}: TIMED OUT: {exc}", file=sys.stderr)
                runs[server.name, mode].append(run)
                if run:
                    shares = run_shares(run)
                    print(
                        f"  [{done}/{total}] round {round_no} {mode:9} {label:22} "
                        f"{run.rps:8.0f} req/s  {run.cpu_us:6.1f} µs/req  "
                        + "  ".join(f"{p} {shares[p]:4.1f}%" for p in PARTS)
                        + f"  sampled {run.coverage_pct:3.0f}%  lost {run.profile.lost}  "
                        f"errors {run.errors}",
                        file=sys.stderr,
                        flush=True,
                    )
    text = report(args, chosen, modes, runs, when, about)
    print(text, flush=True)
    if args.save:
        compare.save_result("profile", when, text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
