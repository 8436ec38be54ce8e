"""Serving a new connection's first bytes on the accepted socket itself.

Most new connections bring their whole request with them, and many (a
client's `Connection: close`, HTTP/1.0) end with its response. The
acceptor reads those bytes at accept, and the protocol answers them on a
`DirectTransport`: a write is one `send()` on the socket, a close one
`close()`. A connection that ends there never becomes an event-loop
transport, which is most of what a short connection costs in user space
(the transport and its handle, its socket options and address queries, the
coroutine and the future that hand it over, its close a pass later).

A connection that stays open is handed to the loop: the acceptor calls
`detach()` and gives the descriptor to `connect_accepted_socket` with the
same protocol, and when the protocol is told of the loop's transport it
calls `hand_over(transport)`. What the protocol did meanwhile (bytes a
full socket did not take, a close, a half-close, paused reading, buffer
limits) is done again on the loop's transport, in order, and from then on
this object forwards every call to it, for whoever kept a reference.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Final

#: Until the loop's transport takes over, pause the protocol's writing past this much held.
HIGH_WATER: Final = 65536
LOW_WATER: Final = 16384
_DONTWAIT: Final = int(socket.MSG_DONTWAIT)
_STREAM: Final = int(socket.SOCK_STREAM)


class HandedSocket:
    """A descriptor for `connect_accepted_socket`, whose transport closes it.

    uvloop asks a socket for its family, type and descriptor, and closes it
    once its own handle has closed the descriptor: a `socket.socket` would
    cost a Python object and a system call per connection here, and closing
    a plain one again would close a descriptor that another thread may have
    opened meanwhile under the same number.
    """

    def __init__(self, fd: int, family: int) -> None:
        self.fd = fd
        self.family = family
        self.type = _STREAM

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        """The transport closed the descriptor already."""


class DirectTransport:
    """An accepted socket as the protocol's transport, until the loop's takes over."""

    def __init__(self, sock: Any, client: tuple[str, int] | None, protocol: Any) -> None:
        self._sock: Any = sock  # a `_socket.socket` in blocking mode: every call says MSG_DONTWAIT
        self._client = client
        self._protocol = protocol
        self._loop_transport: Any = None  # the loop's transport, once it has taken over
        self._held: list[bytes | memoryview] = []  # what the socket did not take, in order
        self._held_size = 0
        self._closing = False
        self._aborted = False
        self._eof_asked = False
        self._reading = True
        self._writing_paused = False  # the protocol was told to pause writing
        self._high = HIGH_WATER
        self._low = LOW_WATER
        #: The socket was closed here: the protocol's `connection_lost(error)` is due.
        self.closed = False
        self.error: Exception | None = None

    # -- the acceptor's side ----------------------------------------------------------

    def detach(self) -> int:
        """Give the descriptor up, for the loop's transport."""
        fd: int = self._sock.detach()
        self._sock = None
        return fd

    def hand_over(self, transport: Any, protocol_repauses: bool = False) -> None:
        """The loop's transport takes over: what the protocol asked for is done on it.

        uvloop starts reading once the protocol's `connection_made` returns,
        paused or not, so a pause asked through this object is asked again a
        moment later, unless `protocol_repauses`: the protocol that asked it
        talks to the loop's transport from now on, and asks again itself.
        """
        self._loop_transport = transport
        if self._high != HIGH_WATER or self._low != LOW_WATER:
            transport.set_write_buffer_limits(self._high, self._low)
        if self._held:
            for data in self._held:  # the transport keeps what it cannot send, uncopied
                transport.write(data)
            self._held.clear()
            self._held_size = 0
        if self._eof_asked and not self._aborted:
            transport.write_eof()
        if self._aborted:
            transport.abort()
        elif self._closing:
            transport.close()
        elif protocol_repauses:
            self._reading = True
        elif not self._reading:
            transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._pause_again)
        if self._writing_paused:
            self._writing_paused = False
            high = transport.get_write_buffer_limits()[1]
            if transport.get_write_buffer_size() <= high:
                self._protocol.resume_writing()  # else the transport paused it, and resumes it

    # -- asyncio.Transport --------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._loop_transport is not None:
            self._loop_transport.write(data)
            return
        if self._closing or not data:
            return
        if not self._held and self._sock is not None:
            try:
                sent: int = self._sock.send(data, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:  # the client is gone
                self.error = exc
                self._close_socket()
                return
            if sent == len(data):
                return
        else:
            sent = 0
        # Bytes are held as they are (a view past what was sent); anything else may change.
        held: bytes | memoryview = data if type(data) is bytes else bytes(data)
        if sent:
            held = memoryview(held)[sent:]
        self._held.append(held)
        self._held_size += len(held)
        if self._held_size > self._high and not self._writing_paused:
            self._writing_paused = True
            self._protocol.pause_writing()

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def close(self) -> None:
        if self._loop_transport is not None:
            self._loop_transport.close()
            return
        if not self._closing:
            self._closing = True
            if not self._held and not self._eof_asked:
                self._close_socket()

    def abort(self) -> None:
        if self._loop_transport is not None:
            self._loop_transport.abort()
            return
        self._closing = self._aborted = True
        self._held.clear()
        self._held_size = 0
        self._close_socket()

    def write_eof(self) -> None:
        if self._loop_transport is not None:
            self._loop_transport.write_eof()
        elif not self._closing:
            self._eof_asked = True  # done by the loop's transport, which reads what follows

    def can_write_eof(self) -> bool:
        return True if self._loop_transport is None else bool(self._loop_transport.can_write_eof())

    def is_closing(self) -> bool:
        return (
            self._closing
            if self._loop_transport is None
            else bool(self._loop_transport.is_closing())
        )

    def pause_reading(self) -> None:
        self._reading = False
        if self._loop_transport is not None:
            self._loop_transport.pause_reading()

    def resume_reading(self) -> None:
        self._reading = True
        if self._loop_transport is not None:
            self._loop_transport.resume_reading()

    def _pause_again(self) -> None:
        transport = self._loop_transport
        if not self._reading and transport is not None and not transport.is_closing():
            transport.pause_reading()

    def is_reading(self) -> bool:
        return (
            self._reading
            if self._loop_transport is None
            else bool(self._loop_transport.is_reading())
        )

    def get_write_buffer_size(self) -> int:
        return (
            self._held_size
            if self._loop_transport is None
            else int(self._loop_transport.get_write_buffer_size())
        )

    def get_write_buffer_limits(self) -> tuple[int, int]:
        if self._loop_transport is not None:
            low, high = self._loop_transport.get_write_buffer_limits()
            return int(low), int(high)
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._loop_transport is not None:
            self._loop_transport.set_write_buffer_limits(high, low)
            return
        self._high = HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self._loop_transport is not None:
            return self._loop_transport.get_extra_info(name, default)
        if name == "peername":
            return self._client if self._client is not None else default
        if name == "sockname" and self._sock is not None:
            try:
                return self._sock.getsockname()
            except OSError:
                return default
        return default

    def get_protocol(self) -> Any:
        return (
            self._protocol if self._loop_transport is None else self._loop_transport.get_protocol()
        )

    def set_protocol(self, protocol: Any) -> None:
        if self._loop_transport is None:
            # The loop's transport is made for the protocol that calls `hand_over`.
            raise RuntimeError("the protocol cannot change before the loop's transport takes over")
        self._loop_transport.set_protocol(protocol)

    def _close_socket(self) -> None:
        self._closing = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.closed = True
