"""ASGI 3 on squall's request cycle: the `http` scope and `lifespan`.

The response head is held back until the first body message, so a response
whose body comes in one message leaves in one write with a Content-Length.

A WebSocket handshake becomes a `websocket` scope in `squall.websocket.asgi`;
both scopes come from one builder (`squall.asgi_scope`), and every ASGI type
from `squall.asgi_types`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, Literal, TypedDict, cast

from mypy_extensions import mypyc_attr

from squall.asgi_scope import connection_scope
from squall.asgi_types import (
    ASGI_VERSION,
    ASGIApp,
    Headers,
    HTTPDisconnectEvent,
    HTTPRequestEvent,
    HTTPScope,
    LifespanScope,
    LifespanShutdownEvent,
    LifespanStartupEvent,
    Message,
    Receive,
    Scope,
    Send,
    SendEvent,
)
from squall.eager import start_task
from squall.http.core import ResponseError
from squall.http.cycle import RequestCycle, Upgraded
from squall.websocket.asgi import upgrade_asgi
from squall.websocket.session import WebSocketOptions

# The ASGI aliases are named here too: apps have imported them from this module.
__all__ = [
    "ASGI_VERSION",
    "ASGIAdapter",
    "ASGIApp",
    "ClientDisconnected",
    "Lifespan",
    "LifespanFailed",
    "Message",
    "Receive",
    "Scope",
    "Send",
]

logger: Final = logging.getLogger("squall.asgi")


@mypyc_attr(native_class=False)
class ClientDisconnected(OSError):
    """`send` was called after the client closed the connection (ASGI HTTP spec 2.4)."""


class ASGIAdapter:
    """Serves an ASGI 3 app; each request runs as a task, from its head on."""

    def __init__(
        self,
        app: ASGIApp,
        root_path: str = "",
        worker_id: int | None = None,
        websocket: WebSocketOptions | None = None,
    ) -> None:
        self.app = app
        self.root_path = root_path
        self.websocket = websocket or WebSocketOptions()
        self.state: dict[str, Any] = {"worker_id": worker_id}
        self.lifespan = Lifespan(app, self.state)
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def begin(self, cycle: RequestCycle) -> bool:
        """The app reads the body through `receive` as it comes."""
        self.handle(cycle)
        return True

    def handle(self, cycle: RequestCycle) -> None:
        scope = connection_scope(cycle, self.root_path, self.state)
        exchange = _Exchange(cycle)
        # Named: an unnamed task formats a fresh "Task-N" string.
        task = start_task(self._run(scope, exchange), cycle.loop, "asgi-http")
        if task is None:
            return  # answered without waiting
        # `_run` drops the reference as it ends: cheaper than a done callback,
        # which costs the loop one more callback per request.
        exchange.task = cycle.task = task
        self._tasks.add(task)

    def upgrade(self, cycle: RequestCycle, trailing: bytes) -> Upgraded | None:
        """A WebSocket handshake becomes a `websocket` scope; any other Upgrade stays HTTP."""
        return upgrade_asgi(self.app, cycle, trailing, self.websocket, self.root_path, self.state)

    async def _run(self, scope: HTTPScope, exchange: _Exchange) -> None:
        cycle = exchange.cycle
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            if cycle.disconnected or _caused_by(exc, ClientDisconnected):
                # Our send() raised ClientDisconnected, which frameworks may wrap
                # in their own exception: a client leaving is not an app error.
                logger.debug("client disconnected during %s %s", scope["method"], scope["path"])
            elif _caused_by(exc, ResponseError):
                exchange.fail()  # the cycle has logged it, and answered or closed
            else:
                logger.exception("exception in ASGI app for %s %s", scope["method"], scope["path"])
                exchange.fail()
        except asyncio.CancelledError:
            # Cancelled by squall (--request-timeout, a stream's reset), the request
            # is answered or gone; raised by the app itself, it is answered here, not
            # left open. The task ends cancelled either way.
            if not cycle.complete and not cycle.disconnected:
                logger.exception(
                    "ASGI app raised CancelledError for %s %s", scope["method"], scope["path"]
                )
                exchange.fail()
            raise
        else:
            if not cycle.response_started:
                if exchange.status is not None:  # start sent, no body message
                    exchange.finish_empty()
                else:
                    logger.error(
                        "ASGI app returned without a response for %s %s",
                        scope["method"],
                        scope["path"],
                    )
                    exchange.fail()
            elif not cycle.complete and not cycle.disconnected:
                logger.error("ASGI app returned before its response was complete")
                cycle.abort()
        finally:
            self._tasks.discard(exchange.task)


def _caused_by(exc: BaseException | None, kind: type[BaseException]) -> bool:
    """`exc` is a `kind`, or was raised while handling one (frameworks wrap them)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, kind):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class _Exchange:
    """`receive` and `send` for one request."""

    __slots__ = ("body_done", "cycle", "headers", "status", "task")

    def __init__(self, cycle: RequestCycle) -> None:
        self.cycle = cycle
        self.task: asyncio.Task[None] | None = None
        self.status: int | None = None
        self.headers: Headers = ()
        self.body_done = False

    async def receive(self) -> HTTPRequestEvent | HTTPDisconnectEvent:
        cycle = self.cycle
        if not self.body_done and not cycle.disconnected:
            body, more = await cycle.receive_body()
            if not cycle.disconnected:
                self.body_done = not more
                return {"type": "http.request", "body": body, "more_body": more}
        await cycle.wait_disconnect()
        return {"type": "http.disconnect"}

    async def send(self, message: SendEvent) -> None:
        cycle = self.cycle
        if cycle.disconnected:
            # The client is gone: spec 2.4 (which ASGI_VERSION announces) has send()
            # raise an OSError, so that a streaming app stops instead of running on.
            raise ClientDisconnected("the client has disconnected")
        if message["type"] == "http.response.start":
            if self.status is not None or cycle.response_started:
                raise RuntimeError("ASGI app sent 'http.response.start' twice")
            self.status = message["status"]
            # Checked by the core with the head, as every interface's are.
            self.headers = message.get("headers", ())
        elif message["type"] == "http.response.body":
            if self.status is None:
                raise RuntimeError("ASGI app sent 'http.response.body' before 'start'")
            if cycle.complete:
                raise RuntimeError("ASGI app sent body after the response was complete")
            # Read untyped: an app may send a bytearray or a memoryview, which the
            # compiled build would refuse as the TypedDict's `bytes`.
            body: Any = cast("dict[str, Any]", message).get("body", b"")
            if type(body) is not bytes:  # bytes() of bytes is a call for nothing
                body = bytes(body)
            more = bool(message.get("more_body", False))
            if not cycle.response_started:
                request = cycle.request
                assert request is not None
                if not more and request.method != "HEAD":
                    cycle.respond(self.status, self.headers, body)
                    return
                cycle.start(self.status, self.headers)
            if body:
                cycle.write(body)
            if more:
                await cycle.drain()
            else:
                cycle.end()
        else:
            kind = message["type"]
            raise RuntimeError(f"unexpected ASGI message type {kind!r} in an http scope")

    def finish_empty(self) -> None:
        assert self.status is not None
        self.cycle.start(self.status, self.headers)
        self.cycle.end()

    def fail(self) -> None:
        cycle = self.cycle
        if cycle.disconnected or cycle.complete:
            return
        if cycle.response_started:
            cycle.abort()
        else:
            cycle.respond(
                500, [(b"content-type", b"text/plain; charset=utf-8")], b"Internal Server Error"
            )


