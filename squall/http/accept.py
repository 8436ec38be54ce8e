"""Accepting connections in the worker itself, so that it can stop accepting.

The event loop's own server accepts whatever the kernel has queued, as fast
as it can, and cannot be told to hold back. libuv (uvloop) even answers a
lack of descriptors (EMFILE) by accepting and closing connections to empty
the queue: those clients get no answer. `Acceptor` accepts on the listening
socket itself and hands each connection to the loop
(`connect_accepted_socket`), which lets a worker

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

import asyncio
import errno
import functools
import logging
import resource
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, Final

logger: Final = logging.getLogger("squall.http")

Address = tuple[str, int]
#: Makes the connection's protocol from its (client, server), each None when not known.
#: The third argument is what the client had sent by the time it was accepted.
ProtocolFactory = Callable[[Address | None, Address | None, bytes], asyncio.Protocol]

#: Connections accepted per wake-up of the listening socket, at most.
ACCEPT_BATCH: Final = 64
#: At most this much is read at accept, before the connection is handed over.
EARLY_READ: Final = 65536
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
        self._fd = sock.fileno()
        self._reading = False
        self._closed = False
        self._full = False  # paused at --max-connections
        self._retry: asyncio.TimerHandle | None = None
        self._handing: set[Coroutine[Any, Any, Any]] = set()  # connections being handed over

    @property
    def in_hand(self) -> int:
        """Connections accepted here and not yet served (being handed over)."""
        return len(self._handing)

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
        has_room = self.has_room
        for _ in range(ACCEPT_BATCH):
            if has_room is not None and not has_room():
                self._at_limit()
                return
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _CONNECTION_GONE:
                    continue
                self._cannot_accept(exc)  # EMFILE and the like: the socket stays readable
                return
            self._accepted(conn, peer)

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

    def _accepted(self, conn: socket.socket, peer: Any) -> None:
        # TCP_NODELAY: the loop's transport sets it.
        early = b""
        if self.ssl_context is None:
            # The request is usually here already. Read now, the protocol
            # parses it as soon as it is made, one pass of the loop earlier
            # than the transport's first read would.
            try:
                # MSG_DONTWAIT: the socket is made non-blocking by the transport.
                early = conn.recv(EARLY_READ, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # reset before it was served
                conn.close()
                return
        # The client's address, as accept() gave it: the transport would ask the socket again.
        client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        self._hand_over(conn, peer, client, None, early)

    # -- handing the connection to the loop ---------------------------------------

    def _hand_over(
        self,
        conn: socket.socket,
        peer: Any,
        client: Address | None,
        server: Address | None,
        early: bytes = b"",
    ) -> None:
        """`connect_accepted_socket`, stepped by hand rather than as a task.

        The coroutine makes the transport at once and then waits on one
        future (two with TLS); a task per connection cost about 10 µs of a
        new connection's 65 (bench/results/accept-*.md).
        """
        make_protocol = self.make_protocol
        coro = self.loop.connect_accepted_socket(
            lambda: make_protocol(client, server, early), conn, ssl=self.ssl_context
        )
        self._handing.add(coro)
        self._step(coro, client or peer)

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


def describe_peer(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return "a unix socket"
