"""HTTP/2 on one connection (RFC 9113), on the h2 library's state machine.

A connection begins as an HTTP/1.1 `HTTPProtocol`, which hands its bytes
here (as an upgraded protocol) once it speaks HTTP/2: when TLS chose `h2` by
ALPN, on the h2c preface (prior knowledge), or after `Upgrade: h2c`. Each
stream gets a `RequestCycle`, so native handlers, ASGI and WSGI answer
HTTP/2 through the same object as HTTP/1.1; the cycle's `conn` is a
`StreamFraming`, which checks a response as the core does and hands it to
the stream as fields and pieces.

h2 parses, validates and frames. What it leaves to its user is here:
- flow control tied to the app and the transport: a stream's window is given
  back as the app reads (a stream whose app has more than the cycle's buffer
  unread gets no more), and a response is framed only as the client's
  windows allow and the transport takes it (`Stream.writable` waits);
- the limits: concurrent streams (counting the handlers of streams the client
  reset, which still run: the rapid-reset attack), header list size, and a
  budget of resets and of control frames (PING, SETTINGS, PRIORITY, empty
  DATA) per interval, past which the connection gets GOAWAY
  (ENHANCE_YOUR_CALM);
- the deadlines: idle connection, a stream's silent body, --request-timeout,
  and a response stalled on a window the client never opens;
- retirement: on drain, GOAWAY with the last stream taken; every stream up to
  it is answered, and later ones are refused (REFUSED_STREAM), which a client
  may retry elsewhere (RFC 9113 6.8).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import deque
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import hpack
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from squall.http.core import _METHODS, _TOKEN, _UNSAFE_VALUE, DONE, Request, RequestError
from squall.http.cycle import RequestCycle
from squall.http.date import SERVER_NAME, http_date
from squall.http.protocol import DRAIN_IDLE, TIMEOUT_HEADERS
from squall.http.state import TICK, ServerState
from squall.http.stream_framing import CONNECTION_SPECIFIC, Fields, StreamFraming

logger: Final = logging.getLogger("squall.http")

#: The highest stream id: the first GOAWAY of a drain names it, refusing nothing.
MAX_STREAM_ID: Final = 2**31 - 1
#: The payload of the PING that tells when the client has seen that GOAWAY.
_DRAIN_PING: Final = b"squall\x00\x00"
#: The receive window of the whole connection: every stream's share fits in it.
CONNECTION_WINDOW: Final = 1 << 20
#: Above this much framed and unsent, a stream's app waits (`Stream.writable`).
STREAM_HIGH_WATER: Final = 64 * 1024
#: Above this much of all its streams' output framed and unsent, a connection
#: starts no new stream's app until it is down to half: as an HTTP/1.1
#: connection starts no pipelined request above its transport's high-water mark.
OUTPUT_HIGH_WATER: Final = 1 << 20
#: At most this much of the streams' output is framed per flush before the
#: transport is asked whether it takes more.
FLUSH_BUDGET: Final = 256 * 1024
#: h2 parses at most this much of a read before its events are acted on, so that a
#: flood costs at most this much past its budget, not a whole read (64 KiB and more).
RECEIVE_SLICE: Final = 16 * 1024
#: The interval over which the reset and control-frame budgets refill.
FLOOD_WINDOW: Final = 10.0
_DEFAULT_WINDOW: Final = 65535
_SETTINGS: Final = h2.settings.SettingCodes


@dataclass(frozen=True)
class HTTP2Options:
    """HTTP/2's switches and limits (the command line's --h2c and --h2-* flags)."""

    h2c: bool = False  # cleartext HTTP/2: prior knowledge and Upgrade: h2c
    max_concurrent_streams: int = 100
    #: Stream resets a client may send per FLOOD_WINDOW (the rapid-reset attack).
    max_resets: int = 200
    #: PING, SETTINGS, PRIORITY, unknown and empty DATA frames per FLOOD_WINDOW.
    max_control_frames: int = 1000
    #: A response may wait this long on a window the client keeps shut.
    send_timeout: float = 30.0

    def take_over(self, protocol: Any, data: bytes) -> None:
        """`protocol` (an HTTPProtocol) speaks HTTP/2 from now on, beginning with `data`."""
        connection = HTTP2Connection(protocol, self)
        connection.adopt()
        connection.h2.initiate_connection()
        connection.advertised()
        connection.start(data)

    def upgrade(self, protocol: Any, cycle: RequestCycle) -> bool:
        """`Upgrade: h2c` (RFC 7540 3.2): 101, then the request is stream 1's."""
        request = cycle.request
        if request is None or request.body_expected:
            return False  # answered in HTTP/1.1 (RFC 7540 3.2 allows it), body and all
        upgrade = request.header(b"upgrade")
        settings = [value for name, value in request.headers if name == b"http2-settings"]
        if upgrade is None or len(settings) != 1:
            return False
        if b"h2c" not in [token.strip().lower() for token in upgrade.split(b",")]:
            return False
        connection = HTTP2Connection(protocol, self)
        try:
            connection.h2.initiate_upgrade_connection(settings[0])
        except (h2.exceptions.ProtocolError, ValueError, TypeError):
            return False  # a malformed HTTP2-Settings: answered in HTTP/1.1
        connection.advertised()
        protocol.flush_output()
        transport = protocol.transport
        if transport is None:
            return False
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
        )
        connection.adopt()
        headers = [
            (name, value)
            for name, value in request.headers
            if name not in CONNECTION_SPECIFIC and name != b"http2-settings"
        ]
        upgraded = Request(
            request.method,
            request.target,
            "2",
            headers,
            True,
            path=request.path,
            query=request.query,
        )
        stream = connection.open_stream(1, upgraded)
        connection.start(protocol.conn.trailing_data, first=stream)
        return True


