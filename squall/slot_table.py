"""The counters every worker writes and the supervisor reads (`--metrics`), with no lock.

One anonymous shared memory block, mapped in the supervisor before any
fork, split into fixed slots of `SLOT_FIELDS` signed 64-bit integers (256
bytes, so two slots never share a cache line). Each live worker owns one
slot and is its only writer (`metrics.SlotRecorder`, in the worker's event
loop thread); the supervisor only reads. When a worker is reaped its
counters are folded into totals kept here (its requests still in flight
count as unanswered) and its slot is freed: the counters never go down,
across crashes, reloads and recycling.

The layout is the field offsets below; nothing here does I/O or knows HTTP.
"""

from __future__ import annotations

import mmap

__all__ = ["BUCKETS_MS", "FIELDS", "SLOT_FIELDS", "SlotTable"]

#: Upper bounds of the request latency histogram, in milliseconds (then +Inf).
BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
BOUNDS_US = tuple(round(bound * 1000) for bound in BUCKETS_MS)

# Field offsets inside one slot.
STATUS = 0  # 6 fields: [0] unanswered (status 0), [1] 1xx ... [5] 5xx
IN_FLIGHT = 6  # gauge
CONNECTIONS = 7  # gauge
BYTES_OUT = 8  # response body bytes
REQUESTS = 9  # requests finished (answered or not)
DURATION_SUM_US = 10
BUCKET = 11  # len(BUCKETS_MS) + 1 fields, not cumulative; the last is +Inf
SHED = BUCKET + len(BUCKETS_MS) + 1  # 503s of --limit-concurrency
TIMED_OUT = SHED + 1  # requests --request-timeout ended (504, or a closed connection)
HTTP2_CONNECTIONS = TIMED_OUT + 1  # connections that began to speak HTTP/2
HTTP2_STREAMS = HTTP2_CONNECTIONS + 1  # requests on HTTP/2 streams
FIELDS = HTTP2_STREAMS + 1
SLOT_FIELDS = 32  # 256 bytes per slot
DEFAULT_SLOTS = 256  # workers alive at once, old and new ones together during a reload
_GAUGES = (IN_FLIGHT, CONNECTIONS)


class SlotTable:
    """In the supervisor: which worker writes which slot, and the counts of the reaped ones."""

    def __init__(self, slots: int = DEFAULT_SLOTS) -> None:
        #: The block the workers inherit across fork.
        self.shared = mmap.mmap(-1, slots * SLOT_FIELDS * 8)
        self._counters = memoryview(self.shared).cast("q")
        self._free = list(range(slots - 1, -1, -1))  # pop() takes the lowest
        self._pending: int | None = None  # the slot of a fork in progress
        self._slot_of: dict[int, tuple[int, int]] = {}  # pid -> (slot, task id)
        self._retired = [0] * FIELDS  # counters of reaped workers
        self._retired_by_task: dict[int, int] = {}  # requests of reaped workers, by task id

    def claim(self) -> int | None:
        """Before a fork: a zeroed slot for the child, or None when every slot is taken.

        A fork that failed leaves its slot pending, and the next one takes it.
        """
        slot = self._pending
        if slot is None and self._free:
            slot = self._free.pop()
        self._pending = slot
        if slot is not None:
            start = slot * SLOT_FIELDS * 8
            self.shared[start : start + SLOT_FIELDS * 8] = bytes(SLOT_FIELDS * 8)
        return slot

    def bind(self, pid: int, task_id: int) -> None:
        """After a fork: the pending slot is the new worker's."""
        if self._pending is not None:
            self._slot_of[pid] = (self._pending, task_id)
            self._pending = None

    def release(self, pid: int) -> None:
        """Once the worker is reaped: fold its counters into the totals and free its slot."""
        found = self._slot_of.pop(pid, None)
        if found is None:
            return
        slot, task = found
        fields = self._slot(slot)
        # Whatever was in flight when the worker died was never answered.
        lost = max(0, fields[IN_FLIGHT])
        fields[STATUS] += lost
        fields[REQUESTS] += lost
        for index in range(FIELDS):
            if index not in _GAUGES:
                self._retired[index] += fields[index]
        self._retired_by_task[task] = self._retired_by_task.get(task, 0) + fields[REQUESTS]
        self._free.append(slot)
        self._free.sort(reverse=True)

    def counters(self, pid: int) -> list[int]:
        """A live worker's counters (zeros for one without a slot)."""
        found = self._slot_of.get(pid)
        return self._slot(found[0]) if found is not None else [0] * FIELDS

    def totals(self) -> list[int]:
        """Every counter over the reaped workers and the live ones."""
        totals = list(self._retired)
        for slot, _ in self._slot_of.values():
            for index, value in enumerate(self._slot(slot)):
                totals[index] += value
        return totals

    def requests_by_task(self) -> dict[int, int]:
        """Requests finished by the workers of each task id, replaced ones included."""
        by_task = dict(self._retired_by_task)
        for slot, task in self._slot_of.values():
            by_task[task] = by_task.get(task, 0) + self._counters[slot * SLOT_FIELDS + REQUESTS]
        return by_task

    def _slot(self, slot: int) -> list[int]:
        base = slot * SLOT_FIELDS
        return self._counters[base : base + FIELDS].tolist()
