"""Send each new connection to the worker with the least in hand (a socket per worker, Linux).

With one SO_REUSEPORT socket per worker, Linux picks the socket for a new
connection by a hash of its addresses: even on average, blind to load. A
worker that happens to hold more than its share keeps its queue while
another has room, and the tail latency shows it. One shared socket is fair
to short connections but lets one worker take a whole burst (and keep a
proxy's keep-alive pool).

Here a small eBPF program, attached to the reuse-port group, picks the socket
itself: the worker with the fewest connections in hand ("join the shortest
queue"). Per worker slot, a shared array holds

- `assigned`: connections the program sent to the slot, counted by the
  program itself (so a burst is spread as it arrives, before any accept);
- `report`: written by the slot's worker each time one of its connections
  closes, as (`assigned` when counted << 32) | open;
- `present`: written by the supervisor while the slot has a socket;
- `reported at`: when the worker last wrote `report` (CLOCK_MONOTONIC ns).

In hand = open + (`assigned` now - `assigned` when counted). Each cell has
one writer; a stale read only misplaces one connection.

Under churn, when every worker has closed a connection within the last
millisecond, the program sends new connections to the group's overflow
socket instead, which every worker serves: whichever worker is on a CPU
first takes the next one. With wrk and the workers sharing two CPUs, a
connection steered to a worker that has just been preempted waits out the
preemption, even though the other worker is free; the shared queue does not
(new-connection p99 at saturation, raw ASGI: 7.2 -> 5.4 ms). An idle server
gets bursts dealt out by load, and a blocked worker, which closes nothing,
turns the overflow off and is passed over.

Loading the program needs CAP_BPF (root, usually). Without it, or where
eBPF is missing, nothing changes: the kernel's hash picks, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import platform
import socket
import struct
import sys
from time import monotonic_ns
from typing import Any

from squall.bpf_asm import (
    BPF_ADD,
    BPF_ALU64_IMM,
    BPF_ALU64_REG,
    BPF_ATOMIC_OP,
    BPF_DW,
    BPF_EMIT_CALL,
    BPF_EXIT_INSN,
    BPF_JEQ,
    BPF_JGE,
    BPF_JLE,
    BPF_JMP_IMM,
    BPF_JMP_REG,
    BPF_JNE,
    BPF_LD_IMM64,
    BPF_LD_MAP_FD,
    BPF_LDX_MEM,
    BPF_LSH,
    BPF_MOD,
    BPF_MOV64_IMM,
    BPF_MOV64_REG,
    BPF_NEG,
    BPF_OR,
    BPF_REG_0,
    BPF_REG_1,
    BPF_REG_2,
    BPF_REG_3,
    BPF_REG_4,
    BPF_REG_6,
    BPF_REG_7,
    BPF_REG_8,
    BPF_REG_9,
    BPF_REG_FP,
    BPF_RSH,
    BPF_ST_MEM,
    BPF_STX_MEM,
    BPF_SUB,
    BPF_W,
    BPF_FUNC_ktime_get_ns,
    BPF_FUNC_map_lookup_elem,
    BPF_FUNC_sk_select_reuseport,
    Item,
    assemble,
)

__all__ = ["Steering", "SteeringUnavailable", "WorkerReport", "detach_program"]


#: Slots (task ids) the program can look at; a task id beyond turns steering off.
#: The verifier's work grows with the square of it: 128 slots load in about 90 ms.
MAX_SLOTS = 128
CELLS = 4  # per slot: assigned, report, present, reported at
ASSIGNED, REPORT, PRESENT, REPORTED_AT = range(CELLS)
OVERFLOW_KEY = MAX_SLOTS  # the overflow socket's key in each socket array
#: Every worker closed a connection this recently: connections churn, use the overflow.
CHURN_NS = 1_000_000
QUIET = 1 << 63  # a `reported at` that is never recent
_LOW32 = 0xFFFFFFFF
CTX_HASH = 32  # offsetof(struct sk_reuseport_md, hash)

# -- the bpf() system call ---------------------------------------------------------------

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}
BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM, BPF_PROG_LOAD = 0, 2, 5
BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY = 2, 20
BPF_PROG_TYPE_SK_REUSEPORT = 21
# Select-or-migrate: when a socket of the group closes, what waits in its
# queues goes to the socket the program picks, instead of being reset.
BPF_SK_REUSEPORT_SELECT, BPF_SK_REUSEPORT_SELECT_OR_MIGRATE = 39, 40
BPF_F_MMAPABLE = 1 << 10
SO_ATTACH_REUSEPORT_EBPF = 52
SO_DETACH_REUSEPORT_BPF = 68

_libc = ctypes.CDLL(None, use_errno=True)


class SteeringUnavailable(OSError):
    pass


def _bpf(command: int, attr: bytes) -> int:
    number = _BPF_SYSCALL.get(platform.machine()) if sys.platform.startswith("linux") else None
    if number is None:
        raise SteeringUnavailable(f"no bpf() system call on {sys.platform} {platform.machine()}")
    buffer = ctypes.create_string_buffer(attr, 128)
    result = int(_libc.syscall(number, command, buffer, 128))
    if result < 0:
        code = ctypes.get_errno()
        raise SteeringUnavailable(code, os.strerror(code))
    return result


def _create_map(kind: int, value_size: int, entries: int, flags: int = 0) -> int:
    return _bpf(BPF_MAP_CREATE, struct.pack("=IIIII", kind, 4, value_size, entries, flags))


def _put_socket(sockarray: int, key: int, sock: socket.socket) -> None:
    k = ctypes.c_uint32(key)
    v = ctypes.c_uint64(sock.fileno())
    attr = struct.pack("=IxxxxQQQ", sockarray, ctypes.addressof(k), ctypes.addressof(v), 0)
    _bpf(BPF_MAP_UPDATE_ELEM, attr)


def _load_program(code: bytes) -> int:
    """Load as select-or-migrate (Linux 5.14+), else as select only."""
    try:
        return _load_as(code, BPF_SK_REUSEPORT_SELECT_OR_MIGRATE)
    except SteeringUnavailable as exc:
        if exc.errno != errno.EINVAL:
            raise
    return _load_as(code, BPF_SK_REUSEPORT_SELECT)


def _load_as(code: bytes, attach_type: int) -> int:
    license = ctypes.create_string_buffer(b"MIT")
    insns = ctypes.create_string_buffer(code, len(code))

    def load(log_level: int, log: ctypes.Array[ctypes.c_char] | None) -> int:
        attr = struct.pack(
            "=IIQQIIQII16sII",
            BPF_PROG_TYPE_SK_REUSEPORT,
            len(code) // 8,
            ctypes.addressof(insns),
            ctypes.addressof(license),
            log_level,
            len(log) if log is not None else 0,
            ctypes.addressof(log) if log is not None else 0,
            0,  # kern_version
            0,  # prog_flags
            b"squall_steer",
            0,  # prog_ifindex
            attach_type,
        )
        return _bpf(BPF_PROG_LOAD, attr)

    try:
        return load(0, None)
    except SteeringUnavailable as exc:
        if exc.errno not in (errno.EACCES, errno.EINVAL) or attach_type != BPF_SK_REUSEPORT_SELECT:
            raise
    log = ctypes.create_string_buffer(1 << 20)  # again, for the verifier's reason
    try:
        return load(1, log)
    except SteeringUnavailable as exc:
        detail = log.value.decode(errors="replace").strip().splitlines()[-2:]
        raise SteeringUnavailable(exc.errno, f"{exc.strerror}: {' / '.join(detail)}") from None


# -- the program ---------------------------------------------------------------------------


def _store_key(key: int, register: int | None) -> bytes:
    """*(u32 *)(fp - 4) = the constant `key`, or `register`."""
    if register is None:
        return BPF_ST_MEM(BPF_W, BPF_REG_FP, -4, key)
    return BPF_STX_MEM(BPF_W, BPF_REG_FP, register, -4)


def _lookup(slots: int, key: int = 0, register: int | None = None) -> list[Item]:
    """r0 = &slots[key] or NULL; the key a constant, or in `register`."""
    return [
        _store_key(key, register),
        BPF_MOV64_REG(BPF_REG_2, BPF_REG_FP),
        BPF_ALU64_IMM(BPF_ADD, BPF_REG_2, -4),  # r2 = fp - 4
        BPF_LD_MAP_FD(BPF_REG_1, slots),
        BPF_EMIT_CALL(BPF_FUNC_map_lookup_elem),  # r0 = map_lookup_elem(slots, r2)
    ]


def _select(sockarray: int, key: int = 0, register: int | None = None) -> list[Item]:
    """r0 = sk_select_reuseport(ctx in r6, sockarray, &key, 0): 0 once chosen."""
    return [
        _store_key(key, register),
        BPF_MOV64_REG(BPF_REG_1, BPF_REG_6),
        BPF_LD_MAP_FD(BPF_REG_2, sockarray),
        BPF_MOV64_REG(BPF_REG_3, BPF_REG_FP),
        BPF_ALU64_IMM(BPF_ADD, BPF_REG_3, -4),  # r3 = fp - 4
        BPF_MOV64_IMM(BPF_REG_4, 0),
        BPF_EMIT_CALL(BPF_FUNC_sk_select_reuseport),
    ]


def program(slots: int, sockarray: int, count: int, churn_ns: int = CHURN_NS) -> bytes:
    """Pick the present slot, among the first `count`, with the least in hand.

    Or the overflow socket, if every present slot reported within `churn_ns`.
    A jump to a label goes to its next occurrence (`bpf_asm.assemble`).
    """
    code: list[Item] = [
        BPF_MOV64_REG(BPF_REG_6, BPF_REG_1),  # r6 = ctx
        BPF_EMIT_CALL(BPF_FUNC_ktime_get_ns),  # r0 = now
        BPF_STX_MEM(BPF_DW, BPF_REG_FP, BPF_REG_0, -16),  # *(u64 *)(fp - 16) = now
        BPF_ST_MEM(BPF_DW, BPF_REG_FP, -24, 1),  # *(u64 *)(fp - 24) = churning, so far
        BPF_LDX_MEM(BPF_W, BPF_REG_7, BPF_REG_6, CTX_HASH),  # r7 = ctx->hash
        BPF_ALU64_IMM(BPF_MOD, BPF_REG_7, count),
        BPF_ALU64_IMM(BPF_NEG, BPF_REG_7, 0),
        BPF_ALU64_IMM(BPF_ADD, BPF_REG_7, count),  # r7 = count - start, start = hash mod count
        BPF_MOV64_IMM(BPF_REG_8, -1),  # best = the most there is
        BPF_MOV64_IMM(BPF_REG_9, count),  # choice = none
    ]
    for i in range(count):
        code += [
            *_lookup(slots, key=i),
            BPF_JMP_IMM(BPF_JEQ, BPF_REG_0, 0, "next"),  # no such slot
            BPF_LDX_MEM(BPF_DW, BPF_REG_1, BPF_REG_0, 8 * PRESENT),
            BPF_JMP_IMM(BPF_JEQ, BPF_REG_1, 0, "next"),  # no socket
            BPF_LDX_MEM(BPF_DW, BPF_REG_1, BPF_REG_0, 8 * REPORTED_AT),
            BPF_LDX_MEM(BPF_DW, BPF_REG_2, BPF_REG_FP, -16),
            # r2 = now - reported at (QUIET, ahead of now, wraps: long ago)
            BPF_ALU64_REG(BPF_SUB, BPF_REG_2, BPF_REG_1),
            BPF_LD_IMM64(BPF_REG_3, churn_ns),
            BPF_JMP_REG(BPF_JLE, BPF_REG_2, BPF_REG_3, "recent"),  # within churn_ns
            BPF_ST_MEM(BPF_DW, BPF_REG_FP, -24, 0),  # this one is quiet: no overflow
            "recent",
            BPF_LDX_MEM(BPF_DW, BPF_REG_1, BPF_REG_0, 8 * REPORT),
            BPF_LDX_MEM(BPF_DW, BPF_REG_2, BPF_REG_0, 8 * ASSIGNED),
            BPF_MOV64_REG(BPF_REG_3, BPF_REG_1),
            BPF_ALU64_IMM(BPF_RSH, BPF_REG_3, 32),  # r3 = assigned when counted
            BPF_ALU64_REG(BPF_SUB, BPF_REG_2, BPF_REG_3),
            BPF_ALU64_IMM(BPF_LSH, BPF_REG_2, 32),
            BPF_ALU64_IMM(BPF_RSH, BPF_REG_2, 32),  # r2 = sent since (mod 2**32)
            BPF_ALU64_IMM(BPF_LSH, BPF_REG_1, 32),
            BPF_ALU64_IMM(BPF_RSH, BPF_REG_1, 32),  # r1 = open when counted
            BPF_ALU64_REG(BPF_ADD, BPF_REG_1, BPF_REG_2),  # r1 = in hand
            # Of slots with as few in hand, the first from a start that the
            # connection's hash picks: idle workers share sequential connections.
            BPF_ALU64_IMM(BPF_LSH, BPF_REG_1, 32),
            BPF_MOV64_REG(BPF_REG_3, BPF_REG_7),
            BPF_ALU64_IMM(BPF_ADD, BPF_REG_3, i),
            BPF_ALU64_IMM(BPF_MOD, BPF_REG_3, count),
            # r1 = in hand << 32 | (i - start) mod count
            BPF_ALU64_REG(BPF_OR, BPF_REG_1, BPF_REG_3),
            BPF_JMP_REG(BPF_JGE, BPF_REG_1, BPF_REG_8, "next"),  # not less than the best so far
            BPF_MOV64_REG(BPF_REG_8, BPF_REG_1),  # best = r1
            BPF_MOV64_IMM(BPF_REG_9, i),  # choice = i
            "next",
        ]
    code += [
        BPF_JMP_IMM(BPF_JEQ, BPF_REG_9, count, "pass"),  # no slot present: the kernel's hash
        BPF_LDX_MEM(BPF_DW, BPF_REG_1, BPF_REG_FP, -24),
        BPF_JMP_IMM(BPF_JEQ, BPF_REG_1, 0, "steer"),  # some worker is quiet: by load
        *_select(sockarray, key=OVERFLOW_KEY),
        BPF_JMP_IMM(BPF_JEQ, BPF_REG_0, 0, "pass"),  # to whichever worker is free first
        "steer",  # (no overflow socket: by load)
        *_select(sockarray, register=BPF_REG_9),
        BPF_JMP_IMM(BPF_JNE, BPF_REG_0, 0, "pass"),  # failed: the kernel's hash
        *_lookup(slots, register=BPF_REG_9),
        BPF_JMP_IMM(BPF_JEQ, BPF_REG_0, 0, "pass"),
        BPF_MOV64_IMM(BPF_REG_1, 1),
        BPF_ATOMIC_OP(BPF_DW, BPF_ADD, BPF_REG_0, BPF_REG_1, 8 * ASSIGNED),  # assigned += 1
        "pass",
        BPF_MOV64_IMM(BPF_REG_0, 1),
        BPF_EXIT_INSN(),  # return SK_PASS
    ]
    return assemble(code)


# -- the supervisor's side ---------------------------------------------------------------------


class Steering:
    """The shared array, a socket array and a program per reuse-port group (in the supervisor)."""

    def __init__(
        self,
        groups: int,
        churn_ns: int = CHURN_NS,
        maps: tuple[int, list[int]] | None = None,
    ) -> None:
        """New maps for `groups` reuse-port groups, or `maps` (slots, socket arrays) made before."""
        self.churn_ns = churn_ns
        if maps is None:
            maps = (
                _create_map(BPF_MAP_TYPE_ARRAY, 8 * CELLS, MAX_SLOTS, BPF_F_MMAPABLE),
                [
                    _create_map(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, 8, MAX_SLOTS + 1)
                    for _ in range(groups)
                ],
            )
        self.slots, self.sockarrays = maps
        self._own = [self.slots]  # closed by close(); the mapping below keeps its own
        size = -(-8 * CELLS * MAX_SLOTS // mmap.PAGESIZE) * mmap.PAGESIZE
        self.shared = mmap.mmap(self.slots, size)
        self.cells = memoryview(self.shared).cast("Q")
        self.programs: list[int] = []
        self.present: set[int] = set()
        self.covered = 0  # slots the attached programs look at

    @classmethod
    def adopt(
        cls, state: dict[str, Any], fds: dict[str, int], churn_ns: int = CHURN_NS
    ) -> Steering:
        """The maps a previous supervisor made (hot upgrade); its program stays attached.

        `_cover` loads this supervisor's own program at the next change of slots.
        """
        arrays = [fds[name] for name in state["sockarrays"]]
        adopted = cls(len(arrays), churn_ns, maps=(fds[state["slots"]], arrays))
        adopted.present = {int(task_id) for task_id in state["present"]}
        adopted.covered = int(state["covered"])
        return adopted

    def handover(self) -> tuple[dict[str, int], dict[str, Any]]:
        """The descriptors by name, and the state a successor adopts (see `adopt`)."""
        fds = {"bpf.slots": self.slots}
        fds.update({f"bpf.array.{index}": fd for index, fd in enumerate(self.sockarrays)})
        state = {
            "slots": "bpf.slots",
            "sockarrays": [name for name in fds if name.startswith("bpf.array.")],
            "present": sorted(self.present),
            "covered": self.covered,
        }
        return fds, state

    def add(self, task_id: int, sockets: list[socket.socket]) -> None:
        """Slot `task_id` has these sockets now (one per group, in group order)."""
        if task_id >= MAX_SLOTS:
            raise SteeringUnavailable(f"task id {task_id} beyond {MAX_SLOTS} slots")
        base = task_id * CELLS
        self.cells[base + REPORT] = (self.cells[base + ASSIGNED] & _LOW32) << 32
        self.cells[base + REPORTED_AT] = QUIET  # until its worker serves
        for sockarray, sock in zip(self.sockarrays, sockets, strict=True):
            _put_socket(sockarray, task_id, sock)
        self.cells[base + PRESENT] = 1
        self.present.add(task_id)
        self._cover(sockets)

    def add_overflow(self, sockets: list[socket.socket]) -> None:
        """The group's overflow sockets (one per group), which every worker serves."""
        for sockarray, sock in zip(self.sockarrays, sockets, strict=True):
            _put_socket(sockarray, OVERFLOW_KEY, sock)

    def exclude(self, task_id: int) -> None:
        """Send the slot nothing new; its sockets stay in the group (`include` undoes it)."""
        if task_id < MAX_SLOTS:
            self.cells[task_id * CELLS + PRESENT] = 0

    def include(self, task_id: int) -> None:
        if task_id < MAX_SLOTS and task_id in self.present:
            self.cells[task_id * CELLS + PRESENT] = 1

    def remove(self, task_id: int, others: list[socket.socket] | None) -> None:
        """Slot `task_id` is about to close its sockets; `others`: another slot's, if any."""
        self.present.discard(task_id)
        if task_id < MAX_SLOTS:
            self.cells[task_id * CELLS + PRESENT] = 0
        if others:
            self._cover(others)

    def _cover(self, leaders: list[socket.socket]) -> None:
        """Make the programs look at every slot up to the highest present (one socket per group).

        Exactly those: the hash's start is fair only among the slots looked at.
        """
        count = max(self.present) + 1 if self.present else 0
        if count == self.covered or not count:
            return
        programs = [
            _load_program(program(self.slots, array, count, self.churn_ns))
            for array in self.sockarrays
        ]
        for sock, fd in zip(leaders, programs, strict=True):
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, fd)
        for fd in self.programs:
            os.close(fd)
        self.programs = programs
        self.covered = count

    def report_for(self, task_id: int) -> WorkerReport:
        return WorkerReport(self.cells, task_id)

    def close(self) -> None:
        """Close the handles on the maps and programs; the shared cells stay mapped.

        Also in each worker right after fork, so that a program the
        supervisor replaces later is freed.
        """
        for fd in [*self.programs, *self.sockarrays, *self._own]:
            os.close(fd)
        self.programs, self.sockarrays, self._own = [], [], []


def detach_program(sock: socket.socket) -> None:
    """Back to the kernel's hash for `sock`'s group."""
    with contextlib.suppress(FileNotFoundError):  # none was attached
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)


class WorkerReport:
    """In a worker: tell the program how many connections this worker still holds.

    Called when a connection closes (and once when the worker starts
    serving), not when one opens: the program has counted that one already,
    as sent since the last report. A report taken while connections wait in
    the accept queue would forget them, and a worker accepting a burst
    would look emptier than it is. The report's time says whether this
    worker is closing connections, the sign of churn (see the module).
    """

    __slots__ = ("_assigned", "_at", "_cells", "_report")

    def __init__(self, cells: memoryview, task_id: int) -> None:
        self._cells = cells
        self._assigned = task_id * CELLS + ASSIGNED
        self._report = task_id * CELLS + REPORT
        self._at = task_id * CELLS + REPORTED_AT

    def __call__(self, open_connections: int) -> None:
        cells = self._cells
        cells[self._report] = (cells[self._assigned] & _LOW32) << 32 | open_connections
        cells[self._at] = monotonic_ns()
