"""The classic BPF program that passes over retiring reuse-port sockets, on real sockets."""

from __future__ import annotations

import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from squall.classic_bpf import GroupOrder, attach
from squall.sockets import accept_queue

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def listener(port: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Group:
    """Reuse-port listeners on one port, by key, and the order the kernel keeps them in."""

    def __init__(self, count: int) -> None:
        self.sockets = {0: listener()}
        self.port = self.sockets[0].getsockname()[1]
        self.order = GroupOrder()
        self.order.joined(0)
        for key in range(1, count):
            self.open(key)
        self.clients: list[socket.socket] = []

    def open(self, key: int) -> None:
        self.sockets[key] = listener(self.port)
        self.order.joined(key)

    def close(self, key: int) -> None:
        self.sockets.pop(key).close()
        self.order.left(key)

    def choose(self, keys: list[int]) -> None:
        attach(next(iter(self.sockets.values())), self.order.indexes(keys))

    def connect(self, count: int) -> Counter[int]:
        """Connect `count` clients; which listener's queue each landed in."""
        for _ in range(count):
            self.clients.append(socket.create_connection(("127.0.0.1", self.port), timeout=5))
        landed: Counter[int] = Counter()
        deadline = time.monotonic() + 5
        while sum(landed.values()) < count and time.monotonic() < deadline:
            for key, sock in self.sockets.items():
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                conn.close()
                landed[key] += 1
        return landed

    def shut(self) -> None:
        for sock in [*self.sockets.values(), *self.clients]:
            sock.close()


@pytest.fixture
def group() -> Iterator[Group]:
    made = Group(4)
    yield made
    made.shut()


def test_the_order_follows_the_kernel_as_sockets_close_and_open(group: Group) -> None:
    group.close(1)  # the last (3) takes its place
    group.open(5)
    group.close(0)  # and now 5 takes 0's
    assert group.order.keys == [5, 3, 2]
    for key in (2, 3, 5):
        group.choose([key])
        assert group.connect(12) == {key: 12}, key


def test_connections_spread_over_the_chosen_only(group: Group) -> None:
    group.choose([0, 3])
    landed = group.connect(100)
    assert set(landed) == {0, 3}
    assert min(landed.values()) > 20, landed  # random, not all to one


def test_no_choice_falls_back_to_the_kernel_hash(group: Group) -> None:
    group.choose([])
    assert sum(group.connect(20).values()) == 20


def test_accept_queue_counts_what_waits() -> None:
    sock = listener()
    clients = [socket.create_connection(sock.getsockname(), timeout=5) for _ in range(3)]
    try:
        deadline = time.monotonic() + 5
        while accept_queue(sock) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert accept_queue(sock) == 3
        sock.accept()[0].close()
        assert accept_queue(sock) == 2
    finally:
        for client in [sock, *clients]:
            client.close()
