"""New connections to the worker with the fewest in hand: the eBPF program, then squall.

First the program alone, on real SO_REUSEPORT sockets on 127.0.0.1 with the
test playing the workers (accepting, and reporting open connections); then
squall itself. Loading the program needs CAP_BPF (root, usually): where the
kernel says EPERM these tests skip; any other refusal fails them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import shutil
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from squall.steering import CHURN_NS, MAX_SLOTS, Steering, SteeringUnavailable
from tests.service import Service, Services, free_port, listeners_on


def _steering_or_reason() -> str | None:
    """None where the program loads; else why not, if that is this machine's policy."""
    try:
        Steering(1).close()
    except SteeringUnavailable as exc:
        if exc.errno in (errno.EPERM, None):
            return str(exc)  # no CAP_BPF, a seccomp filter, not Linux: the hash it is
        raise  # permitted but refused (the verifier): that is a bug, not a skip
    return None


REASON = _steering_or_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no eBPF steering here: {REASON}")

SCRIPTS = Path(__file__).parent / "scripts"


def _listener(port: int) -> socket.socket:
    """A listening, non-blocking SO_REUSEPORT socket on 127.0.0.1:`port` (0: any)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(256)
    sock.setblocking(False)
    return sock


class Group:
    """`count` listening sockets in one reuse-port group, steered; the test plays the workers.

    With `overflow`, one more socket in the group, as the overflow (`OVERFLOW` in counts).
    """

    def __init__(self, count: int, overflow: bool = False, churn_ns: int = CHURN_NS) -> None:
        self.sockets: list[socket.socket | None] = []
        for _ in range(count):
            self.sockets.append(_listener(self.port if self.sockets else 0))
        self.overflow = _listener(self.port) if overflow else None
        self.steering = Steering(1, churn_ns)
        for slot, sock in enumerate(self.sockets):
            assert sock is not None
            self.steering.add(slot, [sock])
        if self.overflow is not None:
            self.steering.add_overflow([self.overflow])
        self.reports = [self.steering.report_for(slot) for slot in range(count)]
        self.clients: list[socket.socket] = []

    @property
    def port(self) -> int:
        first = self.sockets[0]
        assert first is not None
        return int(first.getsockname()[1])

    def leader(self) -> socket.socket:
        return next(sock for sock in self.sockets if sock is not None)

    def connect(self, count: int) -> None:
        for _ in range(count):
            self.clients.append(socket.create_connection(("127.0.0.1", self.port), timeout=5))

    def accept_all(self, expected: int) -> Counter[int]:
        """Accept (and close) `expected` connections; which slot's socket each came from."""
        got: Counter[int] = Counter()
        deadline = time.monotonic() + 5
        while sum(got.values()) < expected and time.monotonic() < deadline:
            live = [sock for sock in [*self.sockets, self.overflow] if sock is not None]
            ready, _, _ = select.select(live, [], [], 0.5)
            for sock in ready:
                conn, _ = sock.accept()
                conn.close()
                got[OVERFLOW if sock is self.overflow else self.sockets.index(sock)] += 1
        assert sum(got.values()) == expected, f"accepted {dict(got)} of {expected}"
        return got

    def open_slot(self, slot: int) -> None:
        """A new socket in the group, as slot `slot` (its index in `sockets` is the next one)."""
        sock = _listener(self.port)
        self.sockets.append(sock)
        self.steering.add(slot, [sock])
        self.reports.append(self.steering.report_for(slot))

    def close_slot(self, slot: int) -> None:
        sock = self.sockets[slot]
        assert sock is not None
        self.sockets[slot] = None
        self.steering.remove(slot, [self.leader()])
        sock.close()

    def close(self) -> None:
        for sock in [*self.sockets, self.overflow, *self.clients]:
            if sock is not None:
                sock.close()
        self.steering.close()


OVERFLOW = -1


@pytest.fixture
def group() -> Iterator[Group]:
    made = Group(3)
    yield made
    made.close()


@pytest.fixture
def churning() -> Iterator[Group]:
    """Three slots and the overflow; a report counts as recent for a minute."""
    made = Group(3, overflow=True, churn_ns=60 * 10**9)
    yield made
    made.close()