class Budget:
    """At most `capacity` events at once, refilled over `window` seconds: a flood empties it."""

    __slots__ = ("at", "capacity", "rate", "tokens")

    def __init__(self, capacity: int, window: float, now: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / window
        self.tokens = float(capacity)
        self.at = now

    def spend(self, now: float) -> bool:
        tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class HTTP2Connection:
    """One HTTP/2 connection: the protocol an `HTTPProtocol` hands its bytes to."""

    def __init__(self, owner: Any, options: HTTP2Options) -> None:
        self.owner = owner  # the HTTPProtocol: its transport, addresses and close
        state: ServerState = owner.state
        self.state = state
        self.loop = state.loop
        self.options = options
        self.client: tuple[str, int] | None = owner.client
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # `_request` checks a request's fields in one pass.
            validate_inbound_headers=False,
            normalize_inbound_headers=False,
            # StreamFraming checks every field an app hands over, and lower-cases names.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        conn = h2.connection.H2Connection(config)
        conn.decoder = _Decoder()  # a field block that does not decode: COMPRESSION_ERROR
        conn.incoming_buffer = _FrameBuffer(server=True)  # a SETTINGS ACK with a payload
        header_list = state.limits.max_header_bytes
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                _SETTINGS.MAX_CONCURRENT_STREAMS: options.max_concurrent_streams,
                _SETTINGS.MAX_HEADER_LIST_SIZE: header_list,
            },
        )
        conn.decoder.max_header_list_size = header_list  # h2 sets its own until an ACK
        self.h2 = conn
        self.streams: dict[int, Stream] = {}
        self.sending: dict[Stream, None] = {}  # streams with output to frame, in order
        self.output = 0  # bytes of all streams' output not yet framed
        #: Streams whose app waits for `output` to come down, with whether it begins
        #: (`App.begin`, the body to come) or handles (`App.handle`, the body whole).
        self.waiting: deque[tuple[Stream, bool]] = deque()
        self.taken = 0  # the highest stream acted on: what a GOAWAY names
        #: Handlers of streams the client reset that still run: they count
        #: against the concurrent streams, or reset-and-reopen starts handlers
        #: without bound (CVE-2023-44487).
        self.orphans = 0
        now = self.loop.time()
        self.resets = Budget(options.max_resets, FLOOD_WINDOW, now)
        self.control = Budget(options.max_control_frames, FLOOD_WINDOW, now)
        # Managed: the ticker's deadlines. `deadline` is the idle one; while a
        # stream has one of its own, `body_deadline` asks for a check each tick.
        self.deadline = 0.0
        self.body_deadline = 0.0
        self.request_deadline = 0.0
        self.closing = False
        self.write_paused = False
        self.holding = False
        self.last_stream = -1  # after our last GOAWAY: the last stream we answer
        self.draining = False  # the first GOAWAY of a drain is out (`shutdown`)
        self.client_done = False  # the client sent GOAWAY or its FIN
        self.preface_received = False  # the client's SETTINGS, its preface's end (RFC 9113 3.4)

    def advertised(self) -> None:
        """Our SETTINGS are framed: from now on h2 bounds no inbound streams itself.

        h2 takes a stream past SETTINGS_MAX_CONCURRENT_STREAMS for a connection
        error (GOAWAY PROTOCOL_ERROR: every stream in flight is lost), where RFC
        9113 5.1.2 makes it the stream's: `_request` refuses it (REFUSED_STREAM),
        counting the handlers of reset streams too. The SETTINGS sent still
        advertise --h2-max-concurrent-streams.
        """
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                _SETTINGS.MAX_CONCURRENT_STREAMS: 2**31 - 1,
                _SETTINGS.MAX_HEADER_LIST_SIZE: self.state.limits.max_header_bytes,
            },
        )

    # -- the switch -------------------------------------------------------------

    def adopt(self) -> None:
        """Take the owner's place: its bytes, and its place among the worker's connections."""
        owner = self.owner
        owner.upgraded = self
        owner.deadline = 0.0
        connections = self.state.connections
        connections.discard(owner)
        connections.add(self)
        metrics = self.state.metrics
        if metrics is not None:
            metrics.http2_connection()

    def start(self, data: bytes, first: Stream | None = None) -> None:
        h2conn = self.h2
        h2conn.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self.hold()
        if first is not None:
            first.receive_done = True
            first.cycle.body_complete = True
            self._run(first)
        if not self.streams:
            self._idle()
        if data:
            self.data_received(data)
        if self.state.draining:
            # Accepted while the worker drains (its queue, its last batch): the
            # connection is retired at once, its streams before the GOAWAY answered.
            self.shutdown()

    # -- bytes in ---------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if len(data) <= RECEIVE_SLICE:
            self._receive(data)
        else:
            for start in range(0, len(data), RECEIVE_SLICE):
                self._receive(data[start : start + RECEIVE_SLICE])
        if not self.closing:
            self.hold()

    def _receive(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            events: list[Any] = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has framed a GOAWAY with the error's code; it goes out, then the connection.
            logger.debug("HTTP/2 protocol error from %s: %s", self.client, exc)
            self._end(flush=True)
            return
        if not self.preface_received and events:
            if type(events[0]) is not h2.events.RemoteSettingsChanged:
                # RFC 9113 3.4: the preface ends with SETTINGS; anything else is a
                # connection error PROTOCOL_ERROR (h2 does not check).
                logger.debug("HTTP/2 client %s: no SETTINGS after the preface", self.client)
                self.h2.clear_outbound_data_buffer()
                self._goaway(ErrorCodes.PROTOCOL_ERROR)
                self._end(flush=False)
                return
            self.preface_received = True
        events_ = h2.events
        for event in events:
            kind = type(event)
            if kind is events_.DataReceived:
                self._data(event)
            elif kind is events_.RequestReceived:
                self._request(event)
            elif kind is events_.StreamEnded:
                self._ended(event.stream_id)
            elif kind is events_.WindowUpdated:
                pass  # the flush frames what the window lets through
            elif kind is events_.StreamReset:
                self._reset_by_client(event)
            elif kind is events_.ConnectionTerminated:
                self._terminated(event)
            elif kind is events_.TrailersReceived:
                self._trailers(event)
            elif kind is events_.PingAckReceived and event.ping_data == _DRAIN_PING:
                self._final_goaway()
            elif kind in _CONTROL_FRAMES and not self.control.spend(self.loop.time()):
                self._calm("too many control frames (PING, SETTINGS, PRIORITY)")
            if self.ended():
                return

    def _request(self, event: Any) -> None:
        stream_id: int = event.stream_id
        h2conn = self.h2
        if self.client_done or (self.last_stream >= 0 and stream_id > self.last_stream):
            # After our GOAWAY: not taken, so the client may retry it (RFC 9113 6.8).
            h2conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) + self.orphans >= self.options.max_concurrent_streams:
            h2conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        self.taken = max(self.taken, stream_id)
        try:
            request, error = _request(event.headers, not event.stream_ended, self.state)
        except Malformed as exc:
            logger.debug("HTTP/2 client %s, stream %d: %s", self.client, stream_id, exc)
            h2conn.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        stream = self.open_stream(stream_id, request)
        cycle = stream.cycle
        if error is not None:
            cycle.error = error
            stream.rejected = not event.stream_ended  # its body is not read
            stream.receive_done = bool(event.stream_ended)
            stream.refuse(cycle)
            return
        if event.stream_ended:
            stream.receive_done = True
            cycle.body_complete = True
            self._start(stream, False)
        else:
            stream.expect_body()
            self._start(stream, True)

    def open_stream(self, stream_id: int, request: Request | None) -> Stream:
        stream = Stream(self, stream_id, request)
        self.streams[stream_id] = stream
        if not self.draining:
            self.deadline = 0.0  # not idle (a drain's deadline is the PING's, and stays)
        state = self.state
        cycle = stream.cycle
        if request is not None:
            if state.forwarded is not None:
                state.forwarded(cycle)
            if state.timed:
                cycle.started_at = perf_counter()
                if state.metrics is not None:
                    state.metrics.request_started()
                    state.metrics.http2_stream()
        return stream

    def _data(self, event: Any) -> None:
        stream_id: int = event.stream_id
        size: int = event.flow_controlled_length
        data: bytes = event.data
        h2conn = self.h2
        stream = self.streams.get(stream_id)
        if not data and not event.stream_ended and not self.control.spend(self.loop.time()):
            self._calm("too many empty DATA frames")
            return
        if stream is None or stream.receive_done or stream.rejected:
            if size:
                h2conn.acknowledge_received_data(size, stream_id)  # nobody reads it
            return
        stream.received += len(data)
        if stream.received > self.state.limits.max_body_bytes:
            stream.too_large()
            if size:
                h2conn.increment_flow_control_window(size)
            return
        cycle = stream.cycle
        if data:
            cycle._feed(data)  # may pause the stream (`Stream.pause_reading`)
        if stream.body_deadline and data:  # an empty DATA frame is no body
            stream.body_arrived(len(data))
        if not size:
            return
        if stream.reading_paused:
            stream.withheld += size
            h2conn.increment_flow_control_window(size)  # the connection's share only
        else:
            h2conn.acknowledge_received_data(size, stream_id)

    def _ended(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.receive_done:
            return
        stream.receive_done = True
        stream.body_deadline = 0.0
        if stream.rejected:
            return  # refused: its body is not the app's
        cycle = stream.cycle
        cycle.body_complete = True
        cycle._wake_body_reader()
        if not cycle.started and cycle.error is None and not stream.waiting:
            self._run(stream)
        if stream.end_sent:
            self.forget(stream)

    def _trailers(self, event: Any) -> None:
        """Trailers are not handed to apps, but a malformed section is a stream error."""
        for name, _ in event.headers:
            if (
                name[:1] == b":"
                or _FIELD_NAME.fullmatch(name) is None
                or name in CONNECTION_SPECIFIC
            ):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.reset(ErrorCodes.PROTOCOL_ERROR)
                else:
                    self.h2.reset_stream(event.stream_id, ErrorCodes.PROTOCOL_ERROR)
                return

    def _reset_by_client(self, event: Any) -> None:
        if not self.resets.spend(self.loop.time()):
            self._calm("too many stream resets (rapid reset)")
            return
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.lost()

    def _terminated(self, event: Any) -> None:
        """The client's GOAWAY: it opens no more streams; those open are answered."""
        self.client_done = True
        if event.error_code or not self.streams:
            self._end(flush=True)
            return
        # h2 closes its state machine on any GOAWAY it receives (python-hyper/h2#1181)
        # and would refuse every response still owed; RFC 9113 6.8 has them complete.
        self.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN

    def _calm(self, what: str) -> None:
        logger.warning("HTTP/2 client %s: %s; GOAWAY (ENHANCE_YOUR_CALM)", self.client, what)
        self._goaway(ErrorCodes.ENHANCE_YOUR_CALM)
        self._end(flush=True)

    # -- running the app ----------------------------------------------------------

    def _start(self, stream: Stream, begins: bool) -> None:
        """Run the stream's app now, or once the connection's output has come down."""
        if self.output <= OUTPUT_HIGH_WATER and not self.write_paused and not self.waiting:
            if begins:
                self._begin(stream)
            else:
                self._run(stream)
            return
        # Its body, if any, waits in the client: the stream's window is withheld.
        stream.waiting = True
        stream.pause_reading()
        self.waiting.append((stream, begins))

    def _start_waiting(self) -> None:
        """Start the apps that waited, while the output stays under its high-water mark."""
        waiting = self.waiting
        while waiting and self.output <= OUTPUT_HIGH_WATER and not self.write_paused:
            stream, begins = waiting.popleft()
            if stream.gone:
                continue
            stream.waiting = False
            if not stream.cycle.reads_body:
                stream.resume_reading()
            if stream.rejected or stream.cycle.error is not None:
                continue
            if begins and not stream.receive_done:
                self._begin(stream)
            else:
                stream.cycle.body_complete = stream.receive_done
                self._run(stream)
            if self.closing:
                return

    def _run(self, stream: Stream) -> None:
        cycle = stream.cycle
        cycle.started = True
        state = self.state
        if state.concurrency_limit and not cycle.counted and not state.admit_request(cycle):
            return
        if state.request_timeout and not stream.request_deadline:
            stream.request_deadline = self.loop.time() + state.request_timeout
            self.watch()
        try:
            state.app.handle(cycle)
        except Exception:  # the interface adapters catch app errors; this is a last resort
            logger.exception("error while handling %r", cycle.request)
            stream.failed()

    def _begin(self, stream: Stream) -> None:
        """At the head of a request with a body: the app says whether it runs now."""
        cycle = stream.cycle
        state = self.state
        try:
            taken = state.begin_request(cycle)
        except Exception:  # the interface adapters catch app errors; this is a last resort
            logger.exception("error while handling %r", cycle.request)
            stream.failed()
            return
        if taken and state.request_timeout and not cycle.complete:
            stream.request_deadline = self.loop.time() + state.request_timeout
            self.watch()

    # -- bytes out ------------------------------------------------------------------

    def hold(self) -> None:
        """Frame and write what is due after what is ready in this pass of the loop."""
        if not self.holding and not self.closing:
            self.holding = True
            self.state.hold_output(self)

    def flush_output(self) -> None:
        self.holding = False
        transport = self.owner.transport
        if transport is None:
            return
        h2conn = self.h2
        more = False  # output the windows let through, past this flush's budget
        if self.sending and not self.write_paused and not self.closing:
            budget = FLUSH_BUDGET
            for stream in list(self.sending):
                budget -= stream.push(h2conn, budget)
                if budget <= 0:
                    transport.write(h2conn.data_to_send())
                    if self.paused():  # the write may have paused it
                        break
                    budget = FLUSH_BUDGET
            # A stream stopped by the budget, not by its window, goes on in the next
            # pass: no WINDOW_UPDATE (a client with a large window) may come to ask.
            more = any(stream.pending and not stream.stalled_at for stream in self.sending)
        data = h2conn.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)
        if self.waiting and self.output <= OUTPUT_HIGH_WATER // 2 and not self.write_paused:
            self.loop.call_soon(self._start_waiting)
        if more and not self.paused():
            self.hold()

    def ended(self) -> bool:
        return self.closing

    def paused(self) -> bool:
        return self.write_paused

    def pause_writing(self) -> None:
        # The client does not read: read no more of it either, so that what it
        # sends cannot make acknowledgements pile up here (PING, SETTINGS floods).
        self.write_paused = True
        self.owner.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.owner.resume_reading()
        for stream in list(self.streams.values()):
            stream.wake_writer()
        if self.sending:
            self.hold()

    # -- the end ----------------------------------------------------------------------

    def forget(self, stream: Stream) -> None:
        """The stream is done with (answered and read, or reset)."""
        if self.streams.pop(stream.stream_id, None) is None:
            return
        self.sending.pop(stream, None)
        if not self.streams:
            if self.last_stream >= 0 or self.client_done:
                self._end(flush=True)
            elif not self.draining:
                self._idle()

    def _idle(self) -> None:
        timeout = self.state.keepalive_timeout
        self.deadline = self.loop.time() + timeout if timeout > 0 else 0.0

    def watch(self) -> None:
        """A stream has a deadline: the ticker checks the streams from now on."""
        if not self.body_deadline:
            self.body_deadline = self.loop.time() + TICK

    def check_deadlines(self, now: float) -> None:
        if self.closing:
            return
        if self.deadline and now >= self.deadline:
            self.deadline = 0.0
            if self.draining:
                self._final_goaway()  # the PING's answer is waited for no longer
                return
            if not self.streams:
                self.shutdown()  # idle: GOAWAY, and the close
                return
        if self.body_deadline and now >= self.body_deadline:
            self.body_deadline = 0.0
            watched = False
            for stream in list(self.streams.values()):
                watched = stream.check(now) or watched
            if watched and not self.closing:
                self.body_deadline = now + TICK
            self.hold()

    def shutdown(self) -> None:
        """Drain in two steps (RFC 9113 6.8), so that no stream is refused.

        First a GOAWAY that refuses nothing yet, with a PING: the client opens
        no more streams, and once the PING comes back every stream it opened
        before has arrived. Then a second GOAWAY names the last of them; those
        up to it are answered, and the connection closes.
        """
        if self.closing or self.draining or self.last_stream >= 0:
            return
        self.draining = True
        self._write_goaway(MAX_STREAM_ID, ErrorCodes.NO_ERROR)
        self.h2.ping(_DRAIN_PING)
        self.hold()
        self.deadline = self.loop.time() + DRAIN_IDLE

    def _final_goaway(self) -> None:
        if self.last_stream < 0 and not self.closing:
            self._goaway(ErrorCodes.NO_ERROR)
            if not self.streams:
                self._end(flush=True)

    def _goaway(self, code: ErrorCodes) -> None:
        """The last GOAWAY: streams after the last one taken are refused from now on."""
        self.last_stream = self.taken
        self._write_goaway(self.last_stream, code)

    def _write_goaway(self, last_stream: int, code: ErrorCodes) -> None:
        """GOAWAY framed here, not by h2, which would then frame nothing more on any stream."""
        frame = GoAwayFrame(stream_id=0, last_stream_id=last_stream, error_code=code)
        self.flush_output()
        transport = self.owner.transport
        if transport is not None and not transport.is_closing():
            transport.write(frame.serialize())

    def close(self) -> None:
        """Close now (a broken transport): GOAWAY if none went, and what is framed goes first."""
        if not self.closing:
            if self.last_stream < 0:
                self._goaway(ErrorCodes.NO_ERROR)
            self._end(flush=True)

    def _end(self, flush: bool) -> None:
        if self.closing:
            return
        self.closing = True
        self.deadline = self.body_deadline = 0.0
        transport = self.owner.transport
        if flush and transport is not None and not transport.is_closing():
            data = self.h2.data_to_send()
            if data:
                transport.write(data)
        self.owner.close()

    def eof_received(self) -> None:
        self.client_done = True
        if not self.streams:
            self._end(flush=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.state.remove_connection(self)
        for stream in list(self.streams.values()):
            stream.lost()
        self.streams.clear()
        self.sending.clear()


class _CompressionError(h2.exceptions.ProtocolError):
    """A field block that does not decode: RFC 9113 4.3's COMPRESSION_ERROR."""

    error_code = ErrorCodes.COMPRESSION_ERROR


class _Decoder(hpack.Decoder):
    """h2's decoder, whose decoding errors carry COMPRESSION_ERROR (h2 says PROTOCOL_ERROR)."""

    def decode(self, data: bytes, raw: bool = False) -> Any:
        try:
            return super().decode(data, raw)
        except hpack.OversizedHeaderListError:
            raise  # h2's own answer to a header list too long
        except (hpack.HPACKError, IndexError, TypeError, UnicodeDecodeError) as exc:
            raise _CompressionError(f"field block does not decode: {exc}") from exc


class _FrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer, with RFC 9113 6.5's FRAME_SIZE_ERROR for a SETTINGS ACK with a
    payload (hyperframe calls it invalid data, which h2 answers PROTOCOL_ERROR)."""

    def __next__(self) -> Any:
        head = getattr(self, "_data", b"")[:5]
        if len(head) == 5 and head[3] == 0x4 and head[4] & 0x1 and any(head[:3]):
            raise h2.exceptions.FrameDataMissingError("SETTINGS ACK with a payload")
        return super().__next__()


_CONTROL_FRAMES: Final = frozenset(
    {
        h2.events.PingReceived,
        h2.events.RemoteSettingsChanged,
        h2.events.PriorityUpdated,
        h2.events.UnknownFrameReceived,
        h2.events.PingAckReceived,
    }
)


class Stream:
    """One stream: the `Connection` its `RequestCycle` answers through, and the
    sink of its framing, which holds the response until the windows let it go."""

    def __init__(self, connection: HTTP2Connection, stream_id: int, request: Request | None):
        self.connection = connection
        self.stream_id = stream_id
        self.loop = connection.loop
        self.client = connection.client
        self.scheme: str = connection.owner.scheme
        self.conn = StreamFraming(self)
        self.pending: deque[bytes | memoryview] = deque()
        self.pending_size = 0
        self.end_queued = False
        self.end_sent = False
        self.receive_done = False
        #: Its request was refused before its body ended (413, 408): the rest is not
        #: read, and the stream is reset (NO_ERROR) once the refusal is out.
        self.rejected = False
        self.waiting = False  # its app waits for the connection's output to come down
        self.gone = False  # reset, by either side, or the connection lost
        self.reading_paused = False
        self.withheld = 0  # window not given back while paused
        self.received = 0
        self.body_deadline = 0.0
        self.body_began = 0.0
        self.body_bytes = 0
        self.body_slow = False
        self.request_deadline = 0.0
        self.stalled_at = 0.0
        self._writable: asyncio.Future[None] | None = None
        self.cycle = RequestCycle(self, request, self.conn, self.client, self.scheme)

    # -- what the cycle asks -------------------------------------------------------

    @property
    def server(self) -> tuple[str, int] | None:
        server: tuple[str, int] | None = self.connection.owner.server
        return server

    @property
    def transport(self) -> Any:
        """This stream, as far as a transport's questions go (WSGI asks its buffer size)."""
        return None if self.gone else self

    def get_write_buffer_size(self) -> int:
        transport = self.connection.owner.transport
        size = transport.get_write_buffer_size() if transport is not None else 0
        return self.pending_size + int(size)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self.connection.owner.transport
        return default if transport is None else transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.gone

    def write(self, data: bytes) -> None:
        self.connection.hold()  # the framing gave the stream its output, not bytes

    def write_now(self, data: bytes) -> None:
        self.connection.flush_output()

    def flush_output(self) -> None:
        self.connection.flush_output()

    async def writable(self) -> None:
        """Return once the stream's output is under its high-water mark and the transport takes more."""
        connection = self.connection
        while not self.gone and (self.pending_size > STREAM_HIGH_WATER or connection.write_paused):
            waiter = self._writable
            if waiter is None or waiter.done():
                waiter = self._writable = self.loop.create_future()
            await asyncio.shield(waiter)

    def wake_writer(self) -> None:
        waiter = self._writable
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_reading(self) -> None:
        self.reading_paused = True
        # The client cannot send while its window is withheld: no silence of its own.
        self.body_deadline = 0.0

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            if not self.receive_done and not self.gone:
                self.expect_body()  # it may send again: its silence counts from now
            withheld, self.withheld = self.withheld, 0
            if withheld and not self.receive_done and not self.gone:
                try:
                    self.connection.h2.increment_flow_control_window(withheld, self.stream_id)
                except h2.exceptions.ProtocolError:
                    return  # the stream closed meanwhile
                self.connection.hold()

    def close(self) -> None:
        """The app gave up mid-response: the client learns it from the reset."""
        self.reset(ErrorCodes.INTERNAL_ERROR)

    def cycle_done(self, cycle: RequestCycle) -> None:
        state = self.connection.state
        state.requests_served += 1
        self.request_deadline = 0.0
        self._uncount(cycle)
        if state.requests_served == state.request_quota and state.on_quota is not None:
            state.on_quota()
        if state.timed:
            state.report(cycle)

    def _uncount(self, cycle: RequestCycle) -> None:
        """Out of --limit-concurrency's count, once, however the request ends."""
        if cycle.counted:
            cycle.counted = False
            self.connection.state.in_flight -= 1

    def refuse(self, cycle: RequestCycle) -> None:
        """Answer `cycle.error` unless a response began; the stream ends, the connection goes on."""
        error = cycle.error
        assert error is not None
        if not cycle.response_started and not self.gone:
            cycle.response_started = True
            cycle.status = error.status
            body = f"{error.reason}\n".encode("latin-1", "replace")
            self.conn.our_state = DONE
            self.send_head(_error_fields(error.status, len(body)), False)
            self.send_body(body)
            self.send_end()
        elif not self.end_queued:
            self.reset(ErrorCodes.INTERNAL_ERROR)
        cycle.complete = True
        self._uncount(cycle)
        self.connection.state.report(cycle)

    def failed(self) -> None:
        cycle = self.cycle
        if not cycle.response_started:
            cycle.error = RequestError(500, "Internal Server Error")
            self.refuse(cycle)
        else:
            self.reset(ErrorCodes.INTERNAL_ERROR)

    # -- the framing's sink ----------------------------------------------------------

    def send_head(self, fields: Fields, end_stream: bool) -> None:
        if self.gone:
            return
        connection = self.connection
        try:
            connection.h2.send_headers(self.stream_id, fields, end_stream=end_stream)
        except h2.exceptions.ProtocolError:
            self.lost()
            return
        connection.hold()
        if end_stream:
            self._sent_end()

    def send_body(self, data: bytes) -> None:
        if self.gone:
            return
        self.pending.append(data)
        self.pending_size += len(data)
        self.connection.output += len(data)
        self.connection.sending[self] = None
        self.connection.hold()

    def send_end(self) -> None:
        if self.gone:
            return
        self.end_queued = True
        self.connection.sending[self] = None
        self.connection.hold()

    def cut(self) -> None:
        self.reset(ErrorCodes.INTERNAL_ERROR)

    def push(self, h2conn: h2.connection.H2Connection, budget: int) -> int:
        """Frame what the windows let through (at most about `budget`); the bytes framed."""
        sent = 0
        pending = self.pending
        stream_id = self.stream_id
        ended = False
        try:
            while pending and sent < budget:
                window = h2conn.local_flow_control_window(stream_id)
                if window <= 0:
                    if not self.stalled_at:
                        self.stalled_at = self.loop.time()
                        self.connection.watch()
                    return sent
                size = min(window, h2conn.max_outbound_frame_size)
                piece = pending[0]
                if len(piece) > size:
                    # A view: slicing a big answer frame by frame copies nothing.
                    view = piece if type(piece) is memoryview else memoryview(piece)
                    pending[0] = view[size:]
                    piece = view[:size]
                else:
                    pending.popleft()
                self.pending_size -= len(piece)
                self.connection.output -= len(piece)
                sent += len(piece)
                ended = self.end_queued and not pending
                h2conn.send_data(stream_id, piece, end_stream=ended)
            self.stalled_at = 0.0
            if self.pending_size <= STREAM_HIGH_WATER:
                self.wake_writer()
            if pending:
                return sent
            self.connection.sending.pop(self, None)
            if self.end_queued and not self.end_sent:
                if not ended:
                    h2conn.end_stream(stream_id)  # the body went out before its end was known
                self._sent_end()
        except h2.exceptions.ProtocolError:  # the stream closed under us (a reset)
            self.lost()
        return sent

    def _sent_end(self) -> None:
        self.end_sent = True
        if self.receive_done:
            self.connection.forget(self)
        else:
            # Answered before the client finished its body: it may stop sending
            # (RFC 9113 8.1), told so without error.
            self.reset(ErrorCodes.NO_ERROR)

    # -- its end ---------------------------------------------------------------------

    def expect_body(self) -> None:
        state = self.connection.state
        if state.body_timeout > 0:
            self.body_began = self.loop.time()
            self.body_bytes = 0
            self.body_slow = False
            self.body_deadline = self.body_began + state.body_timeout
            self.connection.watch()

    def body_arrived(self, size: int) -> None:
        """The next piece is due within --body-timeout, and, once that has passed since
        the body began, the body keeps up --body-min-rate on average (as on HTTP/1.1)."""
        state = self.connection.state
        self.body_bytes += size
        deadline = self.loop.time() + state.body_timeout
        rate = state.body_min_rate
        earned = self.body_began + state.body_timeout + self.body_bytes / rate if rate else deadline
        self.body_slow = earned < deadline
        self.body_deadline = min(deadline, earned)

    def too_large(self) -> None:
        cycle = self.cycle
        self.rejected = True
        cycle._disconnect()
        cycle.error = RequestError(413, "Content Too Large")
        self.refuse(cycle)

    def reset(self, code: ErrorCodes) -> None:
        if self.gone:
            return
        connection = self.connection
        with contextlib.suppress(h2.exceptions.ProtocolError):  # closed already
            connection.h2.reset_stream(self.stream_id, code)
        self.lost()
        connection.hold()

    def lost(self) -> None:
        """The stream is gone, reset by either side or with the connection."""
        if self.gone:
            return
        self.gone = True
        connection = self.connection
        self.conn.close()
        self.pending.clear()
        connection.output -= self.pending_size
        self.pending_size = 0
        cycle = self.cycle
        state = connection.state
        if state.metrics is not None and cycle.request is not None and not cycle.reported:
            cycle.reported = True
            state.metrics.request_finished(cycle)  # unanswered: its status stays 0
        self._uncount(cycle)
        task = cycle.task
        if task is not None and not task.done() and not cycle.complete:
            connection.orphans += 1
            task.add_done_callback(self._orphan_ended)
        cycle._disconnect()
        self.wake_writer()
        connection.forget(self)

    def _orphan_ended(self, task: Any) -> None:
        self.connection.orphans -= 1

    def check(self, now: float) -> bool:
        """Act on a deadline that has passed; whether any remains."""
        if self.gone:
            return False
        if self.request_deadline and now >= self.request_deadline:
            self.request_deadline = 0.0
            self._request_timed_out()
            return False
        if self.body_deadline and now >= self.body_deadline:
            self.body_deadline = 0.0
            cycle = self.cycle
            slow = self.body_slow
            cycle.error = RequestError(
                408, "request body too slow" if slow else "request body timeout"
            )
            self.rejected = True
            cycle._disconnect()
            self.refuse(cycle)
            return False
        send_timeout = self.connection.options.send_timeout
        if self.stalled_at and send_timeout > 0 and now - self.stalled_at >= send_timeout:
            logger.info(
                "HTTP/2 stream %d to %s: the client's window stayed shut for %g s; reset",
                self.stream_id,
                self.client,
                send_timeout,
            )
            self.reset(ErrorCodes.CANCEL)
            return False
        return bool(self.request_deadline or self.body_deadline or self.stalled_at)

    def _request_timed_out(self) -> None:
        cycle = self.cycle
        state = self.connection.state
        if state.metrics is not None:
            state.metrics.request_timed_out()
        request = cycle.request
        what = f"{request.method} {request.target.decode('latin-1')}" if request else "a request"
        logger.warning(
            "%s still running after %g s (--request-timeout): %s",
            what,
            state.request_timeout,
            "stream reset" if cycle.response_started else "answered 504",
        )
        if cycle.response_started:
            cycle.abort()
        else:
            cycle.respond(504, TIMEOUT_HEADERS, b"Gateway Timeout\n")
        if cycle.task is not None:
            cycle.task.cancel()


def _error_fields(status: int, length: int) -> Fields:
    return [
        (b":status", b"%d" % status),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % length),
        (b"date", http_date()),
        (b"server", SERVER_NAME),
    ]


