"""--user and --group: bind and load the steering program as root, then serve as a user.

Real processes: the supervisor started as root, its workers, and TTIN, which
opens a new slot's socket after the drop. The app lives in a directory every
user can read; everything else the workers run is imported before the drop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from squall.errors import UsageError
from squall.privileges import CAP_BPF, CAP_NET_BIND_SERVICE, Identity, resolve
from tests.service import Service, Services, free_port, wait_until

SCRIPTS = Path(__file__).parent / "scripts"
NOBODY = 65534

as_root = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0, reason="needs root on Linux"
)


@pytest.fixture
def public_app() -> Iterator[Path]:
    """A copy of the supervised app in a directory any user may read."""
    directory = Path(tempfile.mkdtemp(prefix="squall-user-", dir="/tmp"))
    try:
        directory.chmod(0o755)
        target = directory / "supervised_app.py"
        shutil.copy(SCRIPTS / "supervised.py", target)
        target.chmod(0o644)
        yield directory
    finally:
        shutil.rmtree(directory)


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def capabilities(pid: int) -> int:
    return int(status(pid)["CapEff"], 16)


def uid(pid: int) -> int:
    return int(status(pid)["Uid"].split()[1])  # the effective uid


def serve(services: Services, directory: Path, port: int, *args: str) -> Service:
    service = services.squall(
        "supervised_app:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--user",
        str(NOBODY),
        *args,
        cwd=directory,
    )
    service.wait_for_port(port)
    service.wait_for_log("is ready", count=2)
    return service


def answering_slots(port: int, want: int, tries: int = 200) -> set[int]:
    seen: set[int] = set()
    for _ in range(tries):
        seen.add(httpx.get(f"http://127.0.0.1:{port}/pid", timeout=5).json()["task_id"])
        if len(seen) == want:
            break
    return seen


def privileged_port() -> int:
    for port in range(980, 1024):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024")


@as_root
def test_the_supervisor_keeps_two_capabilities_the_workers_none(
    services: Services, public_app: Path
) -> None:
    port = free_port()
    service = serve(services, public_app, port)
    assert "least-loaded worker (eBPF)" in service.output()  # loaded as root
    assert uid(service.pid) == NOBODY
    assert capabilities(service.pid) == 1 << CAP_BPF | 1 << CAP_NET_BIND_SERVICE
    workers = service.wait_for_workers(2)
    assert [uid(pid) for pid in workers] == [NOBODY, NOBODY]
    assert [capabilities(pid) for pid in workers] == [0, 0]


@as_root
def test_a_slot_opened_after_the_drop_joins_the_group_on_a_low_port(
    services: Services, public_app: Path
) -> None:
    # A new slot's socket joins the reuse-port group only if the group's
    # sockets belong to the same user (they were made as root: handed over
    # at the drop), on a port below 1024 only with CAP_NET_BIND_SERVICE, and
    # the steering program is loaded again for three slots (CAP_BPF).
    port = privileged_port()
    service = serve(services, public_app, port)
    service.send(signal.SIGTTIN)
    service.wait_for_log("worker 2 (pid")
    service.wait_for_log("is ready", count=3)
    assert answering_slots(port, 3) == {0, 1, 2}
    assert "error" not in service.output().lower()
    assert "least-loaded" in service.output() and "go at random" not in service.output()


@as_root
def test_the_log_file_is_the_users(services: Services, public_app: Path) -> None:
    log_file = public_app / "squall.log"
    port = free_port()
    service = services.squall(
        "supervised_app:app",
        *("--bind", f"127.0.0.1:{port}", "--user", str(NOBODY), "--log-file", str(log_file)),
        cwd=public_app,
    )
    service.wait_for_port(port)
    wait_until(lambda: "is ready" in log_file.read_text(), timeout=15)
    assert log_file.stat().st_uid == NOBODY  # so that the user can reopen it on SIGUSR1


def test_an_unknown_user_is_one_clear_error(services: Services, tmp_path: Path) -> None:
    port = free_port()
    service = services.squall(
        "app:app", "--bind", f"127.0.0.1:{port}", "--user", "no-such-user-here", cwd=tmp_path
    )
    assert service.wait() == 2
    assert service.output().strip().splitlines() == [
        "squall: error: --user no-such-user-here: no such user"
    ]


def test_users_and_groups_resolve_by_name_or_number() -> None:
    assert resolve(None, None) is None
    assert resolve("root", None) == Identity(0, 0, "root")
    assert resolve("123456", None) == Identity(123456, 123456, None)  # no passwd entry
    assert resolve("root", "4321") == Identity(0, 4321, "root")
    with pytest.raises(UsageError, match="--group no-such-group-here: no such group"):
        resolve("root", "no-such-group-here")
