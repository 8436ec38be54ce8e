"""How many CPUs this process can really use.

`os.cpu_count()` reports every CPU of the machine, but a container or a
`taskset` may allow far fewer. Starting one worker per reported CPU then
oversubscribes the quota and makes every request slower, so the default
worker count comes from `cpu_count()` here instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

__all__ = [
    "cgroup_cpu_limit",
    "cpu_count",
    "limit_cpus",
    "parse_cfs_quota",
    "parse_cpu_max",
]

PROC_SELF_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"

_Reader = Callable[[str], float | None]


def cpu_count() -> int:
    """CPUs in this process's affinity mask, further capped by a cgroup CPU quota."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        available = os.cpu_count() or 1
    try:
        with open(PROC_SELF_CGROUP, encoding="utf-8") as f:
            limit = cgroup_cpu_limit(f.read(), CGROUP_ROOT)
    except (OSError, UnicodeDecodeError):
        limit = None
    return limit_cpus(available, limit)


def limit_cpus(available: int, limit: float | None) -> int:
    """Cap `available` by a quota in CPUs, rounding a fractional quota up, at least 1.

    Rounding up keeps 1.5 CPUs of quota from wasting the half CPU.
    """
    count = max(1, available)
    if limit is not None and limit > 0:
        count = min(count, math.ceil(limit))
    return max(1, count)


def parse_cpu_max(text: str) -> float | None:
    """Parse a cgroup v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD") into CPUs; None = no limit."""
    fields = text.split()
    if not fields or fields[0] == "max":
        return None
    period = fields[1] if len(fields) > 1 else "100000"
    return _ratio(fields[0], period)


def parse_cfs_quota(quota_text: str, period_text: str) -> float | None:
    """Parse cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` into CPUs; -1 means no limit."""
    return _ratio(quota_text.strip(), period_text.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return q / p


def cgroup_cpu_limit(proc_cgroup_text: str, cgroup_root: str = CGROUP_ROOT) -> float | None:
    """The CPU quota (in CPUs) of the cgroup described by `/proc/self/cgroup` text, or None.

    A parent cgroup's quota also binds its children, so the smallest quota
    from the process's cgroup up to the mount root wins. A path that does not
    exist under the mount (a container without a cgroup namespace) simply
    falls through to the mount root.
    """
    v2_path: str | None = None
    for line in proc_cgroup_text.splitlines():
        hierarchy, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep and sep2):
            continue
        names = [c for c in controllers.split(",") if c]
        if "cpu" in names:  # cgroup v1 (or hybrid): the cpu controller lives here
            mount = _v1_mount(cgroup_root, names)
            if mount is None:
                return None
            return _smallest(mount, path, _read_v1)
        if hierarchy == "0" and not controllers:
            v2_path = path
    if v2_path is None:
        return None
    return _smallest(cgroup_root, v2_path, _read_v2)


def _v1_mount(root: str, names: list[str]) -> str | None:
    """The directory where the v1 cpu controller is mounted (co-mounted names vary)."""
    for candidate in (",".join(names), ",".join(sorted(names)), "cpu,cpuacct", "cpu"):
        directory = os.path.join(root, candidate)
        if os.path.isdir(directory):
            return directory
    return None


def _smallest(mount: str, path: str, read: _Reader) -> float | None:
    parts = [p for p in path.strip().split("/") if p]
    if ".." in parts:  # cgroup outside our namespace: only the mount root is visible
        parts = []
    limits = []
    for depth in range(len(parts), -1, -1):
        limit = read(os.path.join(mount, *parts[:depth]))
        if limit is not None:
            limits.append(limit)
    return min(limits, default=None)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _read_v2(directory: str) -> float | None:
    text = _read_text(os.path.join(directory, "cpu.max"))
    return None if text is None else parse_cpu_max(text)


def _read_v1(directory: str) -> float | None:
    quota = _read_text(os.path.join(directory, "cpu.cfs_quota_us"))
    period = _read_text(os.path.join(directory, "cpu.cfs_period_us"))
    if quota is None or period is None:
        return None
    return parse_cfs_quota(quota, period)