class Malformed(Exception):
    """A request RFC 9113 8.1.1 calls malformed: a stream error PROTOCOL_ERROR."""


#: A field name in HTTP/2: a token in lower case (RFC 9113 8.2.1).
_FIELD_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_WHITESPACE: Final = b" \t"


def _request(
    fields: list[tuple[bytes, bytes]], body_expected: bool, state: ServerState
) -> tuple[Request | None, RequestError | None]:
    """The request of a stream's HEADERS, checked in one pass (h2's own checks are off:
    they cost a sixth of a request). Malformed (RFC 9113 8.2, 8.3): `Malformed`; a
    request squall refuses in HTTP terms (431, 414, 501): a RequestError."""
    limits = state.limits
    method = path = authority = scheme = None
    headers: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    host: bytes | None = None
    expect_continue = False
    regular = False  # a regular field has come: no pseudo-header may follow
    for name, value in fields:
        if _UNSAFE_VALUE.search(value) is not None or (
            value and (value[0] in _WHITESPACE or value[-1] in _WHITESPACE)
        ):
            raise Malformed(f"invalid value of {name!r}")
        if name[:1] == b":":
            if regular:
                raise Malformed(f"{name!r} after a regular field")
            if name == b":method" and method is None:
                method = value
            elif name == b":path" and path is None:
                path = value
            elif name == b":authority" and authority is None:
                authority = value
            elif name == b":scheme" and scheme is None:
                scheme = value
            else:
                raise Malformed(f"unknown or repeated pseudo-header {name!r}")
            continue
        regular = True
        if _FIELD_NAME.fullmatch(name) is None:
            raise Malformed(f"invalid field name {name!r}")
        if name in CONNECTION_SPECIFIC:
            raise Malformed(f"connection-specific field {name!r}")
        if name == b"cookie":
            cookies.append(value)  # RFC 9113 8.2.3: crumbs, joined for HTTP/1.1 apps
            continue
        if name == b"host":
            host = value
        elif name == b"te":
            if value.lower() != b"trailers":
                raise Malformed("TE other than trailers")
        elif name == b"expect":
            expect_continue = value.lower() == b"100-continue"
        headers.append((name, value))
    if method is None:
        raise Malformed("no :method")
    if method == b"CONNECT":
        return None, RequestError(501, "CONNECT is not supported")
    if scheme is None or not path:
        raise Malformed("no :scheme or :path")
    if authority is not None and host is not None and authority != host:
        raise Malformed("Host differs from :authority")  # RFC 9113 8.3.1
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if len(headers) > limits.max_header_count:
        return None, RequestError(431, "too many header fields")
    if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
        return None, RequestError(400, "invalid :path")
    if len(path) > limits.max_target_bytes:
        return None, RequestError(414, "URI Too Long")
    if authority and host is None:
        headers.insert(0, (b"host", authority))
    known = _METHODS.get(method)
    if known is None:
        if _TOKEN.fullmatch(method) is None:
            raise Malformed("invalid :method")
        known = method.decode("ascii")
    request = Request(
        known,
        path,
        "2",
        headers,
        True,
        body_expected=body_expected,
        expect_continue=expect_continue and body_expected,
    )
    return request, None
