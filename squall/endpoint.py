"""A small non-blocking server inside the supervisor's loop: the metrics endpoint and the control socket.

The supervisor is single-threaded and keeps the workers alive, so nothing
here may block or raise into it. `Endpoint` owns the sockets (accepting,
buffers, the client limit, the idle timeout, closing); each user supplies
only a `Conversation` per connection, its framing: bytes in, replies out
(HTTP requests for `--metrics`, JSON lines for `--control`). The rules,
the same for both:

- Replies go out one at a time, in order: the next request is answered once
  the last reply is sent, and at most `MAX_REPLIES_AT_ONCE` per turn of the
  loop. A connection is read only while nothing is owed to it, so one that
  sends without reading holds one reply and one read here, no more.
- At `max_clients` open connections, a newcomer takes the place of the one
  idle longest that is not mid-request (a request begun and not answered, or
  a reply not all sent); one mid-request is never dropped for it. If every
  one is, the newcomer is refused.
- A connection that is answered nothing and sent nothing for the idle
  timeout is closed: an idle client and a slow one (slowloris) alike.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["MAX_REPLIES_AT_ONCE", "Conversation", "Endpoint", "TurnAway"]

logger = logging.getLogger("squall.endpoint")

#: At most this many requests of one connection are answered per turn of the loop.
MAX_REPLIES_AT_ONCE = 16
READ_SIZE = 65536


class Conversation(Protocol):
    """One connection's framing, without I/O: what the client sent in, replies out."""

    #: No more requests: the connection closes once the replies are sent.
    done: bool

    def receive(self, data: bytes) -> None:
        """Bytes the client sent, in order."""

    def next_reply(self) -> bytes | None:
        """The reply to the next complete request, or None until one is complete."""

    @property
    def mid_request(self) -> bool:
        """A request begun (or complete) and not answered yet."""


class TurnAway(Exception):
    """Raised by a `Conversation` factory to refuse a connection; `reply` is sent first."""

    def __init__(self, reply: bytes = b"") -> None:
        super().__init__(reply)
        self.reply = reply


class _Connection:
    __slots__ = ("events", "fd", "last_active", "out", "sock", "talk")

    def __init__(self, sock: socket.socket, talk: Conversation) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.talk = talk
        self.out = bytearray()
        self.last_active = time.monotonic()
        self.events = selectors.EVENT_READ

    @property
    def busy(self) -> bool:
        """Mid-request: never the one evicted to make room."""
        return bool(self.out) or self.talk.mid_request


class Endpoint:
    """Listening sockets and their connections, served from the supervisor's selector.

    Registered with the selector as the data of its own sockets: the
    supervisor calls `on_readable` for them.
    """

    def __init__(
        self,
        name: str,
        listeners: list[socket.socket],
        converse: Callable[[socket.socket], Conversation],
        *,
        max_clients: int,
        full_reply: bytes = b"",
    ) -> None:
        self.name = name  # for the log
        self.listeners = listeners
        self._converse = converse  # may raise TurnAway
        self._max_clients = max_clients
        self._full_reply = full_reply  # for a newcomer refused at the limit
        self._selector: selectors.BaseSelector | None = None
        self._connections: dict[int, _Connection] = {}

    def attach(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        for sock in self.listeners:
            selector.register(sock, selectors.EVENT_READ, self)

    def on_readable(self, key: selectors.SelectorKey, mask: int) -> None:
        conn = None
        try:
            if key.fileobj in self.listeners:
                assert isinstance(key.fileobj, socket.socket)
                self._accept(key.fileobj)
                return
            conn = self._connections.get(key.fd)
            if conn is None:
                return
            if mask & selectors.EVENT_READ and not self._receive(conn):
                return
            self._pump(conn)
        except Exception:  # the supervisor must outlive any client
            logger.exception("%s: unexpected error; dropping the connection", self.name)
            if conn is not None:
                self._drop(conn)

    def close_idle(self, timeout: float) -> None:
        """On each tick: close the connections answered and sent nothing for `timeout` s."""
        now = time.monotonic()
        for conn in list(self._connections.values()):
            if now - conn.last_active > timeout:
                logger.debug("%s: closing an idle connection", self.name)
                self._drop(conn)

    def close(self) -> None:
        """Close every socket (at the supervisor's exit, and in each new worker)."""
        for conn in self._connections.values():
            with contextlib.suppress(OSError):
                conn.sock.close()
        self._connections.clear()
        for sock in self.listeners:
            with contextlib.suppress(OSError):
                sock.close()
        self.listeners = []
        self._selector = None

    # -- accepting ---------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(self._max_clients):  # a few at a time: the workers come first
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:  # the client gave up already
                    continue
                logger.warning("%s: cannot accept: %s", self.name, exc.strerror or exc)
                return  # out of descriptors or memory: the next turn tries again
            self._admit(sock)

    def _admit(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            talk = self._converse(sock)
        except TurnAway as refusal:
            _refuse(sock, refusal.reply)
            return
        if len(self._connections) >= self._max_clients and not self._make_room():
            _refuse(sock, self._full_reply)
            return
        assert self._selector is not None
        conn = _Connection(sock, talk)
        self._connections[conn.fd] = conn
        self._selector.register(sock, conn.events, self)

    def _make_room(self) -> bool:
        """Close the connection idle longest that is not mid-request; False if there is none."""
        idle = [conn for conn in self._connections.values() if not conn.busy]
        if not idle:
            return False
        self._drop(min(idle, key=lambda conn: conn.last_active))
        return True

    # -- one connection ------------------------------------------------------------

    def _receive(self, conn: _Connection) -> bool:
        """Read once; False when the connection is gone (the client's end, or an error)."""
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._drop(conn)
            return False
        if not data:  # read only while nothing is owed: nothing is lost
            self._drop(conn)
            return False
        conn.talk.receive(data)
        return True

    def _pump(self, conn: _Connection) -> None:
        """Send what is owed, then answer the next requests, one reply at a time."""
        answered = 0
        while True:
            if conn.out:
                if not self._send(conn):
                    return
                if conn.out:  # the socket is full: the rest once it is writable
                    break
            if conn.talk.done or answered == MAX_REPLIES_AT_ONCE:
                break
            reply = conn.talk.next_reply()
            if reply is None:
                break
            conn.out += reply
            conn.last_active = time.monotonic()
            answered += 1
        if not conn.out and conn.talk.done:
            self._drop(conn)
            return
        # Writable at once when more may be complete: answered next turn.
        more = conn.out or answered == MAX_REPLIES_AT_ONCE
        events = selectors.EVENT_WRITE if more else selectors.EVENT_READ
        if events != conn.events and self._selector is not None:
            conn.events = events
            self._selector.modify(conn.sock, events, self)

    def _send(self, conn: _Connection) -> bool:
        """Send what the socket takes; False when the connection is gone."""
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._drop(conn)
            return False
        if sent:
            del conn.out[:sent]
            conn.last_active = time.monotonic()
        return True

    def _drop(self, conn: _Connection) -> None:
        if self._connections.get(conn.fd) is conn:
            del self._connections[conn.fd]
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()


def _refuse(sock: socket.socket, reply: bytes) -> None:
    """Say why, if the socket takes it at once, and close."""
    if reply:
        with contextlib.suppress(OSError):
            sock.send(reply)
    sock.close()
