"""Python cost of one request through squall's HTTP layers, without the kernel.

    python bench/request_path.py [--requests 200000]
    python bench/request_path.py --before /tmp/before [--rounds 3] [--instructions]

Feeds GET requests straight into `HTTPProtocol.data_received` (with a
transport that only collects the bytes written) for squall's native handler
API and a raw ASGI app, and prints the CPU time per request: keep-alive (one
connection, request after request) and new connection (a protocol made,
connected, fed one `Connection: close` request and lost, per request).
Each feed is a callback of the loop of its own, as uvloop's read callback
is, not a step of a task: an ASGI request starts eagerly, as in a server. It
leaves out what every server pays alike (recv, send, epoll), so a change to
squall's own code shows clearly even on a busy machine; the end-to-end
figures come from bench/compare.py.

`--before TREE` compares another checkout (a git worktree of an older commit)
with this one in the same run: rounds alternate between the two trees, each
in its own process with that tree's `squall` first on sys.path, and the
report gives the median of each case and the ratio. With `--instructions`
it also counts the CPU instructions per request under valgrind (callgrind):
the difference between a run of 12,000 requests and one of 2,000, divided
by 10,000. That count does not depend on what else the machine is doing, so
it tells a change of a few percent apart where times cannot. `--save` writes
the report to bench/results/request-path-*.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from squall.http.state import ServerState

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REQUEST = b"GET / HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
CLOSING_REQUEST = REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
CASES = ("native keep-alive", "native new connection", "ASGI keep-alive", "ASGI new connection")


class SinkTransport(asyncio.Transport):
    """Enough of an asyncio transport for the protocol: it keeps nothing."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def close(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def server_state(app: Any) -> ServerState:
    """What the connections of a worker serving `app` share, from the imported squall.

    ServerState is defined in squall.http.state since 7ac9dda; in a `--before`
    tree older than that, in squall.http.protocol.
    """
    from squall.http.core import DEFAULT_LIMITS

    try:
        module = importlib.import_module("squall.http.state")
    except ModuleNotFoundError:
        module = importlib.import_module("squall.http.protocol")
    from squall.config import Config

    config = Config()  # the command line's timeouts: each request pays for its deadlines
    state: ServerState = module.ServerState(
        app,
        DEFAULT_LIMITS,
        keepalive_timeout=config.keepalive_timeout,
        header_timeout=config.header_timeout,
        body_timeout=config.body_timeout,
    )
    return state


def from_callbacks(loop: asyncio.AbstractEventLoop, step: Any, calls: int) -> float:
    """CPU µs per call of `step`, each made from its own callback of the loop.

    As uvloop calls `data_received` from a read callback, not inside a task:
    an ASGI request then starts eagerly, as it does in a server. Whatever a
    call schedules runs before the next call.
    """
    left = calls
    done = loop.create_future()

    def next_step() -> None:
        nonlocal left
        if left == 0:
            done.set_result(None)
            return
        left -= 1
        step()
        loop.call_soon(next_step)

    start = time.process_time()
    loop.call_soon(next_step)
    loop.run_until_complete(done)
    return (time.process_time() - start) / calls * 1e6


def new_connections(loop: asyncio.AbstractEventLoop, app: Any, requests: int) -> float:
    from squall.http.protocol import HTTPProtocol

    state = loop.run_until_complete(_in_loop(server_state, app))
    server = ("127.0.0.1", 8080)
    written = 0

    def one() -> None:
        protocol = HTTPProtocol(state, server=server)
        transport = SinkTransport()
        protocol.connection_made(transport)
        protocol.data_received(CLOSING_REQUEST)
        loop.call_soon(_lost, protocol, transport)

    def _lost(protocol: HTTPProtocol, transport: SinkTransport) -> None:
        nonlocal written
        protocol.connection_lost(None)
        written += transport.written

    from_callbacks(loop, one, 1000)  # warm up
    gc.collect()
    written = 0
    elapsed = from_callbacks(loop, one, requests)
    state.stop_ticker()
    assert written >= requests, "not every request was answered"
    return elapsed


def keep_alive(loop: asyncio.AbstractEventLoop, app: Any, requests: int) -> float:
    from squall.http.protocol import HTTPProtocol

    state = loop.run_until_complete(_in_loop(server_state, app))
    protocol = HTTPProtocol(state)
    transport = SinkTransport()
    protocol.connection_made(transport)

    def one() -> None:
        protocol.data_received(REQUEST)

    from_callbacks(loop, one, 1000)  # warm up
    gc.collect()
    elapsed = from_callbacks(loop, one, requests)
    state.stop_ticker()
    assert transport.written >= requests, "not every request was answered"
    return elapsed


