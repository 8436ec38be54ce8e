"""One WebSocket connection (RFC 6455) once the HTTP layer has handed it over.

`WebSocketSession` is the protocol that owns an upgraded connection
(`squall.http.cycle.Upgraded`). wsproto does the framing (sans-IO); the
session adds what wsproto leaves to its user: answering pings, reassembling
fragments under `max_size`, server pings with a pong deadline, the closing
handshake with a deadline, flow control in both directions, and the HTTP
answer when the handshake is refused. Its app side (`accept`/`reject`,
`receive`, `send`, `close`) is all that the ASGI adapter
(`squall.websocket.asgi`) and squall's handler (`squall.websocket.handler`)
use; this module imports neither, nor `squall.web` or `squall.asgi`.

Every live session of the process is in a registry, so a worker that drains
can end them with 1001 (going away): `close_all` starts the closing
handshakes, `wait_all_closed` waits for them (and aborts what is left).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
from collections import deque
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.events import Request as HandshakeRequest
from wsproto.utilities import ProtocolError

from squall.websocket.handshake import read_handshake, refuse

if TYPE_CHECKING:
    from squall.http.cycle import RequestCycle

logger = logging.getLogger("squall.websocket")


@dataclass(frozen=True)
class WebSocketOptions:
    #: The largest message accepted, in bytes (UTF-8 bytes for text); more closes with 1009.
    max_size: int = 16 * 1024 * 1024
    #: Send a ping this often, in seconds; 0 sends none.
    ping_interval: float = 20.0
    #: Close with 1011 when the pong does not come within this long; 0 waits forever.
    ping_timeout: float = 20.0
    #: After sending a close frame, how long to wait for the client's before closing TCP.
    close_timeout: float = 5.0


DEFAULT_OPTIONS = WebSocketOptions()

# Receive-side flow control: past either mark, the socket stops being read
# until the app has taken messages off the queue.
MAX_QUEUED_MESSAGES = 32
MAX_QUEUED_BYTES = 1024 * 1024
# Bytes a client may send after its handshake, before the server has answered it.
MAX_EARLY_BYTES = 64 * 1024
# A connection we close still sends what it has buffered: a client that reads
# nothing would keep it open (and its buffer held) forever. It is dropped then.
FLUSH_TIMEOUT = 5.0


class WebSocketClosedError(OSError):
    """Sending on a WebSocket that is closed (or closing, or never opened).

    An OSError, as ASGI spec 2.4 asks of `send` on a closed connection.
    """


@dataclass(frozen=True)
class Closed:
    """What `WebSocketSession.receive` returns once the connection is over."""

    code: int
    reason: str = ""


class State(enum.Enum):
    CONNECTING = 0  # the handshake waits for the app's answer
    OPEN = 1
    CLOSING = 2  # our close frame is sent; the client's is awaited
    CLOSED = 3
    REJECTED = 4  # the handshake was answered in HTTP


# -- the registry of live sessions (one per process) ---------------------------------

_live: set[WebSocketSession] = set()
_tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
_refusing = False  # set by close_all: new handshakes get 503


def close_all(code: int = 1001, reason: str = "server shutting down") -> int:
    """Start closing every WebSocket of this process; refuse new ones (503).

    Open connections get a close frame with `code`; handshakes still waiting
    for their app are refused with 503. Returns how many were live.
    """
    global _refusing
    _refusing = True
    sessions = list(_live)
    for session in sessions:
        session.going_away(code, reason)
    return len(sessions)


async def wait_all_closed(timeout: float) -> bool:
    """Wait until every WebSocket is closed; abort what is left after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _live and loop.time() < deadline:
        await asyncio.sleep(0.02)
    if not _live:
        return True
    for session in list(_live):
        session.abort()
    return False


