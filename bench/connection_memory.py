"""A worker's memory under clients that send and never read: pipelined GETs, a ping flood.

    python bench/connection_memory.py [--before /tmp/before] [--after .]
                                      [--requests 200] [--ping-mb 40] [--hold 3]

Starts `python -m squall connection_memory:app --workers 1 --interface squall`
(this module's app: `GET /` says "Hello, world", `GET /big` answers 512 KiB,
`/ws` is a `WebSocketHandler` echo) once per case and per code tree: the
`--before` tree (say, a git worktree of the last commit) and the `--after`
tree (default: this repository), each put first on the server's PYTHONPATH
(its `squall` is checked to be the one imported); the server runs in a
temporary directory, so the repository root does not shadow it. Each
connection of the attacks sets SO_RCVBUF to 64 KiB before connecting, so
the kernel takes little of what the worker sends.

Cases, each on a fresh server, after a warm-up (a few `GET /big` read in
full, a WebSocket echo):

a. pipelining: one connection sends `--requests` `GET /big` at once, then
   reads nothing for `--hold` seconds;
b. ping flood: one WebSocket connection (handshake answered) sends
   `--ping-mb` MB of masked ping frames with 125-byte payloads, reading
   nothing, until all is sent or the worker has taken nothing more for
   `--hold` seconds (60 s at most), then stays `--hold` seconds more.

Measured: the worker's RSS (VmRSS in /proc/PID/status) just before the
attack, and its peak during it: the largest of VmRSS sampled every 5 ms and
of VmHWM, which is reset to the current RSS at the start (`5` written to
/proc/PID/clear_refs). Growth = peak - before. Then the attacking connection
is reset and a `GET /` on a new connection must answer within 5 s. Every
server is stopped by PID (compare.Running). The target is a growth under
16 MiB in each case. The table is printed and written to
bench/results/connection-memory-YYYY-MM-DD-HHMM.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import http.client
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import compare
from squall.web import Application, RequestHandler
from squall.websocket import WebSocketHandler

# -- the app (imported by the server as `connection_memory:app`) ------------------------------

BIG_BYTES = 512 * 1024
BIG = b"x" * BIG_BYTES


class HelloHandler(RequestHandler):
    def get(self) -> None:
        self.write(compare.BODY)


class BigHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        self.write(BIG)


class EchoHandler(WebSocketHandler):
    def on_message(self, message: str | bytes) -> None:
        self.write_message(message, binary=isinstance(message, bytes))


app = Application([(r"/", HelloHandler), (r"/big", BigHandler), (r"/ws", EchoHandler)])

APP = "connection_memory:app"
BENCH = Path(__file__).resolve().parent

# -- measuring ---------------------------------------------------------------------------------

TARGET_MIB = 16.0
CLIENT_RCVBUF = 64 * 1024
ANSWER_TIMEOUT = 5.0
MAX_SEND_SECONDS = 60.0
PING_PAYLOAD = bytes(range(125))  # the largest a control frame may carry


def status_kib(pid: int, field: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM); None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


class PeakRSS:
    """A process's RSS before a `with` block, and its peak during it, in KiB.

    The peak is the largest of VmRSS sampled from a thread every `interval`
    seconds and of VmHWM, which is reset to the current RSS on entry when
    /proc/PID/clear_refs takes it (the process must be ours).
    """

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.before = 0
        self.peak = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRSS:
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self.hwm_reset = True
        before = status_kib(self.pid, "VmRSS")
        if before is None:
            raise RuntimeError(f"process {self.pid} is gone")
        self.before = self.peak = before
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._note(status_kib(self.pid, "VmRSS"))
        if self.hwm_reset:
            self._note(status_kib(self.pid, "VmHWM"))

    def _note(self, kib: int | None) -> None:
        if kib is not None and kib > self.peak:
            self.peak = kib

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._note(status_kib(self.pid, "VmRSS"))

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.before) / 1024


def attack_socket(port: int) -> socket.socket:
    """A connection to the server whose receive buffer holds little (64 KiB, no autotuning)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF)
        sock.settimeout(ANSWER_TIMEOUT)
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def reset(sock: socket.socket) -> None:
    """Close with a RST: the server learns at once, and nothing lingers."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def pipelined(port: int, requests: int, hold: float) -> int:
    """Send `requests` pipelined `GET /big` on one connection, read nothing for `hold` s.

    Returns the bytes sent (all of them, unless the server stopped reading).
    """
    sock = attack_socket(port)
    try:
        data = b"GET /big HTTP/1.1\r\nHost: bench\r\n\r\n" * requests
        sent = send_for(sock, data, len(data), stall=hold, limit=hold)
        time.sleep(hold)
        return sent
    finally:
        reset(sock)


def send_for(sock: socket.socket, chunk: bytes, total: int, stall: float, limit: float) -> int:
    """Send `chunk` again and again until `total` bytes are sent, or the peer took
    nothing for `stall` seconds, or `limit` seconds have passed; the bytes sent."""
    sent = 0
    view = memoryview(chunk)
    offset = 0
    started = last = time.monotonic()
    sock.settimeout(0.05)
    while sent < total:
        now = time.monotonic()
        if now - last >= stall or now - started >= limit:
            break
        try:
            n = sock.send(view[offset : offset + total - sent])
        except TimeoutError:
            continue
        sent += n
        offset = (offset + n) % len(chunk)
        last = time.monotonic()
    return sent


def websocket_handshake(sock: socket.socket, path: str = "/ws") -> None:
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode("ascii")
    )
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError(f"closed during the handshake: {head!r}")
        head += data
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head[:200]!r}")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final frame of at most 125 bytes, masked as a client's frames must be."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def ping_frame(payload: bytes = PING_PAYLOAD) -> bytes:
    return client_frame(0x9, payload)


def ping_flood(port: int, total: int, hold: float) -> int:
    """Send `total` bytes of pings on a WebSocket, reading nothing; the bytes sent.

    Sending stops when all is sent, or the server took nothing for `hold`
    seconds, or after MAX_SEND_SECONDS; then the connection stays `hold`
    seconds more (the server works through what it has read).
    """
    sock = attack_socket(port)
    try:
        websocket_handshake(sock)
        frame = ping_frame()
        total -= total % len(frame)  # whole frames only
        sent = send_for(sock, frame * 512, total, stall=hold, limit=MAX_SEND_SECONDS)
        time.sleep(hold)
        return sent
    finally:
        reset(sock)


def answers(port: int) -> bool:
    """A `GET /` on a new connection is answered with "Hello, world" within 5 s."""
    try:
        status, body = compare.ask(port, timeout=ANSWER_TIMEOUT)
    except (OSError, http.client.HTTPException):
        return False
    return status == 200 and body == compare.BODY


def warm_up(port: int) -> None:
    """Some `GET /big` read in full and a WebSocket echo: first-use allocations come before."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as sock:
        for _ in range(4):
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: bench\r\n\r\n")
            got = b""
            while len(got) < BIG_BYTES or b"\r\n\r\n" not in got:
                data = sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("closed during the warm-up")
                got += data
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as sock:
        websocket_handshake(sock)
        sock.sendall(client_frame(0x1, b"hi"))
        frame = sock.recv(64)
        if frame[:4] != b"\x81\x02hi":
            raise ConnectionError(f"no echo: {frame!r}")
        sock.sendall(client_frame(0x8, struct.pack("!H", 1000)))


