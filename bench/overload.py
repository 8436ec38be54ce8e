"""Goodput under overload: open-loop load at 1x, 1.5x, 2x and 3x the saturation rate.

Each request costs the server 2 ms of CPU (`bench/apps/cpu_app.py`, raw
ASGI), so 2 workers saturate at a rate that this script's own load
generator (asyncio, a new connection per request, sent on schedule whether
or not earlier ones were answered) can exceed three times over without
taking the CPUs from the servers. Latency is measured from when a request
was due, not when it could be sent (no coordinated omission); a request not
answered within 5 s counts as a timeout.

Servers, 2 workers each, one after another at every rate:
- squall with no limit;
- squall `--limit-concurrency 8` (per worker);
- uvicorn `--limit-concurrency 8` (per worker too), from bench/.venv.

    python bench/overload.py [--duration 5] [--save]

Saturation is measured first, closed-loop, against squall with no limit.
The goal (issue "Overload and exhaustion"): at 2x, squall with a limit serves
at least 90% of its saturation throughput, and the p99 of what it serves
stays within 3x its p99 at 0.3x saturation, with no timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compare import (  # noqa: E402
    VENV_PYTHON,
    descendants,
    ensure_venv,
    free_port,
    stop_supervisor,
)

WORKERS = 2
LIMIT = 8
TIMEOUT = 5.0
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


@dataclass
class Point:
    server: str
    factor: float
    offered: float
    sent: int = 0
    latencies: list[float] = field(default_factory=list)  # of the 200s, seconds
    shed: int = 0  # 503s
    timeouts: int = 0
    errors: int = 0
    elapsed: float = 0.0
    cpu: float = 0.0  # the server's CPU seconds over the point
    load_cpu: float = 0.0  # ... and the load generator's (this process)

    @property
    def served(self) -> int:
        return len(self.latencies)

    def ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


SERVERS: dict[str, Callable[[int], list[str]]] = {
    "squall": lambda port: [
        sys.executable,
        *("-m", "squall", "bench.apps.cpu_app:app", "--interface", "asgi"),
        *("--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS), "--log-level", "warning"),
    ],
    f"squall --limit-concurrency {LIMIT}": lambda port: [
        *SERVERS["squall"](port),
        *("--limit-concurrency", str(LIMIT)),
    ],
    f"uvicorn --limit-concurrency {LIMIT}": lambda port: [
        str(VENV_PYTHON),
        *("-m", "uvicorn", "bench.apps.cpu_app:app", "--port", str(port), "--host", "127.0.0.1"),
        *("--workers", str(WORKERS), "--limit-concurrency", str(LIMIT), "--lifespan", "off"),
        *("--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"),
    ],
}


def set_limit(limit: int) -> None:
    """Name the limited servers after `limit` (the table's rows say which)."""
    global LIMIT
    squall, uvicorn = (
        SERVERS.pop(f"squall --limit-concurrency {LIMIT}"),
        SERVERS.pop(f"uvicorn --limit-concurrency {LIMIT}"),
    )
    del squall, uvicorn
    LIMIT = limit
    SERVERS[f"squall --limit-concurrency {limit}"] = lambda port: [
        *SERVERS["squall"](port),
        *("--limit-concurrency", str(limit)),
    ]
    SERVERS[f"uvicorn --limit-concurrency {limit}"] = lambda port: [
        str(VENV_PYTHON),
        *("-m", "uvicorn", "bench.apps.cpu_app:app", "--port", str(port), "--host", "127.0.0.1"),
        *("--workers", str(WORKERS), "--limit-concurrency", str(limit), "--lifespan", "off"),
        *("--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning"),
    ]


def start(name: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        SERVERS[name](port), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            asyncio.run(one(port, time.perf_counter(), Point(name, 0, 0)))
            time.sleep(1.0)  # every worker up
            return proc, port
        except OSError:
            time.sleep(0.1)
    stop_supervisor(proc)
    raise RuntimeError(f"{name} did not start")


def tree_cpu(pid: int) -> float:
    total = 0.0
    for each in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one(port: int, due: float, point: Point) -> None:
    point.sent += 1
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    except (asyncio.TimeoutError, OSError):
        point.errors += 1
        return
    try:
        writer.write(REQUEST)
        data = await asyncio.wait_for(reader.read(), TIMEOUT - (time.perf_counter() - due))
        status = data[9:12]
        if status == b"200":
            point.latencies.append(time.perf_counter() - due)
        elif status == b"503":
            point.shed += 1
        else:
            point.errors += 1
    except (asyncio.TimeoutError, ValueError):
        point.timeouts += 1
    except OSError:
        point.errors += 1
    finally:
        writer.close()


async def open_loop(port: int, rate: float, duration: float, point: Point) -> None:
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    count = int(rate * duration)
    for index in range(count):
        due = start + index / rate
        wait = due - time.perf_counter()
        if wait > 0.0005:
            await asyncio.sleep(wait)
        task = loop.create_task(one(port, due, point))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    point.elapsed = time.perf_counter() - start


async def closed_loop(port: int, clients: int, duration: float) -> float:
    point = Point("saturation", 0, 0)
    deadline = time.perf_counter() + duration

    async def client() -> None:
        while time.perf_counter() < deadline:
            await one(port, time.perf_counter(), point)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return point.served / (time.perf_counter() - started)


def measure(name: str, factor: float, rate: float, duration: float) -> Point:
    proc, port = start(name)
    try:
        point = Point(name, factor, rate)
        before = tree_cpu(proc.pid)
        load_before = own_cpu()
        asyncio.run(open_loop(port, rate, duration, point))
        point.cpu = tree_cpu(proc.pid) - before
        point.load_cpu = own_cpu() - load_before
        return point
    finally:
        stop_supervisor(proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--limit", type=int, default=LIMIT, help="--limit-concurrency, per worker")
    parser.add_argument(
        "--factors",
        default="0.3,1,1.5,2,3",
        help="load as multiples of saturation, comma-separated",
    )
    parser.add_argument("--save", action="store_true")
    options = parser.parse_args()
    set_limit(options.limit)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    ensure_venv()
    proc, port = start("squall")
    try:
        saturation = asyncio.run(closed_loop(port, 32, options.duration))
    finally:
        stop_supervisor(proc)
    print(f"saturation (closed loop, 32 clients, squall, 2 workers): {saturation:.0f} req/s")
    points: list[Point] = []
    for factor in [float(each) for each in options.factors.split(",")]:
        for name in SERVERS:
            point = measure(name, factor, factor * saturation, options.duration)
            points.append(point)
            print(describe(point, saturation), flush=True)
    lines = report(points, saturation, options)
    print("\n".join(lines))
    if options.save:
        stamp = datetime.now().strftime("%Y-%m-%d-%H%M")
        path = ROOT / "bench" / "results" / f"overload-{stamp}.md"
        path.write_text("\n".join(lines) + "\n")
        print("saved", path.relative_to(ROOT))


def describe(point: Point, saturation: float) -> str:
    goodput = point.served / point.elapsed if point.elapsed else 0.0
    cpu_us = 1e6 * point.cpu / point.served if point.served else float("nan")
    return (
        f"{point.server:34} {point.factor:>4}x offered {point.offered:6.0f}/s "
        f"served {goodput:6.0f}/s ({goodput / saturation:4.0%} of saturation) "
        f"p50 {point.ms(0.5):7.1f} ms p99 {point.ms(0.99):7.1f} ms "
        f"shed {point.shed / max(1, point.sent):4.0%} timeouts {point.timeouts} errors {point.errors} "
        f"CPU/served {cpu_us:6.0f} µs load generator {point.load_cpu / point.elapsed:4.0%} of a CPU"
    )


def report(points: list[Point], saturation: float, options: argparse.Namespace) -> list[str]:
    lines = [
        f"# Goodput under overload, {datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"`python bench/overload.py --duration {options.duration:g} --limit {LIMIT}`: "
        f"2 workers each, "
        f"2 ms of CPU per request, open-loop load, a new connection per request; saturation "
        f"{saturation:.0f} req/s (closed loop, squall, no limit).",
        "",
        "| server | load | served/s | of saturation | p50 ms | p99 ms | shed 503 | timeouts | errors | CPU µs per served |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in points:
        goodput = point.served / point.elapsed if point.elapsed else 0.0
        cpu_us = 1e6 * point.cpu / point.served if point.served else float("nan")
        lines.append(
            f"| {point.server} | {point.factor:g}x | {goodput:.0f} | {goodput / saturation:.0%} "
            f"| {point.ms(0.5):.1f} | {point.ms(0.99):.1f} | {point.shed / max(1, point.sent):.0%} "
            f"| {point.timeouts} | {point.errors} | {cpu_us:.0f} |"
        )
    limited = f"squall --limit-concurrency {LIMIT}"
    at = {(p.server, p.factor): p for p in points}
    if (limited, 0.3) not in at or (limited, 2.0) not in at:
        return lines  # the goal's summary needs both 0.3x and 2x
    base = at[(limited, 0.3)]
    double = at[(limited, 2.0)]
    peer = at[(f"uvicorn --limit-concurrency {LIMIT}", 2.0)]
    goodput = double.served / double.elapsed
    peer_goodput = peer.served / peer.elapsed if peer.served else float("nan")
    lines += [
        "",
        f"At 2x: squall with a limit serves {goodput / saturation:.0%} of saturation "
        f"(goal 90%), p99 {double.ms(0.99):.1f} ms against {base.ms(0.99):.1f} ms at 0.3x "
        f"({double.ms(0.99) / base.ms(0.99):.1f}x; goal within 3x), {double.timeouts} timeouts; "
        f"uvicorn with the same limit serves {peer_goodput:.0f}/s, p99 {peer.ms(0.99):.1f} ms: "
        f"squall's goodput is {goodput / peer_goodput:.2f}x uvicorn's.",
    ]
    return lines


if __name__ == "__main__":
    main()
