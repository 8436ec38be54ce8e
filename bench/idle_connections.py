"""Idle keep-alive connections: memory per connection, and a fresh request's latency meanwhile.

    python bench/idle_connections.py [--connections 10000] [--servers NAME,...]
                                     [--batch 500] [--probes 50]

Issue 6: "Holding 10,000 idle keep-alive connections across the workers:
report memory per connection, and a request on a fresh connection still
answers in under 10 ms". Each server runs 2 workers with a keep-alive timeout
of 600 s (so the idle connections stay), from bench/compare.py's definitions:
squall serving the raw ASGI app and the native app, uvicorn (from
bench/.venv) serving the raw ASGI app.

Per server: start it, warm it up, time `--probes` requests on fresh
connections (connect, GET /, read the whole answer; one at a time, 10 ms
apart) with no idle connection; read the workers' RSS and PSS; open
`--connections` connections from one asyncio loop in this process, in
batches of `--batch`, each sending one keep-alive GET / and reading the
answer, then left idle; read RSS and PSS again (bytes per connection = the
growth of the workers' sum / connections); read the workers' CPU time over
3 s while all are idle; time `--probes` fresh requests again with all of
them open; check (MSG_PEEK) that the server closed none;
close them all and stop the server by PID.

This process raises its RLIMIT_NOFILE soft limit to the hard limit before
starting the servers, which inherit it (neither squall nor uvicorn raises
its own); each worker's limit is read from /proc/PID/limits and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import math
import os
import resource
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare
from bench.balance import connect, read_response
from bench.compare import Server

KEEPALIVE = 600  # seconds: longer than the whole run, so no idle connection is closed
APP_RAW = "bench.peers.asgi_raw:app"
APP_NATIVE = "bench.peers.squall_native:app"
WORKERS = compare.WORKERS
REQUEST_KEEP = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
OPEN_TIMEOUT = 10.0  # per connection (connect, request, answer)
PROBE_TIMEOUT = 5.0
PROBE_PAUSE = 0.01
SETTLE = 1.0  # seconds between the last connection and the memory reading
IDLE_WINDOW = 3.0  # seconds over which the workers' CPU time is read with every connection idle
TARGET_MS = 10.0
WARMUP_CONNECTIONS = 200


def squall_server(name: str, app: str, interface: str, what: str, *flags: str) -> Server:
    return Server(
        name,
        f"squall --workers {WORKERS} --interface {interface} --keepalive-timeout {KEEPALIVE}"
        f"{' ' + ' '.join(flags) if flags else ''}, {what}",
        compare.squall(app, interface, "--keepalive-timeout", str(KEEPALIVE), *flags),
        "squall",
    )


def uvicorn_command(port: int, directory: Path, workers: int) -> list[str]:
    return [
        *compare.uvicorn(APP_RAW)(port, directory, workers),
        "--timeout-keep-alive",
        str(KEEPALIVE),
    ]


SERVERS = [
    squall_server("squall-asgi", APP_RAW, "asgi", "raw ASGI"),
    squall_server("squall-native", APP_NATIVE, "squall", "web.Application"),
    Server(
        "uvicorn",
        f"uvicorn --workers {WORKERS} --http httptools --loop uvloop "
        f"--timeout-keep-alive {KEEPALIVE}, raw ASGI",
        uvicorn_command,
        "peers",
    ),
]
OPTIONAL = [
    squall_server("squall-asgi+shared-socket", APP_RAW, "asgi", "raw ASGI", "--shared-socket"),
    squall_server(
        "squall-native+shared-socket", APP_NATIVE, "squall", "web.Application", "--shared-socket"
    ),
]
ALL = {s.name: s for s in SERVERS + OPTIONAL}


# -- /proc -------------------------------------------------------------------------------------


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) in KiB from /proc/PID/smaps_rollup; None if gone."""
    rss = pss = None
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return None if rss is None or pss is None else (rss, pss)


T = TypeVar("T")


