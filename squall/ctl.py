"""`squall ctl [--socket PATH] COMMAND`: steer a running service through its `--control` socket.

The client side of `control.py`: one JSON request line out, one JSON reply
line back. It exits 0 when the command was done, 1 when the service refused
it (or the conversation broke off), 2 on a usage error or when it cannot
connect. It imports nothing of the server, so `squall ctl` starts quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["ConnectError", "ProtocolError", "ctl_main", "format_status", "request"]

#: The environment variable naming the socket, for `squall ctl` (and `--control`).
SOCKET_ENV = "SQUALL_CONTROL"
#: The client's cap on a reply (a status reply of `control.MAX_WORKERS` workers is far below it).
MAX_REPLY = 16 * 1024 * 1024


class ConnectError(OSError):
    """The control socket could not be reached."""


class ProtocolError(Exception):
    """Connected, but no valid reply came back."""


def request(
    path: str, command: str, args: Sequence[object] = (), timeout: float = 30.0
) -> dict[str, Any]:
    """Send one command to the service at `path` and return its reply."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise ConnectError(exc.errno, exc.strerror or str(exc)) from None
        line = json.dumps({"command": command, "args": list(args)}).encode() + b"\n"
        try:
            sock.sendall(line)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it hung up (a refused peer): its reason may still be waiting to be read
        except OSError as exc:
            raise ProtocolError(f"cannot send the request: {exc.strerror or exc}") from None
        reply = bytearray()
        while b"\n" not in reply:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProtocolError(f"no reply within {timeout:g} s")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise ProtocolError(f"no reply within {timeout:g} s") from None
            except OSError as exc:
                raise ProtocolError(f"the connection broke: {exc.strerror or exc}") from None
            if not chunk:
                raise ProtocolError("the service closed the connection without a reply")
            reply += chunk
            if len(reply) > MAX_REPLY:
                raise ProtocolError("the reply is too long")
    try:
        answer = json.loads(bytes(reply).split(b"\n", 1)[0])
    except ValueError:
        raise ProtocolError("the reply is not JSON") from None
    if not isinstance(answer, dict):
        raise ProtocolError("the reply is not a JSON object")
    return answer


def _ctl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="squall ctl",
        description="Steer a running squall service through its --control socket.",
        epilog="Exit status: 0 done, 1 refused by the service, 2 usage error or no connection.",
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help=f"the service's --control socket (default: ${SOCKET_ENV})",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="wait this long for a reply"
    )
    parser.add_argument("--json", action="store_true", help="print the reply as JSON")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("status", help="the workers: pid, state, uptime, requests, memory")
    commands.add_parser("reload", help="replace every worker, each successor ready first")
    commands.add_parser(
        "upgrade",
        help="re-exec the supervisor (new squall, Python or venv) on the same sockets; "
        "waits until the new one serves",
    )
    scale = commands.add_parser("scale", help="run N workers")
    scale.add_argument("count", type=int, metavar="N")
    stop = commands.add_parser("stop", help="stop the service (gracefully)")
    stop.add_argument("--now", action="store_true", help="kill the workers at once")
    restart = commands.add_parser("restart-worker", help="replace one worker, its successor first")
    restart.add_argument("worker", type=int, metavar="ID")
    return parser


def ctl_main(argv: Sequence[str]) -> int:
    """`squall ctl [--socket PATH] status|reload|upgrade|scale N|stop|restart-worker ID`."""
    parser = _ctl_parser()
    try:
        options = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse: 2 on a usage error, 0 for --help
        return exc.code if isinstance(exc.code, int) else 2
    path = options.socket or os.environ.get(SOCKET_ENV, "")
    if not path:
        print(
            f"squall ctl: no control socket: give --socket PATH or set {SOCKET_ENV} "
            "(the service's --control PATH)",
            file=sys.stderr,
        )
        return 2
    command: str = options.command
    args: list[object] = []
    if command == "scale":
        args = [options.count]
    elif command == "restart-worker":
        args = [options.worker]
    elif command == "stop" and options.now:
        args = ["now"]
    try:
        reply = request(path, command, args, timeout=options.timeout)
    except ConnectError as exc:
        print(f"squall ctl: cannot connect to {path}: {exc.strerror}", file=sys.stderr)
        return 2
    except ProtocolError as exc:
        print(f"squall ctl: {path}: {exc}", file=sys.stderr)
        return 1
    if options.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    if not reply.get("ok"):
        print(
            f"squall ctl: {command} refused: {reply.get('error', 'no reason given')}",
            file=sys.stderr,
        )
        return 1
    if options.json:
        return 0
    if command == "status":
        print(format_status(reply, dash=_dash()))
    elif command == "upgrade":
        return _wait_for_upgrade(path, reply, options.timeout)
    else:
        print(reply.get("message", "done"))
    return 0