# -- one server --------------------------------------------------------------------------------


def squall_of(code: Path, workdir: Path) -> str:
    """Where `squall` is imported from, with `code` first on PYTHONPATH."""
    out = subprocess.run(
        [sys.executable, "-c", "import squall; print(squall.__file__)"],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


@contextlib.contextmanager
def serving(code: Path, workdir: Path) -> Iterator[tuple[int, int]]:
    """squall from `code`, 1 worker, serving this module's app: (port, worker pid)."""
    port = compare.free_port()
    rundir = Path(tempfile.mkdtemp(prefix="squall-", dir=workdir))
    log = rundir / "server.log"
    command = [
        sys.executable,
        "-m",
        "squall",
        APP,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--interface",
        "squall",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(BENCH)])}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=rundir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = compare.Running(
        compare.Server("squall", str(code), lambda *_: command, "squall"), proc, log
    )
    try:
        deadline = time.monotonic() + compare.START_TIMEOUT
        while not answers(port):
            if proc.poll() is not None:
                raise compare.StartError(f"exited with {proc.returncode}:\n{compare.log_tail(log)}")
            if time.monotonic() > deadline:
                raise compare.StartError(f"no answer:\n{compare.log_tail(log)}")
            time.sleep(0.05)
        workers = [pid for pid in running.record() if pid != proc.pid]
        if len(workers) != 1:
            raise compare.StartError(f"expected 1 worker, found {workers}")
        yield port, workers[0]
    finally:
        running.stop()


@dataclass
class Outcome:
    before_kib: int = 0
    peak_kib: int = 0
    sent: int = 0
    answered: bool = False
    error: str = ""

    @property
    def growth_mib(self) -> float:
        return (self.peak_kib - self.before_kib) / 1024


CASES = ("pipelining", "ping flood")


