"""What /proc says about a process: memory, start time, open descriptors.

For the supervisor's views (`--metrics`, `squall ctl status`). Each reading
is None where it cannot be made (another OS, a process already gone).
"""

from __future__ import annotations

import os

__all__ = ["memory", "open_fds", "start_time"]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def memory(pid: int | str = "self") -> tuple[int, int] | None:
    """(virtual, resident) memory in bytes, from /proc/PID/statm."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[0]) * _PAGE_SIZE, int(fields[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


def start_time() -> float | None:
    """When this process started (Unix time), as prometheus_client computes it."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat.rsplit(b")", 1)[1].split()[19])
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return int(line.split()[1]) + ticks / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        pass
    return None


def open_fds() -> int | None:
    """How many descriptors this process has open."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
