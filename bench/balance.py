"""How evenly connections spread across the workers: a socket per worker vs one shared.

    python bench/balance.py [--bursts 10] [--connections 64] [--keepalive-seconds 3]

Serves tests.scripts.asgi_basic:app (it answers with its worker id and pid)
with `--workers 2` three ways: one SO_REUSEPORT socket per worker with new
connections steered to the least-loaded worker (the default on Linux, where
eBPF may be loaded), the same with `--no-steering` (the kernel's hash picks),
and `--shared-socket` (one listening socket all workers accept from). It
measures:

- Bursts: open `--connections` connections at once, all connected before any
  request is sent, then each sends one `GET / HTTP/1.1` with `Connection:
  close` and reads which worker answered. `--bursts` bursts per mode, with a
  short pause between them. Per burst: the share of the busiest worker; per
  mode: the median and max of that share, and how many bursts gave one
  worker more than 70% of the connections.
- Keep-alive: `--keepalive-connections` keep-alive connections (8), each
  sending requests back to back for `--keepalive-seconds` (3): the requests
  (and connections) each worker answered.

The client is one asyncio loop on raw non-blocking sockets in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.compare import free_port, stop_supervisor

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.scripts.asgi_basic:app"
WORKERS = 2
BUSY = 0.70
MODES: tuple[tuple[str, list[str]], ...] = (
    ("socket per worker (default)", []),
    ("--no-steering", ["--no-steering"]),
    ("--shared-socket", ["--shared-socket"]),
)
REQUEST_CLOSE = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
REQUEST_KEEP = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def worker_of(body: bytes) -> int:
    return int(json.loads(body)["worker_id"])


async def read_response(sock: socket.socket, buffer: bytearray) -> bytes:
    """Read one Content-Length response from `sock`; return its body, keep the rest in buffer."""
    loop = asyncio.get_running_loop()
    while b"\r\n\r\n" not in buffer:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise ConnectionError(f"connection closed mid-response: {bytes(buffer)[:200]!r}")
        buffer += chunk
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    start = len(head) + 4
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ConnectionError(f"no content-length in {head!r}")
    while len(buffer) < start + length:
        chunk = await loop.sock_recv(sock, 65536)
        if not chunk:
            raise ConnectionError("connection closed mid-body")
        buffer += chunk
    body = bytes(buffer[start : start + length])
    del buffer[: start + length]
    return body


async def connect(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def burst(port: int, count: int) -> Counter[int]:
    """Connect `count` sockets, then send one request on each: connections per worker id."""
    loop = asyncio.get_running_loop()
    socks = await asyncio.gather(*(connect(port) for _ in range(count)), return_exceptions=True)
    try:
        failed = [s for s in socks if isinstance(s, BaseException)]
        if failed:
            raise ConnectionError(f"{len(failed)} of {count} connects failed: {failed[0]!r}")

        async def ask(sock: socket.socket) -> int:
            await loop.sock_sendall(sock, REQUEST_CLOSE)
            return worker_of(await read_response(sock, bytearray()))

        connected = [s for s in socks if isinstance(s, socket.socket)]
        answers = await asyncio.gather(*(ask(s) for s in connected))
    finally:
        for sock in socks:
            if isinstance(sock, socket.socket):
                sock.close()
    return Counter(answers)


async def keepalive(port: int, count: int, seconds: float) -> tuple[Counter[int], Counter[int]]:
    """`count` keep-alive connections, requests back to back: (requests, connections) per worker."""
    loop = asyncio.get_running_loop()
    requests: Counter[int] = Counter()
    connections: Counter[int] = Counter()
    socks = [await connect(port) for _ in range(count)]
    deadline = loop.time() + seconds

    async def run(sock: socket.socket) -> None:
        buffer = bytearray()
        first = True
        while loop.time() < deadline:
            await loop.sock_sendall(sock, REQUEST_KEEP)
            worker = worker_of(await read_response(sock, buffer))
            requests[worker] += 1
            if first:
                connections[worker] += 1
                first = False

    try:
        await asyncio.gather(*(run(s) for s in socks))
    finally:
        for sock in socks:
            sock.close()
    return requests, connections


def ask_worker(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        conn.sendall(REQUEST_CLOSE)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return worker_of(data.split(b"\r\n\r\n", 1)[1])


@dataclass
class ModeResult:
    bursts: list[Counter[int]]  # connections per worker id, per burst
    requests: Counter[int]  # keep-alive requests per worker id
    connections: Counter[int]  # keep-alive connections per worker id


def run_mode(flags: list[str], args: argparse.Namespace) -> ModeResult:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "squall",
        APP,
        "--workers",
        str(WORKERS),
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        *flags,
    ]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        try:
            # Ready once every worker has answered (bounded).
            seen: set[int] = set()
            deadline = time.monotonic() + 30
            while len(seen) < WORKERS:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(
                        f"squall did not start ({len(seen)}/{WORKERS} workers answered):\n"
                        + log.read().decode(errors="replace")
                    )
                try:
                    seen.add(ask_worker(port))
                except OSError:
                    time.sleep(0.05)
            time.sleep(0.3)
            bursts = []
            for _ in range(args.bursts):
                counts = asyncio.run(asyncio.wait_for(burst(port, args.connections), 30))
                bursts.append(counts)
                time.sleep(args.pause)
            requests, connections = asyncio.run(
                asyncio.wait_for(
                    keepalive(port, args.keepalive_connections, args.keepalive_seconds),
                    args.keepalive_seconds + 30,
                )
            )
            if proc.poll() is not None:
                raise SystemExit(f"squall exited early with status {proc.returncode}")
        finally:
            stop_supervisor(proc)
    return ModeResult(bursts, requests, connections)


def share(counts: Counter[int]) -> float:
    return max(counts.values()) / sum(counts.values())


def split(counts: Counter[int]) -> str:
    return " / ".join(str(counts.get(w, 0)) for w in range(WORKERS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bursts", type=int, default=10, help="bursts per mode (default 10)")
    parser.add_argument("--connections", type=int, default=64, help="per burst (default 64)")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between bursts")
    parser.add_argument("--keepalive-connections", type=int, default=8)
    parser.add_argument("--keepalive-seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {WORKERS} workers, app {APP}",
        flush=True,
    )
    results = {mode: run_mode(flags, args) for mode, flags in MODES}

    workers = " / ".join(f"w{w}" for w in range(WORKERS))
    print(f"\n### Bursts of {args.connections} connections: connections per worker ({workers})\n")
    header = "| burst | " + " | ".join(f"{m}: split | {m}: busiest" for m, _ in MODES) + " |"
    print(header)
    print("|---:|" + "---:|---:|" * len(MODES))
    for i in range(args.bursts):
        cells = []
        for mode, _ in MODES:
            counts = results[mode].bursts[i]
            cells += [split(counts), f"{share(counts):.0%}"]
        print(f"| {i + 1} | " + " | ".join(cells) + " |")

    print("\n### Bursts: summary of the busiest worker's share\n")
    print(f"| mode | bursts | median share | max share | bursts > {BUSY:.0%} |")
    print("|---|---:|---:|---:|---:|")
    for mode, _ in MODES:
        shares = [share(c) for c in results[mode].bursts]
        over = sum(s > BUSY for s in shares)
        print(
            f"| {mode} | {len(shares)} | {statistics.median(shares):.0%} | "
            f"{max(shares):.0%} | {over} |"
        )

    print(
        f"\n### Keep-alive: {args.keepalive_connections} connections, "
        f"requests back to back for {args.keepalive_seconds:g} s\n"
    )
    print(
        f"| mode | connections per worker ({workers}) | requests per worker ({workers}) "
        "| busiest worker's share of requests | requests/s |"
    )
    print("|---|---:|---:|---:|---:|")
    for mode, _ in MODES:
        requests, connections = results[mode].requests, results[mode].connections
        rate = sum(requests.values()) / args.keepalive_seconds
        print(
            f"| {mode} | {split(connections)} | {split(requests)} | "
            f"{share(requests):.0%} | {rate:.0f} |"
        )


if __name__ == "__main__":
    main()
