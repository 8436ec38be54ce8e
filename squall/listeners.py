"""Which listening sockets each worker slot serves.

Shared mode (the default): one set of sockets, bound once, served by every
worker. A retiring worker just stops accepting; what is queued goes to the
others.

Reuse-port mode: each slot (task id) has its own SO_REUSEPORT sockets, and
new connections are spread across them: to the worker with the fewest in
hand where eBPF allows (`squall.steering`), else by the kernel's hash. With
steering, the group also has an overflow socket that every worker serves,
for the program to use while connections churn on every worker. The
supervisor holds every slot's sockets, and a successor inherits its slot's,
so reloads, request quotas and watchdog restarts never close a listener.
Scale-down, a restart delay and degrade close a slot's; what is queued on
it moves to the others when steering is on (its program migrates) or with
`net.ipv4.tcp_migrate_req = 1`, and is reset otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from squall.sockets import BindSpec, open_binds
from squall.steering import Steering, SteeringUnavailable, WorkerReport, detach_program

logger = logging.getLogger("squall.listeners")

MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


class SharedListeners:
    """One set of sockets for every worker."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets

    def open_slot(self, task_id: int) -> None:
        pass

    def for_slot(self, task_id: int) -> list[socket.socket]:
        return self.sockets

    def keep_only(self, task_id: int) -> None:
        pass

    def close_slot(self, task_id: int) -> None:
        pass

    def close_all(self) -> None:
        for sock in self.sockets:
            sock.close()

    def describe(self) -> list[socket.socket]:
        return self.sockets

    def report_for(self, task_id: int) -> WorkerReport | None:
        return None  # a shared socket is not steered


class ReusePortListeners:
    """SO_REUSEPORT sockets per slot for TCP binds; Unix and inherited sockets stay shared."""

    def __init__(
        self, specs: Sequence[BindSpec], backlog: int | None = None, steer: bool = True
    ) -> None:
        self.backlog = backlog
        tcp = [spec for spec in specs if spec.kind == "tcp"]
        self.shared = open_binds([spec for spec in specs if spec.kind != "tcp"], backlog=backlog)
        self.slots: dict[int, list[socket.socket]] = {}
        # Port 0 picks a port once; every further slot must bind that same port.
        self.specs: list[BindSpec] = []
        first: list[socket.socket] = []
        try:
            for spec in tcp:
                opened = open_binds([spec], reuse_port=True, backlog=backlog)
                first += opened
                self.specs.append(dataclasses.replace(spec, port=opened[0].getsockname()[1]))
        except BaseException:
            for sock in first + self.shared:
                sock.close()
            raise
        self.slots[0] = first
        self.steering: Steering | None = None
        if steer and first:
            try:
                self.steering = Steering(len(first))
            except SteeringUnavailable as exc:
                self._stop_steering(exc)
            self._steer(lambda steering: steering.add(0, first))
        # Served by every worker; should steering stop later, the hash counts it as one more.
        self.overflow: list[socket.socket] = []
        if self.steering is not None:
            overflow = open_binds(self.specs, reuse_port=True, backlog=backlog)
            if self._steer(lambda steering: steering.add_overflow(overflow)):
                self.overflow = overflow
            else:
                for sock in overflow:
                    sock.close()
        if self.steering is None and not migrate_req_enabled():
            logger.debug(
                "net.ipv4.tcp_migrate_req is off: closing a worker slot's socket "
                "(scale-down, a restart delay, degrade) resets what is queued on it"
            )

    def open_slot(self, task_id: int) -> None:
        if task_id not in self.slots:
            opened = open_binds(self.specs, reuse_port=True, backlog=self.backlog)
            self.slots[task_id] = opened
            self._steer(lambda steering: steering.add(task_id, opened))

    def _steer(self, change: Callable[[Steering], object]) -> bool:
        """Tell the steering of a change; should it fail, the kernel's hash takes over."""
        if self.steering is None:
            return False
        try:
            change(self.steering)
        except SteeringUnavailable as exc:
            self._stop_steering(exc)
            return False
        return True

    def _stop_steering(self, why: OSError) -> None:
        logger.info("connections go by the kernel's hash, not by load: %s", why)
        if self.steering is not None:
            self.steering.close()
            self.steering = None
        for sock in next(iter(self.slots.values()), []):
            detach_program(sock)  # one socket per group detaches the group's program

    def report_for(self, task_id: int) -> WorkerReport | None:
        """In a worker: how it tells the steering program its load (None: no steering)."""
        return None if self.steering is None else self.steering.report_for(task_id)

    def for_slot(self, task_id: int) -> list[socket.socket]:
        return self.slots[task_id] + self.overflow + self.shared

    def keep_only(self, task_id: int) -> None:
        for other, sockets in list(self.slots.items()):
            if other != task_id:
                for sock in sockets:
                    sock.close()
                del self.slots[other]
        if self.steering is not None:
            self.steering.close()  # the worker keeps only the shared cells

    def close_slot(self, task_id: int) -> None:
        sockets = self.slots.pop(task_id, [])
        others = next(iter(self.slots.values()), None)
        self._steer(lambda steering: steering.remove(task_id, others))
        for sock in sockets:
            sock.close()

    def close_all(self) -> None:
        for task_id in list(self.slots):
            self.close_slot(task_id)
        for sock in self.overflow + self.shared:
            sock.close()
        if self.steering is not None:
            self.steering.close()
            self.steering = None

    def describe(self) -> list[socket.socket]:
        return self.slots.get(0, []) + self.shared


def migrate_req_enabled() -> bool:
    try:
        return MIGRATE_REQ.read_text().strip() == "1"
    except OSError:
        return False
