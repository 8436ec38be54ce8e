"""Listening sockets, bound for real on the loopback interface."""

from __future__ import annotations

import errno
import os
import re
import select
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from squall.errors import BindError, UsageError
from squall.sockets import (
    BindSpec,
    _bind_error,
    bind_sockets,
    bind_unix_socket,
    default_backlog,
    describe_socket,
    open_binds,
    parse_bind,
)


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _has_ipv6()


@pytest.fixture
def track() -> Iterator[Callable[[list[socket.socket]], list[socket.socket]]]:
    """Register sockets to close at the end of the test, whatever happens."""
    opened: list[socket.socket] = []

    def add(socks: list[socket.socket]) -> list[socket.socket]:
        opened.extend(socks)
        return socks

    yield add
    for sock in opened:
        sock.close()


def _accepts_connection(listener: socket.socket) -> None:
    host, port = listener.getsockname()[:2]
    with socket.create_connection((host, port), timeout=5):
        ready, _, _ = select.select([listener], [], [], 5)
        assert ready, "listener never became readable"
        conn, _ = listener.accept()
        conn.close()


def _port_is_free(port: int) -> bool:
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()
    except OSError:
        return False
    return True


# --- bind_sockets ---------------------------------------------------------------


def test_all_interfaces_port_zero_share_one_port(track):
    socks = track(bind_sockets(0))
    families = {s.family for s in socks}
    assert socket.AF_INET in families
    if HAS_IPV6:
        assert socket.AF_INET6 in families
    ports = {s.getsockname()[1] for s in socks}
    assert len(ports) == 1 and ports != {0}
    for sock in socks:
        if sock.family == socket.AF_INET6:
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            with socket.create_connection(("::1", sock.getsockname()[1]), timeout=5):
                assert select.select([sock], [], [], 5)[0]
                sock.accept()[0].close()
        else:
            with socket.create_connection(("127.0.0.1", sock.getsockname()[1]), timeout=5):
                assert select.select([sock], [], [], 5)[0]
                sock.accept()[0].close()


def test_empty_address_means_all_interfaces(track):
    socks = track(bind_sockets(0, ""))
    assert "0.0.0.0" in {s.getsockname()[0] for s in socks}


def test_single_ipv4_address(track):
    socks = track(bind_sockets(0, "127.0.0.1"))
    assert len(socks) == 1
    sock = socks[0]
    assert sock.getsockname()[0] == "127.0.0.1"
    assert sock.getblocking() is False
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    _accepts_connection(sock)


@pytest.mark.skipif(not HAS_IPV6, reason="host has no IPv6")
def test_single_ipv6_address(track):
    (sock,) = track(bind_sockets(0, "::1"))
    assert sock.family == socket.AF_INET6
    assert describe_socket(sock) == f"http://[::1]:{sock.getsockname()[1]}"
    _accepts_connection(sock)


