"""WebSocket (RFC 6455) on an upgraded squall connection, for ASGI apps and squall handlers.

Four modules, each importing only those above it:

- `handshake`: is a request a WebSocket handshake, is it valid, refusing it in HTTP;
- `session`: `WebSocketSession`, the protocol that owns the connection once it
  is upgraded (framing by wsproto, limits, pings, the closing handshake, flow
  control), and the registry a draining worker closes;
- `asgi`: the ASGI `websocket` scope over a session;
- `handler`: `WebSocketHandler`, squall's own API, a `squall.web.RequestHandler`.

Importing the package imports all four: a worker forked later finds them
loaded (`squall.worker.import_worker_modules`).
"""

from squall.websocket.asgi import ASGIWebSocket, upgrade_asgi
from squall.websocket.handler import WebSocketHandler
from squall.websocket.handshake import WEBSOCKET_VERSION, is_websocket_request
from squall.websocket.session import (
    DEFAULT_OPTIONS,
    FLUSH_TIMEOUT,
    MAX_EARLY_BYTES,
    MAX_QUEUED_BYTES,
    MAX_QUEUED_MESSAGES,
    Closed,
    State,
    WebSocketClosedError,
    WebSocketOptions,
    WebSocketSession,
    close_all,
    start_session,
    wait_all_closed,
)

__all__ = [
    "DEFAULT_OPTIONS",
    "FLUSH_TIMEOUT",
    "MAX_EARLY_BYTES",
    "MAX_QUEUED_BYTES",
    "MAX_QUEUED_MESSAGES",
    "WEBSOCKET_VERSION",
    "ASGIWebSocket",
    "Closed",
    "State",
    "WebSocketClosedError",
    "WebSocketHandler",
    "WebSocketOptions",
    "WebSocketSession",
    "close_all",
    "is_websocket_request",
    "start_session",
    "upgrade_asgi",
    "wait_all_closed",
]
