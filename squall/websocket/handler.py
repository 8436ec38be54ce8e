"""squall's own WebSocket API: `WebSocketHandler`, routed in an `Application` like any handler.

An `Application` hands it the handshakes routed to it (`RequestHandler.take_over`);
it runs the handler's hooks over a `WebSocketSession`. It uses only the public
side of `RequestHandler`, and `squall.web` does not import it.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from squall.web import Application, Found, HTTPServerRequest, RequestHandler
from squall.websocket.handshake import is_websocket_request
from squall.websocket.session import (
    DEFAULT_OPTIONS,
    Closed,
    State,
    WebSocketClosedError,
    WebSocketSession,
    spawn,
    start_session,
)

if TYPE_CHECKING:
    from squall.http.cycle import RequestCycle

logger = logging.getLogger("squall.websocket")


class WebSocketHandler(RequestHandler):
    """A WebSocket endpoint in an `Application`, in the manner of tornado's.

    Route it like any handler; override `open`, `on_message` and `on_close`
    (plain or `async def`; an async `open` or `on_message` is awaited before
    the next message is delivered). `check_origin` and `select_subprotocol`
    decide the handshake; `prepare` runs before it and may answer in HTTP.
    A request to the route that is no WebSocket handshake gets 400.
    """

    close_code: int | None = None
    close_reason: str | None = None
    _session: WebSocketSession | None = None

    def get(self, *args: Any, **kwargs: Any) -> None:
        """Reached only by a request that is no WebSocket handshake."""
        self.set_status(400)
        self.finish('Can "Upgrade" only to "WebSocket".')

    # -- hooks -----------------------------------------------------------------------

    def check_origin(self, origin: str) -> bool:
        """Whether a browser page from `origin` may connect; by default, same host only."""
        netloc = urlparse(origin).netloc.lower()
        host = (self.request.headers.get("Host") or "").lower()
        return netloc == host

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        """Pick one of the client's subprotocols, or None for none."""
        return None

    def open(self, *args: Any, **kwargs: Any) -> Awaitable[None] | None:
        """The connection is open; the route's groups are the arguments."""
        return None

    def on_message(self, message: str | bytes) -> Awaitable[None] | None:
        raise NotImplementedError

    def on_close(self) -> None:
        """The connection is closed (`close_code`, `close_reason` say how)."""

    # -- actions ---------------------------------------------------------------------

    @property
    def selected_subprotocol(self) -> str | None:
        return self._session.subprotocol if self._session is not None else None

    def write_message(
        self, message: str | bytes | dict[str, Any], binary: bool = False
    ) -> Awaitable[None]:
        """Send a message (a dict as JSON); await the result to wait for a slow client."""
        session = self._session
        if session is None or session.state is not State.OPEN or not session.connected:
            raise WebSocketClosedError("the WebSocket is closed")
        if isinstance(message, dict):
            message = json.dumps(message)
        if binary and isinstance(message, str):
            message = message.encode("utf-8")
        elif not binary and not isinstance(message, str):
            message = bytes(message)
        session.send_nowait(message)
        return session.writable()

    def ping(self, data: bytes = b"") -> None:
        if self._session is None:
            raise WebSocketClosedError("the WebSocket is not open")
        self._session.ping(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (or, before it is open, refuse with 403)."""
        if self._session is not None:
            self._session.close(code, reason)

    # -- execution ---------------------------------------------------------------------

    @classmethod
    def take_over(
        cls, application: Application, cycle: RequestCycle, trailing: bytes, found: Found
    ) -> WebSocketSession | None:
        """A WebSocket handshake routed here takes the connection (`Application.upgrade`).

        Any other Upgrade (no valid handshake) returns None and is answered in
        HTTP: `get` says 400. Options come from the application's
        `websocket_options` setting, else the defaults.
        """
        request = cycle.request
        if request is None or not is_websocket_request(request):
            return None
        options = application.settings.get("websocket_options") or DEFAULT_OPTIONS
        session = start_session(cycle, trailing, options)
        if session is None or session.state is not State.CONNECTING:
            return session  # None: HTTP answers; else refused in HTTP already
        _route_class, route_kwargs, args, path_kwargs = found
        try:
            handler = cls(application, HTTPServerRequest(cycle), **route_kwargs)
        except Exception:
            logger.exception("could not create %s for %r", cls.__name__, request)
            session.reject(500)
            return session
        handler.attach(cycle, args, path_kwargs)
        handler._session = session
        spawn(handler._serve_websocket(session, handler.path_args, path_kwargs), cycle.loop)
        return session

    async def _serve_websocket(
        self, session: WebSocketSession, args: list[str], kwargs: dict[str, str]
    ) -> None:
        try:
            prepared = self.prepare()
            if prepared is not None and inspect.isawaitable(prepared):
                await prepared
            if self.is_finished() or session.state is not State.CONNECTING:
                session.mark_rejected()
                return  # prepare answered in HTTP, or the client left
            origin = self.request.headers.get("Origin")
            if origin is not None and not self.check_origin(origin):
                logger.info("refused a cross-origin WebSocket from %s", origin)
                session.mark_rejected()
                self.set_status(403)
                self.finish("Cross origin websockets not allowed")
                return
            subprotocol = self.select_subprotocol(list(session.subprotocols))
            if not session.connected:
                return
            session.accept(subprotocol)
        except Exception as exc:
            if session.state is State.CONNECTING and session.connected:
                session.mark_rejected()  # the HTTP error page answers now
                self.handle_exception(exc)
            return
        try:
            opened = self.open(*args, **kwargs)
            if opened is not None and inspect.isawaitable(opened):
                await opened
            while True:
                item = await session.receive()
                if isinstance(item, Closed):
                    break
                result = self.on_message(item)
                if result is not None and inspect.isawaitable(result):
                    await result
        except WebSocketClosedError:
            pass  # the handler wrote to a connection that had ended
        except Exception:
            logger.exception("uncaught exception in %s", self.request_summary())
            session.close(1011, "internal error")
        await session.wait_closed()
        self.close_code = session.close_code
        self.close_reason = session.close_reason
        try:
            self.on_close()
        except Exception:
            logger.exception("uncaught exception in on_close of %s", self.request_summary())
