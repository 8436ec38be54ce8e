"""systemd: sd_notify (READY, STATUS, RELOADING, STOPPING, WATCHDOG) and socket activation.

Both speak systemd's documented protocols directly, without libsystemd:

- sd_notify(3): newline-separated `KEY=VALUE` datagrams to the AF_UNIX socket
  named by NOTIFY_SOCKET (a path, or `@name` in the abstract namespace). Only
  the supervisor notifies (the unit's NotifyAccess=main): the variables are
  removed from the environment once read, and every worker closes its copy of
  the socket as it starts (`close()` runs in each new child).
- sd_listen_fds(3): LISTEN_PID names the process the sockets are for,
  LISTEN_FDS how many there are from fd 3 on, LISTEN_FDNAMES their names
  (colon-separated). The variables are removed too, so that nothing started
  later takes the sockets for its own.
- The fd store (FDSTORE=1, the unit's FileDescriptorStoreMax=): as the
  supervisor stops, it gives systemd its listening sockets and steering
  maps, each under its handover name, with a memfd (`squall.state`) that
  describes them. On `systemctl restart`, systemd passes them back to the
  next squall, which adopts them like a hot upgrade and empties the store:
  connections that arrive in between wait in the queues, none is refused.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import selectors
import socket
import stat
import time
from collections.abc import MutableMapping
from typing import Any

from squall import handover
from squall.errors import BindError
from squall.sockets import describe_socket
from squall.supervisor import PluginBase, Supervisor, SupervisorEvent

logger = logging.getLogger("squall.systemd")

#: The first fd that socket activation passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

_NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE")
#: The fd store entry that describes the others.
STATE_NAME = "squall.state"
_LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def notify_address(value: str) -> str | None:
    """The socket address in NOTIFY_SOCKET: a path, or `@name` for the abstract namespace."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:..., which only a VM's systemd uses


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock of RELOADING=1's MONOTONIC_USEC."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class SystemdPlugin(PluginBase):
    """Tells systemd what the supervisor does; only built under systemd (NOTIFY_SOCKET)."""

    def __init__(self, address: str, watchdog_usec: int = 0, fdstore: bool = False) -> None:
        self.address = address
        #: systemd keeps descriptors for us (it sets $FDSTORE under FileDescriptorStoreMax=).
        self.fdstore = fdstore
        #: Names this process adopted from the store, removed from it once we run.
        self.adopted: list[str] = []
        #: WATCHDOG=1 is sent at least this often (half of WatchdogSec); 0: no watchdog.
        self.watchdog_interval = watchdog_usec / 2_000_000 if watchdog_usec > 0 else 0.0
        self._sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._owner_pid = os.getpid()
        self._supervisor: Supervisor | None = None
        self._status = ""
        self._last_watchdog = 0.0

    @classmethod
    def from_environment(
        cls, environ: MutableMapping[str, str] | None = None
    ) -> SystemdPlugin | None:
        """A plugin when NOTIFY_SOCKET is set, else None; the variables are consumed."""
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        watchdog_text = env.get("WATCHDOG_USEC", "")
        watchdog_pid = env.get("WATCHDOG_PID", "")
        fdstore = env.get("FDSTORE", "0").isdigit() and int(env.get("FDSTORE", "0")) > 0
        for name in _NOTIFY_VARIABLES:
            env.pop(name, None)  # workers, and whatever they start, must not notify
        if not value:
            return None
        address = notify_address(value)
        if address is None:
            logger.warning("NOTIFY_SOCKET=%s is not a unix socket address; not notifying", value)
            return None
        watchdog_usec = 0
        if watchdog_text:
            try:
                watchdog_usec = int(watchdog_text)
            except ValueError:
                logger.warning("WATCHDOG_USEC=%s is not a number; no watchdog", watchdog_text)
            if watchdog_pid and watchdog_pid != str(os.getpid()):
                watchdog_usec = 0  # the watchdog is some other process's business
        return cls(address, watchdog_usec, fdstore)

    # -- the plugin --------------------------------------------------------------

    def attach(self, supervisor: Supervisor, selector: selectors.BaseSelector) -> None:
        self._supervisor = supervisor
        self._owner_pid = os.getpid()
        self._status = self.describe()
        self.notify(f"STATUS={self._status}")
        for name in self.adopted:  # ours now: the store keeps no copy to outlive them
            self.notify("FDSTOREREMOVE=1", f"FDNAME={name}")
        self.adopted = []

    def handover(self) -> tuple[list[int], dict[str, str]]:
        """The new supervisor notifies the same socket, once it is the main process."""
        value = "@" + self.address[1:] if self.address.startswith("\0") else self.address
        env = {"NOTIFY_SOCKET": value}
        if self.watchdog_interval:
            env["WATCHDOG_USEC"] = str(round(self.watchdog_interval * 2_000_000))
        return [], env

    def on_event(self, event: SupervisorEvent) -> None:
        try:
            self._on_event(event)
        except Exception:  # never take the supervisor down over a notification
            logger.exception("systemd notification on %s failed", event)

    def _on_event(self, event: SupervisorEvent) -> None:
        if event == SupervisorEvent.TICK:
            self._tick()
            return
        if event == SupervisorEvent.UPGRADED and self._supervisor is not None:
            # The new supervisor is the service's main process from now on;
            # this one says nothing more (no STOPPING=1 as it drains).
            self.notify(f"MAINPID={self._supervisor.upgraded_to}")
            self.close()
            return
        if event == SupervisorEvent.RELOADING:
            self._status = "reloading"
            self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading")
        elif event == SupervisorEvent.STOPPING:
            self._status = "stopping"
            self.notify("STOPPING=1", "STATUS=stopping")
            if self.fdstore:
                self._store()
        elif event in (SupervisorEvent.READY, SupervisorEvent.RELOADED):
            self._status = self.describe()
            self.notify("READY=1", f"STATUS={self._status}")

    def _tick(self) -> None:
        now = time.monotonic()
        if self.watchdog_interval and now - self._last_watchdog >= self.watchdog_interval:
            self._last_watchdog = now
            self.notify("WATCHDOG=1")
        status = self.describe()
        if status != self._status:
            self._status = status
            self.notify(f"STATUS={status}")

    def _store(self) -> None:
        """Give systemd the listening sockets and maps, named, and their description."""
        supervisor = self._supervisor
        if supervisor is None or supervisor.listeners is None:
            return
        fds, state = supervisor.listeners.handover()
        memfd = os.memfd_create(STATE_NAME, os.MFD_CLOEXEC)
        try:
            description = {
                "format": handover.FORMAT,
                "listeners": state,
                "workers": supervisor.num_workers,
            }
            os.write(memfd, json.dumps(description).encode())
            stored: list[str] = []
            for name, fd in [*fds.items(), (STATE_NAME, memfd)]:
                if not self.notify("FDSTORE=1", f"FDNAME={name}", fds=[fd]):
                    # Half a store would pass for a .socket unit's sockets at the next
                    # start: take back what went, and close as if none had.
                    for sent in stored:
                        self.notify("FDSTOREREMOVE=1", f"FDNAME={sent}")
                    logger.warning("systemd's fd store took no %s; the sockets close", name)
                    return
                stored.append(name)
            supervisor.keep_listeners()  # closing ours now leaves systemd's copies alone
            logger.info("gave systemd %d socket(s) and map(s) to keep for the next start", len(fds))
        finally:
            os.close(memfd)

    def describe(self) -> str:
        """The one-line STATUS= text: how many workers are ready, and what happens."""
        supervisor = self._supervisor
        if supervisor is None:
            return "starting"
        snapshot = supervisor.snapshot()
        workers = snapshot.get("workers")
        rows = workers if isinstance(workers, list) else []
        if snapshot.get("stopping"):
            return f"stopping: {len(rows)} worker(s) left"
        ready = sum(1 for row in rows if row.get("state") == "ready")
        wanted = supervisor.num_workers
        text = (
            f"{ready} worker(s) ready" if ready == wanted else f"{ready} of {wanted} workers ready"
        )
        if snapshot.get("reloading"):
            text += ", reloading"
        if snapshot.get("degraded"):
            text += ", degraded (no more restarts)"
        return text

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        self._supervisor = None

    def notify(self, *lines: str, fds: list[int] | None = None) -> bool:
        """Send one datagram of `KEY=VALUE` lines; False (and no exception) if it fails."""
        sock = self._sock
        if sock is None or os.getpid() != self._owner_pid:
            return False  # a worker never speaks for the service
        try:
            data = "\n".join(lines).encode()
            if fds:
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                sock.sendmsg([data], rights, 0, self.address)
            else:
                sock.sendto(data, self.address)
        except OSError as exc:
            logger.debug("sd_notify %s failed: %s", lines, exc)
            return False
        return True


