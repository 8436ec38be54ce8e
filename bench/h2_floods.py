"""What HTTP/2 floods cost one squall worker: CPU, peak RSS, and a bystander's latency.

    python bench/h2_floods.py [--duration 5] [--floods NAME,...] [--streams 100]
                              [--pure] [--no-save] [-- EXTRA SQUALL FLAGS]

For each flood, a fresh `python -m squall tests.apps.h2_limits_app:app
--interface asgi --h2c --workers 1` (default HTTP/2 limits: 100 concurrent
streams, 200 resets and 1000 control frames per 10 s, --body-timeout 30,
which is also how long a response may wait on a shut window) is attacked
for --duration seconds by a flooder process (this script, `--flood NAME`),
which reconnects whenever the server closes and reads nothing unless told:

- none: no flood (the baseline);
- rapid-reset: HEADERS (GET /pid) then RST_STREAM(CANCEL), 100 pairs a send;
- continuation: HEADERS without END_HEADERS, then 16 KiB CONTINUATION frames;
- ping: PING frames, 1000 a send;
- settings: empty SETTINGS frames, 1000 a send;
- empty-data: a POST stream, then empty DATA frames on it, 1000 a send;
- zero-window: SETTINGS_INITIAL_WINDOW_SIZE 0 and --streams (100) GET /big
  (1 MiB each) kept open on one connection (reads what comes, reopens what
  the server resets).

Measured over the flood, from the moment the flooder says it is ready (its
imports done) until it exits: the worker's CPU time (utime + stime from
/proc/PID/stat, before and after); its peak RSS (VmRSS sampled every 100 ms,
and VmHWM, reset at the start through /proc/PID/clear_refs); the flooder's
own CPU time (its process_time, which it reports); and the latency of a
normal request (GET /pid, prior-knowledge h2c, on a new connection each
time, 2 s at most) made every 200 ms meanwhile: p50, max, and how many
failed. "sent" is what the flooder's sends took, most of it into socket
buffers that squall never reads once it has closed. After the flood the same
worker (same pid and start time) must answer.

Every process is started by this script and stopped by PID (the server
through compare.Running: SIGTERM, a bounded wait, then SIGKILL of what is
left of its tree; the flooder by its own deadline, then SIGKILL); the
script is a child subreaper and sweeps what is left at the end, printing
"left: none". The Markdown table is printed and written to
bench/results/h2-floods-YYYY-MM-DD-HHMM.md. When squall's compiled modules
are older than their source (squall.compiled.stale()), the server runs
with SQUALL_PURE_PYTHON=1, as with --pure; the report says which.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from bench import compare
from bench.connection_memory import PeakRSS
from squall import compiled

APP = "tests.apps.h2_limits_app:app"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8
INITIAL_WINDOW_SIZE = 0x4
PROBE_EVERY = 0.2
PROBE_TIMEOUT = 2.0
READY_TIMEOUT = 30.0
RSS_EVERY = 0.1
FLOODS = ("none", "rapid-reset", "continuation", "ping", "settings", "empty-data", "zero-window")
WHAT = {
    "none": "no flood (baseline)",
    "rapid-reset": "HEADERS + RST_STREAM(CANCEL) pairs",
    "continuation": "HEADERS, then 16 KiB CONTINUATION frames without end",
    "ping": "PING frames, nothing read",
    "settings": "empty SETTINGS frames, nothing read",
    "empty-data": "empty DATA frames on an open POST",
    "zero-window": "INITIAL_WINDOW_SIZE 0, {streams} x GET /big (1 MiB) held",
}


# -- frames -------------------------------------------------------------------------------------


def request_block(encoder: Encoder, path: str, method: str = "GET") -> bytes:
    fields = [(":method", method), (":scheme", "http"), (":authority", "bench"), (":path", path)]
    return bytes(encoder.encode(fields))


def connect(
    port: int, settings: dict[int, int] | None = None, timeout: float = 1.0
) -> socket.socket:
    """A connection that has sent the h2c preface and its SETTINGS."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(PREFACE + SettingsFrame(0, settings or {}).serialize())
    except BaseException:
        sock.close()
        raise
    return sock


def read_frames(sock: socket.socket, buffer: bytearray) -> Iterator[Frame]:
    """The whole frames in `buffer` after one recv (none if it timed out); EOFError at the end."""
    try:
        chunk = sock.recv(1 << 16)
    except TimeoutError:
        chunk = None
    except ConnectionResetError:
        chunk = b""
    if chunk == b"":
        raise EOFError
    if chunk:
        buffer += chunk
    while len(buffer) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(bytes(buffer[:9])))
        if len(buffer) < 9 + length:
            break
        frame.parse_body(memoryview(bytes(buffer[9 : 9 + length])))
        del buffer[: 9 + length]
        yield frame