def spawn(
    coroutine: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop
) -> asyncio.Task[None]:
    """Run an app's side of a session as a task, held here until it ends."""
    task = loop.create_task(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


# -- the handshake's answer -----------------------------------------------------------


def _refused_session(cycle: RequestCycle, status: int) -> WebSocketSession:
    refuse(cycle, status)
    return WebSocketSession(cycle, None, None, DEFAULT_OPTIONS, b"")


def start_session(
    cycle: RequestCycle, trailing: bytes, options: WebSocketOptions | None = None
) -> WebSocketSession | None:
    """A session for the handshake in `cycle`, or None when it is none (answer in HTTP).

    A broken handshake (unknown version) or one arriving while the worker
    drains is refused here, in HTTP; the session returned is then already
    rejected and only waits for the connection to end.
    """
    request = cycle.request
    if request is None or cycle.transport is None:
        return None
    found = read_handshake(request)
    if found is None:
        return None
    if isinstance(found, int):
        return _refused_session(cycle, found)
    if _refusing:
        return _refused_session(cycle, 503)
    connection, handshake = found
    return WebSocketSession(cycle, connection, handshake, options or DEFAULT_OPTIONS, trailing)


# -- the session ------------------------------------------------------------------


class WebSocketSession:
    """One WebSocket connection: wsproto framing on the upgraded transport.

    It implements `squall.http.cycle.Upgraded`; the app side uses
    `accept`/`reject`, `receive`, `send`, `close`.
    """

    def __init__(
        self,
        cycle: RequestCycle,
        connection: WSConnection | None,
        handshake: HandshakeRequest | None,
        options: WebSocketOptions,
        trailing: bytes,
    ) -> None:
        self.cycle = cycle
        self.loop = cycle.loop
        self.transport = cycle.transport
        self.options = options
        self._ws = connection
        self.subprotocols: list[str] = list(handshake.subprotocols) if handshake else []
        self.subprotocol: str | None = None
        self.state = State.CONNECTING if connection is not None else State.REJECTED
        #: The code and reason that ended the connection, once it has ended.
        self.close_code: int | None = None
        self.close_reason = ""
        self._early = bytearray(trailing)
        self._inbox: deque[str | bytes | Closed] = deque()
        self._inbox_bytes = 0
        self._receiver: asyncio.Future[None] | None = None
        self._parts: list[Any] = []  # the pieces of a fragmented message, all str or all bytes
        self._part_bytes = 0
        self._failed = False  # closed by us for a protocol reason: ignore what follows
        self._reading_paused = False  # the transport's reading is paused (see `_update_reading`)
        self._inbox_full = False  # the app has not taken what was queued for it
        self._write_paused = False  # the transport's buffer is past its high-water mark
        self._high_water = _high_water(self.transport)
        self._pending_pong: bytes | None = None  # the latest ping's payload, not answered yet
        self._write_waiters: list[asyncio.Future[None]] = []
        self._lost = False
        self._closed_waiter: asyncio.Future[None] | None = None
        self._ping_handle: asyncio.TimerHandle | None = None
        self._pong_handle: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        self._close_handle: asyncio.TimerHandle | None = None
        self._drop_handle: asyncio.TimerHandle | None = None
        if connection is not None:
            _live.add(self)
            self._check_high_water()  # the HTTP connection may have been paused already
            self._update_reading()

    # -- facts -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """The transport is still up."""
        return not self._lost

    # -- handshake answers ----------------------------------------------------------

    def accept(
        self, subprotocol: str | None = None, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> None:
        """Complete the handshake: 101 Switching Protocols."""
        if self.state is not State.CONNECTING:
            raise RuntimeError(f"cannot accept a WebSocket in state {self.state.name}")
        if self._lost:
            raise WebSocketClosedError("the client disconnected before the handshake completed")
        ws = self._ws
        assert ws is not None
        if subprotocol is not None and subprotocol not in self.subprotocols:
            raise ValueError(f"subprotocol {subprotocol!r} was not offered by the client")
        self.cycle.status = 101
        extra = [(bytes(name), bytes(value)) for name, value in headers]
        try:
            data = ws.send(AcceptConnection(subprotocol=subprotocol, extra_headers=extra))
        except (ProtocolError, h11.ProtocolError) as exc:
            raise ValueError(f"invalid handshake response: {exc}") from None
        self.subprotocol = subprotocol
        self.state = State.OPEN
        self._write(data)
        self._schedule_ping()
        early, self._early = bytes(self._early), bytearray()
        self._update_reading()
        if early:
            self._feed(early)

    def reject(
        self, status: int = 403, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b""
    ) -> None:
        """Refuse the handshake with a whole HTTP response; the connection then closes."""
        if self.state is not State.CONNECTING:
            raise RuntimeError(f"cannot reject a WebSocket in state {self.state.name}")
        self.state = State.REJECTED
        self._early.clear()
        self.cycle.respond(status, headers or [], body)

    def start_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Refuse the handshake with a streamed HTTP response (`write_response`, `end_response`)."""
        if self.state is not State.CONNECTING:
            raise RuntimeError(f"cannot reject a WebSocket in state {self.state.name}")
        self.state = State.REJECTED
        self._early.clear()
        self.cycle.start(status, headers)

    def mark_rejected(self) -> None:
        """The handshake gets no WebSocket: its caller answers in HTTP, or the client left."""
        self.state = State.REJECTED

    def write_response(self, data: bytes) -> None:
        self.cycle.write(data)

    def end_response(self) -> None:
        self.cycle.end()

    async def drain_response(self) -> None:
        await self.cycle.drain()

    # -- receiving -------------------------------------------------------------------

    async def receive(self) -> str | bytes | Closed:
        """The next whole message, or `Closed` once the connection is over (again and again)."""
        while not self._inbox:
            if self.state is State.REJECTED:
                return Closed(self.close_code or 1006, self.close_reason)
            waiter = self._receiver = self.loop.create_future()
            try:
                await waiter
            finally:
                self._receiver = None
        item = self._inbox.popleft()
        if isinstance(item, Closed):
            self._inbox.appendleft(item)  # the end stays the answer
            return item
        self._inbox_bytes -= len(item)
        if (
            self._inbox_full
            and len(self._inbox) <= MAX_QUEUED_MESSAGES // 2
            and self._inbox_bytes <= MAX_QUEUED_BYTES // 2
        ):
            self._inbox_full = False
            self._update_reading()
        return item

    def _deliver(self, item: str | bytes | Closed) -> None:
        self._inbox.append(item)
        if not isinstance(item, Closed):
            self._inbox_bytes += len(item)
            if len(self._inbox) >= MAX_QUEUED_MESSAGES or self._inbox_bytes >= MAX_QUEUED_BYTES:
                self._inbox_full = True
                self._update_reading()
        self._wake_receiver()

    def _wake_receiver(self) -> None:
        waiter = self._receiver
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _end(self, code: int, reason: str) -> None:
        """The connection is over for the app: `receive` returns Closed from now on."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self._inbox.append(Closed(code, reason))
            self._wake_receiver()

    # -- sending ---------------------------------------------------------------------

    def send_nowait(self, data: str | bytes) -> bool:
        """Send one message; False when the client reads slower than we write (see `drain`)."""
        if self.state is not State.OPEN or self._lost:
            raise WebSocketClosedError("the WebSocket is closed")
        ws = self._ws
        assert ws is not None
        if isinstance(data, str):
            frame = ws.send(TextMessage(data=data))
        else:
            frame = ws.send(BytesMessage(data=bytes(data)))
        self._write(frame)
        return not self._write_paused

    async def send(self, data: str | bytes) -> None:
        """Send one message, then wait while the transport's buffer is full."""
        if not self.send_nowait(data):
            await self.drain()

    async def drain(self) -> None:
        """Wait until the transport takes more (or the connection is gone)."""
        while self._write_paused and not self._lost:
            await self.writable()

    def writable(self) -> asyncio.Future[None]:
        """A future done once the transport takes more (or the connection is gone)."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        if self._write_paused and not self._lost:
            self._write_waiters.append(waiter)
        else:
            waiter.set_result(None)
        return waiter

    def ping(self, payload: bytes = b"") -> None:
        if self.state is not State.OPEN or self._lost:
            raise WebSocketClosedError("the WebSocket is closed")
        assert self._ws is not None
        self._write(self._ws.send(Ping(payload=payload)))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; before `accept`, refuse the handshake with 403."""
        if self.state is State.CONNECTING:
            if not self._lost:
                self.reject(403)
            else:
                self.state = State.REJECTED
            return
        if self.state is not State.OPEN:
            return
        if not 1000 <= code <= 4999:
            raise ValueError(f"invalid WebSocket close code {code}")
        self._send_close(code, reason)

    def _send_close(self, code: int, reason: str) -> None:
        ws = self._ws
        assert ws is not None
        self.state = State.CLOSING
        self._cancel_ping()
        if not self._lost and ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            self._write(ws.send(CloseConnection(code=code, reason=reason or None)))
        if self._lost:
            return
        timeout = self.options.close_timeout
        if timeout > 0:
            self._close_handle = self.loop.call_later(timeout, self._close_timed_out)
        else:
            self._close_transport()

    def _close_timed_out(self) -> None:
        self._close_handle = None
        logger.debug("no close frame from the client within %.1f s", self.options.close_timeout)
        transport = self.transport
        if transport is not None and not self._lost and transport.get_write_buffer_size():
            self.abort()  # not even our close frame has left: the client reads nothing
        else:
            self._close_transport()

    def _fail(self, code: int, reason: str) -> None:
        """Close for a reason of ours (too big, protocol error, no pong): the app learns at once."""
        self._failed = True
        self._end(code, reason)
        if self.state is State.OPEN:
            self._send_close(code, reason)

    def going_away(self, code: int = 1001, reason: str = "") -> None:
        """The worker stops: close an open connection, refuse a pending handshake."""
        if self.state is State.OPEN:
            self._send_close(code, reason)
        elif self.state is State.CONNECTING and not self._lost:
            self.state = State.REJECTED
            refuse(self.cycle, 503)

    def abort(self) -> None:
        """Drop the connection without a closing handshake."""
        if self.transport is not None and not self._lost:
            self.transport.abort()

    async def wait_closed(self) -> None:
        """Return once the transport is gone."""
        if self._lost:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self.loop.create_future()
        await asyncio.shield(self._closed_waiter)

    # -- Upgraded: transport events ------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state is State.CONNECTING:
            self._early += data
            if len(self._early) > MAX_EARLY_BYTES:
                self._update_reading()
        elif state is State.OPEN or state is State.CLOSING:
            try:
                self._feed(data)
            except Exception:  # a bug here must not leave the connection half-dead
                logger.exception("WebSocket connection failed")
                self._end(1011, "internal error")
                self.abort()

    def eof_received(self) -> None:
        # A WebSocket ends with a close frame; a half-close without one is abnormal.
        self._close_transport()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        _live.discard(self)
        self._cancel_ping()
        for handle in (self._close_handle, self._drop_handle):
            if handle is not None:
                handle.cancel()
        self._close_handle = self._drop_handle = None
        if self.state is not State.REJECTED:
            self._end(1006, "")
            if self.state is not State.CONNECTING:
                self.state = State.CLOSED
        self._early.clear()
        self._pending_pong = None
        self._wake_receiver()
        self._wake_writers()
        closed = self._closed_waiter
        if closed is not None and not closed.done():
            closed.set_result(None)

    def pause_writing(self) -> None:
        # The client reads slower than we write. Each ping it sends would queue
        # a pong behind what it does not read: read no more until it catches up.
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        payload, self._pending_pong = self._pending_pong, None
        ws = self._ws
        if payload is not None and ws is not None and ws.state is ConnectionState.OPEN:
            self._write(ws.send(Pong(payload=payload)))
        self._wake_writers()
        self._update_reading()

    def _wake_writers(self) -> None:
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- frames in -------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        ws = self._ws
        assert ws is not None
        if ws.state is ConnectionState.CLOSED:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                if not self._failed:
                    self._message_part(event.data, event.message_finished)
            elif isinstance(event, Ping):
                if ws.state is ConnectionState.OPEN:
                    if self._write_paused:
                        # Read before reading paused: only the latest ping is answered,
                        # once writing resumes (RFC 6455 section 5.5.3 allows it).
                        self._pending_pong = bytes(event.payload)
                    else:
                        self._write(ws.send(event.response()))
            elif isinstance(event, Pong):
                self._pong_received(event.payload)
            elif isinstance(event, CloseConnection):
                self._close_received(event)
                return

    def _message_part(self, data: str | bytes | bytearray, finished: bool) -> None:
        if isinstance(data, str):
            size = len(data) if data.isascii() else len(data.encode("utf-8"))
        else:
            size = len(data)
            data = bytes(data)
        self._part_bytes += size
        if self._part_bytes > self.options.max_size:
            self._parts.clear()
            self._part_bytes = 0
            self._fail(1009, "message too big")
            return
        if not finished:
            if data:
                self._parts.append(data)
            return
        parts = self._parts
        if parts:
            parts.append(data)
            message: str | bytes = "".join(parts) if isinstance(data, str) else b"".join(parts)
            parts.clear()
        else:
            message = data
        self._part_bytes = 0
        if self.state is State.OPEN:
            self._deliver(message)

    def _close_received(self, event: CloseConnection) -> None:
        ws = self._ws
        assert ws is not None
        if ws.state is ConnectionState.REMOTE_CLOSING:
            # The client begins the closing handshake: answer it, then end TCP
            # (RFC 6455 section 7.1.1: the server closes the connection first).
            self._write(ws.send(event.response()))
            self._end(int(event.code), event.reason or "")
            self.state = State.CLOSED
            self._close_transport()
        elif ws.state is ConnectionState.CLOSED:
            # The answer to our close frame.
            self._end(int(event.code), event.reason or "")
            self.state = State.CLOSED
            self._close_transport()
        else:
            # wsproto could not parse what came (its state is unchanged): fail with its code.
            logger.debug("WebSocket protocol error: %s", event.reason)
            self._fail(int(event.code), event.reason or "")
            self._close_transport()

    # -- keepalive pings ----------------------------------------------------------------

    def _schedule_ping(self) -> None:
        interval = self.options.ping_interval
        if interval > 0 and self.state is State.OPEN and not self._lost:
            self._ping_handle = self.loop.call_later(interval, self._send_ping)

    def _send_ping(self) -> None:
        self._ping_handle = None
        if self.state is not State.OPEN or self._lost:
            return
        assert self._ws is not None
        payload = self._ping_payload = os.urandom(4)
        self._write(self._ws.send(Ping(payload=payload)))
        timeout = self.options.ping_timeout
        if timeout > 0:
            self._pong_handle = self.loop.call_later(timeout, self._pong_timed_out)

    def _pong_received(self, payload: bytes) -> None:
        if self._ping_payload is None or bytes(payload) != self._ping_payload:
            return  # unsolicited, or for an earlier ping
        self._ping_payload = None
        if self._pong_handle is not None:
            self._pong_handle.cancel()
            self._pong_handle = None
        self._schedule_ping()

    def _pong_timed_out(self) -> None:
        self._pong_handle = None
        if self._inbox_full and self.state is State.OPEN:
            # The pong may be waiting behind messages the app has not read
            # yet: our own backpressure, no sign of a dead client. Wait on.
            self._pong_handle = self.loop.call_later(
                self.options.ping_timeout, self._pong_timed_out
            )
            return
        if self.state is State.OPEN:
            logger.info("closing a WebSocket: no pong within %.1f s", self.options.ping_timeout)
            self._fail(1011, "keepalive ping timeout")
            self._close_transport()

    def _cancel_ping(self) -> None:
        for handle in (self._ping_handle, self._pong_handle):
            if handle is not None:
                handle.cancel()
        self._ping_handle = self._pong_handle = None

    # -- transport -------------------------------------------------------------------

    def _write(self, data: bytes | bytearray) -> None:
        transport = self.transport
        if transport is not None and not self._lost and not transport.is_closing():
            transport.write(data)
            if not self._write_paused:
                self._check_high_water()

    def _check_high_water(self) -> None:
        """Catch up with a transport that paused writing before this session began.

        The transport calls `pause_writing` when its buffer first passes the
        high-water mark; one already paused (a response the client had not
        read when it asked for the upgrade) says nothing more until it
        resumes. Past the mark, the transport is paused, so `resume_writing`
        will come.
        """
        transport = self.transport
        high = self._high_water
        if (
            high is not None
            and transport is not None
            and not self._lost
            and transport.get_write_buffer_size() > high
        ):
            self._write_paused = True
            self._update_reading()

    def _close_transport(self) -> None:
        if self.transport is None or self._lost:
            return
        self.transport.close()  # once what is buffered is sent...
        if self._drop_handle is None:
            # ... which a client that reads nothing never lets happen.
            self._drop_handle = self.loop.call_later(FLUSH_TIMEOUT, self.abort)

    def _update_reading(self) -> None:
        """Read from the client unless something holds it back.

        Three things do: the app has not taken the messages queued for it;
        the client sent too much before its handshake was answered; the
        client does not read what we write (`pause_writing`), when each ping
        or close it sends would queue an answer in the transport's buffer.
        """
        transport = self.transport
        if transport is None or self._lost:
            return
        hold = (
            self._write_paused
            or self._inbox_full
            or (self.state is State.CONNECTING and len(self._early) > MAX_EARLY_BYTES)
        )
        if hold and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not hold and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()


def _high_water(transport: asyncio.Transport | None) -> int | None:
    """The transport's high-water mark for writing, if it tells."""
    if transport is None:
        return None
    try:
        return int(transport.get_write_buffer_limits()[1])
    except (AttributeError, NotImplementedError):
        return None
