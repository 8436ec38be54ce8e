"""`squall ctl`: steer a running service over a unix socket (mode 0600).

The supervisor side, `ControlPlugin`, listens on PATH (`--control PATH`) and
answers every request line with one reply line, both JSON:

    {"command": "status" | "reload" | "upgrade" | "scale" | "stop" | "restart-worker", "args": [...]}
    {"ok": true, "message": "...", ...}   or   {"ok": false, "error": "..."}

Only the socket's owner and root may talk to it: the file is created 0600
(the umask is tightened around bind, so it is never more open, not even for
an instant), and each peer's uid is checked again with SO_PEERCRED.

The plugin runs in the supervisor's loop, so nothing here may block or raise:
every socket is non-blocking, a request line is capped at `MAX_REQUEST`
bytes, idle clients are dropped, and a bad request is an error line, never an
exception.

The client side, `ctl_main`, is `squall ctl [--socket PATH] COMMAND`; it
exits 0 when the command was done, 1 when the service refused it (or the
conversation broke off), 2 on a usage error or when it cannot connect.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from squall.errors import BindError
from squall.sockets import handed_socket, remove_stale_socket
from squall.supervisor import Event, PluginBase, Supervisor, WorkerProcess

logger = logging.getLogger("squall.control")

#: A hot upgrade passes the control socket here (its descriptor).
INHERIT_ENV = "SQUALL_CONTROL_FD"

#: The environment variable naming the socket, for `squall ctl` (and `--control`).
SOCKET_ENV = "SQUALL_CONTROL"
#: The longest request line accepted; a longer one is answered with an error and closed.
MAX_REQUEST = 64 * 1024
#: At most this many clients at once; more are turned away.
MAX_CLIENTS = 32
#: At most this many request lines are answered per turn of the supervisor's loop.
MAX_LINES_AT_ONCE = 16
#: A client that says nothing for this long is dropped.
IDLE_TIMEOUT = 10.0
#: `scale N` refuses more workers than this (a typo must not fork thousands).
MAX_WORKERS = 1024
#: The client's cap on a reply (a status reply of MAX_WORKERS workers is far below it).
MAX_REPLY = 16 * 1024 * 1024

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class _Refused(Exception):
    """A request that is understood but not carried out; its text goes back to the client."""


@dataclass
class _Client:
    sock: socket.socket
    uid: int | None
    pid: int | None
    last_active: float = field(default_factory=time.monotonic)
    inbox: bytearray = field(default_factory=bytearray)
    outbox: bytearray = field(default_factory=bytearray)
    closing: bool = False  # read nothing more; close once the outbox is flushed


class ControlPlugin(PluginBase):
    """In the supervisor: answers commands on the control socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._supervisor: Supervisor | None = None
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._adopted: tuple[int, int] | None = None  # the same, handed over, until we serve
        self._owner_pid = os.getpid()
        self._owner_uid = os.geteuid()
        self._clients: dict[int, _Client] = {}
        self._spawns: dict[int, int] = {}  # task id -> processes forked for that slot
        self._commands: dict[str, Callable[[list[Any]], dict[str, Any]]] = {
            "status": self._status,
            "reload": self._reload,
            "upgrade": self._upgrade,
            "scale": self._scale,
            "stop": self._stop,
            "restart-worker": self._restart_worker,
        }
        # Made at once, before a --user drop, in a directory only root may write to.
        self._listener = self._listen()

    # -- the plugin ------------------------------------------------------------

    def attach(self, supervisor: Supervisor, selector: selectors.BaseSelector) -> None:
        self._supervisor = supervisor
        self._selector = selector
        self._owner_pid = os.getpid()
        self._owner_uid = os.geteuid()
        assert self._listener is not None
        selector.register(self._listener, selectors.EVENT_READ, self)
        logger.info("control socket on %s (squall ctl --socket %s status)", self.path, self.path)

    def on_readable(self, key: selectors.SelectorKey, mask: int) -> None:
        client = None
        try:
            if key.fileobj is self._listener:
                self._accept()
                return
            client = self._clients.get(key.fd)
            if client is None:
                return
            if mask & selectors.EVENT_WRITE:
                self._flush(client)
            if mask & selectors.EVENT_READ and key.fd in self._clients and not client.closing:
                self._receive(client)
        except Exception:  # the supervisor must outlive any client
            logger.exception("control socket: unexpected error; dropping the client")
            if client is not None:
                self._drop(client)

    def handover(self) -> tuple[list[int], dict[str, str]]:
        if self._listener is None:
            return [], {}
        fd = self._listener.fileno()
        return [fd], {INHERIT_ENV: str(fd)}

    def on_event(self, event: Event) -> None:
        if event == "upgraded":
            self._identity = None  # the socket file is the new supervisor's now
            return
        if event == "ready" and self._adopted is not None:
            self._identity, self._adopted = self._adopted, None
            return
        if event != "tick":
            return
        now = time.monotonic()
        for client in list(self._clients.values()):
            if now - client.last_active > IDLE_TIMEOUT:
                logger.debug("control socket: dropping an idle client")
                self._drop(client)

    def after_spawn(self, worker: WorkerProcess) -> None:
        self._spawns[worker.task_id] = self._spawns.get(worker.task_id, 0) + 1

    def after_exit(self, worker: WorkerProcess, status: int) -> None:
        supervisor = self._supervisor
        if supervisor is None or worker.task_id < supervisor.num_workers:
            return
        if all(w.task_id != worker.task_id for w in supervisor.workers.values()):
            self._spawns.pop(worker.task_id, None)  # the slot is gone (scale-down)

    def close(self) -> None:
        """Close every socket; only the process that made the socket file removes it."""
        for client in list(self._clients.values()):
            with contextlib.suppress(OSError):
                client.sock.close()
        self._clients.clear()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None
        if os.getpid() == self._owner_pid and self._identity is not None:
            # Not in a worker, and only our own file: a newer service may own the path now.
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    os.unlink(self.path)
        self._identity = None
        self._selector = None
        self._supervisor = None

    # -- the socket --------------------------------------------------------------

    def _listen(self) -> socket.socket:
        path = self.path
        inherited = os.environ.pop(INHERIT_ENV, None)
        if inherited is not None:  # a hot upgrade: the old supervisor's socket, file and all
            sock = handed_socket(int(inherited))
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                self._adopted = (st.st_dev, st.st_ino)  # ours to remove once we serve
            return sock
        remove_stale_socket(
            path,
            f"cannot open the control socket {path}",
            "another process answers on it (is the service already running?)",
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            previous = os.umask(0o177)  # the file is born 0600: never more open
            try:
                sock.bind(path)
            finally:
                os.umask(previous)
            os.chmod(path, 0o600)
            st = os.lstat(path)
            self._identity = (st.st_dev, st.st_ino)
            sock.setblocking(False)
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise BindError(
                f"cannot open the control socket {path}: {exc.strerror or exc}"
            ) from None
        return sock

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(MAX_CLIENTS):  # a few at a time: the workers come first
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    logger.warning("control socket: cannot accept: %s", exc.strerror or exc)
                    return
                if exc.errno == errno.ECONNABORTED:
                    continue
                raise
            sock.setblocking(False)
            pid, uid = _peer_credentials(sock)
            if uid is not None and uid not in (0, self._owner_uid):
                logger.warning(
                    "control socket: refused a client of uid %d (pid %s): only uid %d or root",
                    uid,
                    pid,
                    self._owner_uid,
                )
                self._turn_away(
                    sock,
                    f"permission denied: uid {uid} is neither the socket's owner "
                    f"(uid {self._owner_uid}) nor root",
                )
                continue
            if len(self._clients) >= MAX_CLIENTS:
                self._turn_away(sock, "too many control clients at once; try again")
                continue
            client = _Client(sock, uid, pid)
            self._clients[sock.fileno()] = client
            assert self._selector is not None
            self._selector.register(sock, selectors.EVENT_READ, self)

    def _turn_away(self, sock: socket.socket, error: str) -> None:
        with contextlib.suppress(OSError):
            sock.send(_encode({"ok": False, "error": error}))
        sock.close()

    def _receive(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.last_active = time.monotonic()
        if not data:
            client.closing = True  # the client is done: send what is left, then close
            self._update(client)
            return
        client.inbox += data
        self._process(client)

    def _process(self, client: _Client) -> None:
        """Answer complete lines, one reply at a time: the next waits until the last is sent."""
        for _ in range(MAX_LINES_AT_ONCE):  # then the loop's other duties, then more
            if client.closing or client.outbox or not self._alive(client):
                break
            line, newline, rest = bytes(client.inbox).partition(b"\n")
            if not newline:
                break
            client.inbox = bytearray(rest)
            client.outbox += _encode(self.handle_line(line, client))
            self._write(client)
        if not client.closing and b"\n" not in client.inbox and len(client.inbox) > MAX_REQUEST:
            client.inbox.clear()
            client.closing = True
            client.outbox += _encode(_error(f"request line longer than {MAX_REQUEST} bytes"))
            self._write(client)
        self._update(client)

    def _flush(self, client: _Client) -> None:
        """The client's socket is writable: send the rest of a reply, then answer on."""
        self._write(client)
        self._process(client)

    def _write(self, client: _Client) -> None:
        if not client.outbox or not self._alive(client):
            return
        try:
            sent = client.sock.send(client.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        del client.outbox[:sent]
        client.last_active = time.monotonic()

    def _update(self, client: _Client) -> None:
        """Watch for what the client's state needs; close it once nothing is left to do.

        A client is read only while nothing is owed to it, so that one which
        sends without reading holds at most one reply and one request here.
        """
        if not self._alive(client):
            return
        pending = not client.closing and b"\n" in client.inbox
        events = 0
        if not client.closing and not client.outbox and not pending:
            events |= selectors.EVENT_READ
        if client.outbox or pending:  # writable at once: a pending line is answered next turn
            events |= selectors.EVENT_WRITE
        if not events:
            self._drop(client)
            return
        assert self._selector is not None
        if self._selector.get_key(client.sock).events != events:
            self._selector.modify(client.sock, events, self)

    def _alive(self, client: _Client) -> bool:
        fd = client.sock.fileno()
        return fd >= 0 and self._clients.get(fd) is client

    def _drop(self, client: _Client) -> None:
        client.closing = True
        if self._alive(client):
            del self._clients[client.sock.fileno()]
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(client.sock)
        with contextlib.suppress(OSError):
            client.sock.close()

    # -- requests ------------------------------------------------------------------

    def handle_line(self, line: bytes, client: _Client | None = None) -> dict[str, Any]:
        """One request line in, one reply out; never raises (but a fork's child unwinds)."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            return _error("malformed request: expected one JSON object per line")
        if not isinstance(request, dict):
            return _error("malformed request: expected a JSON object")
        command = request.get("command")
        args = request.get("args", [])
        if not isinstance(command, str):
            return _error('malformed request: "command" must be a string')
        if not isinstance(args, list):
            return _error('malformed request: "args" must be a list')
        handler = self._commands.get(command)
        if handler is None:
            known = ", ".join(sorted(self._commands))
            return _error(f"unknown command {command[:64]!r}; known commands: {known}")
        if self._supervisor is None:
            return _error("the service is not running")
        if command != "status":
            who = f"uid {client.uid}, pid {client.pid}" if client is not None else "unknown peer"
            shown = " ".join(str(a) if isinstance(a, int) else repr(a) for a in args[:4])[:200]
            logger.info("control: %s (from %s)", f"{command} {shown}".strip(), who)
        try:
            return handler(args)
        except _Refused as exc:
            return _error(str(exc))
        except Exception as exc:
            logger.exception("control: %s failed", command)
            return _error(f"internal error: {exc}")

    def _status(self, args: list[Any]) -> dict[str, Any]:
        _no_args("status", args)
        supervisor = self._running()
        snapshot = supervisor.snapshot()
        now = time.time()
        stats, metrics = self._worker_stats()
        rows = snapshot.get("workers")
        workers: list[dict[str, Any]] = []
        for row in rows if isinstance(rows, list) else []:
            worker = dict(row)
            pid = worker.get("pid")
            task_id = worker.get("task_id")
            started = worker.get("started_at")
            if isinstance(started, (int, float)):
                worker["uptime"] = max(0.0, now - started)
            worker["rss"] = rss_bytes(pid) if isinstance(pid, int) else None
            if isinstance(task_id, int):
                worker["restarts"] = max(0, self._spawns.get(task_id, 1) - 1)
            worker["requests"] = None
            worker.update(stats.get(pid, {}) if isinstance(pid, int) else {})
            workers.append(worker)
        started_at = snapshot.get("started_at")
        reply: dict[str, Any] = dict(snapshot)
        reply.update(
            ok=True,
            workers=workers,
            metrics=metrics,
            uptime=max(0.0, now - started_at) if isinstance(started_at, (int, float)) else None,
        )
        return reply

    def _worker_stats(self) -> tuple[dict[int, Mapping[str, Any]], bool]:
        """Per-pid figures from plugins that offer them (`worker_stats()`, e.g. --metrics)."""
        stats: dict[int, Mapping[str, Any]] = {}
        found = False
        for plugin in self._running().plugins:
            provider = getattr(plugin, "worker_stats", None)
            if not callable(provider):
                provider = _metrics_stats(plugin)
            if provider is None:
                continue
            found = True
            try:
                for pid, values in provider().items():
                    stats[pid] = {**stats.get(pid, {}), **values}
            except Exception:
                logger.exception("control: the worker figures of %r failed", plugin)
        return stats, found

    def _reload(self, args: list[Any]) -> dict[str, Any]:
        _no_args("reload", args)
        supervisor = self._not_stopping()
        already = bool(supervisor.snapshot().get("reloading"))
        supervisor.reload()
        if already:
            return _ok("a reload is running; another one follows it")
        return _ok(f"reloading {supervisor.num_workers} worker(s), one batch at a time")

    def _upgrade(self, args: list[Any]) -> dict[str, Any]:
        _no_args("upgrade", args)
        supervisor = self._not_stopping()
        refused = supervisor.upgrade()
        if refused is not None:
            raise _Refused(refused)
        successor = supervisor.snapshot()["upgrading"]
        return {
            **_ok(f"upgrading: new supervisor pid {successor}; this one drains once it is ready"),
            "pid": supervisor.pid,
            "successor": successor,
        }

    def _scale(self, args: list[Any]) -> dict[str, Any]:
        count = _int_arg("scale", args, "N")
        if count < 1:
            raise _Refused(f"N must be at least 1, not {count}")
        if count > MAX_WORKERS:
            raise _Refused(f"N must be at most {MAX_WORKERS}, not {count}")
        supervisor = self._not_stopping()
        previous = supervisor.num_workers
        supervisor.scale(count)
        reply = _ok(f"scaling from {previous} to {count} worker(s)")
        reply.update(previous=previous, workers_wanted=count)
        return reply

    def _restart_worker(self, args: list[Any]) -> dict[str, Any]:
        task_id = _int_arg("restart-worker", args, "ID")
        supervisor = self._not_stopping()
        if task_id < 0 or task_id >= supervisor.num_workers:
            raise _Refused(f"no worker {task_id} (workers are 0 to {supervisor.num_workers - 1})")
        if not supervisor.restart_worker(task_id):
            raise _Refused(
                f"worker {task_id} cannot be restarted now "
                "(it is booting, draining, or already being replaced)"
            )
        return _ok(f"restarting worker {task_id}: its successor takes over once ready")

    def _stop(self, args: list[Any]) -> dict[str, Any]:
        if args not in ([], ["graceful"], ["now"]):
            raise _Refused('the only arguments of stop are "graceful" (the default) and "now"')
        supervisor = self._running()
        graceful = args != ["now"]
        supervisor.stop(graceful=graceful)
        if graceful:
            return _ok(f"stopping gracefully (up to {supervisor.graceful_timeout:g} s)")
        return _ok("stopping at once")

    def _running(self) -> Supervisor:
        if self._supervisor is None:
            raise _Refused("the service is not running")
        return self._supervisor

    def _not_stopping(self) -> Supervisor:
        supervisor = self._running()
        if supervisor.snapshot().get("stopping"):
            raise _Refused("the service is stopping")
        return supervisor


def _metrics_stats(plugin: object) -> Callable[[], dict[int, dict[str, Any]]] | None:
    """For `--metrics`: per-pid request counts from its status (what /api/status shows)."""
    metrics = sys.modules.get("squall.metrics")  # not imported: no --metrics
    status = getattr(plugin, "status", None)
    if metrics is None or not isinstance(plugin, metrics.MetricsPlugin) or not callable(status):
        return None

    def stats() -> dict[int, dict[str, Any]]:
        rows = status().get("workers", [])
        return {
            row["pid"]: {key: row[key] for key in ("requests", "in_flight") if key in row}
            for row in rows
            if isinstance(row, dict) and isinstance(row.get("pid"), int)
        }

    return stats


def _peer_credentials(sock: socket.socket) -> tuple[int | None, int | None]:
    """(pid, uid) of the process at the other end, or (None, None) where unknown."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None, None  # not Linux: the file mode alone protects the socket
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size)
    except OSError:
        return None, None
    pid, uid, _gid = _UCRED.unpack(raw)
    return pid, uid


def rss_bytes(pid: int) -> int | None:
    """The resident set size of `pid` (from /proc/PID/statm), or None where unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            fields = statm.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _no_args(command: str, args: list[Any]) -> None:
    if args:
        raise _Refused(f"{command} takes no arguments")


def _int_arg(command: str, args: list[Any], name: str) -> int:
    if len(args) != 1:
        raise _Refused(f"{command} takes one argument, {name}")
    value = args[0]
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 20:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Refused(f"{name} must be a whole number, not {args[0]!r}"[:200])
    return value


def _ok(message: str) -> dict[str, Any]:
    return {"ok": True, "message": message}


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _encode(reply: Mapping[str, Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n"


# -- the client: squall ctl ----------------------------------------------------------


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
