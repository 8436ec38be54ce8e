"""`--control PATH`: the supervisor's side of `squall ctl`, on a unix socket (mode 0600).

`ControlPlugin` listens on PATH and answers every request line with one
reply line, both JSON:

    {"command": "status" | "reload" | "upgrade" | "scale" | "stop" | "restart-worker", "args": [...]}
    {"ok": true, "message": "...", ...}   or   {"ok": false, "error": "..."}

Only the socket's owner and root may talk to it: the file is created 0600
(the umask is tightened around bind, so it is never more open, not even for
an instant), and each peer's uid is checked again with SO_PEERCRED.

The plugin runs in the supervisor's loop, so nothing here may block or raise.
The sockets are an `Endpoint`'s (`endpoint.py`: non-blocking, a client limit,
idle clients closed); this module supplies the line framing (a request line
is capped at `MAX_REQUEST` bytes) and the commands, and a bad request is an
error line, never an exception. The client, `squall ctl`, is `ctl.py`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import struct
import time
from collections.abc import Callable, Mapping
from typing import Any

from squall import procfs
from squall.ctl import ctl_main
from squall.endpoint import Endpoint, TurnAway
from squall.errors import BindError
from squall.sockets import handed_socket, remove_stale_socket
from squall.supervisor import PluginBase, Supervisor, SupervisorEvent, WorkerProcess

__all__ = ["ControlPlugin", "ctl_main"]  # ctl_main: `squall ctl`, from ctl.py

logger = logging.getLogger("squall.control")

#: A hot upgrade passes the control socket here (its descriptor).
INHERIT_ENV = "SQUALL_CONTROL_FD"

#: The longest request line accepted; a longer one is answered with an error and closed.
MAX_REQUEST = 64 * 1024
#: At most this many clients at once (`Endpoint`'s policy past it).
MAX_CLIENTS = 32
#: A client that completes no request for this long is dropped.
IDLE_TIMEOUT = 10.0
#: `scale N` refuses more workers than this (a typo must not fork thousands).
MAX_WORKERS = 1024

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class _Refused(Exception):
    """A request that is understood but not carried out; its text goes back to the client."""


class _Client:
    """One control connection's framing: request lines in, reply lines out (`Conversation`)."""

    __slots__ = ("_answer", "_inbox", "done", "pid", "uid")

    def __init__(
        self,
        answer: Callable[[bytes, _Client], dict[str, Any]],
        uid: int | None,
        pid: int | None,
    ) -> None:
        self._answer = answer
        self.uid = uid
        self.pid = pid
        self._inbox = bytearray()
        self.done = False

    def receive(self, data: bytes) -> None:
        self._inbox += data

    def next_reply(self) -> bytes | None:
        end = self._inbox.find(b"\n")
        if end >= 0:
            line = bytes(self._inbox[:end])
            del self._inbox[: end + 1]
            return _encode(self._answer(line, self))
        if len(self._inbox) > MAX_REQUEST:
            self._inbox.clear()
            self.done = True
            return _encode(_error(f"request line longer than {MAX_REQUEST} bytes"))
        return None

    @property
    def mid_request(self) -> bool:
        return bool(self._inbox)


class ControlPlugin(PluginBase):
    """In the supervisor: answers commands on the control socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._supervisor: Supervisor | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._adopted: tuple[int, int] | None = None  # the same, handed over, until we serve
        self._owner_pid = os.getpid()
        self._owner_uid = os.geteuid()
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
        self._listener: socket.socket | None = self._listen()
        self._endpoint = Endpoint(
            "control socket",
            [self._listener],
            self._converse,
            max_clients=MAX_CLIENTS,
            full_reply=_encode(_error("too many control clients at once; try again")),
        )

    # -- the plugin ------------------------------------------------------------

    def attach(self, supervisor: Supervisor, selector: selectors.BaseSelector) -> None:
        self._supervisor = supervisor
        self._owner_pid = os.getpid()
        self._owner_uid = os.geteuid()
        self._endpoint.attach(selector)
        logger.info("control socket on %s (squall ctl --socket %s status)", self.path, self.path)

    def handover(self) -> tuple[list[int], dict[str, str]]:
        if self._listener is None:
            return [], {}
        fd = self._listener.fileno()
        return [fd], {INHERIT_ENV: str(fd)}

    def on_event(self, event: SupervisorEvent) -> None:
        if event == SupervisorEvent.UPGRADED:
            self._identity = None  # the socket file is the new supervisor's now
            return
        if event == SupervisorEvent.READY and self._adopted is not None:
            self._identity, self._adopted = self._adopted, None
            return
        if event == SupervisorEvent.TICK:
            self._endpoint.close_idle(IDLE_TIMEOUT)

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
        self._endpoint.close()
        self._listener = None
        if os.getpid() == self._owner_pid and self._identity is not None:
            # Not in a worker, and only our own file: a newer service may own the path now.
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._identity:
                    os.unlink(self.path)
        self._identity = None
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

    def _converse(self, sock: socket.socket) -> _Client:
        """A new client: only the socket's owner and root may talk here."""
        pid, uid = _peer_credentials(sock)
        if uid is not None and uid not in (0, self._owner_uid):
            logger.warning(
                "control socket: refused a client of uid %d (pid %s): only uid %d or root",
                uid,
                pid,
                self._owner_uid,
            )
            raise TurnAway(
                _encode(
                    _error(
                        f"permission denied: uid {uid} is neither the socket's owner "
                        f"(uid {self._owner_uid}) nor root"
                    )
                )
            )
        return _Client(self.handle_line, uid, pid)

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
            memory = procfs.memory(pid) if isinstance(pid, int) else None
            worker["rss"] = memory[1] if memory else None
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
