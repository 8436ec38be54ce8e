"""The ASGI scope of a request: one builder for the `http` and `websocket` scopes.

Both come from the same request head, so a rule about paths, headers or
addresses is written once. The HTTP adapter calls it for every request: it
does no more than the scope needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, cast, overload
from urllib.parse import unquote

from squall.asgi_types import ASGI_VERSION, HTTPScope, WebSocketScope

if TYPE_CHECKING:
    from squall.http.cycle import RequestCycle


#: An http scope's keys in the order an app sees them, the constant ones set:
#: copying it costs less than building a dict of 14 keys one by one.
_HTTP_SCOPE: Final[dict[str, Any]] = {
    "type": "http",
    "asgi": ASGI_VERSION,
    "http_version": "",
    "method": "",
    "scheme": "",
    "path": "",
    "raw_path": b"",
    "query_string": b"",
    "root_path": "",
    "headers": None,
    "client": None,
    "server": None,
    "state": None,
    "extensions": None,
}


@overload
def connection_scope(
    cycle: RequestCycle, root_path: str, state: dict[str, Any], subprotocols: None = None
) -> HTTPScope: ...


@overload
def connection_scope(
    cycle: RequestCycle, root_path: str, state: dict[str, Any], subprotocols: list[str]
) -> WebSocketScope: ...


def connection_scope(
    cycle: RequestCycle,
    root_path: str,
    state: dict[str, Any],
    subprotocols: list[str] | None = None,
) -> HTTPScope | WebSocketScope:
    """The scope of `cycle`'s request: `http`, or `websocket` given the client's subprotocols.

    `path` is decoded (with `root_path` before it), `raw_path` is not; the
    app gets its own copy of the lifespan `state`.
    """
    request = cycle.request
    assert request is not None
    raw_path = request.path
    path = raw_path.decode("latin-1")
    if "%" in path:
        path = unquote(path)
    scope = cast(HTTPScope, _HTTP_SCOPE.copy())
    scope["http_version"] = request.http_version
    scope["method"] = request.method
    scope["scheme"] = cycle.scheme
    scope["path"] = root_path + path if root_path else path
    scope["raw_path"] = raw_path
    scope["query_string"] = request.query
    scope["root_path"] = root_path
    scope["headers"] = request.headers
    scope["client"] = cycle.client
    scope["server"] = cycle.server
    scope["state"] = state.copy()
    scope["extensions"] = {}
    if subprotocols is None:
        return scope
    # The same head as a WebSocket handshake: another type and scheme, no method.
    websocket: dict[str, Any] = {
        **scope,
        "type": "websocket",
        "scheme": "wss" if cycle.scheme == "https" else "ws",
        "subprotocols": subprotocols,
        "extensions": {"websocket.http.response": {}},
    }
    del websocket["method"]
    return cast(WebSocketScope, websocket)
