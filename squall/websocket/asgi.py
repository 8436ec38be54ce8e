"""The ASGI `websocket` scope over a session: spec 2.4, with the denial extension.

`upgrade_asgi` is what `squall.asgi.ASGIAdapter.upgrade` calls with a
handshake; the scope comes from the builder the HTTP scope comes from
(`squall.asgi_scope`). The app's `websocket.http.response.*` messages refuse
the handshake with an HTTP response of its own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from squall.asgi_scope import connection_scope
from squall.asgi_types import (
    ASGIApp,
    SendEvent,
    WebSocketConnectEvent,
    WebSocketDisconnectEvent,
    WebSocketReceiveEvent,
    WebSocketScope,
)
from squall.http.core import checked_headers
from squall.websocket.session import (
    Closed,
    State,
    WebSocketClosedError,
    WebSocketOptions,
    WebSocketSession,
    spawn,
    start_session,
)

if TYPE_CHECKING:
    from squall.http.cycle import RequestCycle

logger = logging.getLogger("squall.websocket")

_Received = WebSocketConnectEvent | WebSocketReceiveEvent | WebSocketDisconnectEvent


def upgrade_asgi(
    app: ASGIApp,
    cycle: RequestCycle,
    trailing: bytes,
    options: WebSocketOptions,
    root_path: str = "",
    state: dict[str, Any] | None = None,
) -> WebSocketSession | None:
    """Take over `cycle`'s connection for an ASGI `websocket` scope, if it is a handshake."""
    session = start_session(cycle, trailing, options)
    if session is None or session.state is not State.CONNECTING:
        return session
    scope = connection_scope(
        cycle, root_path, state if state is not None else {}, list(session.subprotocols)
    )
    exchange = ASGIWebSocket(app, scope, session)
    spawn(exchange.run(), cycle.loop)
    return session


class ASGIWebSocket:
    """`receive` and `send` of one ASGI `websocket` scope."""

    def __init__(self, app: ASGIApp, scope: WebSocketScope, session: WebSocketSession) -> None:
        self.app = app
        self.scope = scope
        self.session = session
        self._connect_sent = False
        self._response_status: int | None = None
        self._response_done = False

    async def run(self) -> None:
        session = self.session
        try:
            await self.app(self.scope, self.receive, self.send)
        except Exception as exc:
            if isinstance(exc, WebSocketClosedError) or (
                isinstance(exc, OSError) and not session.connected
            ):
                logger.debug("WebSocket client gone: %r", exc)
            else:
                logger.exception("exception in ASGI app for WebSocket %s", self.scope["path"])
            self._failed()
            return
        if session.state is State.CONNECTING:
            if session.connected:
                logger.error(
                    "ASGI app returned without accepting or closing the WebSocket %s",
                    self.scope["path"],
                )
            self._failed()
        elif session.state is State.OPEN:
            session.close(1000)
        elif self._response_status is not None and not self._response_done:
            logger.error("ASGI app returned before its denial response was complete")
            session.cycle.abort()

    def _failed(self) -> None:
        session = self.session
        if session.state is State.CONNECTING:
            if session.connected:
                session.reject(
                    500,
                    [(b"content-type", b"text/plain; charset=utf-8")],
                    b"Internal Server Error",
                )
            else:
                session.mark_rejected()
        elif session.state is State.OPEN:
            session.close(1011, "internal error")
        elif self._response_status is not None and not self._response_done:
            session.cycle.abort()

    async def receive(self) -> _Received:
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        item = await self.session.receive()
        if isinstance(item, Closed):
            return {"type": "websocket.disconnect", "code": item.code, "reason": item.reason}
        if isinstance(item, str):
            return {"type": "websocket.receive", "text": item}
        return {"type": "websocket.receive", "bytes": item}

    async def send(self, message: SendEvent) -> None:
        session = self.session
        if message["type"] == "websocket.send":
            text = message.get("text")
            data = message.get("bytes")
            payload: str | bytes
            if text is not None and data is None:
                payload = str(text)
            elif data is not None and text is None:
                payload = bytes(data)
            else:
                raise RuntimeError("'websocket.send' needs exactly one of 'bytes' and 'text'")
            if session.state is not State.OPEN or not session.connected:
                raise WebSocketClosedError("the WebSocket is closed")
            await session.send(payload)
        elif message["type"] == "websocket.accept":
            if session.state is State.REJECTED or not session.connected:
                raise WebSocketClosedError("the WebSocket handshake was refused or abandoned")
            if session.state is not State.CONNECTING:
                raise RuntimeError(f"'websocket.accept' in state {session.state.name}")
            headers = checked_headers(message.get("headers") or ())
            session.accept(message.get("subprotocol"), headers)
        elif message["type"] == "websocket.close":
            if session.state is State.REJECTED and self._response_status is not None:
                raise RuntimeError("'websocket.close' after 'websocket.http.response.start'")
            code = message.get("code")
            session.close(1000 if code is None else int(code), message.get("reason") or "")
        elif message["type"] == "websocket.http.response.start":
            if session.state is not State.CONNECTING:
                raise RuntimeError(f"'websocket.http.response.start' in state {session.state.name}")
            if not session.connected:
                raise WebSocketClosedError("the client disconnected")
            self._response_status = int(message["status"])
            headers = checked_headers(message.get("headers") or ())
            session.start_response(self._response_status, headers)
        elif message["type"] == "websocket.http.response.body":
            if self._response_status is None or self._response_done:
                raise RuntimeError("'websocket.http.response.body' outside a denial response")
            if not session.connected:
                raise WebSocketClosedError("the client disconnected")
            body = bytes(message.get("body", b""))
            if body:
                session.write_response(body)
            if message.get("more_body", False):
                await session.drain_response()
            else:
                self._response_done = True
                session.end_response()
        else:
            kind = message["type"]
            raise RuntimeError(f"unexpected ASGI message type {kind!r} in a websocket scope")
