"""systemd: sd_notify datagrams (READY, RELOADING, STOPPING, WATCHDOG, STATUS) and socket activation.

The tests play systemd's part: they bind the notify socket (with SO_PASSCRED,
to learn which process sent each datagram), and pass listening sockets as
fd 3 with LISTEN_FDS/LISTEN_PID, as systemd does for a .socket unit.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from squall.systemd import SystemdPlugin, listen_fds_with_names, notify_address
from tests.service import ROOT, Service, Services, alive, free_port, stop_process_tree, wait_until

ENV_APP = """
import os

from squall import web

NAMES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID", "LISTEN_FDS",
         "LISTEN_FDNAMES")


class Env(web.RequestHandler):
    def get(self):
        self.write({"pid": os.getpid(), "env": {n: os.environ.get(n) for n in NAMES}})


app = web.Application([(r"/env", Env)])
"""

_UCRED = struct.Struct("3i")


@dataclass
class Datagram:
    pid: int  # the sender, from SCM_CREDENTIALS
    fields: dict[str, str]
    received_at: float


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: collects every datagram and who sent it."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[Datagram] = []

    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(max(0.001, timeout))
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        except TimeoutError:
            return
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = _UCRED.unpack(payload[: _UCRED.size])[0]
        fields = dict(line.partition("=")[::2] for line in data.decode().splitlines())
        self.messages.append(Datagram(pid, fields, time.monotonic()))

    def wait_for(self, key: str, value: str = "1", after: int = -1, timeout: float = 15.0) -> int:
        """The index of the first message past `after` with key=value."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(after + 1, len(self.messages)):
                if self.messages[index].fields.get(key) == value:
                    return index
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {key}={value} within {timeout} s: {self.messages}")
            self._receive(remaining)

    def collect(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._receive(remaining)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    receiver = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        yield receiver
    finally:
        receiver.close()


def start(
    services: Services, tmp_path: Path, env: dict[str, str], workers: int = 2
) -> tuple[Service, int]:
    (tmp_path / "env_app.py").write_text(ENV_APP)
    port = free_port()
    service = services.squall(
        "env_app:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        cwd=tmp_path,
        env=env,
    )
    service.wait_for_port(port)
    return service, port


def worker_env(port: int) -> dict[str, str | None]:
    env: dict[str, str | None] = httpx.get(f"http://127.0.0.1:{port}/env", timeout=5).json()["env"]
    return env


def test_ready_reloading_ready_stopping_in_order_from_the_supervisor_only(
    services: Services, tmp_path: Path, notify: NotifySocket
) -> None:
    service, port = start(services, tmp_path, {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})

    ready = notify.wait_for("READY")
    assert service.output().count("is ready") >= 2  # READY=1 once every worker is up
    assert notify.messages[ready].fields.get("STATUS") == "2 worker(s) ready"
    workers = set(service.wait_for_workers(2))
    assert worker_env(port)["NOTIFY_SOCKET"] is None  # workers never see it

    service.send(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING", after=ready)
    sent_at = int(notify.messages[reloading].fields["MONOTONIC_USEC"])
    now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 <= now - sent_at < 10_000_000  # CLOCK_MONOTONIC, in microseconds
    reloaded = notify.wait_for("READY", after=reloading, timeout=20)
    assert "reload complete" in service.output()
    assert not (set(service.wait_for_workers(2)) & workers)

    service.send(signal.SIGTERM)
    stopping = notify.wait_for("STOPPING", after=reloaded)
    assert service.wait(timeout=20) == 0
    notify.collect(0.2)

    assert ready < reloading < reloaded < stopping
    kinds = [
        key
        for message in notify.messages
        for key in ("READY", "RELOADING", "STOPPING")
        if key in message.fields
    ]
    assert kinds == ["READY", "RELOADING", "READY", "STOPPING"]
    assert {message.pid for message in notify.messages} == {service.pid}
    statuses = [m.fields["STATUS"] for m in notify.messages if "STATUS" in m.fields]
    assert "reloading" in statuses and "stopping" in statuses
    assert not any("WATCHDOG" in message.fields for message in notify.messages)


def test_watchdog_pings_at_least_every_half_interval(
    services: Services, tmp_path: Path, notify: NotifySocket
) -> None:
    # A second service whose watchdog belongs to another pid must not ping.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_notify = NotifySocket(str(other_dir / "notify.sock"))
    try:
        service, _ = start(
            services,
            tmp_path,
            {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"},
            workers=1,
        )
        other, other_port = start(
            services,
            other_dir,
            {
                "NOTIFY_SOCKET": str(other_dir / "notify.sock"),
                "WATCHDOG_USEC": "1000000",
                "WATCHDOG_PID": "1",
            },
            workers=1,
        )
        first = notify.wait_for("READY")
        other_notify.wait_for("READY")
        started = time.monotonic()
        notify.collect(3.5)
        other_notify.collect(max(0.0, 3.5 - (time.monotonic() - started)))
        pings = [m.received_at for m in notify.messages[first:] if m.fields.get("WATCHDOG")]
        assert len(pings) >= 3, notify.messages
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 2.0, gaps  # the supervisor ticks at least once a second
        assert not any("WATCHDOG" in m.fields for m in other_notify.messages)
        assert worker_env(other_port)["WATCHDOG_USEC"] is None
        assert service.stop() == 0 and other.stop() == 0
    finally:
        other_notify.close()


def test_abstract_notify_socket(services: Services, tmp_path: Path) -> None:
    name = f"squall-test-{uuid.uuid4().hex}"
    receiver = NotifySocket("\0" + name)
    try:
        service, _ = start(services, tmp_path, {"NOTIFY_SOCKET": "@" + name}, workers=1)
        receiver.wait_for("READY")
        assert {m.pid for m in receiver.messages} == {service.pid}
    finally:
        receiver.close()


# -- socket activation ---------------------------------------------------------------

ACTIVATE = """
import os, sys
fd = int(sys.argv[1])
os.dup2(fd, 3)  # systemd passes its sockets from fd 3 on
if fd != 3:
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="web")
os.execv(sys.executable, [sys.executable, "-m", "squall", *sys.argv[2:]])
"""


@contextlib.contextmanager
def activated(sock: socket.socket, cwd: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """squall started as systemd would for a .socket unit: `sock` as fd 3, LISTEN_* set."""
    log = open(cwd / "activated.log", "wb")  # noqa: SIM115 - closed below
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", ACTIVATE, str(sock.fileno()), *args],
        cwd=cwd,
        env=env,
        pass_fds=(sock.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        stop_process_tree(proc)
        log.close()


def test_socket_activation_serves_on_the_passed_socket(tmp_path: Path) -> None:
    (tmp_path / "env_app.py").write_text(ENV_APP)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    with activated(listener, tmp_path, "env_app:app", "--workers", "2") as proc:
        listener.close()  # from now on only squall holds it
        log = tmp_path / "activated.log"
        wait_until(lambda: log.read_text().count("is ready") >= 2 or proc.poll() is not None)
        assert proc.poll() is None, log.read_text()
        answer = httpx.get(f"http://127.0.0.1:{port}/env", timeout=5)
        assert answer.status_code == 200
        assert answer.json()["env"] == dict.fromkeys(answer.json()["env"])  # all consumed
        text = log.read_text()
        assert f"socket activation: http://127.0.0.1:{port} on fd 3 (web)" in text
        assert f"serving env_app:app on http://127.0.0.1:{port} " in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_socket_activation_refuses_a_socket_it_cannot_serve(tmp_path: Path) -> None:
    (tmp_path / "env_app.py").write_text(ENV_APP)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        with activated(udp, tmp_path, "env_app:app") as proc:
            assert proc.wait(15) == 1
    text = (tmp_path / "activated.log").read_text()
    assert "squall: error: socket activation: fd 3 (web) is not a listening stream socket" in text


# -- the environment, in-process -----------------------------------------------------------


def test_listen_fds_for_another_pid_are_ignored_and_consumed() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "A": "b"}
    assert listen_fds_with_names(env) == []
    assert env == {"A": "b"}
    assert listen_fds_with_names({}) == []


def test_notify_settings_from_the_environment() -> None:
    assert notify_address("@name") == "\0name"
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("vsock:2:1234") is None

    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "4000000", "OTHER": "1"}
    plugin = SystemdPlugin.from_environment(env)
    assert plugin is not None
    try:
        assert plugin.address == "\0x"
        assert plugin.watchdog_interval == 2.0
        assert env == {"OTHER": "1"}  # consumed: workers must not notify
    finally:
        plugin.close()

    env = {"NOTIFY_SOCKET": "/nowhere/notify", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}
    plugin = SystemdPlugin.from_environment(env)
    assert plugin is not None
    try:
        assert plugin.watchdog_interval == 0.0  # another process's watchdog
        assert plugin.notify("READY=1") is False  # nobody listens: no exception
    finally:
        plugin.close()
    assert plugin.notify("READY=1") is False  # closed, as in every worker

    assert SystemdPlugin.from_environment({"WATCHDOG_USEC": "1"}) is None
    assert SystemdPlugin.from_environment({"NOTIFY_SOCKET": "vsock:2:1"}) is None


def test_an_upgrade_hands_the_main_pid_to_the_new_supervisor(
    services: Services, tmp_path: Path, notify: NotifySocket
) -> None:
    service, port = start(
        services,
        tmp_path,
        {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"},
    )
    ready = notify.wait_for("READY")
    service.send(signal.SIGUSR2)
    wait_until(lambda: notify.collect(0.1) or any("MAINPID" in m.fields for m in notify.messages))
    handed = next(m for m in notify.messages if "MAINPID" in m.fields)
    new = int(handed.fields["MAINPID"])
    assert notify.messages.index(handed) > ready
    try:
        assert handed.pid == service.pid and new != service.pid
        assert service.wait(timeout=20) == 0  # drained, quietly
        pinged = notify.wait_for("WATCHDOG", after=notify.messages.index(handed), timeout=10)
        assert notify.messages[pinged].pid == new  # the new main process keeps the watchdog fed
        assert httpx.get(f"http://127.0.0.1:{port}/env", timeout=5).status_code == 200
        assert not any(
            "STOPPING" in m.fields for m in notify.messages if m.pid == service.pid
        )  # the old one never told systemd that the service stops
    finally:
        os.kill(new, signal.SIGTERM)
        wait_until(lambda: not alive(new), timeout=20)
