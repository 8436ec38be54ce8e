"""Side by side under wrk: squall against tornado, uvicorn, gunicorn, granian, socketify, nginx.

    python bench/compare.py [--duration 5] [--rounds 3] [--servers NAME,...]
                            [--modes keepalive,close,paced] [--connections 64]
                            [--threads 2] [--workers 2] [--pace-ms 6]
                            [--squall-variants shared-socket,no-steering,pure] [--smoke]
                            [--before TREE]
    python bench/compare.py --cpu-table [--duration 5] [--rounds 3]

Every server runs --workers workers (2 by default) and answers GET / with
the 12-byte body "Hello, world" (the apps are in bench/peers/). The peers
run from their own venv, bench/.venv, made and filled from
bench/requirements-peers.txt on first use; squall runs from this repository
with the interpreter running this script. wrk and nginx come from Debian
(`apt-get install -y wrk nginx` when missing), and so does libuv1, which
socketify's native library needs.

Three modes: keep-alive (`wrk -t2 -c64 -dDs --latency`), a new connection
per request (the same with `-H "Connection: close"`), and new connections
at a pace (the same again, each connection waiting --pace-ms before each
request, through bench/pace.lua). The first two saturate the server, so
each server's latency there comes at its own request rate; the paced mode
offers every server about the same rate (64 connections / 6 ms: some
9,000 req/s, under what every Python peer but tornado can take), so its
latencies compare servers at the same load. The runs interleave:
for each round, for each mode, every server once in the same order (start
it, wait until it answers, warm up 1 s, measure, stop it by PID), so that
drift on the machine hits all of them alike. wrk and the servers share the
machine's CPUs.

Per run: req/s, p50 and p99 latency and errors from wrk; the server's CPU
time per request (utime + stime of the supervisor and every worker, from
/proc/PID/stat before and after the measured window); the median PSS of its
workers (/proc/PID/smaps_rollup, at the end of the window). One Markdown
table per mode gives the medians over rounds, with the ratio of req/s to
uvicorn serving the raw ASGI app; it is printed and written to
bench/results/compare-YYYY-MM-DD-HHMM.md with the versions of everything.

--cpu-table runs the set of the issue "Speed: the least CPU per request":
uvicorn (raw ASGI, the baseline), granian RSGI and ASGI, socketify.py's
native API, squall native and raw ASGI, Starlette on uvicorn, granian and
squall, and each squall server again with SQUALL_PURE_PYTHON=1 (+pure),
with 1 worker each, wrk -t1 -c16, modes keepalive and close. Before the
usual tables, its report has one table of server CPU µs per request in
both modes, each with its ratio to uvicorn: uvicorn's µs / the server's
(for a Starlette row, Starlette-on-uvicorn's µs / the server's). --servers,
--workers, --threads, --connections and --modes still override the set.

--before TREE runs every selected squall server a second time from another
checkout, a git worktree of an older commit built in place, right after
this tree's in every round (`NAME+before`, and a row under this tree's in
the CPU table): the A/B of a change, end to end, on the same drift.

--smoke starts each selected server, asks it once with http.client, stops it
and prints its pids, then "left: none" when no process it started is alive
(no wrk; tests/test_bench_smoke.py runs it).

Every process started is stopped by PID: SIGTERM to the top process, a
bounded wait, then SIGTERM and SIGKILL to whatever is left of the
descendants recorded from /proc/PID/task/TID/children. The script makes
itself a child subreaper, so a server's orphans come back to it and a final
sweep kills any stray, also on Ctrl-C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime
import fcntl
import hashlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
VENV = BENCH / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
REQUIREMENTS = BENCH / "requirements-peers.txt"
RESULTS = BENCH / "results"
NGINX_TEMPLATE = PEERS / "nginx.conf.template"

WORKERS = 2  # the default of --workers
BODY = b"Hello, world"
WARMUP_SECONDS = 1
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
BASELINE = "uvicorn"
MODES = {
    "keepalive": ("keep-alive", []),
    "close": ("new connection per request", ["-H", "Connection: close"]),
    "paced": (
        "new connection per request, paced: the same load for every server",
        ["-H", "Connection: close", "-s", "bench/pace.lua"],
    ),
}
PACE_ENV = "SQUALL_BENCH_PACE_MS"  # read by bench/pace.lua
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36
APT_LOCK_WAIT = "DPkg::Lock::Timeout=300"  # wait for another apt-get rather than fail


# -- the servers -------------------------------------------------------------------------------

#: (port, temporary directory, workers) -> argv
Command = Callable[[int, Path, int], list[str]]
#: squall's switch to its pure-Python modules (instead of its compiled build), read at start-up.
PURE_ENV = "SQUALL_PURE_PYTHON"


@dataclass(frozen=True)
class Server:
    name: str
    what: str
    command: Command
    runtime: str  # "peers" (bench/.venv), "squall" (this interpreter) or "nginx"
    #: Set in the server's environment (on top of this script's, less PURE_ENV).
    env: tuple[tuple[str, str], ...] = ()
    #: With 1 worker it serves from its one process, without a supervisor (uvicorn, tornado).
    lone_at_one: bool = False
    #: Where it runs (None: this repository). `python -m` puts it first on sys.path.
    cwd: Path | None = None

    def processes(self, workers: int) -> int:
        """How many processes it runs once up: its workers and, mostly, a supervisor."""
        return 1 if workers == 1 and self.lone_at_one else workers + 1


def uvicorn(app: str) -> Command:
    return lambda port, _dir, workers: [
        str(VENV_PYTHON),
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def granian(interface: str, app: str) -> Command:
    return lambda port, _dir, workers: [
        str(VENV_PYTHON),
        "-m",
        "granian",
        "--interface",
        interface,
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        app,
    ]


def squall(app: str, interface: str, *flags: str) -> Command:
    return lambda port, _dir, workers: [
        sys.executable,
        "-m",
        "squall",
        app,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--interface",
        interface,
        "--log-level",
        "warning",
        *flags,
    ]


def nginx_command(port: int, directory: Path, workers: int) -> list[str]:
    conf = (
        NGINX_TEMPLATE.read_text()
        .replace("@PORT@", str(port))
        .replace("@DIR@", str(directory))
        .replace("@WORKERS@", str(workers))
    )
    (directory / "nginx.conf").write_text(conf)
    return [nginx_binary() or "nginx", "-p", str(directory), "-c", str(directory / "nginx.conf")]


SERVERS = [
    Server(
        "tornado",
        "tornado, HTTPServer.bind + start(N) (bench/peers/tornado_app.py)",
        lambda port, _dir, workers: [
            str(VENV_PYTHON),
            str(PEERS / "tornado_app.py"),
            str(port),
            str(workers),
        ],
        "peers",
        lone_at_one=True,  # start(1) does not fork
    ),
    Server(
        "uvicorn",
        "uvicorn --workers N --http httptools --loop uvloop, raw ASGI",
        uvicorn("bench.peers.asgi_raw:app"),
        "peers",
        lone_at_one=True,
    ),
    Server(
        "uvicorn-starlette",
        "uvicorn --workers N --http httptools --loop uvloop, Starlette",
        uvicorn("bench.peers.starlette_app:app"),
        "peers",
        lone_at_one=True,
    ),
    Server(
        "gunicorn-uvicorn",
        "gunicorn -w N -k uvicorn_worker.UvicornWorker, raw ASGI",
        lambda port, _dir, workers: [
            str(VENV_PYTHON),
            "-m",
            "gunicorn",
            "-w",
            str(workers),
            "-k",
            "uvicorn_worker.UvicornWorker",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "bench.peers.asgi_raw:app",
        ],
        "peers",
    ),
    Server(
        "granian-asgi",
        "granian --interface asgi --workers N --loop uvloop, raw ASGI",
        granian("asgi", "bench.peers.asgi_raw:app"),
        "peers",
    ),
    Server(
        "granian-rsgi",
        "granian --interface rsgi --workers N --loop uvloop, RSGI",
        granian("rsgi", "bench.peers.rsgi_app:app"),
        "peers",
    ),
    Server(
        "granian-starlette",
        "granian --interface asgi --workers N --loop uvloop, Starlette",
        granian("asgi", "bench.peers.starlette_app:app"),
        "peers",
    ),
    Server(
        "socketify",
        "socketify.py's native App (uWebSockets, C++), N forked workers on SO_REUSEPORT "
        "(bench/peers/socketify_app.py)",
        lambda port, _dir, workers: [
            str(VENV_PYTHON),
            str(PEERS / "socketify_app.py"),
            str(port),
            str(workers),
        ],
        "peers",
    ),
    Server(
        "nginx",
        'nginx, worker_processes N, return 200 "Hello, world" (bench/peers/nginx.conf.template)',
        nginx_command,
        "nginx",
    ),
    Server(
        "squall-native",
        "squall --interface squall, web.Application (bench/peers/squall_native.py)",
        squall("bench.peers.squall_native:app", "squall"),
        "squall",
    ),
    Server(
        "squall-asgi",
        "squall --interface asgi, raw ASGI",
        squall("bench.peers.asgi_raw:app", "asgi"),
        "squall",
    ),
    Server(
        "squall-starlette",
        "squall --interface asgi, Starlette",
        squall("bench.peers.starlette_app:app", "asgi"),
        "squall",
    ),
]


@dataclass(frozen=True)
class Variant:
    """The same squall server run another way: more flags, more environment."""

    what: str
    flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: Path | None = None

    def of(self, server: Server, suffix: str) -> Server:
        base = server.command
        return Server(
            f"{server.name}+{suffix}",
            f"{server.what}, {self.what}",
            lambda port, d, workers: [*base(port, d, workers), *self.flags],
            server.runtime,
            env=server.env + self.env,
            lone_at_one=server.lone_at_one,
            cwd=self.cwd or server.cwd,
        )


#: name suffix -> variant
SQUALL_VARIANTS = {
    "shared-socket": Variant("--shared-socket", flags=("--shared-socket",)),
    "no-steering": Variant("--no-steering", flags=("--no-steering",)),
    "pure": Variant(
        f"{PURE_ENV}=1 (its pure-Python modules, not its compiled build)", env=((PURE_ENV, "1"),)
    ),
}
VARIANT_SERVERS = [
    variant.of(server, suffix)
    for suffix, variant in SQUALL_VARIANTS.items()
    for server in SERVERS
    if server.runtime == "squall"
]
ALL_SERVERS = {server.name: server for server in SERVERS + VARIANT_SERVERS}

#: --cpu-table: (server, the row's label, the server whose µs its ratio divides), in order.
CPU_TABLE = [
    ("uvicorn", "uvicorn raw ASGI (httptools, uvloop)", "uvicorn"),
    ("granian-rsgi", "granian RSGI", "uvicorn"),
    ("granian-asgi", "granian ASGI", "uvicorn"),
    ("socketify", "socketify.py native (uWebSockets, C++)", "uvicorn"),
    ("squall-native", "squall native", "uvicorn"),
    ("squall-native+pure", f"squall native, {PURE_ENV}=1", "uvicorn"),
    ("squall-asgi", "squall raw ASGI", "uvicorn"),
    ("squall-asgi+pure", f"squall raw ASGI, {PURE_ENV}=1", "uvicorn"),
    ("uvicorn-starlette", "Starlette on uvicorn", "uvicorn-starlette"),
    ("granian-starlette", "Starlette on granian (ASGI)", "uvicorn-starlette"),
    ("squall-starlette", "Starlette on squall", "uvicorn-starlette"),
    ("squall-starlette+pure", f"Starlette on squall, {PURE_ENV}=1", "uvicorn-starlette"),
]
CPU_TABLE_WORKERS = 1
CPU_TABLE_THREADS = 1
CPU_TABLE_CONNECTIONS = 16
CPU_TABLE_MODES = ["keepalive", "close"]


# -- processes ---------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_time(pid: int) -> str | None:
    """The start time in clock ticks of a live process (tells it from a reused pid); None if gone."""
    fields = proc_stat(pid)
    return None if fields is None or fields[0] in ("Z", "X") else fields[19]


def alive(pid: int, started: str | None) -> bool:
    return started is not None and start_time(pid) == started


def children(pid: int) -> list[int]:
    """Direct children of every thread of `pid` (a thread that forks is its child's parent)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError):
            out += [int(p) for p in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return out


def stop_supervisor(proc: subprocess.Popen[bytes], pids: Iterable[int] = ()) -> None:
    """SIGTERM the supervisor, wait, then SIGKILL whatever of it and its workers is left."""
    known = {pid: start_time(pid) for pid in set(pids) | set(children(proc.pid))}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    deadline = time.monotonic() + 5
    for pid, started in known.items():
        while started is not None and start_time(pid) == started and time.monotonic() < deadline:
            time.sleep(0.05)
        if started is not None and start_time(pid) == started:
            print(f"  (worker pid {pid} outlived the supervisor: SIGKILL)", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = children(pid)
    while todo:
        child = todo.pop()
        if child not in found:
            found.append(child)
            todo += children(child)
    return found


def tree(pid: int) -> dict[int, str]:
    """pid -> start time for `pid` and every live descendant."""
    out: dict[int, str] = {}
    for p in [pid, *descendants(pid)]:
        started = start_time(p)
        if started is not None:
            out[p] = started
    return out


def cpu_ticks(pid: int) -> int | None:
    fields = proc_stat(pid)
    return None if fields is None else int(fields[11]) + int(fields[12])  # utime + stime


def pss_kib(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return None


def reap(pid: int) -> None:
    """Collect a zombie that is our child (a server's orphan, through the subreaper)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while stopping processes; they are raised once it is done."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def wait_gone(pids: dict[int, str], seconds: float) -> dict[int, str]:
    deadline = time.monotonic() + seconds
    while True:
        for pid in pids:
            reap(pid)
        left = {pid: s for pid, s in pids.items() if alive(pid, s)}
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


@dataclass
class Running:
    server: Server
    proc: subprocess.Popen[bytes]
    log: Path
    known: dict[int, str] = field(default_factory=dict)  # every pid seen in its tree

    def record(self) -> dict[int, str]:
        now = tree(self.proc.pid)
        self.known.update(now)
        return now

    def stop(self) -> None:
        """SIGTERM the top process, wait (bounded), then TERM and KILL what is left of its tree."""
        with signals_held():
            if self.proc.poll() is None:
                self.record()
                self.proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + STOP_TIMEOUT
                while self.proc.poll() is None and time.monotonic() < deadline:
                    self.record()  # a worker respawned meanwhile is recorded too
                    time.sleep(0.05)
                if self.proc.poll() is None:
                    print(
                        f"  ({self.server.name}: SIGKILL after {STOP_TIMEOUT:g} s)", file=sys.stderr
                    )
                    self.proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(5)
            rest = {p: s for p, s in self.known.items() if p != self.proc.pid}
            rest = wait_gone(rest, 2.0)  # workers that follow their parent out
            for sig, seconds in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
                if not rest:
                    break
                for pid, started in rest.items():
                    if alive(pid, started):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, sig)
                rest = wait_gone(rest, seconds)
            if rest:
                print(f"  ({self.server.name}: could not stop {sorted(rest)})", file=sys.stderr)


def sweep() -> list[int]:
    """SIGKILL and reap every descendant of this script still alive (orphans come back to it)."""
    left = [pid for pid in descendants(os.getpid()) if start_time(pid) is not None]
    with signals_held():
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        for pid in descendants(os.getpid()):
            while start_time(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            reap(pid)
    return left


def become_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ask(port: int, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class StartError(Exception):
    pass


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def serving(
    server: Server, workdir: Path, workers: int = WORKERS
) -> Iterator[tuple[Running, int, tuple[int, bytes]]]:
    """Start `server` with `workers` workers on a free port; wait until it answers GET / and
    its workers are up."""
    port = free_port()
    rundir = Path(tempfile.mkdtemp(prefix=f"{server.name}-", dir=workdir))
    log = rundir / "server.log"
    command = server.command(port, rundir, workers)
    # A PURE_ENV set where this script runs would turn every squall server pure: only the
    # +pure variants set it.
    env = {k: v for k, v in os.environ.items() if k != PURE_ENV}
    env |= {"PYTHONPATH": str(ROOT), **dict(server.env)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=server.cwd or ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches this script only
        )
    running = Running(server, proc, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        answer: tuple[int, bytes] | None = None
        while answer is None:
            if proc.poll() is not None:
                raise StartError(f"exited with status {proc.returncode}:\n{log_tail(log)}")
            if time.monotonic() > deadline:
                raise StartError(f"no answer within {START_TIMEOUT:g} s:\n{log_tail(log)}")
            try:
                answer = ask(port)
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
        # The first answer can come before every worker is up (uvicorn and granian spawn them).
        while len(running.record()) < server.processes(workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        running.record()
        yield running, port, answer
    finally:
        running.stop()


# -- setup -------------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_lock() -> Iterator[None]:
    """One setup at a time (two test runs could both make the venv): flock on bench/."""
    fd = os.open(BENCH, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_venv() -> None:
    """bench/.venv with bench/requirements-peers.txt installed (re-installed when it changes)."""
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = VENV / ".requirements.sha256"
    with bench_lock():
        if not VENV_PYTHON.exists():
            print(f"compare.py: creating {VENV.relative_to(ROOT)}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, timeout=300)
        if not stamp.exists() or stamp.read_text().strip() != wanted:
            print(
                f"compare.py: pip install -r {REQUIREMENTS.relative_to(ROOT)} into "
                f"{VENV.relative_to(ROOT)}",
                file=sys.stderr,
                flush=True,
            )
            subprocess.run(
                [str(VENV_PYTHON), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                check=True,
                timeout=900,
            )
            stamp.write_text(wanted + "\n")


def find_tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def nginx_binary() -> str | None:
    return find_tool("nginx")


#: Debian packages that are libraries, not tools on PATH: package -> name for find_library.
LIBRARIES = {"libuv1": "uv"}


def present(package: str) -> bool:
    if package in LIBRARIES:
        return ctypes.util.find_library(LIBRARIES[package]) is not None
    return find_tool(package) is not None


def ensure_debian(packages: list[str]) -> None:
    """apt-get install the tools (wrk, nginx) not on PATH and the libraries (libuv1) not found."""
    missing = [name for name in packages if not present(name)]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise SystemExit(
            f"compare.py: {' and '.join(missing)} not found, and no apt-get to install "
            f"{'it' if len(missing) == 1 else 'them'}: install {' '.join(missing)} and run again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"compare.py: apt-get install -y {' '.join(missing)}", file=sys.stderr, flush=True)
    with bench_lock():
        subprocess.run(
            ["apt-get", "-o", APT_LOCK_WAIT, "update", "-qq"], check=True, env=env, timeout=600
        )
        subprocess.run(
            ["apt-get", "-o", APT_LOCK_WAIT, "install", "-y", "-qq", *missing],
            check=True,
            env=env,
            timeout=900,
            stdout=subprocess.DEVNULL,
        )
    still = [name for name in missing if not present(name)]
    if still:
        raise SystemExit(f"compare.py: {' '.join(still)} still not found after apt-get install")


def output_of(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (done.stdout + done.stderr).strip()


def versions(selected: list[Server], tools: bool) -> list[tuple[str, str]]:
    out = [
        ("python", sys.version.split()[0]),
        (
            "machine",
            f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs, {cpu_model()}",
        ),
    ]
    commit = output_of(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = output_of(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    mine = ["squall", "uvloop", "httptools", "starlette"]
    found = json.loads(output_of([sys.executable, "-c", VERSIONS_SCRIPT, *mine]))
    out.append(
        (
            "squall",
            f"{found.pop('squall')} (commit {commit}{', with uncommitted changes' if dirty else ''}); "
            + ", ".join(f"{k} {v}" for k, v in found.items()),
        )
    )
    if any(s.runtime == "peers" for s in selected):
        peers = [
            "tornado",
            "uvicorn",
            "gunicorn",
            "uvicorn-worker",
            "granian",
            "socketify",
            "starlette",
            "uvloop",
            "httptools",
        ]
        text = output_of([str(VENV_PYTHON), "-c", VERSIONS_SCRIPT, *peers])
        py = output_of([str(VENV_PYTHON), "-c", "import sys; print(sys.version.split()[0])"])
        with contextlib.suppress(json.JSONDecodeError):
            text = ", ".join(f"{k} {v}" for k, v in json.loads(text).items())
        out.append(("peers (bench/.venv, python " + py + ")", text))
    if tools:
        out.append(("wrk", output_of(["wrk", "-v"]).split("Copyright")[0].strip()))
    if any(s.runtime == "nginx" for s in selected):
        out.append(("nginx", output_of([nginx_binary() or "nginx", "-v"]).split(":")[-1].strip()))
    return out


VERSIONS_SCRIPT = (
    "import importlib.metadata as m, json, sys\n"
    "def v(n):\n"
    "    try:\n        return m.version(n)\n"
    "    except m.PackageNotFoundError:\n        return 'not installed'\n"
    "print(json.dumps({n: v(n) for n in sys.argv[1:]}))\n"
)


def announce(plan: str, runs: int, duration: float, overhead: float) -> None:
    """The plan of a run and about how long it takes, on stderr (each run: warm-up, load, overhead)."""
    minutes = runs * (duration + WARMUP_SECONDS + overhead) / 60
    print(f"{plan}, {duration:g} s each (about {minutes:.0f} min)", file=sys.stderr, flush=True)


def load_average() -> float:
    return os.getloadavg()[0]


def load_note(loads: list[float]) -> tuple[str, str]:
    """The report's line on the load averages `load_average` gave at each run's start."""
    return (
        "load average (1 min) at the start of each run",
        f"min {min(loads):.1f}, median {statistics.median(loads):.1f}, max {max(loads):.1f} "
        f"(the run itself loads the {os.cpu_count()} CPUs fully)",
    )


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Result:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx: int
    cpu_us: float  # server CPU time per request, microseconds
    worker_pss_mib: float
    busiest_share: float  # the busiest worker's share of the workers' CPU time, percent
    steal_pct: float = float("nan")  # the host's CPU steal over the run, percent of all CPU time

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def parse_wrk(text: str) -> dict[str, float]:
    """req/s, requests, p50/p99 (ms), socket errors and non-2xx/3xx from `wrk --latency` output."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output without /{pattern}/:\n{text}")
        return match

    out = {
        "rps": float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        "requests": float(find(r"^\s*(\d+) requests in ").group(1)),
        "p50_ms": to_ms(find(r"^\s+50(?:\.0+)?%\s+(\S+)").group(1)),
        "p99_ms": to_ms(find(r"^\s+99(?:\.0+)?%\s+(\S+)").group(1)),
        "socket_errors": 0.0,
        "non_2xx": 0.0,
    }
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if errors:
        out["socket_errors"] = float(sum(int(n) for n in errors.groups()))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if non_2xx:
        out["non_2xx"] = float(non_2xx.group(1))
    return out


def wrk(
    port: int,
    seconds: float,
    args: argparse.Namespace,
    headers: list[str],
    pace_ms: int | None = None,
    path: str = "/",
) -> str:
    """`wrk --latency` with `headers` (any options); `pace_ms` for bench/pace.lua."""
    command = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        "--latency",
        *headers,
        f"http://127.0.0.1:{port}{path}",
    ]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
        env={**os.environ, PACE_ENV: str(pace_ms)} if pace_ms is not None else None,
    )
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            with signals_held():
                proc.kill()
                proc.wait(5)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with status {proc.returncode}:\n{out.decode()}")
    return out.decode(errors="replace")


#: A run with more steal than this is flagged: the host took CPU time from the box.
STEAL_FLAG_PCT = 3.0


def host_cpu_ticks() -> tuple[int, int]:
    """(steal, all) CPU ticks of the whole machine so far, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0, 0
    ticks = [int(each) for each in fields[:8]]  # guest time is counted in user already
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks)


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    elapsed = after[1] - before[1]
    return 100 * (after[0] - before[0]) / elapsed if elapsed > 0 else float("nan")


def measure(server: Server, mode: str, args: argparse.Namespace, workdir: Path) -> Result:
    headers = MODES[mode][1]
    pace_ms = args.pace_ms if mode == "paced" else None
    with serving(server, workdir, args.workers) as (running, port, _answer):
        wrk(port, WARMUP_SECONDS, args, headers, pace_ms)
        before = {pid: (s, cpu_ticks(pid)) for pid, s in running.record().items()}
        host_before = host_cpu_ticks()
        text = wrk(port, args.duration, args, headers, pace_ms)
        steal = steal_share(host_before, host_cpu_ticks())
        after = running.record()
        used: dict[int, int] = {}
        for pid, started in after.items():
            ticks = cpu_ticks(pid)
            if ticks is None:
                continue
            start_s, start_ticks = before.get(pid, (None, None))
            used[pid] = ticks - (start_ticks or 0) if start_s == started else ticks
        # The workers are the processes that did the work (the supervisor idles).
        root = running.proc.pid
        workers = sorted((p for p in used if p != root), key=lambda p: used[p], reverse=True)
        workers = workers[: args.workers] or [root]
        pss = [kib for kib in (pss_kib(p) for p in workers) if kib is not None]
        worker_ticks = [used[p] for p in workers]
        if running.proc.poll() is not None:
            raise RuntimeError(f"the server exited during the run:\n{log_tail(running.log)}")
    wrk_out = parse_wrk(text)
    requests = int(wrk_out["requests"])
    cpu_seconds = sum(used.values()) / CLOCK_TICKS
    return Result(
        rps=wrk_out["rps"],
        requests=requests,
        p50_ms=wrk_out["p50_ms"],
        p99_ms=wrk_out["p99_ms"],
        socket_errors=int(wrk_out["socket_errors"]),
        non_2xx=int(wrk_out["non_2xx"]),
        cpu_us=cpu_seconds / requests * 1e6 if requests else float("nan"),
        worker_pss_mib=statistics.median(pss) / 1024 if pss else float("nan"),
        busiest_share=(
            100 * max(worker_ticks) / sum(worker_ticks) if sum(worker_ticks) else float("nan")
        ),
        steal_pct=steal,
    )


# -- report ------------------------------------------------------------------------------------


def fmt(value: float, digits: int = 0) -> str:
    return "n/a" if value != value else f"{value:,.{digits}f}"  # NaN check


def mode_table(mode: str, servers: list[Server], runs: dict[str, list[Result | None]]) -> str:
    ok = {name: [r for r in results if r is not None] for name, results in runs.items()}
    base = statistics.median(r.rps for r in ok[BASELINE]) if ok.get(BASELINE) else float("nan")
    lines = [
        "| server | req/s | vs uvicorn | p50 (ms) | p99 (ms) | CPU µs/req | worker PSS (MiB) "
        "| errors | req/s spread | host steal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for server in servers:
        got = ok[server.name]
        failed = len(runs[server.name]) - len(got)
        if not got:
            lines.append(f"| {server.name} | failed | | | | | | | | |")
            continue

        def med(key: str, got: list[Result] = got) -> float:
            values: list[float] = [getattr(r, key) for r in got]
            return statistics.median(values)

        rps = med("rps")
        spread = (max(r.rps for r in got) - min(r.rps for r in got)) / rps * 100
        errors = sum(r.errors for r in got)
        error_cell = f"{errors:,}" + (f" ({failed} runs failed)" if failed else "")
        lines.append(
            f"| {server.name} | {fmt(rps)} | {fmt(rps / base, 2)} | {fmt(med('p50_ms'), 2)} "
            f"| {fmt(med('p99_ms'), 2)} | {fmt(med('cpu_us'), 1)} | {fmt(med('worker_pss_mib'), 1)} "
            f"| {error_cell} | {fmt(spread, 0)}% | {steal_cell(got)} |"
        )
    return "\n".join(lines)


def steal_cell(results: list[Result]) -> str:
    """The most steal in any of the runs, flagged past STEAL_FLAG_PCT."""
    worst = max((r.steal_pct for r in results if r.steal_pct == r.steal_pct), default=float("nan"))
    flag = " ⚠" if worst > STEAL_FLAG_PCT else ""
    return f"{fmt(worst, 1)}%{flag}"


def cpu_table(
    servers: list[Server], modes: list[str], runs: dict[str, dict[str, list[Result | None]]]
) -> str:
    """--cpu-table's table: server CPU µs per request in keep-alive and new-connection mode,
    each with its ratio to its baseline's (uvicorn's, or Starlette-on-uvicorn's), medians."""
    labels = {name: (label, base) for name, label, base in CPU_TABLE}
    order = {name: i for i, (name, _label, _base) in enumerate(CPU_TABLE)}
    rows = []
    for server in servers:
        name = server.name.removesuffix("+before")  # --before: under the row it is compared with
        label, base = labels.get(name, (name, BASELINE))
        before = name != server.name
        rows.append((server.name, f"{label}, before" if before else label, base, name, before))
    rows.sort(key=lambda row: (order.get(row[3], len(order)), row[4]))  # the order

    def cpu_us(mode: str, name: str) -> float:
        got = [r.cpu_us for r in runs.get(mode, {}).get(name, []) if r is not None]
        return statistics.median(got) if got else float("nan")

    times = "\N{MULTIPLICATION SIGN} uvicorn"
    lines = [
        f"| server | keep-alive µs | {times} | new connection µs | {times} | host steal |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label, base, _name, _before in rows:
        cells = []
        for mode in CPU_TABLE_MODES:
            mine = cpu_us(mode, name)
            ratio = cpu_us(mode, base) / mine if mine > 0 else float("nan")
            cells += [fmt(mine, 1), fmt(ratio, 2)]
        results = [r for mode in modes for r in runs[mode].get(name, []) if r is not None]
        failed = sum(r is None for mode in modes for r in runs[mode].get(name, []))
        note = f" ({failed} runs failed)" if failed else ""
        lines.append(f"| {label}{note} | {' | '.join(cells)} | {steal_cell(results)} |")
    return "\n".join(lines)


def rounds_table(servers: list[Server], runs: dict[str, list[Result | None]], rounds: int) -> str:
    lines = [
        "| server | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " |",
        "|---|" + "---:|" * rounds,
    ]
    for server in servers:
        cells = [
            f"{fmt(r.rps)} ({fmt(r.cpu_us, 1)} µs, {fmt(r.busiest_share)}%, "
            f"steal {fmt(r.steal_pct, 1)}%)"
            if r
            else "failed"
            for r in runs[server.name]
        ]
        lines.append(f"| {server.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(
    args: argparse.Namespace,
    servers: list[Server],
    modes: list[str],
    runs: dict[str, dict[str, list[Result | None]]],
    when: datetime.datetime,
    about: list[tuple[str, str]],
) -> str:
    parts = [
        f"# squall side by side, {when:%Y-%m-%d %H:%M %Z}",
        "",
        f"`{' '.join(['python', 'bench/compare.py', *sys.argv[1:]])}`: {args.workers} "
        f"worker{'s' if args.workers > 1 else ''} each, "
        f"GET / answered with the 12-byte body {BODY.decode()!r}; wrk -t{args.threads} "
        f"-c{args.connections} -d{args.duration:g}s --latency after a {WARMUP_SECONDS} s "
        f"warm-up; {args.rounds} rounds, interleaved (each round runs every mode, each mode "
        f"every server in this order). wrk and the servers share the machine's CPUs. Medians "
        f"over the rounds; errors are summed over them; vs uvicorn = req/s / uvicorn's "
        f"(raw ASGI) req/s in the same mode. CPU µs/req: user + system CPU time of the "
        f"supervisor and every worker during the measured window, per request answered. "
        f"Worker PSS: median over the {args.workers} busiest process"
        f"{'es' if args.workers > 1 else ''}, at the end of the window. "
        f"req/s spread: (max - min) / median over the rounds.",
        "",
    ]
    if args.cpu_table:
        parts += [
            "## Server CPU time per request",
            "",
            "µs = user + system CPU time of every process of the server (supervisor and "
            "workers, from /proc/PID/stat) over the measured window / the requests answered, "
            "median over the rounds. \N{MULTIPLICATION SIGN} uvicorn = uvicorn's µs (raw ASGI, "
            "httptools + uvloop) / the server's, in the same mode; for Starlette, Starlette-on-uvicorn's µs / the "
            "server's: above 1 is less CPU per request. Host steal: the most of any of the "
            f"server's runs, ⚠ past {STEAL_FLAG_PCT:g}%.",
            "",
            cpu_table(servers, modes, runs),
            "",
        ]
    for mode in modes:
        label, headers = MODES[mode]
        flag = f" {' '.join(repr(h) if ' ' in h else h for h in headers)}" if headers else ""
        parts += [f"## {label} (wrk -c{args.connections}{flag})", ""]
        if mode == "paced":
            offered = args.connections / args.pace_ms * 1000
            parts += [
                f"Each connection waits {args.pace_ms:g} ms before each request "
                f"({PACE_ENV}={args.pace_ms:g}), which offers at most {offered:,.0f} req/s; "
                f"wrk leaves the wait out of the latency. A server that keeps up answers "
                f"about as many as the others, so its latencies are at the same load.",
                "",
            ]
        parts += [mode_table(mode, servers, runs[mode]), ""]
    parts += [
        "## Each round",
        "",
        "req/s (CPU µs per request, the busiest worker's share of the workers' CPU time: "
        "50% is an even split).",
        "",
    ]
    for mode in modes:
        parts += [f"{MODES[mode][0]}:", "", rounds_table(servers, runs[mode], args.rounds), ""]
    parts += ["## Versions", ""]
    parts += [f"- {name}: {value}" for name, value in about]
    parts += ["", "## Servers", "", f"N = {args.workers}.", ""]
    parts += [f"- `{s.name}`: {s.what}" for s in servers]
    return "\n".join(parts) + "\n"


# -- main --------------------------------------------------------------------------------------


def select(args: argparse.Namespace) -> list[Server]:
    if args.servers:
        names = [n.strip() for n in args.servers.split(",") if n.strip()]
        unknown = [n for n in names if n not in ALL_SERVERS]
        if unknown:
            raise SystemExit(
                f"compare.py: unknown server(s) {', '.join(unknown)}; "
                f"known: {', '.join(ALL_SERVERS)}"
            )
        chosen = [ALL_SERVERS[n] for n in names]
    elif args.cpu_table:
        chosen = [ALL_SERVERS[name] for name, _label, _base in CPU_TABLE]
    else:
        chosen = list(SERVERS)
    for variant in args.squall_variants.split(",") if args.squall_variants else []:
        if variant not in SQUALL_VARIANTS:
            raise SystemExit(
                f"compare.py: unknown squall variant {variant!r}; known: {', '.join(SQUALL_VARIANTS)}"
            )
        chosen += [
            ALL_SERVERS[f"{s.name}+{variant}"]
            for s in list(chosen)
            if s.runtime == "squall" and "+" not in s.name
        ]
    if args.before:
        chosen = with_before(chosen, Path(args.before).resolve())
    return chosen


def with_before(chosen: list[Server], tree: Path) -> list[Server]:
    """Each squall server followed by the same server run from `tree`, another checkout.

    `tree` is a git worktree of an older commit built in place (`python
    setup.py build_ext --inplace`, or not at all: then its pure modules). The
    server runs in it (`python -m` puts its working directory first on
    sys.path, ahead of this repository's editable install). Run next to each
    other in every round, the two see the same drift of the machine: an A/B
    of a change, end to end.
    """
    if not (tree / "squall" / "__init__.py").is_file():
        raise SystemExit(f"compare.py: --before {tree}: no squall package there")
    commit = output_of(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"]) or "?"
    before = Variant(
        f"from {tree} (commit {commit})",
        env=(("PYTHONPATH", f"{tree}{os.pathsep}{ROOT}"),),
        cwd=tree,
    )
    paired: list[Server] = []
    for server in chosen:
        paired.append(server)
        if server.runtime == "squall":
            paired.append(before.of(server, "before"))
    return paired


def smoke(servers: list[Server], workdir: Path, workers: int = WORKERS) -> int:
    failed = []
    for server in servers:
        try:
            with serving(server, workdir, workers) as (running, _port, (status, body)):
                up = len(running.record())
            pids = dict(running.known)  # every pid seen, up to and during the stop
            good = status == 200 and body == BODY
            print(f"{server.name}: {'ok' if good else 'WRONG'} {status} {body!r}", flush=True)
            if up < server.processes(workers):  # (more is fine: a helper process)
                print(f"{server.name}: {up} processes, not {server.processes(workers)}", flush=True)
                failed.append(server.name)
        except StartError as exc:
            failed.append(server.name)
            print(f"{server.name}: FAILED to start: {exc}", flush=True)
            continue
        if not good:
            failed.append(server.name)
        gone = all(not alive(pid, started) for pid, started in pids.items())
        print(
            f"{server.name}: pids "
            + " ".join(f"{pid}@{started}" for pid, started in sorted(pids.items()))
            + (" (all stopped)" if gone else " (NOT all stopped)"),
            flush=True,
        )
        if not gone:
            failed.append(server.name)
    print(
        f"smoke: {len(servers) - len(set(failed))} of {len(servers)} servers answered and stopped"
    )
    return 1 if failed else 0


def on_sigterm(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


class OwnedProcesses:
    """A benchmark's run, as the parent of every process it starts (a `with` block).

    SIGTERM ends it like Ctrl-C (status 130); on the way out, whatever it
    left running is killed and listed ("left: none" when nothing was), and
    a leftover makes the status 1. Set `status` inside the block.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 0

    def __enter__(self) -> OwnedProcesses:
        signal.signal(signal.SIGTERM, on_sigterm)
        become_subreaper()
        return self

    def __exit__(self, kind: type[BaseException] | None, *_exc: object) -> bool:
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        if interrupted:
            print(f"{self.name}: interrupted", file=sys.stderr)
            self.status = 130
        left = sweep()
        print(f"left: {' '.join(map(str, left)) if left else 'none'}", flush=True)
        if left:
            self.status = self.status or 1
        return interrupted


def save_result(prefix: str, when: datetime.datetime, text: str) -> None:
    """Write a report to bench/results/PREFIX-YYYY-MM-DD-HHMM.md and say where."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{prefix}-{when:%Y-%m-%d-%H%M}.md"
    path.write_text(text)
    print(f"written to {path.relative_to(ROOT)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--servers",
        help=f"comma list, run in this order (default: all but the +variants): {', '.join(ALL_SERVERS)}",
    )
    parser.add_argument(
        "--modes",
        help=f"comma list of {', '.join(MODES)} (default all; "
        f"{','.join(CPU_TABLE_MODES)} with --cpu-table)",
    )
    parser.add_argument(
        "--pace-ms",
        type=int,
        default=6,
        help="paced mode: each connection waits this many ms before each request "
        "(default 6; wrk takes whole milliseconds)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        help=f"wrk -c (default 64; {CPU_TABLE_CONNECTIONS} with --cpu-table)",
    )
    parser.add_argument(
        "--threads", type=int, help=f"wrk -t (default 2; {CPU_TABLE_THREADS} with --cpu-table)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help=f"workers of every server (default {WORKERS}; {CPU_TABLE_WORKERS} with --cpu-table)",
    )
    parser.add_argument(
        "--squall-variants",
        default="",
        help="comma list: also run each selected squall server with --shared-socket "
        f"(shared-socket), --no-steering (no-steering) or {PURE_ENV}=1 (pure)",
    )
    parser.add_argument(
        "--cpu-table",
        action="store_true",
        help="the issue's CPU-per-request table: uvicorn, granian, socketify, squall (and "
        "+pure), Starlette on uvicorn, granian and squall; 1 worker, wrk -t1 -c16, "
        "keepalive and close",
    )
    parser.add_argument(
        "--before",
        metavar="TREE",
        help="also run each selected squall server from TREE, another checkout (a worktree "
        "of an older commit, built in place), right after this one's: name+before",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="start, ask once, stop each server; no wrk"
    )
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args()
    # The defaults, or --cpu-table's: what is given on the command line wins.
    preset = args.cpu_table
    if args.modes is None:
        args.modes = ",".join(CPU_TABLE_MODES if preset else MODES)
    if args.connections is None:
        args.connections = CPU_TABLE_CONNECTIONS if preset else 64
    if args.threads is None:
        args.threads = CPU_TABLE_THREADS if preset else 2
    if args.workers is None:
        args.workers = CPU_TABLE_WORKERS if preset else WORKERS
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: a comma list of {', '.join(MODES)}")
    if min(args.rounds, args.connections, args.threads, args.workers) < 1 or args.duration <= 0:
        parser.error(
            "--rounds, --duration, --connections, --threads and --workers must be positive"
        )
    if args.pace_ms <= 0:
        parser.error("--pace-ms must be positive")
    servers = select(args)
    if not Path("/proc/self/smaps_rollup").exists():
        raise SystemExit("compare.py needs Linux's /proc (stat, smaps_rollup)")

    with OwnedProcesses("compare.py") as owner:
        if any(s.runtime == "peers" for s in servers):
            ensure_venv()
        tools = ([] if args.smoke else ["wrk"]) + (
            ["nginx"] if any(s.runtime == "nginx" for s in servers) else []
        )
        if any(s.name == "socketify" for s in servers):
            tools.append("libuv1")  # socketify's native library links libuv.so.1
        ensure_debian(tools)
        with tempfile.TemporaryDirectory(prefix="squall-compare-") as tmp:
            if args.smoke:
                owner.status = smoke(servers, Path(tmp), args.workers)
            else:
                owner.status = benchmark(args, servers, modes, Path(tmp))
    return owner.status


def benchmark(args: argparse.Namespace, servers: list[Server], modes: list[str], tmp: Path) -> int:
    when = datetime.datetime.now().astimezone()
    about = versions(servers, tools=True)
    runs: dict[str, dict[str, list[Result | None]]] = {
        m: {s.name: [] for s in servers} for m in modes
    }
    total = args.rounds * len(modes) * len(servers)
    done = 0
    failures = 0
    loads: list[float] = []
    announce(
        f"compare.py: {len(servers)} servers x {len(modes)} modes x {args.rounds} rounds",
        total,
        args.duration,
        overhead=2,
    )
    for round_no in range(1, args.rounds + 1):
        for mode in modes:
            for server in servers:
                done += 1
                loads.append(load_average())
                try:
                    result: Result | None = measure(server, mode, args, tmp)
                except (StartError, RuntimeError, ValueError) as exc:
                    failures += 1
                    result = None
                    print(
                        f"  {server.name} {mode} round {round_no}: FAILED: {exc}", file=sys.stderr
                    )
                runs[mode][server.name].append(result)
                if result:
                    print(
                        f"  [{done}/{total}] round {round_no} {mode:9} {server.name:28} "
                        f"{result.rps:9.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
                        f"p99 {result.p99_ms:6.2f} ms  cpu {result.cpu_us:6.1f} µs/req  "
                        f"pss {result.worker_pss_mib:5.1f} MiB  "
                        f"busiest worker {result.busiest_share:3.0f}%  errors {result.errors}  "
                        f"load {loads[-1]:.1f}",
                        file=sys.stderr,
                        flush=True,
                    )
    about.append(load_note(loads))
    text = report(args, servers, modes, runs, when, about)
    print(text, flush=True)
    if not args.no_save:
        save_result("compare-cpu" if args.cpu_table else "compare", when, text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