def every(readings: list[T | None]) -> list[T] | None:
    """`readings` if each was read, None if one was not (its process was gone)."""
    read = [reading for reading in readings if reading is not None]
    return read if len(read) == len(readings) else None


def sockets(pid: int) -> int:
    """How many of the process's file descriptors are sockets."""
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def nofile_limit(pid: int) -> tuple[str, str] | None:
    """(soft, hard) 'Max open files' from /proc/PID/limits."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return soft, hard
    return None


def raise_nofile() -> tuple[int, int, int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit: (old soft, new soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if new != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard


# -- the client --------------------------------------------------------------------------------


async def open_one(port: int) -> socket.socket:
    """A keep-alive connection that has had one GET / answered, then is left idle."""
    sock = await connect(port)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, REQUEST_KEEP)
        body = await read_response(sock, bytearray())
        if body != compare.BODY:
            raise ConnectionError(f"unexpected body {body[:100]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


async def open_many(port: int, count: int, batch: int) -> tuple[list[socket.socket], list[str]]:
    """Open `count` idle keep-alive connections, `batch` at a time: (sockets, errors)."""
    socks: list[socket.socket] = []
    errors: list[str] = []
    try:
        while len(socks) + len(errors) < count:
            n = min(batch, count - len(socks) - len(errors))
            got = await asyncio.gather(
                *(asyncio.wait_for(open_one(port), OPEN_TIMEOUT) for _ in range(n)),
                return_exceptions=True,
            )
            for item in got:
                if isinstance(item, socket.socket):
                    socks.append(item)
                elif isinstance(item, BaseException):
                    errors.append(repr(item))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks, errors


def read_answer(sock: socket.socket) -> bytes:
    """Read one Content-Length response from a blocking socket; return its body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed mid-response: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ConnectionError(f"no content-length in {head!r}")
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        rest += chunk
    return rest[:length]


