"""Listening sockets: created once in the parent, before forking, and shared by every worker.

Binding before `fork()` is what lets several worker processes accept on the
same port without SO_REUSEPORT, and it turns "port already in use" into one
error at startup instead of N crashing workers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from squall.errors import BindError, UsageError

__all__ = [
    "BindSpec",
    "accept_queue",
    "accept_queue_and_limit",
    "bind_sockets",
    "bind_unix_socket",
    "default_backlog",
    "describe_socket",
    "handed_socket",
    "open_binds",
    "parse_bind",
]

SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"
_TCP_INFO_UNACKED = 24  # offsetof(struct tcp_info, tcpi_unacked)
_PORT_ZERO_ATTEMPTS = 5  # retries when another program grabs our ephemeral port on the other family


def reuse_port_balances() -> bool:
    """True where SO_REUSEPORT spreads connections across sockets (Linux; not the BSDs or macOS)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def default_backlog() -> int:
    """The largest accept backlog the OS allows; `listen()` silently caps larger values anyway.

    A short backlog drops connections during bursts while workers are busy,
    so ask for as much as the kernel will give.
    """
    try:
        with open(SOMAXCONN_PATH, encoding="ascii") as f:
            value = int(f.read().strip())
        if value > 0:
            return value
    except (OSError, ValueError):
        pass
    return socket.SOMAXCONN


def _host_port(host: str | None, port: int) -> str:
    host = host or "*"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_error(exc: OSError, host: str | None, port: int) -> BindError:
    """Turn an OSError from bind() into the one line a user needs to fix it."""
    where = f"cannot bind {_host_port(host, port)}"
    if exc.errno == errno.EADDRINUSE:
        return BindError(f"{where}: address already in use")
    if exc.errno == errno.EACCES:
        if 0 < port < 1024:
            return BindError(
                f"{where}: permission denied "
                "(ports below 1024 need root or the CAP_NET_BIND_SERVICE capability)"
            )
        return BindError(f"{where}: permission denied")
    if exc.errno == errno.EADDRNOTAVAIL:
        return BindError(f"{where}: address not available (it is not an address of this host)")
    return BindError(f"{where}: {exc.strerror or exc}")