class LifespanFailed(Exception):
    """The app's lifespan startup reported failure or raised."""


class _AppEnded(TypedDict):
    """What `Lifespan` tells itself when the app's lifespan call raised or returned."""

    type: Literal["_raised", "_returned"]
    message: str


class Lifespan:
    """Runs the app's `lifespan` scope in one worker: startup before serving, shutdown after."""

    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self._inbox: asyncio.Queue[LifespanStartupEvent | LifespanShutdownEvent] | None = None
        self._outbox: asyncio.Queue[SendEvent | _AppEnded] | None = None
        self._task: asyncio.Task[None] | None = None
        self.supported = True

    async def startup(self) -> None:
        self._inbox = asyncio.Queue()
        self._outbox = asyncio.Queue()
        scope: LifespanScope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        self._task = asyncio.get_running_loop().create_task(self._main(scope))
        await self._inbox.put({"type": "lifespan.startup"})
        reply = await self._outbox.get()
        if reply["type"] == "lifespan.startup.failed":
            raise LifespanFailed(reply.get("message") or "lifespan startup failed")
        if reply["type"] == "_raised":
            raise LifespanFailed(reply["message"])

    async def shutdown(self, timeout: float = 30.0) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        assert self._inbox is not None and self._outbox is not None
        await self._inbox.put({"type": "lifespan.shutdown"})
        try:
            reply = await asyncio.wait_for(self._outbox.get(), timeout)
        except asyncio.TimeoutError:
            logger.error("lifespan shutdown did not complete within %.1f s", timeout)
            self._task.cancel()
            return
        if reply["type"] == "lifespan.shutdown.failed":
            logger.error("lifespan shutdown failed: %s", reply.get("message", ""))
        elif reply["type"] == "_raised":
            logger.error("lifespan shutdown raised: %s", reply["message"])

    async def _main(self, scope: LifespanScope) -> None:
        assert self._inbox is not None and self._outbox is not None
        started = False

        async def receive() -> LifespanStartupEvent | LifespanShutdownEvent:
            nonlocal started
            started = True
            assert self._inbox is not None
            return await self._inbox.get()

        async def send(message: SendEvent) -> None:
            assert self._outbox is not None
            await self._outbox.put(message)

        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if not started:
                # An app that does not speak lifespan raises on the unknown scope
                # type before it ever receives; serving goes on without it.
                self.supported = False
                logger.debug("app does not support lifespan: %r", exc)
                await self._outbox.put({"type": "lifespan.startup.complete"})
                return
            logger.exception("exception in the ASGI lifespan")
            await self._outbox.put({"type": "_raised", "message": f"{type(exc).__name__}: {exc}"})
        else:
            if not started:
                self.supported = False
            # Whoever waits on a reply (startup or shutdown) stops waiting.
            await self._outbox.put({"type": "_returned", "message": ""})