def run_case(case: str, code: Path, args: argparse.Namespace, workdir: Path) -> Outcome:
    out = Outcome()
    with serving(code, workdir) as (port, worker):
        started = compare.start_time(worker)
        warm_up(port)
        time.sleep(0.3)
        with PeakRSS(worker) as rss:
            if case == "pipelining":
                out.sent = pipelined(port, args.requests, args.hold)
            else:
                out.sent = ping_flood(port, int(args.ping_mb * 1_000_000), args.hold)
        out.before_kib, out.peak_kib = rss.before, rss.peak
        out.answered = answers(port)
        if compare.start_time(worker) != started:
            out.error = "the worker died"
    return out


# -- report ------------------------------------------------------------------------------------


def amount(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def cell(out: Outcome | None) -> str:
    if out is None:
        return "-"
    if out.error:
        return f"failed: {out.error}"
    text = f"{out.growth_mib:.1f}"
    return text if out.answered else text + " (then no answer)"


def report(
    args: argparse.Namespace,
    trees: dict[str, Path],
    found: dict[str, str],
    results: dict[tuple[str, str], Outcome],
    when: datetime.datetime,
) -> str:
    lines = [
        f"# A worker's memory under clients that never read, {when:%Y-%m-%d %H:%M %Z}",
        "",
        f"`python bench/connection_memory.py {' '.join(sys.argv[1:])}`: squall, 1 worker, "
        f"`--interface squall`, a fresh server per case; RSS growth of the worker (peak of "
        f"VmRSS sampled every 5 ms and VmHWM reset at the start, minus VmRSS before), in MiB. "
        f"The attacking connection has SO_RCVBUF {CLIENT_RCVBUF // 1024} KiB. "
        f"Target: under {TARGET_MIB:g} MiB.",
        "",
        "| case | " + " | ".join(f"{name} (MiB)" for name in trees) + " |",
        "|---|" + "---:|" * len(trees),
    ]
    what = {
        "pipelining": f"{args.requests} pipelined GET /big (512 KiB each), nothing read "
        f"for {args.hold:g} s",
        "ping flood": f"{args.ping_mb:g} MB of WebSocket pings (125-byte payloads), nothing read",
    }
    for case in CASES:
        row = [cell(results.get((case, name))) for name in trees]
        lines.append(f"| {case}: {what[case]} | " + " | ".join(row) + " |")
    lines += ["", "| case | tree | RSS before (MiB) | peak (MiB) | sent by the client |"]
    lines.append("|---|---|---:|---:|---:|")
    for case in CASES:
        for name in trees:
            out = results.get((case, name))
            if out is not None and not out.error:
                lines.append(
                    f"| {case} | {name} | {out.before_kib / 1024:.1f} | "
                    f"{out.peak_kib / 1024:.1f} | {amount(out.sent)} |"
                )
    lines.append("")
    for name, tree in trees.items():
        lines.append(f"- {name}: `{tree}` (squall imported from `{found[name]}`)")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="the old code tree (e.g. /tmp/before)")
    parser.add_argument(
        "--after", type=Path, default=compare.ROOT, help="the new code tree (default: this one)"
    )
    parser.add_argument("--requests", type=int, default=200, help="pipelined GET /big")
    parser.add_argument("--ping-mb", type=float, default=40.0, help="MB of pings to send")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds of reading nothing")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results/")
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after} if args.before else {"after": args.after}
    trees = {name: tree.resolve() for name, tree in trees.items()}
    when = datetime.datetime.now().astimezone()
    results: dict[tuple[str, str], Outcome] = {}
    with compare.OwnedProcesses("connection_memory.py") as owner:
        with tempfile.TemporaryDirectory(prefix="squall-connmem-") as tmp:
            found = {name: squall_of(tree, Path(tmp)) for name, tree in trees.items()}
            for name, tree in trees.items():
                if not Path(found[name]).is_relative_to(tree):
                    raise SystemExit(f"{name}: squall comes from {found[name]}, not {tree}")
            for case in CASES:
                for name, tree in trees.items():
                    try:
                        out = run_case(case, tree, args, Path(tmp))
                    except (compare.StartError, RuntimeError, OSError) as exc:
                        out = Outcome(error=str(exc).splitlines()[0])
                    if out.error or not out.answered:
                        owner.status = 1
                    results[case, name] = out
                    print(
                        f"  {case:10} {name:6} growth {out.growth_mib:6.1f} MiB "
                        f"(sent {amount(out.sent)}, answers after: {out.answered})"
                        + (f" FAILED: {out.error}" if out.error else ""),
                        file=sys.stderr,
                        flush=True,
                    )
        text = report(args, trees, found, results, when)
        print(text, flush=True)
        if not args.no_save:
            compare.save_result("connection-memory", when, text)
    return owner.status


if __name__ == "__main__":
    sys.exit(main())