def bind_sockets(
    port: int,
    address: str | None = None,
    family: socket.AddressFamily = socket.AF_UNSPEC,
    backlog: int | None = None,
    flags: int | None = None,
    reuse_port: bool = False,
) -> list[socket.socket]:
    """Bind listening, non-blocking TCP sockets on every address `address` resolves to.

    `None` or `""` means all interfaces, IPv4 and IPv6 alike. With port 0 all
    the sockets share the one ephemeral port the first of them was given, so
    a single URL reaches them all.
    """
    if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
        raise BindError("SO_REUSEPORT is not supported on this platform")
    if not 0 <= port <= 65535:
        raise BindError(f"cannot bind {_host_port(address, port)}: port must be from 0 to 65535")
    host = address or None
    try:
        infos = socket.getaddrinfo(
            host,
            port,
            family,
            socket.SOCK_STREAM,
            0,
            socket.AI_PASSIVE if flags is None else flags,
        )
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve address {address!r}: {exc.strerror or exc}") from None
    addrs: list[tuple[socket.AddressFamily, tuple[str, int] | tuple[str, int, int, int]]] = []
    for af, _, _, _, sockaddr in infos:
        if af in (socket.AF_INET, socket.AF_INET6) and (af, sockaddr) not in addrs:
            addrs.append((af, sockaddr))  # type: ignore[arg-type]
    real_backlog = default_backlog() if backlog is None else backlog

    attempts = _PORT_ZERO_ATTEMPTS if port == 0 and len(addrs) > 1 else 1
    for attempt in range(attempts):
        try:
            return _bind_all(addrs, port, address, real_backlog, reuse_port)
        except BindError as exc:
            retry = isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.EADDRINUSE
            if not retry or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _bind_all(
    addrs: Sequence[tuple[socket.AddressFamily, tuple[str, int] | tuple[str, int, int, int]]],
    port: int,
    address: str | None,
    backlog: int,
    reuse_port: bool,
) -> list[socket.socket]:
    """Bind one socket per address; on any failure close every socket made so far."""
    sockets: list[socket.socket] = []
    bound_port = port
    try:
        for af, sockaddr in addrs:
            try:
                sock = socket.socket(af, socket.SOCK_STREAM)
            except OSError as exc:
                if af == socket.AF_INET6 and exc.errno == errno.EAFNOSUPPORT:
                    continue  # IPv6 disabled in this kernel: serve IPv4 only
                raise _bind_error(exc, sockaddr[0], port) from exc
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if af == socket.AF_INET6:
                # Without V6ONLY the "::" socket also claims IPv4, and 0.0.0.0 then fails.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setblocking(False)
            target = (sockaddr[0], bound_port, *sockaddr[2:])
            try:
                sock.bind(target)
                sock.listen(backlog)
            except OSError as exc:
                raise _bind_error(exc, sockaddr[0], bound_port) from exc
            bound_port = sock.getsockname()[1]
        if not sockets:
            raise BindError(f"cannot bind {_host_port(address, port)}: no usable address")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _unix_socket_in_use(path: str) -> bool:
    """Whether a server still answers on `path` (then it is not stale and must not be removed)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (BlockingIOError, InterruptedError):
        return True  # somebody listens, with a full backlog
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def remove_stale_socket(path: str, prefix: str, in_use: str = "address already in use") -> None:
    """Make room for a new Unix socket at `path`.

    A socket file left behind by a crashed server would make bind() fail, so
    it is removed; a socket somebody still answers on, or anything that is
    not a socket (somebody's data), is an error starting with `prefix`.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BindError(f"{prefix}: {exc.strerror or exc}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise BindError(f"{prefix}: it is not a socket; refusing to replace it")
    if _unix_socket_in_use(path):
        raise BindError(f"{prefix}: {in_use}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise BindError(f"cannot remove the stale socket {path}: {exc.strerror or exc}") from None


def bind_unix_socket(path: str, mode: int = 0o600, backlog: int | None = None) -> socket.socket:
    """Bind a listening, non-blocking Unix socket at `path`, replacing a stale socket file."""
    remove_stale_socket(path, f"cannot bind unix:{path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.setblocking(False)
        sock.listen(default_backlog() if backlog is None else backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise BindError(f"cannot bind unix:{path}: address already in use") from None
        raise BindError(f"cannot bind unix:{path}: {exc.strerror or exc}") from None
    return sock


@dataclass(frozen=True)
class BindSpec:
    """One parsed `--bind` value: a TCP host/port, a Unix socket path, or an inherited fd."""

    kind: Literal["tcp", "unix", "fd"]
    host: str | None = None
    port: int | None = None
    path: str | None = None
    fd: int | None = None

    def describe(self) -> str:
        """A short form for log lines, e.g. "http://127.0.0.1:8000" or "unix:/tmp/x.sock"."""
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "fd":
            return f"fd://{self.fd}"
        return f"http://{_host_port(self.host, self.port or 0)}"


def _usage(spec: str, why: str) -> UsageError:
    return UsageError(f"invalid --bind value {spec!r}: {why}")


def _parse_port(spec: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise _usage(spec, "port must be a number from 0 to 65535")
    return int(text)


def parse_bind(spec: str) -> BindSpec:
    """Parse `HOST:PORT`, `[IPV6]:PORT`, `:PORT`, `PORT`, `unix:PATH` or `fd://N`."""
    if spec.startswith("unix:"):
        path = spec[len("unix:") :]
        if not path:
            raise _usage(spec, "expected unix:/path/to.sock")
        return BindSpec("unix", path=path)
    if spec.startswith("fd://"):
        text = spec[len("fd://") :]
        if not (text.isascii() and text.isdigit()):
            raise _usage(spec, "expected fd://N with N a file descriptor number")
        return BindSpec("fd", fd=int(text))
    if spec.isascii() and spec.isdigit():
        return BindSpec("tcp", port=_parse_port(spec, spec))
    if spec.startswith("["):
        host, sep, port = spec[1:].partition("]:")
        if not sep or not host or "]" in host:
            raise _usage(spec, "expected [IPV6ADDRESS]:PORT")
        return BindSpec("tcp", host=host, port=_parse_port(spec, port))
    host, sep, port = spec.rpartition(":")
    if not sep:
        raise _usage(spec, "expected HOST:PORT, :PORT, PORT, unix:PATH or fd://N")
    if "://" in spec:
        raise _usage(spec, "expected HOST:PORT, not a URL")
    if ":" in host:
        raise _usage(spec, "put an IPv6 address in brackets, e.g. [::1]:8000")
    if any(c.isspace() or c in "/[]" for c in host):
        raise _usage(spec, f"{host!r} is not a host name or address")
    return BindSpec("tcp", host=host or None, port=_parse_port(spec, port))


def handed_socket(fd: int) -> socket.socket:
    """A listening socket a predecessor handed over (hot upgrade, systemd's fd store).

    Non-blocking, and not inherited by what this process execs: it is handed
    on again only on purpose.
    """
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def _adopt_fd(fd: int) -> socket.socket:
    """Wrap an inherited listening socket (e.g. from systemd or a parent process)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(
            f"cannot use fd://{fd}: not an open socket ({exc.strerror or exc})"
        ) from None
    listening = True
    if hasattr(socket, "SO_ACCEPTCONN"):
        listening = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()  # not ours to close: it is not a socket we can serve on
        raise BindError(f"cannot use fd://{fd}: it is not a listening stream (TCP/Unix) socket")
    sock.setblocking(False)
    return sock


def open_binds(
    specs: Sequence[BindSpec], reuse_port: bool = False, backlog: int | None = None
) -> list[socket.socket]:
    """Open every `--bind`, all or nothing: a failure closes what was already opened."""
    opened: list[socket.socket] = []
    created_unix: list[socket.socket] = []  # socket files we made, removed again on failure
    try:
        for spec in specs:
            if spec.kind == "tcp":
                opened += bind_sockets(
                    spec.port or 0, spec.host, backlog=backlog, reuse_port=reuse_port
                )
            elif spec.kind == "unix" and spec.path is not None:
                opened.append(bind_unix_socket(spec.path, backlog=backlog))
                created_unix.append(opened[-1])
            elif spec.kind == "fd" and spec.fd is not None:
                opened.append(_adopt_fd(spec.fd))
            else:
                raise UsageError(f"invalid bind: {spec!r}")
    except BaseException:
        for sock in opened:
            if sock.family == socket.AF_UNIX and sock in created_unix:
                _unlink_quietly(sock.getsockname())
            sock.close()
        raise
    return opened


def accept_queue(sock: socket.socket) -> int:
    """Connections the kernel has accepted on a listening TCP socket and no worker has taken yet.

    Linux answers TCP_INFO on a listener with the accept queue's length in
    `tcpi_unacked`. Elsewhere, and for Unix sockets, 0.
    """
    return accept_queue_and_limit(sock)[0]


def accept_queue_and_limit(sock: socket.socket) -> tuple[int, int]:
    """The accept queue's length and its limit (the backlog); (0, 0) where unknown."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not hasattr(socket, "TCP_INFO"):
        return 0, 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_UNACKED + 8)
    except OSError:
        return 0, 0
    if len(info) < _TCP_INFO_UNACKED + 8:
        return 0, 0
    queued = int.from_bytes(info[_TCP_INFO_UNACKED : _TCP_INFO_UNACKED + 4], sys.byteorder)
    limit = int.from_bytes(info[_TCP_INFO_UNACKED + 4 : _TCP_INFO_UNACKED + 8], sys.byteorder)
    return queued, limit


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def describe_socket(sock: socket.socket) -> str:
    """A short form of where `sock` listens, for log lines ("http://[::]:8000", "unix:/x")."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        if isinstance(name, bytes):  # Linux abstract namespace
            name = "@" + name.lstrip(b"\0").decode(errors="replace")
        return f"unix:{name}"
    return f"http://{_host_port(name[0], name[1])}"