def _wait_for_upgrade(path: str, reply: Mapping[str, Any], timeout: float) -> int:
    """Ask for the status until the new supervisor answers it, or the old one says it failed."""
    old, new = reply.get("pid"), reply.get("successor")
    print(reply.get("message", "upgrading"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            status = request(path, "status", [], timeout=max(0.1, deadline - time.monotonic()))
        except (ConnectError, ProtocolError):
            continue  # the socket changes hands
        if status.get("pid") == new and not status.get("taking_over"):
            print(f"upgraded: supervisor pid {old} -> {new}")
            return 0
        if status.get("pid") == old and status.get("upgrade_error") and not status.get("upgrading"):
            print(f"squall ctl: upgrade failed: {status['upgrade_error']}", file=sys.stderr)
            return 1
    print(f"squall ctl: upgrade: no answer from pid {new} within {timeout:g} s", file=sys.stderr)
    return 1


def _dash() -> str:
    try:
        "—".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "-"
    return "—"


def format_status(status: Mapping[str, Any], dash: str = "—") -> str:
    """The status reply as a table, one row per worker, then a summary line."""
    header = ("WORKER", "PID", "STATE", "UPTIME", "REQUESTS", "RSS", "RESTARTS")
    rows: list[tuple[str, ...]] = [header]
    workers = status.get("workers")
    for worker in workers if isinstance(workers, list) else []:
        requests = worker.get("requests")
        rows.append(
            (
                str(worker.get("task_id", "?")),
                str(worker.get("pid", "?")),
                str(worker.get("state", "?")),
                _duration(worker.get("uptime"), dash),
                str(requests) if isinstance(requests, int) else dash,
                _size(worker.get("rss"), dash),
                str(worker.get("restarts", dash)),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"supervisor pid {status.get('pid', '?')}, up {_duration(status.get('uptime'), dash)}"]
    lines += [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.append(_summary(status))
    return "\n".join(lines)


def _summary(status: Mapping[str, Any]) -> str:
    workers = status.get("workers")
    ready = sum(
        1 for w in (workers if isinstance(workers, list) else []) if w.get("state") == "ready"
    )
    parts = [f"{status.get('workers_wanted', '?')} worker(s) wanted, {ready} ready"]
    parts.append("degraded: yes (no more restarts)" if status.get("degraded") else "degraded: no")
    causes = status.get("restart_causes")
    causes = causes if isinstance(causes, dict) else {}
    total = sum(v for v in causes.values() if isinstance(v, int))
    detail = ", ".join(f"{cause} {count}" for cause, count in sorted(causes.items()))
    parts.append(f"restarts: {total}" + (f" ({detail})" if detail else ""))
    if status.get("reloading"):
        parts.append("reloading")
    if status.get("stopping"):
        parts.append("stopping")
    return "; ".join(parts)


def _duration(seconds: object, dash: str) -> str:
    if not isinstance(seconds, (int, float)):
        return dash
    total = int(seconds)
    if total < 60:
        return f"{total}s"
    if total < 3600:
        return f"{total // 60}m{total % 60:02d}s"
    if total < 86400:
        return f"{total // 3600}h{total % 3600 // 60:02d}m"
    return f"{total // 86400}d{total % 86400 // 3600:02d}h"


def _size(size: object, dash: str) -> str:
    if not isinstance(size, int):
        return dash
    return f"{size / (1024 * 1024):.1f} MiB"