def test_a_burst_is_dealt_out_evenly(group: Group) -> None:
    # Before any worker accepts: the program counts what it sent to each.
    group.connect(60)
    assert group.accept_all(60) == {0: 20, 1: 20, 2: 20}


def test_a_worker_reporting_more_open_connections_is_passed_over(group: Group) -> None:
    group.reports[0](10)
    group.reports[1](0)
    group.reports[2](10)
    group.connect(8)
    assert group.accept_all(8) == {1: 8}
    # Slot 1 now holds 8 (it says so); the next 4 go to the two that hold fewer.
    group.reports[1](8)
    group.reports[0](0)
    group.reports[2](0)
    group.connect(4)
    assert group.accept_all(4) == {0: 2, 2: 2}


def test_idle_workers_share_connections_that_come_one_at_a_time(group: Group) -> None:
    # Ties go by the connection's hash, not always to slot 0.
    seen: Counter[int] = Counter()
    for _ in range(90):
        group.connect(1)
        got = group.accept_all(1)
        group.clients.pop().close()
        seen.update(got)
        for slot in got:
            group.reports[slot](0)
    assert min(seen[slot] for slot in range(3)) >= 15, dict(seen)


def test_a_closed_slot_gets_nothing_and_a_new_one_its_share(group: Group) -> None:
    group.close_slot(1)
    group.connect(20)
    assert group.accept_all(20) == {0: 10, 2: 10}
    for slot in (0, 2):
        group.reports[slot](0)
    group.open_slot(3)
    group.connect(30)
    assert group.accept_all(30) == {0: 10, 2: 10, 3: 10}


def test_while_every_worker_is_closing_connections_the_overflow_takes_new_ones(
    churning: Group,
) -> None:
    for report in churning.reports:
        report(0)
    churning.connect(9)
    # Whichever worker is free first accepts them; no slot counts them as its own.
    assert churning.accept_all(9) == {OVERFLOW: 9}
    churning.connect(6)
    assert churning.accept_all(6) == {OVERFLOW: 6}


def test_a_worker_that_closed_nothing_lately_turns_the_overflow_off(churning: Group) -> None:
    churning.reports[0](0)
    churning.reports[2](0)  # slot 1 has not closed a connection since it started
    churning.connect(9)
    assert churning.accept_all(9) == {0: 3, 1: 3, 2: 3}


def test_reports_older_than_the_churn_window_are_quiet() -> None:
    made = Group(2, overflow=True)  # the real window: a millisecond
    try:
        for report in made.reports:
            report(0)
        time.sleep(20 * CHURN_NS / 1e9)
        made.connect(8)
        assert made.accept_all(8) == {0: 4, 1: 4}
    finally:
        made.close()


# -- squall ---------------------------------------------------------------------------------


def start(services: Services, *args: str, prefix: Sequence[str] = ()) -> tuple[Service, int]:
    port = free_port()
    service = services.start(
        [
            *prefix,
            sys.executable,
            "-m",
            "squall",
            "tests.scripts.supervised:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--graceful-timeout",
            "1",
            *args,
        ]
    )
    service.wait_for_port(port)
    service.wait_for_log("is ready", count=2)
    return service, port


def ask(client: httpx.Client) -> int:
    return int(client.get("/pid").json()["task_id"])


def test_keepalive_connections_are_split_evenly(services: Services) -> None:
    service, port = start(services)
    assert "least-loaded worker (eBPF)" in service.output()
    clients = [httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) for _ in range(8)]
    try:
        # One after another, each kept open: the kernel's hash splits 8 unevenly
        # 7 times in 10 (only 4/4 is even); by load, each goes to the one with fewer.
        workers = Counter(ask(client) for client in clients)
    finally:
        for client in clients:
            client.close()
    assert workers == {0: 4, 1: 4}


