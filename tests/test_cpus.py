"""CPU counting: affinity and cgroup quotas, parsed from sample files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from squall.cpus import (
    cgroup_cpu_limit,
    cpu_count,
    limit_cpus,
    parse_cfs_quota,
    parse_cpu_max,
)

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, content in (line.split("=", 1) for line in text.split(";")):
        (path / name).write_text(content)


def test_cpu_count_is_sane():
    assert 1 <= cpu_count() <= (os.cpu_count() or 1)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_affinity_limits_count():
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs at least 2 CPUs")
    code = (
        "import os\n"
        f"os.sched_setaffinity(0, {{{min(allowed)}}})\n"
        "from squall.cpus import cpu_count\n"
        "print(cpu_count())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("50000 100000", 0.5),
        ("max 100000\n", None),
        ("max", None),
        ("", None),
        ("garbage here", None),
        ("0 100000", None),
        ("100000 0", None),
    ],
)
def test_parse_cpu_max(text, expected):
    assert parse_cpu_max(text) == expected


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [
        ("200000\n", "100000\n", 2.0),
        ("-1\n", "100000\n", None),
        ("x", "100000", None),
        ("100000", "", None),
    ],
)
def test_parse_cfs_quota(quota, period, expected):
    assert parse_cfs_quota(quota, period) == expected


@pytest.mark.parametrize(
    ("available", "limit", "expected"),
    [(8, None, 8), (8, 2.0, 2), (8, 1.5, 2), (8, 0.5, 1), (2, 16.0, 2), (0, None, 1)],
)
def test_limit_cpus(available, limit, expected):
    assert limit_cpus(available, limit) == expected


def test_v2_limit(tmp_path):
    _write(tmp_path / "app", "cpu.max=200000 100000\n")
    assert cgroup_cpu_limit("0::/app\n", str(tmp_path)) == 2.0


def test_v2_unlimited(tmp_path):
    _write(tmp_path / "app", "cpu.max=max 100000\n")
    assert cgroup_cpu_limit("0::/app\n", str(tmp_path)) is None


def test_v2_fraction_rounds_up(tmp_path):
    _write(tmp_path / "app", "cpu.max=150000 100000\n")
    limit = cgroup_cpu_limit("0::/app\n", str(tmp_path))
    assert limit == 1.5
    assert limit_cpus(8, limit) == 2


def test_v2_parent_limit_wins(tmp_path):
    _write(tmp_path / "parent", "cpu.max=100000 100000\n")
    _write(tmp_path / "parent" / "child", "cpu.max=400000 100000\n")
    assert cgroup_cpu_limit("0::/parent/child\n", str(tmp_path)) == 1.0


def test_v2_child_limit_wins_when_smaller(tmp_path):
    _write(tmp_path / "parent", "cpu.max=max 100000\n")
    _write(tmp_path / "parent" / "child", "cpu.max=300000 100000\n")
    assert cgroup_cpu_limit("0::/parent/child\n", str(tmp_path)) == 3.0


def test_v2_malformed_is_unlimited(tmp_path):
    _write(tmp_path / "app", "cpu.max=what is this\n")
    assert cgroup_cpu_limit("0::/app\n", str(tmp_path)) is None


def test_v2_missing_files_are_unlimited(tmp_path):
    assert cgroup_cpu_limit("0::/nowhere\n", str(tmp_path)) is None
    assert cgroup_cpu_limit("", str(tmp_path)) is None
    assert cgroup_cpu_limit("not a cgroup file\n", str(tmp_path)) is None


def test_v2_namespaced_root(tmp_path):
    # Inside a cgroup namespace the container's own cgroup is the mount root.
    _write(tmp_path, "cpu.max=200000 100000\n")
    assert cgroup_cpu_limit("0::/\n", str(tmp_path)) == 2.0


def test_v1_limit(tmp_path):
    _write(
        tmp_path / "cpu,cpuacct" / "docker" / "abc",
        "cpu.cfs_quota_us=300000;cpu.cfs_period_us=100000",
    )
    text = "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    assert cgroup_cpu_limit(text, str(tmp_path)) == 3.0


def test_v1_unlimited(tmp_path):
    _write(
        tmp_path / "cpu,cpuacct" / "docker" / "abc", "cpu.cfs_quota_us=-1;cpu.cfs_period_us=100000"
    )
    assert cgroup_cpu_limit("4:cpu,cpuacct:/docker/abc\n", str(tmp_path)) is None


def test_v1_path_missing_uses_mount_root(tmp_path):
    _write(tmp_path / "cpu", "cpu.cfs_quota_us=150000;cpu.cfs_period_us=100000")
    limit = cgroup_cpu_limit("3:cpu:/docker/abc\n", str(tmp_path))
    assert limit == 1.5
    assert limit_cpus(4, limit) == 2


def test_v1_separate_mount_name(tmp_path):
    # Some systems mount the controller only as "cpu" even though it is co-mounted.
    _write(tmp_path / "cpu", "cpu.cfs_quota_us=100000;cpu.cfs_period_us=100000")
    assert cgroup_cpu_limit("4:cpuacct,cpu:/\n", str(tmp_path)) == 1.0


def test_v1_malformed_is_unlimited(tmp_path):
    _write(tmp_path / "cpu", "cpu.cfs_quota_us=lots;cpu.cfs_period_us=100000")
    assert cgroup_cpu_limit("4:cpu:/\n", str(tmp_path)) is None


def test_v1_without_mount_is_unlimited(tmp_path):
    assert cgroup_cpu_limit("4:cpu,cpuacct:/docker/abc\n", str(tmp_path)) is None
