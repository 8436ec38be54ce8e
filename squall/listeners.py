"""Which listening sockets each worker slot serves.

Shared (`--shared-socket`, systemd's sockets, the default off Linux): one
set of sockets, bound once, served by every worker. A retiring worker just
stops accepting; what is queued goes to the others.

Reuse-port (the default on Linux): each slot (task id) has its own
SO_REUSEPORT sockets, and a program attached to the group picks one for
each new connection: the worker with the fewest in hand where eBPF may be
loaded (`squall.steering`), else one at random (`squall.classic_bpf`, no
privilege needed). With steering, the group also has an overflow socket
that every worker serves, for the program to use while connections churn
on every worker. The supervisor holds every slot's sockets, and a successor
inherits its slot's, so reloads, request quotas and watchdog restarts never
close a listener. A closing listener resets what waits in its queue (unless
the eBPF program or `net.ipv4.tcp_migrate_req` moves it), so a slot is
first passed over (`retire_slot`, `park_slot`) and closed only once nothing
waits there or nobody will take it.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from squall.classic_bpf import GroupOrder
from squall.classic_bpf import attach as attach_classic
from squall.sockets import BindSpec, accept_queue, handed_socket, open_binds
from squall.steering import Steering, SteeringUnavailable, WorkerReport, detach_program

logger = logging.getLogger("squall.listeners")

OVERFLOW = -1  # the steered group's overflow socket, in the group's order
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

    def retire_slot(self, task_id: int) -> bool:
        return False  # a retiring worker stops accepting; the others take the queue

    def park_slot(self, task_id: int) -> None:
        pass

    def queued(self, task_id: int) -> int:
        return 0

    def close_all(self) -> None:
        for sock in self.sockets:
            sock.close()

    def describe(self) -> list[socket.socket]:
        return self.sockets

    def held(self) -> list[socket.socket]:
        """Every socket the supervisor holds."""
        return list(self.sockets)

    def named(self) -> dict[str, socket.socket]:
        """Every socket held, by a name that says its role (`shared.0`)."""
        return {f"shared.{index}": sock for index, sock in enumerate(self.sockets)}

    def handover(self) -> tuple[dict[str, int], dict[str, Any]]:
        """The descriptors by name, and the description a successor adopts (`adopt`)."""
        fds = {name: sock.fileno() for name, sock in self.named().items()}
        return fds, {"mode": "shared", "sockets": list(fds)}

    def release(self) -> None:
        """The successor serves them now: close this process's copies, change nothing else."""
        self.close_all()

    def reassert(self) -> None:
        pass

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
        self.order = GroupOrder()  # the same for every group: they open and close together
        self.excluded: set[int] = set()  # slots sent nothing new, their sockets still open
        self.classic = False  # the classic BPF program picks (no eBPF steering)
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
        self._joined(0, first)
        self.steering: Steering | None = None
        if steer and first:
            try:
                self.steering = Steering(len(first))
            except SteeringUnavailable as exc:
                self._stop_steering(exc)
            self._steer(lambda steering: steering.add(0, first))
        # Served by every worker; should steering stop later, the classic
        # program passes it over, and the hash counts it as one more.
        self.overflow: list[socket.socket] = []
        if self.steering is not None:
            overflow = open_binds(self.specs, reuse_port=True, backlog=backlog)
            self.order.joined(OVERFLOW)
            if self._steer(lambda steering: steering.add_overflow(overflow)):
                self.overflow = overflow
            else:
                self.order.left(OVERFLOW)
                for sock in overflow:
                    sock.close()
        elif first:
            self.classic = True
            self._pick()

    def _joined(self, task_id: int, sockets: list[socket.socket]) -> None:
        self.slots[task_id] = sockets
        self.order.joined(task_id)

    def open_slot(self, task_id: int) -> None:
        """Before a worker of the slot forks: its sockets exist and take new connections."""
        if task_id in self.excluded:
            self.excluded.discard(task_id)
            self._steer(lambda steering: steering.include(task_id))
            self._pick()
        if task_id not in self.slots:
            opened = open_binds(self.specs, reuse_port=True, backlog=self.backlog)
            self._joined(task_id, opened)
            self._steer(lambda steering: steering.add(task_id, opened))
            self._pick()

    def retire_slot(self, task_id: int) -> bool:
        """Send the slot nothing new; True if its worker should first empty its queue.

        False: the slot cannot be passed over (only the kernel's hash picks),
        and the caller may as well close it now.
        """
        if task_id not in self.slots or not (self.steering is not None or self.classic):
            return False
        self.excluded.add(task_id)
        self._steer(lambda steering: steering.exclude(task_id))
        self._pick()
        return self.steering is not None or self.classic

    def park_slot(self, task_id: int) -> None:
        """No worker takes from the slot for a while (a restart delay): lose nothing queued.

        Steered, its socket closes and the program moves what it holds to
        another slot. Otherwise it is passed over and kept open, and what it
        holds waits for the slot's next worker.
        """
        if self.steering is None and self.classic and task_id in self.slots:
            self.retire_slot(task_id)
        else:
            self.close_slot(task_id)

    def queued(self, task_id: int) -> int:
        """Connections waiting in the slot's accept queues."""
        return sum(accept_queue(sock) for sock in self.slots.get(task_id, []))

    def _pick(self) -> None:
        """Attach the classic program for the slots that take new connections."""
        if not self.classic or self.steering is not None or not self.slots:
            return
        choices = self.order.indexes(set(self.slots) - self.excluded)
        try:
            for sock in next(iter(self.slots.values())):
                attach_classic(sock, choices)
        except OSError as exc:
            self.classic = False
            logger.info("a retiring worker slot cannot be passed over: %s", exc)
            if not migrate_req_enabled():
                logger.info(
                    "net.ipv4.tcp_migrate_req is off: closing a worker slot's socket "
                    "(scale-down, a restart delay, degrade) resets what is queued on it"
                )

    def _steer(self, change: Callable[[Steering], object]) -> bool:
        """Tell the steering of a change; should it fail, the classic program takes over."""
        if self.steering is None:
            return False
        try:
            change(self.steering)
        except SteeringUnavailable as exc:
            self._stop_steering(exc)
            return False
        return True

    def _stop_steering(self, why: OSError) -> None:
        logger.info("connections go at random, not by load: %s", why)
        if self.steering is not None:
            self.steering.close()
            self.steering = None
        for sock in next(iter(self.slots.values()), []):
            detach_program(sock)  # one socket per group detaches the group's program
        self.classic = True
        self._pick()

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
        """The slot is gone: its sockets close (what they hold moves only when steered)."""
        if task_id not in self.slots:
            return
        sockets = self.slots.pop(task_id)
        self.excluded.discard(task_id)
        others = next(iter(self.slots.values()), None)
        self._steer(lambda steering: steering.remove(task_id, others))
        for sock in sockets:
            sock.close()
        self.order.left(task_id)
        self._pick()

    def close_all(self) -> None:
        """Stop: every socket closes. Nothing is told to the program or the cells first:
        with every slot going, whatever they picked would be closed too (and closing
        slot by slot reloaded the program for each)."""
        self.release()

    def describe(self) -> list[socket.socket]:
        return self.slots.get(0, []) + self.shared

    def named(self) -> dict[str, socket.socket]:
        """Every socket held, by a name that says its role (`slot2.0`, `overflow.0`, `shared.0`)."""
        groups = [(f"slot{task}", socks) for task, socks in self.slots.items()]
        groups += [("overflow", self.overflow), ("shared", self.shared)]
        return {
            f"{prefix}.{index}": sock
            for prefix, socks in groups
            for index, sock in enumerate(socks)
        }

    def handover(self) -> tuple[dict[str, int], dict[str, Any]]:
        """The descriptors by name, and the description a successor adopts (`adopt`)."""
        fds: dict[str, int] = {}

        def named(prefix: str, socks: list[socket.socket]) -> list[str]:
            names = [f"{prefix}.{index}" for index in range(len(socks))]
            fds.update(zip(names, (sock.fileno() for sock in socks), strict=True))
            return names

        state: dict[str, Any] = {
            "mode": "reuse-port",
            "specs": [dataclasses.asdict(spec) for spec in self.specs],
            "backlog": self.backlog,
            "slots": {str(task): named(f"slot{task}", socks) for task, socks in self.slots.items()},
            "overflow": named("overflow", self.overflow),
            "shared": named("shared", self.shared),
            "order": self.order.keys,
            "excluded": sorted(self.excluded),
            "classic": self.classic,
            "steering": None,
        }
        if self.steering is not None:
            steering_fds, state["steering"] = self.steering.handover()
            fds.update(steering_fds)
        return fds, state

    def reassert(self) -> None:
        """After adopting: the program and the shared cells say what this description says.

        A predecessor that stopped (systemd's fd store) may have cleared them.
        """
        included = set(self.slots) - self.excluded

        def include(steering: Steering) -> None:
            for task_id in included:
                steering.include(task_id)

        self._steer(include)
        self._pick()

    def release(self) -> None:
        """The successor serves them now: close this process's copies, change nothing else.

        Not `close_all`: that would tell the shared steering maps, or the
        group's program, that the slots are gone.
        """
        for sock in self.held():
            sock.close()
        self.slots, self.overflow, self.shared = {}, [], []
        if self.steering is not None:
            self.steering.close()
            self.steering = None
        self.classic = False

    def held(self) -> list[socket.socket]:
        """Every socket the supervisor holds."""
        return (
            [sock for sockets in self.slots.values() for sock in sockets]
            + self.overflow
            + self.shared
        )


def migrate_req_enabled() -> bool:
    try:
        return MIGRATE_REQ.read_text().strip() == "1"
    except OSError:
        return False


def adopt(state: dict[str, Any], fds: dict[str, int]) -> SharedListeners | ReusePortListeners:
    """The listeners a previous supervisor handed over, with their descriptors by name."""

    def sockets(names: list[str]) -> list[socket.socket]:
        return [handed_socket(fds[name]) for name in names]

    if state["mode"] == "shared":
        return SharedListeners(sockets(state["sockets"]))
    listeners = ReusePortListeners.__new__(ReusePortListeners)
    listeners.backlog = state["backlog"]
    listeners.specs = [BindSpec(**spec) for spec in state["specs"]]
    listeners.slots = {int(task): sockets(names) for task, names in state["slots"].items()}
    listeners.overflow = sockets(state["overflow"])
    listeners.shared = sockets(state["shared"])
    listeners.order = GroupOrder()
    listeners.order.keys = list(state["order"])
    listeners.excluded = set(state["excluded"])
    listeners.classic = bool(state["classic"])
    listeners.steering = None
    if state["steering"] is not None:
        listeners.steering = Steering.adopt(state["steering"], fds)
    return listeners
