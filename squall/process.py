"""What a worker knows about itself: its task id, and the pipe on which it
tells the supervisor that it is ready, alive, or failed to boot.

A leaf: both sides of the fork import it, and it imports nothing of squall's
but `cpus`. `squall.fork.fork_processes` makes the supervisor.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import enum
import errno
import os
import random
import signal
import sys
import threading
import warnings
from collections.abc import Callable

from squall.cpus import cpu_count

#: A worker's exit status when it could not boot (after it sent `booterror`).
BOOT_FAILURE_EXIT = 3

__all__ = ["cpu_count", "fork_processes", "notify", "task_id"]

WORKER_ID_ENV = "SQUALL_WORKER_ID"

_task_id: int | None = None
_channel_fd: int | None = None
_parent_pid: int | None = None

_PR_SET_PDEATHSIG = 1


#: The seed's `process.fork_processes(n)`: `squall.fork.fork_processes`, bound here by
#: the package's `__init__` (which every import of squall runs first), so that this
#: module imports nothing above it.
fork_processes: Callable[[int | None, int | None], int]


def task_id() -> int | None:
    """This worker's id (0..n-1), or None in the supervisor and in a single process."""
    return _task_id


def check_fork_safety() -> None:
    """Refuse to fork under a running event loop; warn about live threads.

    A child inherits a copy of the loop's selector and of any lock another
    thread holds, without that thread: the classic way forked servers hang.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "fork_processes() was called with an event loop running; "
            "bind and fork first, then create the loop (squall.run_forever())"
        )
    others = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if others:
        warnings.warn(
            f"forking with {len(others)} other thread(s) alive ({', '.join(others)}); "
            "the children get their memory but not the threads, and any lock they hold",
            RuntimeWarning,
            stacklevel=3,
        )


def become_worker(worker_id: int, channel_fd: int | None, parent_pid: int) -> None:
    """Set up a freshly forked worker: id, fresh random state, death with the parent."""
    global _task_id, _channel_fd, _parent_pid
    _task_id = worker_id
    _channel_fd = channel_fd
    _parent_pid = parent_pid
    os.environ[WORKER_ID_ENV] = str(worker_id)
    random.seed()  # children must not share the parent's random sequence
    _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc_name = ctypes.util.find_library("c")
        if libc_name:
            libc = ctypes.CDLL(libc_name, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl took effect.
    if os.getppid() != parent_pid:
        os._exit(1)


def orphaned() -> bool:
    """True when this worker's supervisor is gone (checked where PDEATHSIG does not exist)."""
    return _parent_pid is not None and os.getppid() != _parent_pid


class WorkerMessage(str, enum.Enum):
    """What a worker tells its supervisor, one line each: the kind, then any detail."""

    READY = "ready"  # serving
    HEARTBEAT = "heartbeat"  # the loop still runs (the watchdog)
    RETIRE = "retire"  # replace me: "memory <bytes>", or the request quota is served
    BOOT_ERROR = "booterror"  # cannot serve: the detail says why; the exit follows


def notify(message: WorkerMessage, detail: str = "") -> None:
    """Tell the supervisor something; a no-op outside a supervised worker."""
    if _channel_fd is None:
        return
    line = f"{message.value} {detail}" if detail else message.value
    try:
        os.write(_channel_fd, line.encode("utf-8", "replace") + b"\n")
    except OSError as exc:
        if exc.errno not in (errno.EPIPE, errno.EBADF, errno.EAGAIN):
            raise


def parse_message(line: str) -> tuple[WorkerMessage | None, str]:
    """The kind and detail of a line `notify` wrote; None for a kind this squall does not know."""
    kind, _, detail = line.partition(" ")
    try:
        return WorkerMessage(kind), detail
    except ValueError:
        return None, detail