def stored_handover(
    environ: MutableMapping[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, int]] | None:
    """What a previous squall left in systemd's fd store, passed back to this one, or None.

    (description, descriptors by name); the variables are consumed then. A
    description this squall cannot read (another version's) is a BindError:
    binding afresh beside reuse-port sockets the store still holds would
    send connections to sockets nobody serves.
    """
    env = os.environ if environ is None else environ
    names = env.get("LISTEN_FDNAMES", "").split(":")
    if STATE_NAME not in names or env.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(env.get("LISTEN_FDS", "0"))
    for name in _LISTEN_VARIABLES:
        env.pop(name, None)
    fds = {name: LISTEN_FDS_START + index for index, name in enumerate(names[:count])}
    for fd in fds.values():
        os.set_inheritable(fd, False)
    state_fd = fds.pop(STATE_NAME)
    try:
        os.lseek(state_fd, 0, os.SEEK_SET)
        text = b""
        while chunk := os.read(state_fd, 65536):
            text += chunk
    finally:
        os.close(state_fd)
    try:
        description: dict[str, Any] | None = json.loads(text)
    except ValueError:
        description = None
    if not isinstance(description, dict) or description.get("format") != handover.FORMAT:
        found = description.get("format") if isinstance(description, dict) else None
        raise BindError(
            f"systemd's fd store holds sockets described in a form this squall cannot read "
            f"(format {found!r}, this squall reads {handover.FORMAT}); empty it with "
            f"`systemctl clean --what=fdstore UNIT`, or stop and start the unit"
        )
    return description, fds