def probe(port: int) -> float | None:
    """Seconds for GET /pid on a new h2c connection (connect to the end of the response);
    None if it failed or took over PROBE_TIMEOUT."""
    started = time.perf_counter()
    deadline = started + PROBE_TIMEOUT
    try:
        with connect(port, timeout=PROBE_TIMEOUT) as sock:
            block = request_block(Encoder(), "/pid")
            sock.sendall(HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"]).serialize())
            buffer = bytearray()
            while time.perf_counter() < deadline:
                sock.settimeout(max(0.01, deadline - time.perf_counter()))
                for frame in read_frames(sock, buffer):
                    if frame.stream_id != 1:
                        continue
                    if isinstance(frame, RstStreamFrame):
                        return None
                    if isinstance(frame, HeadersFrame | DataFrame) and "END_STREAM" in frame.flags:
                        return time.perf_counter() - started
    except (OSError, EOFError):
        return None
    return None


# -- the flooder (a process of its own: `--flood NAME`) -------------------------------------------


@dataclass
class FloodStats:
    connections: int = 0
    closed_by_server: int = 0
    bytes_sent: int = 0
    resets_seen: int = 0
    cpu: float = 0.0  # the flooder's own CPU seconds over the flood


class Sender:
    """Sends as fast as the server takes it, never a partial frame lost: `send` returns False
    once the connection is gone (and `stats` counts it)."""

    def __init__(self, sock: socket.socket, stats: FloodStats, until: float) -> None:
        self.sock = sock
        self.stats = stats
        self.until = until
        sock.settimeout(0.1)

    def send(self, data: bytes) -> bool:
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            if time.monotonic() >= self.until:
                return False
            try:
                offset += self.sock.send(view[offset:])
            except TimeoutError:
                continue  # the server reads no more for now: wait, as a flooder would
            except OSError:
                self.stats.closed_by_server += 1
                return False
        self.stats.bytes_sent += len(data)
        return True


def flood_connections(
    port: int, until: float, stats: FloodStats, one: Callable[[Sender, Encoder], None]
) -> None:
    """Run `one` on connection after connection until `until`."""
    while time.monotonic() < until:
        try:
            sock = connect(port)
        except OSError:
            time.sleep(0.01)
            continue
        stats.connections += 1
        with sock:
            one(Sender(sock, stats, until), Encoder())


def rapid_reset(sender: Sender, encoder: Encoder) -> None:
    stream_id = 1
    while True:
        pairs: list[bytes] = []
        for _ in range(100):
            block = request_block(encoder, "/pid")
            pairs.append(
                HeadersFrame(stream_id, block, flags=["END_HEADERS", "END_STREAM"]).serialize()
            )
            pairs.append(RstStreamFrame(stream_id, error_code=CANCEL).serialize())
            stream_id += 2
        if stream_id > 2**31 - 300 or not sender.send(b"".join(pairs)):
            return


_CONTINUATIONS = b"".join(ContinuationFrame(1, b"\x00" * 16384).serialize() for _ in range(64))


def continuation(sender: Sender, encoder: Encoder) -> None:
    if not sender.send(HeadersFrame(1, request_block(encoder, "/pid")).serialize()):
        return
    while sender.send(_CONTINUATIONS):
        pass


_PINGS = b"".join(PingFrame(0, b"%08d" % i).serialize() for i in range(1000))
_SETTINGS = SettingsFrame(0).serialize() * 1000
_EMPTY_DATA = DataFrame(1, b"").serialize() * 1000


def repeat(chunk: bytes) -> Callable[[Sender, Encoder], None]:
    def one(sender: Sender, encoder: Encoder) -> None:
        while sender.send(chunk):
            pass

    return one


def empty_data(sender: Sender, encoder: Encoder) -> None:
    head = HeadersFrame(1, request_block(encoder, "/read", "POST"), flags=["END_HEADERS"])
    if sender.send(head.serialize()):
        repeat(_EMPTY_DATA)(sender, encoder)


def ask_big(sender: Sender, encoder: Encoder, first_id: int, count: int) -> tuple[bool, int]:
    """Open `count` streams asking GET /big; whether they went, and the next stream id."""
    frames: list[bytes] = []
    stream_id = first_id
    for _ in range(count):
        block = request_block(encoder, "/big")
        frame = HeadersFrame(stream_id, block, flags=["END_HEADERS", "END_STREAM"])
        frames.append(frame.serialize())
        stream_id += 2
    return sender.send(b"".join(frames)), stream_id


def zero_window(port: int, until: float, stats: FloodStats, streams: int) -> None:
    """One connection with every stream window shut and `streams` responses of 1 MiB asked;
    what the server resets is asked again."""
    while time.monotonic() < until:
        try:
            sock = connect(port, {INITIAL_WINDOW_SIZE: 0})
        except OSError:
            time.sleep(0.01)
            continue
        stats.connections += 1
        with sock:
            sender = Sender(sock, stats, until)
            encoder = Encoder()
            sent, next_id = ask_big(sender, encoder, 1, streams)
            if not sent:
                continue
            buffer = bytearray()
            try:
                while time.monotonic() < until:
                    resets = sum(isinstance(f, RstStreamFrame) for f in read_frames(sock, buffer))
                    stats.resets_seen += resets
                    if resets:
                        sent, next_id = ask_big(sender, encoder, next_id, resets)
                        if not sent:
                            break
            except EOFError:
                stats.closed_by_server += 1


def run_flood(name: str, port: int, duration: float, streams: int) -> FloodStats:
    stats = FloodStats()
    until = time.monotonic() + duration
    one: dict[str, Callable[[Sender, Encoder], None]] = {
        "rapid-reset": rapid_reset,
        "continuation": continuation,
        "ping": repeat(_PINGS),
        "settings": repeat(_SETTINGS),
        "empty-data": empty_data,
    }
    if name == "zero-window":
        zero_window(port, until, stats, streams)
    elif name in one:
        flood_connections(port, until, stats, one[name])
    else:
        time.sleep(duration)
    return stats


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    flood: str
    worker_cpu: float = 0.0  # seconds
    wall: float = 0.0
    rss_before_kib: int = 0
    rss_peak_kib: int = 0
    latencies: list[float] = field(default_factory=list)
    failed_probes: int = 0
    stats: FloodStats = field(default_factory=FloodStats)
    survived: bool = False
    error: str = ""


def flooder_ready(flooder: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether the flooder said "ready" (it has imported what it needs) within `timeout`."""
    assert flooder.stdout is not None
    readable, _, _ = select.select([flooder.stdout], [], [], timeout)
    return bool(readable) and flooder.stdout.readline().strip() == b"ready"


def run_case(
    name: str, args: argparse.Namespace, extra: list[str], env: dict[str, str], workdir: Path
) -> Outcome:
    out = Outcome(name)
    server = compare.Server(
        "squall",
        "squall --h2c",
        compare.squall(APP, "asgi", "--h2c", *extra),
        "squall",
        env=tuple(env.items()),
    )
    with compare.serving(server, workdir, workers=1) as (running, port, _answer):
        workers = [pid for pid in running.record() if pid != running.proc.pid]
        if len(workers) != 1:
            raise compare.StartError(f"expected 1 worker, found {workers}")
        worker = workers[0]
        started = compare.start_time(worker)
        for _ in range(20):  # warm-up: the first connections' allocations come before
            probe(port)
        time.sleep(0.3)
        command = [sys.executable, __file__, "--flood", name, "--port", str(port)]
        command += ["--duration", str(args.duration), "--streams", str(args.streams)]
        flooder = subprocess.Popen(
            command, cwd=compare.ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        try:
            if not flooder_ready(flooder, READY_TIMEOUT):
                raise compare.StartError(f"the flooder did not start within {READY_TIMEOUT:g} s")
            ticks = compare.cpu_ticks(worker) or 0
            began = time.monotonic()
            with PeakRSS(worker, RSS_EVERY) as rss:
                next_probe = began
                while flooder.poll() is None and time.monotonic() < began + args.duration + 10:
                    latency = probe(port)
                    if latency is None:
                        out.failed_probes += 1
                    else:
                        out.latencies.append(latency)
                    next_probe += PROBE_EVERY
                    now = time.monotonic()
                    if next_probe > now:
                        time.sleep(next_probe - now)
                    else:
                        next_probe = now  # a late probe: the next one comes at once
            out.worker_cpu = ((compare.cpu_ticks(worker) or 0) - ticks) / compare.CLOCK_TICKS
            out.wall = time.monotonic() - began
            output, _ = flooder.communicate(timeout=10)
        finally:
            if flooder.poll() is None:
                flooder.kill()
                flooder.wait(5)
        out.rss_before_kib, out.rss_peak_kib = rss.before, rss.peak
        if flooder.returncode != 0:
            out.error = f"the flooder exited with {flooder.returncode}"
        else:
            out.stats = FloodStats(**json.loads(output.decode().strip().splitlines()[-1]))
        time.sleep(0.5)
        out.survived = compare.start_time(worker) == started and probe(port) is not None
    return out


# -- the report -----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def row(out: Outcome, args: argparse.Namespace) -> str:
    what = WHAT[out.flood].format(streams=args.streams)
    if out.error:
        return f"| {out.flood} | {what} | failed: {out.error} |" + " |" * 9
    lat = out.latencies
    p50 = ms(statistics.median(lat)) if lat else "-"
    worst = ms(max(lat)) if lat else "-"
    stats = out.stats
    sent = f"{stats.bytes_sent / 1e6:.1f} MB"
    conns = f"{stats.connections} ({stats.closed_by_server} closed by squall)"
    if out.flood == "zero-window":
        conns += f", {stats.resets_seen} streams reset"
    return (
        f"| {out.flood} | {what} | {conns} | {sent} | {out.worker_cpu:.2f} "
        f"({100 * out.worker_cpu / out.wall:.0f}%) | {stats.cpu:.2f} | "
        f"{out.rss_before_kib / 1024:.1f} | {out.rss_peak_kib / 1024:.1f} | "
        f"{p50} | {worst} | {out.failed_probes}/{len(lat) + out.failed_probes} | "
        f"{'yes' if out.survived else 'NO'} |"
    )


def report(
    outcomes: list[Outcome],
    args: argparse.Namespace,
    extra: list[str],
    build: str,
    when: datetime.datetime,
) -> str:
    command = f"python -m squall {APP} --interface asgi --h2c --workers 1 {' '.join(extra)}"
    lines = [
        f"# HTTP/2 floods against one squall worker, {when:%Y-%m-%d %H:%M %Z}",
        "",
        f"`python bench/h2_floods.py {' '.join(sys.argv[1:])}`".replace(" `", "`")
        + f": `{command.rstrip()}` ({build}), default HTTP/2 limits unless given; a fresh "
        f"server per flood, {args.duration:g} s of flood from one flooder process that "
        f"reconnects whenever squall closes. Worker CPU: utime + stime (share of one core "
        f"over the flood). Peak RSS: VmRSS every {RSS_EVERY * 1000:.0f} ms and VmHWM. "
        f"Probe: GET /pid on a new h2c connection every {PROBE_EVERY * 1000:.0f} ms during "
        f"the flood, at most {PROBE_TIMEOUT:g} s. Host: {compare.cpu_model()}, "
        f"{os.cpu_count()} CPUs.",
        "",
        "| flood | what | connections | sent | worker CPU s | flooder CPU s | RSS before (MiB) "
        "| peak RSS (MiB) | probe p50 (ms) | probe max (ms) | probes failed | same worker after |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [row(out, args) for out in outcomes]
    return "\n".join(lines) + "\n"


def server_env(pure: bool) -> tuple[dict[str, str], str]:
    stale = compiled.stale()
    if pure or stale:
        why = "--pure" if pure else f"compiled modules stale: {', '.join(stale)}"
        return {compiled.PURE_PYTHON_ENV: "1"}, f"pure Python; {why}"
    return {}, "compiled build"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of flood (default 5)")
    parser.add_argument("--floods", default=",".join(FLOODS), help="comma list (default: all)")
    parser.add_argument("--streams", type=int, default=100, help="zero-window: streams held")
    parser.add_argument("--pure", action="store_true", help="serve with SQUALL_PURE_PYTHON=1")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    parser.add_argument("--flood", help=argparse.SUPPRESS)  # the flooder process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="more squall flags, after --")
    args = parser.parse_args()
    if args.flood:
        print("ready", flush=True)
        cpu = time.process_time()
        stats = run_flood(args.flood, args.port, args.duration, args.streams)
        stats.cpu = time.process_time() - cpu
        print(json.dumps(stats.__dict__), flush=True)
        return 0
    floods = [name.strip() for name in args.floods.split(",") if name.strip()]
    unknown = sorted(set(floods) - set(FLOODS))
    if unknown:
        parser.error(f"unknown floods: {', '.join(unknown)} (known: {', '.join(FLOODS)})")
    env, build = server_env(args.pure)
    when = datetime.datetime.now().astimezone()
    outcomes: list[Outcome] = []
    with compare.OwnedProcesses("h2_floods.py") as owner:
        with tempfile.TemporaryDirectory(prefix="squall-h2floods-") as tmp:
            for name in floods:
                try:
                    out = run_case(name, args, args.extra, env, Path(tmp))
                except (compare.StartError, OSError, http.client.HTTPException) as exc:
                    out = Outcome(name, error=str(exc).splitlines()[0])
                if out.error or not out.survived:
                    owner.status = 1
                outcomes.append(out)
                print(f"  {row(out, args)}", file=sys.stderr, flush=True)
        text = report(outcomes, args, args.extra, build, when)
        print(text, flush=True)
        if not args.no_save:
            compare.save_result("h2-floods", when, text)
    return owner.status


if __name__ == "__main__":
    sys.exit(main())
