"""The ASGI boundary, typed once: the version squall announces, its scopes, the messages.

ASGI 3 with the HTTP and WebSocket specs 2.4 (and the WebSocket denial
extension, `websocket.http.response`) and lifespan. Both the HTTP adapter
(`squall.asgi`) and the WebSocket one (`squall.websocket.asgi`) use these, so
mypy checks every scope and message squall builds against the spec's shape.
What an app sends is still read with care at run time: an app is not bound
by these types.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if sys.version_info >= (3, 11):
    from typing import NotRequired
elif TYPE_CHECKING:  # on 3.10 the annotations stay strings, which only mypy reads
    from typing_extensions import NotRequired


class ASGIVersions(TypedDict):
    version: str
    spec_version: str


ASGI_VERSION: ASGIVersions = {"version": "3.0", "spec_version": "2.4"}

Headers = Iterable[tuple[bytes, bytes]]


# -- scopes ---------------------------------------------------------------------------


class _RequestScope(TypedDict):
    """What the `http` and `websocket` scopes share: both describe a request head."""

    asgi: ASGIVersions
    http_version: str
    scheme: str
    path: str
    raw_path: bytes
    query_string: bytes
    root_path: str
    headers: list[tuple[bytes, bytes]]
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    state: dict[str, Any]
    extensions: dict[str, dict[object, object]]


class HTTPScope(_RequestScope):
    type: Literal["http"]
    method: str


class WebSocketScope(_RequestScope):
    type: Literal["websocket"]
    subprotocols: list[str]


class LifespanScope(TypedDict):
    type: Literal["lifespan"]
    asgi: ASGIVersions
    state: dict[str, Any]


# -- the parts that messages share ------------------------------------------------------


class _Payload(TypedDict):
    """A WebSocket message, either way: one of the two keys is set."""

    bytes: NotRequired[bytes | None]
    text: NotRequired[str | None]


class _ResponseHead(TypedDict):
    status: int
    headers: NotRequired[Headers]


class _ResponseBody(TypedDict):
    body: NotRequired[bytes]
    more_body: NotRequired[bool]


# -- what the app receives ----------------------------------------------------------------


class HTTPRequestEvent(TypedDict):
    type: Literal["http.request"]
    body: bytes
    more_body: bool


class HTTPDisconnectEvent(TypedDict):
    type: Literal["http.disconnect"]


class WebSocketConnectEvent(TypedDict):
    type: Literal["websocket.connect"]


class WebSocketReceiveEvent(_Payload):
    type: Literal["websocket.receive"]


class WebSocketDisconnectEvent(TypedDict):
    type: Literal["websocket.disconnect"]
    code: int
    reason: str


class LifespanStartupEvent(TypedDict):
    type: Literal["lifespan.startup"]


class LifespanShutdownEvent(TypedDict):
    type: Literal["lifespan.shutdown"]


# -- what the app sends ---------------------------------------------------------------


class HTTPResponseStartEvent(_ResponseHead):
    type: Literal["http.response.start"]
    trailers: NotRequired[bool]


class HTTPResponseBodyEvent(_ResponseBody):
    type: Literal["http.response.body"]


class WebSocketAcceptEvent(TypedDict):
    type: Literal["websocket.accept"]
    subprotocol: NotRequired[str | None]
    headers: NotRequired[Headers]


class WebSocketSendEvent(_Payload):
    type: Literal["websocket.send"]


class WebSocketCloseEvent(TypedDict):
    type: Literal["websocket.close"]
    code: NotRequired[int | None]
    reason: NotRequired[str | None]


class WebSocketResponseStartEvent(_ResponseHead):
    """The denial extension: an HTTP response instead of the handshake's 101."""

    type: Literal["websocket.http.response.start"]


class WebSocketResponseBodyEvent(_ResponseBody):
    type: Literal["websocket.http.response.body"]


class LifespanStartupCompleteEvent(TypedDict):
    type: Literal["lifespan.startup.complete"]


class LifespanStartupFailedEvent(TypedDict):
    type: Literal["lifespan.startup.failed"]
    message: NotRequired[str]


class LifespanShutdownCompleteEvent(TypedDict):
    type: Literal["lifespan.shutdown.complete"]


class LifespanShutdownFailedEvent(TypedDict):
    type: Literal["lifespan.shutdown.failed"]
    message: NotRequired[str]


# -- the app ----------------------------------------------------------------------------

Scope = HTTPScope | WebSocketScope | LifespanScope
ReceiveEvent = (
    HTTPRequestEvent
    | HTTPDisconnectEvent
    | WebSocketConnectEvent
    | WebSocketReceiveEvent
    | WebSocketDisconnectEvent
    | LifespanStartupEvent
    | LifespanShutdownEvent
)
SendEvent = (
    HTTPResponseStartEvent
    | HTTPResponseBodyEvent
    | WebSocketAcceptEvent
    | WebSocketSendEvent
    | WebSocketCloseEvent
    | WebSocketResponseStartEvent
    | WebSocketResponseBodyEvent
    | LifespanStartupCompleteEvent
    | LifespanStartupFailedEvent
    | LifespanShutdownCompleteEvent
    | LifespanShutdownFailedEvent
)
Message = ReceiveEvent | SendEvent
Receive = Callable[[], Awaitable[ReceiveEvent]]
Send = Callable[[SendEvent], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
