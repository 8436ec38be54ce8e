"""Accepting connections in the worker itself, so that it can stop accepting.

The event loop's own server accepts whatever the kernel has queued, as fast
as it can, and cannot be told to hold back. libuv (uvloop) even answers a
lack of descriptors (EMFILE) by accepting and closing connections to empty
the queue: those clients get no answer. `Acceptor` accepts on the listening
socket itself, answers what a new connection brought on the socket
(`squall.http.direct`), and hands the connections that stay open to the
loop (`connect_accepted_socket`), which lets a worker

- stop at `--max-connections`: the kernel's queue, or the other workers,
  hold the rest, and accepting resumes as soon as a connection closes;
- pause when accept() fails for lack of resources (EMFILE, ENFILE,
  ENOBUFS): one warning names the limit (at most one a minute), and it
  tries again when a connection closes or after `ACCEPT_RETRY_DELAY`,
  never spinning on a listening socket that stays readable. What the
  kernel has queued meanwhile is answered once descriptors free.

`squall.http.proxy_accept.ProxyAcceptor` reads PROXY headers on top of it.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import functools
import logging
import os
import resource
import socket
import ssl
from collections import deque
from collections.abc import Callable, Coroutine, Sized
from typing import Any, Final

from squall.http.direct import DirectTransport, HandedSocket

logger: Final = logging.getLogger("squall.http")

Address = tuple[str, int]
#: Makes the connection's protocol from its (client, server), each None when not known.
ProtocolFactory = Callable[[Address | None, Address | None], asyncio.Protocol]

#: Connections accepted per wake-up of the listening socket, at most.
ACCEPT_BATCH: Final = 64
#: At most this much is read at accept, before the connection is handed over.
EARLY_READ: Final = 65536
_DONTWAIT: Final = int(socket.MSG_DONTWAIT)
_STREAM: Final = int(socket.SOCK_STREAM)
#: After accept failed otherwise (EMFILE, ENFILE, ENOBUFS...), wait this long to try again.
ACCEPT_RETRY_DELAY: Final = 0.5
#: ... and say so at most this often (descriptors freed and taken again make episodes short).
STARVED_LOG_INTERVAL: Final = 60.0
#: accept() failed for that one connection only, which is gone already.
_CONNECTION_GONE: Final = frozenset(
    {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ECONNRESET, errno.ENETDOWN}
)

#: When this process last said that accept() failed (EMFILE is the whole process's).
_warned_at = float("-inf")
#: ... and that it stopped at --max-connections.
_full_warned_at = float("-inf")


def automatic_limit() -> int:
    """--max-connections 0: what the descriptor limit allows, less room for everything else.

    A worker that stops accepting there never meets EMFILE for its
    connections; the reserve is for its listeners, pipes, logs and the app.
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 0
    return max(1, soft - max(32, soft // 8))


class Acceptor:
    """Serves one listening socket, accepting only while the worker has room."""

    def __init__(
        self,
        sock: socket.socket,
        make_protocol: ProtocolFactory,
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 128,
        has_room: Callable[[], bool] | None = None,
        limit: int = 0,
        limit_given: bool = True,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.make_protocol = make_protocol
        self.ssl_context = ssl_context
        self.backlog = backlog
        self.has_room = has_room  # False: at --max-connections, accept nothing for now
        self.limit = limit  # that limit, for the log
        self.limit_given = limit_given  # False: derived from the descriptor limit
        self._tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self._family = int(sock.family)
        # accept() without the socket object it makes (typeshed does not list `_accept`).
        self._accept_fd: Callable[[], tuple[int, Any]] = getattr(sock, "_accept")  # noqa: B009
        self._fd = sock.fileno()
        self._reading = False
        self._closed = False
        self._full = False  # paused at --max-connections
        self._retry: asyncio.TimerHandle | None = None
        self._handing: set[Coroutine[Any, Any, Any]] = set()  # connections being handed over
        self._batch: deque[tuple[int, Any]] = deque()  # accepted in this pass, not yet served

    @property
    def in_hand(self) -> int:
        """Connections accepted here and not yet served (in this pass's batch, or being handed over)."""
        return len(self._batch) + len(self._handing)

    def start(self) -> None:
        self.sock.setblocking(False)
        self.sock.listen(self.backlog)
        self._resume()

    def close(self) -> None:
        """Accept no more and close the listening socket; connections in hand go on."""
        if self._closed:
            return
        self._closed = True
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self.sock.close()

    def abort(self) -> None:
        """Close what is in hand and not served yet (nothing, here)."""

    def room_freed(self) -> None:
        """A connection closed: accept again if a limit held this back."""
        if (self._full or self._retry is not None) and not self._closed:
            self._full = False
            if self._retry is not None:
                self._retry.cancel()
            self._resume()

    # -- accepting ------------------------------------------------------------------

    def _resume(self) -> None:
        self._retry = None
        if not self._closed and not self._reading:
            self._reading = True
            self.loop.add_reader(self._fd, self._accept)

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self._fd)

    def _accept(self) -> None:
        # Accept the whole batch first, then serve it: a request served here
        # may hold the loop (an app that never awaits), and what arrives
        # meanwhile is then read in a pass of its own, where the limits of
        # a pass (--limit-concurrency) apply to it.
        has_room = self.has_room
        batch = self._batch
        for _ in range(ACCEPT_BATCH):
            if has_room is not None and not has_room():
                self._at_limit()
                break
            try:
                # The descriptor alone: a socket object is made only where one is needed.
                fd, peer = self._accept_fd()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _CONNECTION_GONE:
                    continue
                self._cannot_accept(exc)  # EMFILE and the like: the socket stays readable
                break
            batch.append((fd, peer))
        while batch:
            fd, peer = batch.popleft()
            try:
                self._accepted(fd, peer)
            except Exception:
                logger.exception("error accepting a connection from %s", describe_peer(peer))

    def _at_limit(self) -> None:
        """What waits stays in the kernel's queue (or goes to the other workers)."""
        global _full_warned_at
        self._full = True
        self._pause()
        now = self.loop.time()
        if now - _full_warned_at >= STARVED_LOG_INTERVAL:
            _full_warned_at = now
            logger.warning(
                "%d connections open (--max-connections%s): accepting paused until one closes",
                self.limit,
                "" if self.limit_given else ", from ulimit -n",
            )

    def _cannot_accept(self, exc: OSError) -> None:
        global _warned_at
        now = self.loop.time()
        if now - _warned_at >= STARVED_LOG_INTERVAL:  # once for all of this worker's sockets
            _warned_at = now
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            logger.warning(
                "cannot accept connections: %s (this worker may hold %d descriptors: "
                "ulimit -n); accepting again when one frees, or in %.1f s",
                exc.strerror or exc,
                soft,
                ACCEPT_RETRY_DELAY,
            )
        self._pause()
        self._retry = self.loop.call_later(ACCEPT_RETRY_DELAY, self._resume)

    def _accepted(self, fd: int, peer: Any) -> None:
        # The client's address, as accept() gave it: the transport would ask the socket again.
        client: Address | None = None
        if isinstance(peer, tuple):
            client = peer if len(peer) == 2 else (peer[0], peer[1])  # IPv6's has 4
        if self.ssl_context is not None:
            self._hand_over_fd(fd, peer, client)
            return
        # The request is usually here already: read it now, and answer it on
        # the socket itself (squall.http.direct).
        conn = _socket.socket(self._family, _STREAM, 0, fd)
        try:
            early: bytes = conn.recv(EARLY_READ, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            early = b""
        except OSError:  # reset before it was served
            conn.close()
            return
        if not early:
            self._hand_over_fd(conn.detach(), peer, client)
            return
        protocol = self.make_protocol(client, None)
        direct = DirectTransport(conn, client, protocol)
        try:
            protocol.connection_made(direct)  # type: ignore[arg-type]
            protocol.data_received(early)
        except Exception as exc:  # a bug: as the loop's transport would, end the connection
            logger.exception("error serving a new connection from %s", describe_peer(peer))
            direct.abort()
            protocol.connection_lost(exc)
            return
        if direct.closed:  # answered, and ended: the loop never knew of it
            protocol.connection_lost(direct.error)
            return
        # Already among the worker's connections (its first request was served):
        # not counted again while handed over, or --max-connections would pause early.
        self._hand_over(HandedSocket(direct.detach(), self._family), peer, protocol, counted=True)

    def _hand_over_fd(self, fd: int, peer: Any, client: Address | None) -> None:
        """A connection with nothing read yet (or TLS): the loop's transport serves it all."""
        try:
            protocol = self.make_protocol(client, None)
        except BaseException:
            os.close(fd)  # not the transport's yet
            raise
        self._hand_over(HandedSocket(fd, self._family), peer, protocol)

    # -- handing the connection to the loop ---------------------------------------

    def _hand_over(
        self, conn: Any, peer: Any, protocol: asyncio.Protocol, counted: bool = False
    ) -> None:
        """`connect_accepted_socket`, stepped by hand rather than as a task.

        The coroutine makes the transport at once and then waits on one
        future (two with TLS); a task per connection cost about 10 µs of a
        new connection's 65 (bench/results/accept-*.md). `conn` is a socket,
        or a `HandedSocket` that the transport's close leaves alone. The
        protocol is made beforehand: past it, the coroutine cannot fail
        before its transport owns the descriptor. `counted`: the protocol is
        among the worker's connections already (`in_hand` counts the others).
        """
        coro = self.loop.connect_accepted_socket(
            functools.partial(_same, protocol), conn, ssl=self.ssl_context
        )
        if not counted:
            self._handing.add(coro)
        self._step(coro, peer)

    def _step(self, coro: Coroutine[Any, Any, Any], peer: Any, _: object = None) -> None:
        try:
            waiting = coro.send(None)
        except StopIteration:
            self._handing.discard(coro)
            return
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError) as exc:
            self._handing.discard(coro)  # a failed TLS handshake, a reset
            logger.debug("connection from %s not served: %r", describe_peer(peer), exc)
            return
        except BaseException:
            self._handing.discard(coro)
            raise
        waiting.add_done_callback(functools.partial(self._step, coro, peer))


def _same(protocol: asyncio.Protocol) -> asyncio.Protocol:
    return protocol


def describe_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "a unix socket"


class Acceptors:
    """A worker's acceptors, with what they share: the room under --max-connections.

    Asked once per accept and told once per close, so it is compiled with
    the acceptors rather than written in the server.
    """

    def __init__(self, connections: Sized, limit: int) -> None:
        self.connections = connections  # the connections being served (ServerState's)
        self.limit = limit  # --max-connections as it applies; 0: none
        self.members: list[Acceptor] = []
        #: Told the worker's load after each close (steering's report), if set.
        self.on_closed: Callable[[int], object] | None = None

    def pending(self) -> int:
        """Accepted connections not served yet: in a batch, being handed over, a PROXY header awaited."""
        total = 0
        for acceptor in self.members:
            total += acceptor.in_hand
        return total

    def has_room(self) -> bool:
        limit = self.limit
        return not limit or len(self.connections) + self.pending() < limit

    def room_freed(self) -> None:
        for acceptor in self.members:
            acceptor.room_freed()

    def report_load(self, open_connections: int) -> None:
        """Steering's count: connections served plus those accepted and not served yet."""
        if self.on_closed is not None:
            self.on_closed(open_connections + self.pending())