def listen_fds() -> list[socket.socket]:
    """Sockets passed by systemd socket activation (LISTEN_FDS for this pid), else []."""
    return [sock for _, sock in listen_fds_with_names()]


def listen_fds_with_names(
    environ: MutableMapping[str, str] | None = None,
) -> list[tuple[str, socket.socket]]:
    """(name, socket) for each socket passed to this process; the variables are consumed."""
    env = os.environ if environ is None else environ
    pid_text = env.get("LISTEN_PID")
    count_text = env.get("LISTEN_FDS")
    names_text = env.get("LISTEN_FDNAMES", "")
    for name in _LISTEN_VARIABLES:
        env.pop(name, None)  # nothing started later may take these fds for its own
    if not pid_text or not count_text:
        return []
    try:
        pid, count = int(pid_text), int(count_text)
    except ValueError:
        raise BindError(
            f"socket activation: LISTEN_PID={pid_text} LISTEN_FDS={count_text} are not numbers"
        ) from None
    if pid != os.getpid():
        logger.debug("LISTEN_FDS is for pid %d, not this process; ignored", pid)
        return []
    names = names_text.split(":") if names_text else []
    adopted: list[tuple[str, socket.socket]] = []
    try:
        for index in range(max(0, count)):
            fd = LISTEN_FDS_START + index
            name = names[index] if index < len(names) and names[index] else f"fd{fd}"
            sock = _adopt(fd, name)
            adopted.append((name, sock))
            logger.info("socket activation: %s on fd %d (%s)", describe_socket(sock), fd, name)
    except BaseException:
        for _, sock in adopted:
            sock.close()
        raise
    return adopted


def _adopt(fd: int, name: str) -> socket.socket:
    """A listening stream socket from fd `fd`, non-blocking; BindError if it is anything else."""
    where = f"socket activation: fd {fd} ({name})"
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise BindError(f"{where} is not open ({exc.strerror or exc})") from None
    if not stat.S_ISSOCK(mode):
        raise BindError(f"{where} is not a socket")
    sock = socket.socket(fileno=fd)
    listening = True
    if hasattr(socket, "SO_ACCEPTCONN"):
        listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()  # leave the fd as it was: it is not ours to close
        raise BindError(
            f"{where} is not a listening stream socket "
            "(squall serves ListenStream= sockets with Accept=no)"
        )
    sock.setblocking(False)
    sock.set_inheritable(False)
    return sock