def probe(port: int) -> float:
    """Milliseconds for connect + GET / + the whole answer on a fresh connection."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as sock:
        sock.sendall(REQUEST_CLOSE)
        body = read_answer(sock)
    elapsed = (time.perf_counter() - start) * 1000
    if body != compare.BODY:
        raise ConnectionError(f"unexpected body {body[:100]!r}")
    return elapsed


@dataclass
class Probes:
    times_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def quantile(self, q: float) -> float:
        if not self.times_ms:
            return float("nan")
        ordered = sorted(self.times_ms)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    def cell(self) -> str:
        if not self.times_ms:
            return "all failed"
        text = f"{self.quantile(0.5):.2f} / {self.quantile(0.99):.2f} / {max(self.times_ms):.2f} ms"
        return text + (f" ({len(self.errors)} failed)" if self.errors else "")


def probes(port: int, count: int) -> Probes:
    out = Probes()
    for _ in range(count):
        try:
            out.times_ms.append(probe(port))
        except (OSError, ConnectionError) as exc:
            out.errors.append(repr(exc))
        time.sleep(PROBE_PAUSE)
    return out


def still_open(socks: list[socket.socket]) -> int:
    """How many connections the server has not closed (a MSG_PEEK that would block)."""
    count = 0
    for sock in socks:
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            count += 1
        except OSError:
            pass
        else:
            count += bool(data)  # unexpected bytes, but the connection is open
    return count


# -- one server --------------------------------------------------------------------------------


@dataclass
class Outcome:
    server: Server
    asked: int
    opened: int = 0
    open_errors: list[str] = field(default_factory=list)
    open_seconds: float = float("nan")
    open_after: int = 0
    split: list[int] = field(default_factory=list)  # connections (sockets gained) per worker
    before_kib: tuple[int, int] = (0, 0)  # workers' summed (RSS, PSS)
    after_kib: tuple[int, int] = (0, 0)
    idle_cpu_ms_per_s: float = float("nan")  # the workers' CPU time while all are idle
    idle_probes: Probes = field(default_factory=Probes)
    loaded_probes: Probes = field(default_factory=Probes)
    limits: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    error: str = ""

    def per_connection(self, index: int) -> float:
        if not self.opened:
            return float("nan")
        return (self.after_kib[index] - self.before_kib[index]) * 1024 / self.opened


def run_server(server: Server, args: argparse.Namespace, workdir: Path) -> Outcome:
    out = Outcome(server, args.connections)
    with compare.serving(server, workdir) as (running, port, _answer):
        root = running.proc.pid
        # Warm up: open and close some connections, so first-use allocations are not counted.
        socks, errors = asyncio.run(open_many(port, WARMUP_CONNECTIONS, args.batch))
        for sock in socks:
            sock.close()
        if errors:
            raise RuntimeError(f"warm-up: {len(errors)} connections failed: {errors[0]}")
        out.idle_probes = probes(port, args.probes)
        time.sleep(SETTLE)
        tree = running.record()
        out.limits = {
            ("top process" if pid == root else f"pid {pid}"): nofile_limit(pid) for pid in tree
        }
        sockets_before = {pid: sockets(pid) for pid in tree}
        memory_before = {pid: memory_kib(pid) for pid in tree}
        socks = []
        try:
            started = time.monotonic()
            socks, out.open_errors = asyncio.run(open_many(port, args.connections, args.batch))
            out.open_seconds = time.monotonic() - started
            out.opened = len(socks)
            time.sleep(SETTLE)
            now = running.record()
            if any(now.get(pid) != s for pid, s in tree.items()):
                raise RuntimeError("a server process exited while the connections were opened")
            gained = {pid: sockets(pid) - sockets_before[pid] for pid in tree if pid != root}
            workers = sorted(gained, key=lambda p: gained[p], reverse=True)[:WORKERS]
            out.split = [gained[pid] for pid in workers]
            before = every([memory_before[p] for p in workers])
            after = every([memory_kib(p) for p in workers])
            if before is None or after is None:
                raise RuntimeError("could not read a worker's smaps_rollup")
            out.before_kib = (sum(rss for rss, _ in before), sum(pss for _, pss in before))
            out.after_kib = (sum(rss for rss, _ in after), sum(pss for _, pss in after))
            ticks = every([compare.cpu_ticks(p) for p in workers])
            time.sleep(IDLE_WINDOW)
            ticks_after = every([compare.cpu_ticks(p) for p in workers])
            if ticks is not None and ticks_after is not None:
                used = sum(ticks_after) - sum(ticks)
                out.idle_cpu_ms_per_s = used / compare.CLOCK_TICKS * 1000 / IDLE_WINDOW
            out.loaded_probes = probes(port, args.probes)
            out.open_after = still_open(socks)
        finally:
            for sock in socks:
                sock.close()
        time.sleep(0.5)  # let the workers see the closes before they are stopped
        if running.proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{compare.log_tail(running.log)}")
    return out


# -- report ------------------------------------------------------------------------------------


def mib(kib: int) -> str:
    return f"{kib / 1024:,.1f}"


def server_table(out: Outcome) -> str:
    if out.error:
        return f"failed: {out.error}"
    p99 = out.loaded_probes.quantile(0.99)
    verdict = (
        "n/a"
        if p99 != p99  # NaN
        else ("yes" if p99 < TARGET_MS else "no") + f" (p99 {p99:.2f} ms)"
    )
    limits = sorted({f"{v[0]} / {v[1]}" if v else "unknown" for v in out.limits.values()})
    errors = (
        f" ({len(out.open_errors)} failed, first: {out.open_errors[0]})" if out.open_errors else ""
    )
    rows = [
        ("idle keep-alive connections held", f"{out.opened:,} of {out.asked:,}{errors}"),
        ("opened in", f"{out.open_seconds:.1f} s ({out.opened / out.open_seconds:,.0f}/s)"),
        ("connections per worker (sockets gained)", " / ".join(f"{n:,}" for n in out.split)),
        ("still open after the probes (MSG_PEEK)", f"{out.open_after:,}"),
        (
            "workers' RSS, before → after (MiB)",
            f"{mib(out.before_kib[0])} → {mib(out.after_kib[0])}",
        ),
        ("**RSS per connection**", f"**{out.per_connection(0):,.0f} bytes**"),
        (
            "workers' PSS, before → after (MiB)",
            f"{mib(out.before_kib[1])} → {mib(out.after_kib[1])}",
        ),
        ("**PSS per connection**", f"**{out.per_connection(1):,.0f} bytes**"),
        (
            f"workers' CPU time with all idle, over {IDLE_WINDOW:g} s",
            f"{out.idle_cpu_ms_per_s:.0f} ms per second",
        ),
        ("fresh connection, none idle: p50 / p99 / max", out.idle_probes.cell()),
        (
            f"**fresh connection, {out.opened:,} idle: p50 / p99 / max**",
            f"**{out.loaded_probes.cell()}**",
        ),
        (f"under {TARGET_MS:g} ms with them held", verdict),
        ("open-files limit (soft / hard), every process", ", ".join(limits)),
    ]
    lines = [f"| {out.server.name} | |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def summary_table(outcomes: list[Outcome]) -> str:
    lines = [
        "| server | held | RSS B/conn | PSS B/conn | idle CPU (ms/s) "
        "| fresh p50 / p99 (none idle) | fresh p50 / p99 (all idle held) | < 10 ms |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for out in outcomes:
        if out.error:
            lines.append(f"| {out.server.name} | failed | | | | | | |")
            continue
        idle, loaded = out.idle_probes, out.loaded_probes
        p99 = loaded.quantile(0.99)
        lines.append(
            f"| {out.server.name} | {out.opened:,} | {out.per_connection(0):,.0f} "
            f"| {out.per_connection(1):,.0f} | {out.idle_cpu_ms_per_s:.0f} "
            f"| {idle.quantile(0.5):.2f} / {idle.quantile(0.99):.2f} ms "
            f"| {loaded.quantile(0.5):.2f} / {p99:.2f} ms "
            f"| {'yes' if p99 < TARGET_MS else 'no'} |"
        )
    return "\n".join(lines)


def limit_notes(outcomes: list[Outcome], connections: int) -> list[str]:
    notes = []
    even = math.ceil(connections / WORKERS) + 100
    for out in outcomes:
        for who, limit in out.limits.items():
            if limit is None or limit[0] == "unlimited":
                continue
            if int(limit[0]) < even:
                notes.append(
                    f"- **{out.server.name} {who}: open-files soft limit {limit[0]} is too low** "
                    f"for {connections:,} connections over {WORKERS} workers (about {even:,} "
                    f"each); it inherits it from whoever starts it (raise `ulimit -n`)."
                )
            elif int(limit[0]) < connections + 100:
                notes.append(
                    f"- {out.server.name} {who}: open-files soft limit {limit[0]} holds an even "
                    f"split, not all {connections:,} connections in one worker."
                )
    return notes


def shown(server: Server) -> str:
    """The server's command line, with PORT for the port."""
    argv = server.command(0, Path(tempfile.gettempdir()), WORKERS)
    words = [
        "PORT"
        if word == "0" and prev == "--port"
        else word.replace("127.0.0.1:0", "127.0.0.1:PORT")
        for prev, word in zip(["", *argv], argv, strict=False)
    ]
    return " ".join(words)


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--connections", type=int, default=10_000, help="idle connections (default 10000)"
    )
    parser.add_argument(
        "--servers",
        default=",".join(s.name for s in SERVERS),
        help=f"comma list, run in this order (default: {','.join(s.name for s in SERVERS)}; "
        f"also {', '.join(s.name for s in OPTIONAL)})",
    )
    parser.add_argument(
        "--batch", type=int, default=500, help="connections opened at once (default 500)"
    )
    parser.add_argument(
        "--probes", type=int, default=50, help="fresh-connection requests timed (default 50)"
    )
    args = parser.parse_args()
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL]
    if unknown or not names:
        parser.error(f"--servers: a comma list of {', '.join(ALL)}")
    if args.connections < 1 or args.batch < 1 or args.probes < 1:
        parser.error("--connections, --batch and --probes must be positive")
    servers = [ALL[n] for n in names]
    if not Path("/proc/self/smaps_rollup").exists():
        raise SystemExit("idle_connections.py needs Linux's /proc (smaps_rollup, limits)")

    old_soft, soft, hard = raise_nofile()
    need = args.connections + WARMUP_CONNECTIONS + 100
    if soft < need:
        raise SystemExit(
            f"idle_connections.py: the open-files hard limit is {hard}, the client needs about "
            f"{need:,}: lower --connections or raise the hard limit"
        )

    outcomes: list[Outcome] = []
    with compare.OwnedProcesses("idle_connections.py") as owner:
        if any(s.runtime == "peers" for s in servers):
            compare.ensure_venv()
        when = datetime.datetime.now().astimezone()
        about = compare.versions(servers, tools=False)
        load = compare.load_average()
        with tempfile.TemporaryDirectory(prefix="squall-idle-") as tmp:
            for server in servers:
                print(f"  {server.name}: ...", file=sys.stderr, flush=True)
                try:
                    out = run_server(server, args, Path(tmp))
                except (compare.StartError, RuntimeError, OSError) as exc:
                    out = Outcome(server, args.connections, error=str(exc).splitlines()[0])
                    owner.status = 1
                outcomes.append(out)
                print(
                    f"  {server.name}: "
                    + (
                        f"FAILED: {out.error}"
                        if out.error
                        else f"{out.opened} held, RSS {out.per_connection(0):.0f} B/conn, "
                        f"PSS {out.per_connection(1):.0f} B/conn, fresh p99 "
                        f"{out.idle_probes.quantile(0.99):.2f} → "
                        f"{out.loaded_probes.quantile(0.99):.2f} ms"
                    ),
                    file=sys.stderr,
                    flush=True,
                )
        print(
            f"# {args.connections:,} idle keep-alive connections, {when:%Y-%m-%d %H:%M %Z}\n\n"
            f"`{' '.join(['python', 'bench/idle_connections.py', *sys.argv[1:]])}`: "
            f"{WORKERS} workers each, keep-alive timeout {KEEPALIVE} s; one asyncio client in "
            f"this process opens the connections {args.batch} at a time, each answers one "
            f"keep-alive GET / and then stays idle. Bytes per connection: growth of the sum "
            f"over the {WORKERS} workers (the processes that gained the sockets) of RSS and of "
            f"PSS (/proc/PID/smaps_rollup), {SETTLE:g} s after the last one opened, divided by "
            f"the connections held; after a warm-up of {WARMUP_CONNECTIONS} connections. "
            f"Kernel socket memory is not in it. Idle CPU: the workers' utime + stime over "
            f"{IDLE_WINDOW:g} s with every connection idle (/proc/PID/stat, 10 ms ticks). "
            f"Fresh connection: {args.probes} requests one at a time, {PROBE_PAUSE * 1000:g} ms "
            f"apart (connect, GET / with Connection: close, the whole answer read), before the "
            f"idle connections are opened and with all of them held; p99 is the nearest rank "
            f"(the largest of 50).\n"
        )
        print(summary_table(outcomes) + "\n")
        for out in outcomes:
            print(server_table(out) + "\n")
        print("## Open-files limits\n")
        print(
            f"- this process (the client): soft {old_soft} raised to {soft} (hard {hard}); "
            f"the servers are started by it and inherit that limit (neither squall nor "
            f"uvicorn raises its own)."
        )
        notes = limit_notes(outcomes, args.connections)
        print(
            "\n".join(notes)
            if notes
            else f"- every server process had at least {args.connections + 100:,}: enough for "
            f"all {args.connections:,} connections even in one worker."
        )
        print("\n## Versions\n")
        for name, value in about:
            print(f"- {name}: {value}")
        print(f"- load average (1 min) at the start: {load:.1f}")
        print("\n## Servers\n")
        for server in servers:
            print(f"- `{server.name}`: {server.what}: `{shown(server)}`")
        print()  # a blank line before "left:"
    return owner.status


if __name__ == "__main__":
    sys.exit(main())
