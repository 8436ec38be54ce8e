"""`HTTPServer`: the seed's server object. Bind, fork, then serve on the worker's loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from squall import process, websocket
from squall.accesslog import make_access_log
from squall.appload import detect_interface
from squall.config import Config
from squall.errors import UsageError
from squall.http.accept import Acceptor, Acceptors, automatic_limit
from squall.http.core import Limits
from squall.http.cycle import App
from squall.http.protocol import ProtocolMaker
from squall.http.proxy_accept import AllowList, ProxyAcceptor
from squall.http.proxy_headers import make_forwarded
from squall.http.state import HTTP2Switch, Metrics, ServerState
from squall.process import WorkerMessage
from squall.sockets import bind_sockets, default_backlog, describe_socket
from squall.websocket import WebSocketOptions

logger = logging.getLogger("squall.server")

#: Servers given sockets before a loop ran: `squall.run_forever` serves them.
_waiting: list[HTTPServer] = []


def take_waiting() -> list[HTTPServer]:
    """The servers waiting for a loop, handed over once."""
    waiting = list(_waiting)
    _waiting.clear()
    return waiting


def import_serving_modules() -> None:
    """Import what a server imports late; called before the first fork, never after.

    A worker forked later (a restart, a reload, a scale-up) then starts
    serving without importing them: about 20 ms of each restart here. The
    workers also share those pages with the supervisor instead of each
    holding its own copy.
    """
    import squall.asgi
    import squall.tls
    import squall.wsgi  # noqa: F401

    with contextlib.suppress(ImportError):  # the stock asyncio loop serves without it
        import uvloop  # noqa: F401


class HTTPServer:
    """Serves one app on any number of listening sockets.

    `bind` (any number of times) then `start(n)`: binds in this process, forks
    n workers, and each worker serves the same sockets. The event loop is
    made after the fork, by `squall.run_forever()`, never before.
    """

    def __init__(
        self,
        app: Any,
        config: Config | None = None,
        *,
        limits: Limits | None = None,
        ssl_context: ssl.SSLContext | None = None,
        metrics: Metrics | None = None,
        on_closed: Callable[[int], object] | None = None,
        **settings: Any,
    ) -> None:
        """`config`: squall's settings, those of the command line (`squall.config.Config`);
        keyword arguments set single ones by name (`keepalive_timeout=5.0`). The
        defaults are the command line's: they live in `Config` only."""
        config = config or Config()
        if settings:
            config = replace(config, **settings)
        self.app = app
        self.max_requests = config.max_requests
        self.limit_concurrency = config.limit_concurrency
        # Open connections per worker past which it accepts none (0: what ulimit -n allows).
        self.max_connections = config.max_connections
        self.request_timeout = config.request_timeout
        self.threads = config.threads
        self.header_timeout = config.header_timeout
        self.body_timeout = config.body_timeout
        self.body_min_rate = config.body_min_rate
        self.access_log = config.access_log
        self.forwarded_allow_ips = config.forwarded_allow_ips
        self.proxy_protocol = config.proxy_protocol
        # Whose PROXY header is read (a bad entry is a UsageError here).
        self.proxy_allow = AllowList(config.proxy_allow_from) if config.proxy_protocol else None
        self.ssl_context = ssl_context
        self.websocket = WebSocketOptions(
            config.ws_max_size, config.ws_ping_interval, config.ws_ping_timeout
        )
        self.metrics = metrics
        self.on_closed = on_closed  # told how many connections stay open after each close
        self.interface = config.interface
        self.keepalive_timeout = config.keepalive_timeout
        self.limits = limits or config.limits()
        self.root_path = config.root_path
        # HTTP/2 where TLS's ALPN may choose it (unless --no-http2), and in cleartext with --h2c.
        self.http2 = config.h2c or (ssl_context is not None and not config.no_http2)
        self.h2c = config.h2c
        self.h2_limits = (
            config.h2_max_concurrent_streams,
            config.h2_max_resets,
            config.h2_max_control_frames,
        )
        self.state: ServerState | None = None
        self._adapter: App | None = None
        self._bound: list[socket.socket] = []
        self._sockets: list[socket.socket] = []
        # One per listening socket, made when serving starts.
        self._acceptors = Acceptors(connections=(), limit=0)
        self._backlog: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the seed's API -----------------------------------------------------

    def bind(
        self,
        port: int,
        address: str | None = None,
        family: socket.AddressFamily = socket.AF_UNSPEC,
        backlog: int | None = None,
        flags: int | None = None,
        reuse_port: bool = False,
    ) -> None:
        """Bind now; serving starts with `start`. May be called several times."""
        self._bound.extend(bind_sockets(port, address, family, backlog, flags, reuse_port))
        if backlog is not None:
            self._backlog = backlog

    def start(self, num_processes: int | None = 1, max_restarts: int | None = None) -> None:
        """Fork `num_processes` workers (None or <= 0: one per CPU); 1 forks nothing."""
        if num_processes != 1:
            from squall.fork import fork_processes

            import_serving_modules()  # before the fork: a restarted worker imports nothing
            fork_processes(num_processes, max_restarts)
        sockets, self._bound = self._bound, []
        self.add_sockets(sockets)

    def listen(self, port: int, address: str | None = None, **kwargs: Any) -> None:
        """`bind` + `start(1)`: serve in this process."""
        self.add_sockets(bind_sockets(port, address, **kwargs))

    def add_sockets(self, sockets: list[socket.socket]) -> None:
        """Serve on these listening sockets: now if a loop runs, else from `run_forever`."""
        self._sockets.extend(sockets)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if self not in _waiting:
                _waiting.append(self)
        else:
            task = loop.create_task(self._serve_now(sockets))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def add_socket(self, sock: socket.socket) -> None:
        self.add_sockets([sock])

    # -- serving, on the worker's loop ----------------------------------------------

    async def _serve_now(self, sockets: list[socket.socket]) -> None:
        if self.state is None:
            await self.startup()
        await self.start_serving(sockets)

    async def startup(self) -> None:
        """Make the app interface for this worker and run the app's startup."""
        from squall.asgi import ASGIAdapter

        access_log = make_access_log(self.access_log)
        forwarded = make_forwarded(self.forwarded_allow_ips)
        interface = self.interface
        if interface == "auto":
            interface = detect_interface(self.app)
        adapter: App
        if interface == "squall":
            adapter = self.app
            self.app.settings.setdefault("websocket_options", self.websocket)
        elif interface == "asgi":
            adapter = ASGIAdapter(self.app, self.root_path, process.task_id(), self.websocket)
            await adapter.lifespan.startup()
        elif interface == "wsgi":
            from squall.wsgi import WSGIAdapter

            adapter = WSGIAdapter(self.app, self.root_path, process.task_id(), self.threads)
        else:
            raise UsageError(f"unknown interface {interface!r}")
        self._adapter = adapter
        self.state = ServerState(
            adapter,
            self.limits,
            self.keepalive_timeout,
            request_quota=self.max_requests,
            on_quota=lambda: process.notify(WorkerMessage.RETIRE),
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout,
            access_log=access_log,
            forwarded=forwarded,
            metrics=self.metrics,
            concurrency_limit=self.limit_concurrency,
            request_timeout=self.request_timeout,
            body_min_rate=self.body_min_rate,
            http2=self._http2_options(),
        )
        self._acceptors = Acceptors(self.state.connections, limit=0)
        if self.on_closed is not None:
            self._acceptors.on_closed = self.on_closed
            self.state.on_closed = self._acceptors.report_load

    def _http2_options(self) -> HTTP2Switch | None:
        if not self.http2:
            return None
        from squall.http.http2 import HTTP2Options

        streams, resets, control = self.h2_limits
        return HTTP2Options(
            h2c=self.h2c,
            max_concurrent_streams=streams,
            max_resets=resets,
            max_control_frames=control,
            send_timeout=self.body_timeout,
        )

    def pending_connections(self) -> int:
        """Accepted connections not served yet: their PROXY header (or TLS handshake) is awaited."""
        return self._acceptors.pending()

    async def start_serving(self, sockets: list[socket.socket] | None = None) -> None:
        state = self.state
        assert state is not None, "startup() first"
        backlog = self._backlog or default_backlog()

        tls = self.ssl_context
        scheme = "https" if tls is not None else "http"
        serving: dict[str, None] = {}  # in order, once each (a slot's socket and the overflow)
        self._acceptors.limit = self.max_connections or automatic_limit()
        state.room_freed = self._acceptors.room_freed
        for sock in self._sockets if sockets is None else sockets:
            self._accept_on(sock, scheme, backlog)
            serving[describe_socket(sock)] = None
        logger.debug("serving on %s", ", ".join(serving))
        if state.on_closed is not None:
            state.on_closed(len(state.connections))  # not what a predecessor left

    def _accept_on(self, sock: socket.socket, scheme: str, backlog: int) -> None:
        """Accept on `sock` here (with the PROXY protocol: allowed peers' headers first)."""
        state = self.state
        assert state is not None
        make_protocol = ProtocolMaker(state, scheme, _specific_address(sock))
        group = self._acceptors

        if self.proxy_allow is None:
            acceptor = Acceptor(
                sock,
                make_protocol,
                ssl_context=self.ssl_context,
                backlog=backlog,
                has_room=group.has_room,
                limit=group.limit,
                limit_given=bool(self.max_connections),
            )
            acceptor.start()
            group.members.append(acceptor)
            return

        metrics = state.metrics

        def opened() -> None:
            if metrics is not None:
                metrics.connection_opened()

        def closed(handed_over: bool) -> None:
            if metrics is not None:
                metrics.connection_closed()  # handed over, the protocol counts it from now on
            if not handed_over and state.on_closed is not None:
                state.on_closed(len(state.connections))

        acceptor = ProxyAcceptor(
            sock,
            make_protocol,
            allow=self.proxy_allow,
            ssl_context=self.ssl_context,
            header_timeout=self.header_timeout,
            backlog=backlog,
            has_room=group.has_room,
            limit=group.limit,
            limit_given=bool(self.max_connections),
            on_open=opened,
            on_close=closed,
        )
        acceptor.start()
        group.members.append(acceptor)

    def stop_accepting(self) -> None:
        """Close this process's listeners; queued connections go to the other workers."""
        for acceptor in self._acceptors.members:
            acceptor.close()  # the connections whose header is coming stay, and are served
        if self.state is not None:
            self.state.on_closed = None  # a successor speaks for this worker's sockets

    async def drain(self, timeout: float) -> bool:
        """Finish the requests in flight, close every connection; False on timeout."""
        state = self.state
        if state is None:
            return True
        state.drain()
        websocket.close_all()  # 1001 (going away) to open WebSockets; new handshakes get 503
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (state.connections or self.pending_connections()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        # Upgraded connections are not in state.connections: they close by their own handshake.
        closed = await websocket.wait_all_closed(max(0.0, deadline - loop.time()))
        for acceptor in self._acceptors.members:
            acceptor.abort()
        return not state.connections and closed

    async def shutdown(self) -> None:
        """The app's shutdown (ASGI lifespan)."""
        if self.state is not None:
            self.state.stop_ticker()
        lifespan = getattr(self._adapter, "lifespan", None)
        if lifespan is not None:
            await lifespan.shutdown()


def _specific_address(sock: socket.socket) -> tuple[str, int] | None:
    """The address every connection to `sock` arrives at, if it has one (not 0.0.0.0 or ::)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    address = sock.getsockname()
    host = str(address[0])
    if host in ("0.0.0.0", "::") or host.startswith("::ffff:0.0.0.0"):
        return None
    return (host, int(address[1]))
