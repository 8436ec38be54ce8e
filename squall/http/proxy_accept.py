"""Accepting connections that start with a PROXY protocol header, read before any TLS.

A load balancer that forwards TCP (HAProxy, AWS NLB) writes the PROXY header
on the raw connection, ahead of the TLS handshake it passes through. So with
`--proxy-protocol` a worker does not let the event loop's server accept and
start TLS; `ProxyAcceptor` accepts on the listening socket itself:

- from a peer not in `--proxy-allow-from`, the connection goes straight to
  the loop (`connect_accepted_socket`, with TLS if configured) and is served
  as an ordinary client: a ``PROXY ...`` line it sends is a malformed request
  (400), and what it claims is never used;
- from an allowed peer, the header is read off the raw socket first. A peek
  (``MSG_PEEK``) shows what has arrived; `parse_proxy_header` says where the
  header ends, and only the header's bytes are taken off the socket, so that
  not one byte of TLS or HTTP is consumed. (While incomplete, every byte that
  arrived is header: a v1 line ends at its LF, a v2 header at its length.)
  Then the socket goes to the loop, and the HTTP protocol is made with the
  header's client and server addresses.

Bounds: the header must be complete within the header timeout, else the
connection is closed; its size is bounded by the parser (107 bytes for v1,
16 + 2048 for v2). A malformed header closes the connection with one
warning line. Accepting itself, its limits and its pauses are `Acceptor`'s.

A Unix socket peer has no address: it is always allowed, as for
`--forwarded-allow-ips` (only local processes can connect there).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from squall.errors import UsageError
from squall.http.accept import Acceptor, ProtocolFactory, describe_peer
from squall.http.proxy_protocol import (
    V2_HEADER,
    V2_MAX_PAYLOAD,
    ProxyProtocolError,
    parse_proxy_header,
)

logger = logging.getLogger("squall.http")

DEFAULT_ALLOW_FROM = "127.0.0.1,::1"
#: The most bytes a header can still need: a v2 header at its largest.
_PEEK_SIZE = V2_HEADER + V2_MAX_PAYLOAD


class AllowList:
    """`--proxy-allow-from`: addresses and networks, comma-separated, or ``*``."""

    def __init__(self, text: str) -> None:
        from squall.http.proxy_headers import TrustedProxies

        for entry in text.split(","):
            entry = entry.strip()
            if not entry or entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise UsageError(
                    f"--proxy-allow-from: {entry!r} is not an IP address, a network or *"
                ) from None
        self._trusted = TrustedProxies(text)

    def allows(self, peer: Any) -> bool:
        """True for a peer (an accept() address) whose PROXY header is read."""
        if isinstance(peer, tuple) and peer:
            return str(peer[0]) in self._trusted
        return True  # a Unix socket: no address


class _Pending:
    """An accepted connection whose PROXY header is being read."""

    __slots__ = ("buffer", "peer", "sock", "timer")

    def __init__(self, sock: socket.socket, peer: Any) -> None:
        self.sock = sock
        self.peer = peer
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None


class ProxyAcceptor(Acceptor):
    """Serves one listening socket with the PROXY protocol read before TLS."""

    def __init__(
        self,
        sock: socket.socket,
        make_protocol: ProtocolFactory,
        *,
        allow: AllowList,
        ssl_context: ssl.SSLContext | None = None,
        header_timeout: float = 10.0,
        backlog: int = 128,
        has_room: Callable[[], bool] | None = None,
        limit: int = 0,
        limit_given: bool = True,
        on_open: Callable[[], object] | None = None,
        on_close: Callable[[bool], object] | None = None,
    ) -> None:
        super().__init__(
            sock,
            make_protocol,
            ssl_context=ssl_context,
            backlog=backlog,
            has_room=has_room,
            limit=limit,
            limit_given=limit_given,
        )
        self.allow = allow
        self.header_timeout = header_timeout
        self.on_open = on_open  # a connection is held while its header is read
        self.on_close = on_close  # ... and then handed over (True) or closed (False)
        self.pending: dict[int, _Pending] = {}

    @property
    def in_hand(self) -> int:
        """Connections accepted here and not yet served: header awaited, or being handed over."""
        return len(self.pending) + len(self._batch) + len(self._handing)

    def abort(self) -> None:
        """Close the connections whose header has not come yet."""
        for pending in list(self.pending.values()):
            self._drop(pending)

    def _accepted(self, fd: int, peer: Any) -> None:
        conn = socket.socket(self._family, socket.SOCK_STREAM, 0, fd)
        conn.setblocking(False)
        if self._tcp:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.allow.allows(peer):
            # An ordinary client: a PROXY line is no header.
            self._hand_over(conn, peer, self.make_protocol(None, None))
            return
        pending = _Pending(conn, peer)
        fd = conn.fileno()
        self.pending[fd] = pending
        if self.on_open is not None:
            self.on_open()
        if self.header_timeout > 0:
            pending.timer = self.loop.call_later(self.header_timeout, self._expire, pending)
        self.loop.add_reader(fd, self._read_header, pending)

    # -- the header -----------------------------------------------------------------

    def _read_header(self, pending: _Pending) -> None:
        sock = pending.sock
        try:
            data = sock.recv(_PEEK_SIZE - len(pending.buffer), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(pending)
            return
        if not data:
            self._drop(pending)  # closed before its header was complete
            return
        buffered = pending.buffer
        try:
            header = parse_proxy_header(buffered + data)
        except ProxyProtocolError as exc:
            logger.warning("closing connection from %s: %s", describe_peer(pending.peer), exc)
            self._drop(pending)
            return
        # Incomplete: all that arrived is header. Complete: take it and nothing after it.
        wanted = len(data) if header is None else header.consumed - len(buffered)
        try:
            taken = sock.recv(wanted)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(pending)
            return
        pending.buffer = buffered + taken
        if header is not None and len(pending.buffer) == header.consumed and self._forget(pending):
            if self.on_close is not None:
                self.on_close(True)
            protocol = self.make_protocol(header.client, header.server)
            self._hand_over(sock, pending.peer, protocol)

    def _expire(self, pending: _Pending) -> None:
        pending.timer = None
        logger.debug("no PROXY header from %s in time", describe_peer(pending.peer))
        self._drop(pending)

    def _forget(self, pending: _Pending) -> bool:
        """Stop waiting for its header; False if that was done already."""
        fd = pending.sock.fileno()
        if fd < 0 or self.pending.get(fd) is not pending:
            return False
        del self.pending[fd]
        self.loop.remove_reader(fd)
        if pending.timer is not None:
            pending.timer.cancel()
            pending.timer = None
        return True

    def _drop(self, pending: _Pending) -> None:
        if self._forget(pending):
            pending.sock.close()
            if self.on_close is not None:
                self.on_close(False)