def test_localhost_binds_what_it_resolves_to(track):
    infos = socket.getaddrinfo("localhost", 0, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    expected = {
        info[4][0]
        for info in infos
        if info[0] == socket.AF_INET or (info[0] == socket.AF_INET6 and HAS_IPV6)
    }
    socks = track(bind_sockets(0, "localhost"))
    assert {s.getsockname()[0] for s in socks} == expected
    assert len(socks) == len(expected)
    assert len({s.getsockname()[1] for s in socks}) == 1
    for sock in socks:
        _accepts_connection(sock)


def test_family_restricts_addresses(track):
    socks = track(bind_sockets(0, None, family=socket.AF_INET))
    assert [s.family for s in socks] == [socket.AF_INET]


def test_default_backlog_is_somaxconn():
    path = Path("/proc/sys/net/core/somaxconn")
    if not path.exists():
        assert default_backlog() == socket.SOMAXCONN
    else:
        assert default_backlog() == int(path.read_text())


def test_port_in_use(track):
    (first,) = track(bind_sockets(0, "127.0.0.1"))
    port = first.getsockname()[1]
    with pytest.raises(BindError) as info:
        bind_sockets(port, "127.0.0.1")
    assert str(info.value) == f"cannot bind 127.0.0.1:{port}: address already in use"


def test_unresolvable_address():
    with pytest.raises(BindError, match=re.escape("cannot resolve address 'no-such-host.invalid'")):
        bind_sockets(0, "no-such-host.invalid")


def test_address_not_on_this_host():
    with pytest.raises(BindError, match="not an address of this host"):
        bind_sockets(0, "192.0.2.1")  # TEST-NET-1: never assigned to a real host


def test_reuse_port(track):
    (first,) = track(bind_sockets(0, "127.0.0.1", reuse_port=True))
    assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
    port = first.getsockname()[1]
    (second,) = track(bind_sockets(port, "127.0.0.1", reuse_port=True))
    assert second.getsockname()[1] == port


def test_reuse_port_unsupported(monkeypatch):
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    with pytest.raises(BindError, match="SO_REUSEPORT is not supported"):
        bind_sockets(0, "127.0.0.1", reuse_port=True)


def test_bad_port_number():
    with pytest.raises(BindError, match="port must be"):
        bind_sockets(70000, "127.0.0.1")


# --- bind_unix_socket -----------------------------------------------------------


def test_unix_socket(tmp_path):
    path = str(tmp_path / "s.sock")
    sock = bind_unix_socket(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert sock.getblocking() is False
        assert describe_socket(sock) == f"unix:{path}"
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            assert select.select([sock], [], [], 5)[0]
            sock.accept()[0].close()
    finally:
        sock.close()


def test_unix_socket_mode(tmp_path):
    path = str(tmp_path / "s.sock")
    with bind_unix_socket(path, mode=0o660):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660


def test_unix_stale_socket_is_replaced(tmp_path):
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(path)  # closed without unlinking: a crashed server's leftover
    with bind_unix_socket(path) as sock, socket.socket(socket.AF_UNIX) as client:
        client.connect(path)
        assert select.select([sock], [], [], 5)[0]
        sock.accept()[0].close()


def test_unix_live_socket_is_not_stolen(tmp_path):
    path = str(tmp_path / "s.sock")
    with bind_unix_socket(path), pytest.raises(BindError, match="already in use"):
        bind_unix_socket(path)


def test_unix_refuses_to_remove_regular_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(BindError, match="it is not a socket"):
        bind_unix_socket(str(path))
    assert path.read_text() == "precious"


# --- parse_bind -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected", "described"),
    [
        ("127.0.0.1:8000", BindSpec("tcp", host="127.0.0.1", port=8000), "http://127.0.0.1:8000"),
        ("localhost:80", BindSpec("tcp", host="localhost", port=80), "http://localhost:80"),
        ("[::1]:8000", BindSpec("tcp", host="::1", port=8000), "http://[::1]:8000"),
        ("[::]:0", BindSpec("tcp", host="::", port=0), "http://[::]:0"),
        (":8000", BindSpec("tcp", port=8000), "http://*:8000"),
        ("8000", BindSpec("tcp", port=8000), "http://*:8000"),
        ("65535", BindSpec("tcp", port=65535), "http://*:65535"),
        ("unix:/tmp/x.sock", BindSpec("unix", path="/tmp/x.sock"), "unix:/tmp/x.sock"),
        ("unix:rel.sock", BindSpec("unix", path="rel.sock"), "unix:rel.sock"),
        ("fd://3", BindSpec("fd", fd=3), "fd://3"),
    ],
)
def test_parse_bind(value, expected, described):
    spec = parse_bind(value)
    assert spec == expected
    assert spec.describe() == described


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("foo:bar", "invalid --bind value 'foo:bar': port must be a number from 0 to 65535"),
        ("localhost:65536", "port must be a number from 0 to 65535"),
        ("localhost:-1", "port must be a number"),
        ("localhost:", "port must be a number"),
        ("70000", "port must be a number"),
        ("localhost", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        ("::1:8000", "brackets"),
        ("[::1]", "expected [IPV6ADDRESS]:PORT"),
        ("[]:80", "expected [IPV6ADDRESS]:PORT"),
        ("[::1]:x", "port must be"),
        ("unix:", "expected unix:"),
        ("fd://", "expected fd://N"),
        ("fd://-1", "expected fd://N"),
        ("fd://abc", "expected fd://N"),
        ("http://x:80", "not a URL"),
        ("local host:80", "not a host name"),
        ("localhost:٣", "port must be"),
    ],
)
def test_parse_bind_rejects(value, message):
    with pytest.raises(UsageError) as info:
        parse_bind(value)
    assert message in str(info.value)
    assert repr(value) in str(info.value)