def burst(port: int, count: int) -> Counter[int]:
    """Connect `count` sockets first, then ask each which worker has it."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    try:
        for sock in socks:
            sock.sendall(b"GET /pid HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        workers: Counter[int] = Counter()
        for sock in socks:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            workers[json.loads(data.partition(b"\r\n\r\n")[2])["task_id"]] += 1
        return workers
    finally:
        for sock in socks:
            sock.close()


def test_bursts_are_split_evenly(services: Services) -> None:
    _, port = start(services)
    # By the kernel's hash, 64 split within one of 32 / 32 about 3 times in 10.
    for _ in range(2):
        workers = burst(port, 64)
        assert abs(workers[0] - workers[1]) <= 2, workers
        time.sleep(0.2)


def test_workers_keep_no_handle_on_the_program(services: Services) -> None:
    service, _ = start(services)
    for pid in service.workers():
        handles = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        # Only the shared array's mapping (its own descriptor, kept by mmap).
        assert "anon_inode:bpf-prog" not in handles, handles
        assert handles.count("anon_inode:bpf-map") == 1, handles


def sockets_held(pid: int) -> set[int]:
    """Inodes of the sockets among `pid`'s file descriptors."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                held.add(int(target[len("socket:[") : -1]))
    return held


def test_every_worker_serves_its_own_socket_and_the_overflow(services: Services) -> None:
    service, port = start(services)
    listeners = listeners_on(port)
    first, second = (sockets_held(pid) & listeners for pid in service.workers())
    assert len(first) == len(second) == 2, (first, second)
    assert len(first & second) == 1, (first, second)


def test_a_blocked_worker_is_passed_over(services: Services) -> None:
    service, port = start(services, "--timeout", "0")
    url = f"http://127.0.0.1:{port}"

    def block() -> None:
        with contextlib.suppress(httpx.HTTPError):  # it never answers
            httpx.get(f"{url}/block", timeout=3)

    blocked = threading.Thread(target=block, daemon=True)
    try:
        blocked.start()
        time.sleep(0.5)  # the request is in: one worker's loop sleeps for a minute
        # Each on a new connection: by hash, about half would wait for that worker.
        answers = [httpx.get(f"{url}/pid", timeout=1.0).json()["task_id"] for _ in range(10)]
    finally:
        service.stop()
        blocked.join(5)
    assert len(set(answers)) == 1, answers


def test_no_steering_spreads_at_random(services: Services) -> None:
    service, port = start(services, "--no-steering")
    assert "one socket each (SO_REUSEPORT), at random (classic BPF)" in service.output()
    assert "least-loaded" not in service.output()
    assert httpx.get(f"http://127.0.0.1:{port}/pid", timeout=5).status_code == 200


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_without_the_capability_connections_go_at_random(services: Services) -> None:
    setpriv = [str(shutil.which("setpriv")), "--bounding-set", "-bpf,-sys_admin"]
    service, port = start(services, prefix=setpriv)
    assert "connections go at random, not by load" in service.output()
    assert "one socket each (SO_REUSEPORT)" in service.output()
    assert "least-loaded" not in service.output()
    assert httpx.get(f"http://127.0.0.1:{port}/pid", timeout=5).status_code == 200


def test_a_closing_slot_hands_what_waits_on_it_to_the_others(group: Group) -> None:
    group.reports[0](100)
    group.reports[2](100)
    group.connect(5)  # all to slot 1, none accepted yet
    for client in group.clients:
        client.sendall(b"ping")
    # Closed, a listener resets what waits in its queue, unless the program
    # (select-or-migrate) or net.ipv4.tcp_migrate_req moves it.
    group.close_slot(1)
    received = []
    deadline = time.monotonic() + 5
    while len(received) < 5 and time.monotonic() < deadline:
        live = [sock for sock in group.sockets if sock is not None]
        ready, _, _ = select.select(live, [], [], 0.5)
        for sock in ready:
            conn, _ = sock.accept()
            with conn:
                conn.settimeout(5)
                received.append(conn.recv(16))
    assert received == [b"ping"] * 5


def test_slots_far_apart_are_covered() -> None:
    # Task ids 0 and 63 (a service scaled up, then down): the program looks at 64 slots.
    made = Group(2)
    try:
        made.close_slot(1)
        made.open_slot(63)
        assert made.steering.covered == 64
        made.connect(20)
        assert made.accept_all(20) == {0: 10, 2: 10}
    finally:
        made.close()


def test_a_task_id_beyond_the_array_is_refused(group: Group) -> None:
    # The listeners then turn steering off and leave it to the kernel's hash.
    with pytest.raises(SteeringUnavailable, match="beyond"):
        group.steering.add(MAX_SLOTS, [group.leader()])