async def _in_loop(make: Any, *args: Any) -> Any:
    """`make(*args)` with the loop running (ServerState takes the running loop)."""
    return make(*args)


async def raw_asgi(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"Hello, world"})


def run_cases(tree: Path, requests: int, cases: tuple[str, ...]) -> dict[str, float]:
    """µs of CPU per request for each case, with `tree`'s squall (this process)."""
    # This tree's bench package, whichever tree's squall runs its apps: imported
    # before `tree` goes first on sys.path (`tree` may have a bench of its own).
    sys.path.insert(0, str(REPO))
    importlib.import_module("bench")
    sys.path.insert(0, str(tree))
    import squall
    from squall.asgi import ASGIAdapter
    from squall.worker import new_event_loop

    assert Path(squall.__file__).resolve().is_relative_to(tree.resolve()), squall.__file__
    from bench.peers.squall_native import app as native

    apps = {"native": native, "ASGI": ASGIAdapter(raw_asgi)}
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    results = {}
    for case in cases:
        interface, mode = case.split(" ", 1)
        run = keep_alive if mode == "keep-alive" else new_connections
        results[case] = run(loop, apps[interface], requests)
    loop.close()
    return results


def in_process(tree: Path, requests: int, cases: tuple[str, ...], tool: list[str]) -> str:
    """Run this script with `tree`'s squall in a child process (under `tool`, if any)."""
    command = [*tool, sys.executable, __file__, "--tree", str(tree), "--json"]
    command += ["--requests", str(requests), "--cases", ",".join(cases)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same dict layouts in every run
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=1800, cwd=HERE, env=env, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {done.stderr.strip()[-2000:]}")
    return done.stdout + done.stderr


def instructions(tree: Path, case: str) -> float:
    """Instructions per request for `case`, counted by callgrind."""
    tool = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    counts = []
    for requests in (2_000, 12_000):
        out = in_process(tree, requests, (case,), tool)
        found = re.search(r"Collected : (\d+)", out)
        assert found is not None, out[-2000:]
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / 10_000


def compare(args: argparse.Namespace) -> str:
    trees = {"before": Path(args.before).resolve(), "after": REPO}
    times: dict[str, dict[str, list[float]]] = {name: {c: [] for c in CASES} for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():
            out = in_process(tree, args.requests, CASES, [])
            for case, value in json.loads(out.strip().splitlines()[-1]).items():
                times[name][case].append(value)
    lines = [
        f"# Python cost per request, before and after ({datetime.datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"`python bench/request_path.py --before {args.before} --rounds {args.rounds}"
        f" --requests {args.requests}{' --instructions' if args.instructions else ''}`",
        f"before: `{trees['before']}` ({_commit(trees['before'])}); after: this tree"
        f" ({_commit(REPO)}). µs: median CPU time of {args.rounds} interleaved rounds.",
        "",
        "| case | before µs | after µs | after / before |"
        + (" before instr. | after instr. | after / before |" if args.instructions else ""),
        "|---|---:|---:|---:|" + ("---:|---:|---:|" if args.instructions else ""),
    ]
    for case in CASES:
        before = statistics.median(times["before"][case])
        after = statistics.median(times["after"][case])
        row = f"| {case} | {before:.2f} | {after:.2f} | {after / before:.3f} |"
        if args.instructions:
            counted = [instructions(tree, case) for tree in trees.values()]
            row += f" {counted[0]:,.0f} | {counted[1]:,.0f} | {counted[1] / counted[0]:.3f} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def _commit(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--before", help="another checkout to compare with this one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instructions", action="store_true", help="count them (valgrind)")
    parser.add_argument("--save", action="store_true", help="write bench/results/request-path-*")
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--cases", default=",".join(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.before:
        if args.instructions and shutil.which("valgrind") is None:
            raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
        report = compare(args)
        print(report)
        if args.save:
            sys.path.insert(0, str(REPO))
            from bench.compare import save_result

            save_result("request-path", datetime.datetime.now(), report)
        return
    results = run_cases(Path(args.tree or REPO), args.requests, tuple(args.cases.split(",")))
    if args.json:
        print(json.dumps(results))
        return
    for case, per_request in results.items():
        print(f"{case}: {per_request:.2f} µs/request of Python")


if __name__ == "__main__":
    main()