# --- open_binds -----------------------------------------------------------------


def test_open_binds_all_kinds(track, tmp_path):
    path = str(tmp_path / "a.sock")
    socks = track(open_binds([parse_bind("127.0.0.1:0"), parse_bind(f"unix:{path}")]))
    assert [s.family for s in socks] == [socket.AF_INET, socket.AF_UNIX]
    assert describe_socket(socks[0]) == f"http://127.0.0.1:{socks[0].getsockname()[1]}"
    assert describe_socket(socks[1]) == f"unix:{path}"


def test_open_binds_closes_what_it_opened_on_failure(track, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    (busy,) = track(bind_sockets(0, "127.0.0.1"))
    busy_port = busy.getsockname()[1]
    path = tmp_path / "b.sock"
    specs = [
        parse_bind(f"127.0.0.1:{free_port}"),
        parse_bind(f"unix:{path}"),
        parse_bind(f"127.0.0.1:{busy_port}"),
    ]
    with pytest.raises(
        BindError, match=re.escape(f"127.0.0.1:{busy_port}: address already in use")
    ):
        open_binds(specs)
    assert _port_is_free(free_port)
    assert not path.exists()


def test_open_binds_inherited_fd(track):
    (original,) = track(bind_sockets(0, "127.0.0.1"))
    fd = os.dup(original.fileno())  # what a parent process would hand down
    (sock,) = track(open_binds([parse_bind(f"fd://{fd}")]))
    assert sock.fileno() == fd
    assert sock.getblocking() is False
    assert describe_socket(sock) == describe_socket(original)
    _accepts_connection(sock)


def test_open_binds_fd_not_listening():
    with socket.socket() as unlistened:
        unlistened.bind(("127.0.0.1", 0))
        with pytest.raises(BindError, match="not a listening"):
            open_binds([parse_bind(f"fd://{unlistened.fileno()}")])
        assert unlistened.fileno() != -1
        unlistened.getsockname()  # still open: a rejected fd is not closed


def test_open_binds_fd_not_a_socket(tmp_path):
    with open(tmp_path / "f", "w") as f, pytest.raises(BindError, match="not an open socket"):
        open_binds([parse_bind(f"fd://{f.fileno()}")])


def test_open_binds_fd_closed():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(BindError, match=f"fd://{r}"):
        open_binds([parse_bind(f"fd://{r}")])


@pytest.mark.parametrize(
    ("err", "host", "port", "message"),
    [
        (
            errno.EACCES,
            "::",
            80,
            "cannot bind [::]:80: permission denied (ports below 1024 need",
        ),
        (errno.EACCES, "0.0.0.0", 8080, "cannot bind 0.0.0.0:8080: permission denied"),
        (errno.EADDRINUSE, "::1", 8000, "cannot bind [::1]:8000: address already in use"),
        (errno.EADDRNOTAVAIL, "10.9.9.9", 1, "cannot bind 10.9.9.9:1: address not available"),
    ],
)
def test_bind_error_messages(err, host, port, message):
    # Root can bind port 80, so the privilege message is checked on the formatter itself.
    assert str(_bind_error(OSError(err, os.strerror(err)), host, port)).startswith(message)
