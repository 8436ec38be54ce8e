"""systemd's fd store: the sockets outlive a restart, so no connection is refused meanwhile.

The test plays systemd: it receives FDSTORE=1 messages with their
descriptors on a notify socket, keeps them, and starts the next squall with
them as LISTEN_FDS, as `systemctl restart` does for a unit with
FileDescriptorStoreMax=.
"""

from __future__ import annotations

import array
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service import ROOT, Service, Services, free_port, stop_process_tree, wait_until

APP = """
import os

from squall import web


class Pid(web.RequestHandler):
    def get(self):
        self.write({"pid": os.getpid()})


app = web.Application([(r"/", Pid)])
"""

# Moves the kept descriptors to fd 3 on, as systemd passes them, then runs squall.
LAUNCH = """
import fcntl, os, sys
names, fds = sys.argv[1].split(":"), [int(fd) for fd in sys.argv[2].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 1000) for fd in fds]
for fd in fds:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ.update(LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=":".join(names))
os.execv(sys.executable, [sys.executable, "-m", "squall", *sys.argv[3:]])
"""


class FakeSystemd:
    """The notify socket's other end, and the unit's fd store."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.store: dict[str, int] = {}
        self.removed: list[str] = []
        self.messages: list[dict[str, str]] = []

    def receive(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.sock.settimeout(remaining)
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            except TimeoutError:
                return
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            fields = dict(line.partition("=")[::2] for line in data.decode().splitlines())
            self.messages.append(fields)
            if fields.get("FDSTORE") == "1":
                (fd,) = fds
                self.store[fields["FDNAME"]] = fd
            elif fields.get("FDSTOREREMOVE") == "1":
                self.removed.append(fields["FDNAME"])
                os.close(self.store.pop(fields["FDNAME"]))
            else:
                for fd in fds:
                    os.close(fd)

    def close(self) -> None:
        for fd in self.store.values():
            os.close(fd)
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


@contextlib.contextmanager
def restarted(systemd: FakeSystemd, cwd: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """The next squall, given what the store holds, the way systemd starts it."""
    names = list(systemd.store)
    fds = [systemd.store[name] for name in names]
    log = open(cwd / "restarted.log", "wb")  # noqa: SIM115 - closed below
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "NOTIFY_SOCKET": systemd.sock.getsockname(),
        "FDSTORE": "64",
    }
    command = [sys.executable, "-c", LAUNCH, ":".join(names), ",".join(map(str, fds)), *args]
    proc = subprocess.Popen(command, cwd=cwd, env=env, pass_fds=fds, stdout=log, stderr=log)
    try:
        yield proc
    finally:
        stop_process_tree(proc)
        log.close()


def serve_then_stop(
    services: Services, tmp_path: Path, systemd: FakeSystemd, *extra: str
) -> tuple[Service, int, list[str]]:
    """A squall under the fake systemd, ready, then stopped: what it stored is in the store."""
    (tmp_path / "pid_app.py").write_text(APP)
    port = free_port()
    args = ["pid_app:app", "--bind", f"127.0.0.1:{port}", "--workers", "2", *extra]
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "FDSTORE": "64"}
    first = services.squall(*args, cwd=tmp_path, env=env)
    wait_until(lambda: systemd.receive(0.1) or any("READY" in m for m in systemd.messages))
    first.send(signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    systemd.receive(0.2)
    return first, port, args


def ask(clients: list[socket.socket]) -> list[bytes]:
    answers = []
    for client in clients:
        data = b""
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                data += chunk
        answers.append(data.split(b"\r\n", 1)[0])
        client.close()
    return answers


@pytest.mark.parametrize("mode", [[], ["--shared-socket"]], ids=["per worker", "shared"])
def test_a_restart_keeps_the_sockets_in_the_store(
    services: Services, tmp_path: Path, systemd: FakeSystemd, mode: list[str]
) -> None:
    first, port, args = serve_then_stop(services, tmp_path, systemd, *mode)
    assert "squall.state" in systemd.store, systemd.messages
    assert "gave systemd" in first.output()
    # Between the two: the kernel still accepts, into the kept sockets' queues.
    request = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    waiting = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(8)]
    for client in waiting:
        client.sendall(request)
    with restarted(systemd, tmp_path, *args) as second:
        log = tmp_path / "restarted.log"
        wait_until(lambda: log.read_text().count("is ready") >= 2 or second.poll() is not None)
        assert second.poll() is None, log.read_text()
        assert ask(waiting) == [b"HTTP/1.1 200 OK"] * 8
        assert "fd store: serving the" in log.read_text()
        systemd.receive(0.3)
        assert "squall.state" in systemd.removed
        assert not systemd.store  # nothing left there to outlive a socket it closes
        fresh = socket.create_connection(("127.0.0.1", port), timeout=10)
        fresh.sendall(request)
        assert ask([fresh]) == [b"HTTP/1.1 200 OK"]


def test_without_the_store_a_restart_refuses_connections(
    services: Services, tmp_path: Path
) -> None:
    (tmp_path / "pid_app.py").write_text(APP)
    port = free_port()
    first = services.squall("pid_app:app", "--bind", f"127.0.0.1:{port}", cwd=tmp_path)
    first.wait_for_port(port)
    first.wait_for_log("is ready")
    first.send(signal.SIGTERM)
    assert first.wait(timeout=20) == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_a_store_this_squall_cannot_read_is_one_clear_error(
    services: Services, tmp_path: Path, systemd: FakeSystemd
) -> None:
    # Another squall's description (a later format, say): binding afresh beside the
    # reuse-port sockets the store still holds would send connections nowhere.
    _, _, args = serve_then_stop(services, tmp_path, systemd)
    state = systemd.store["squall.state"]
    os.ftruncate(state, 0)
    os.pwrite(state, b'{"format": 99}', 0)
    with restarted(systemd, tmp_path, *args) as second:
        assert second.wait(15) == 1
    output = (tmp_path / "restarted.log").read_text().strip().splitlines()
    assert output[-1].startswith("squall: error: systemd's fd store holds sockets"), output
    assert "(format 99, this squall reads 1)" in output[-1]
    assert "systemctl clean --what=fdstore" in output[-1]
