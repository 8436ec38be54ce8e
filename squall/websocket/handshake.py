"""The opening handshake (RFC 6455 section 4.2): is a request one, is it valid, refusing it.

wsproto checks the client's half. A handshake the server must refuse by
itself (an unknown version, a worker that drains) is answered here in HTTP,
through the request cycle, so it is framed, dated and logged like any
response.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import h11
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import Request as HandshakeRequest
from wsproto.utilities import ProtocolError

if TYPE_CHECKING:
    from squall.http.core import Request
    from squall.http.cycle import RequestCycle

logger = logging.getLogger("squall.websocket")

WEBSOCKET_VERSION = b"13"

_HANDSHAKE_FIELDS = frozenset(
    {
        b"connection",
        b"upgrade",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
    }
)


def is_websocket_request(request: Request) -> bool:
    """A GET/1.1 without a body asking for `Upgrade: websocket` (its headers not yet checked)."""
    if request.method != "GET" or request.http_version != "1.1" or request.body_expected:
        return False
    upgrade = request.header(b"upgrade")
    if upgrade is None:
        return False
    return any(token.strip().lower() == b"websocket" for token in upgrade.split(b","))


def read_handshake(request: Request) -> tuple[WSConnection, HandshakeRequest] | int | None:
    """wsproto's server side of the handshake in `request`.

    None when the request is no WebSocket handshake at all (HTTP answers
    it); a status (426 for an unknown version) when it is a broken one that
    the server must refuse itself.
    """
    if not is_websocket_request(request):
        return None
    version = request.header(b"sec-websocket-version")
    if version is not None and version.strip() != WEBSOCKET_VERSION:
        return 426
    # wsproto re-reads the head through h11; it gets only the fields it checks.
    # Host and target are ours already (and h11 would refuse a head over
    # 16 KiB, which squall's limits allow), so placeholders stand in for them.
    headers = [(b"host", b"squall")]
    headers.extend((name, value) for name, value in request.headers if name in _HANDSHAKE_FIELDS)
    connection = WSConnection(ConnectionType.SERVER)
    try:
        connection.initiate_upgrade_connection(headers, b"/")
        events = list(connection.events())
    except (ProtocolError, h11.ProtocolError, ValueError) as exc:  # UnicodeError too
        logger.debug("not a valid WebSocket handshake: %s", exc)
        return None
    if len(events) != 1 or not isinstance(events[0], HandshakeRequest):
        return None
    return connection, events[0]


def refuse(cycle: RequestCycle, status: int) -> None:
    """Answer the handshake in `cycle` with `status` (426 names the version we speak)."""
    headers = [(b"sec-websocket-version", WEBSOCKET_VERSION)] if status == 426 else []
    headers.append((b"content-type", b"text/plain; charset=utf-8"))
    body = {426: b"Upgrade Required", 503: b"Service Unavailable"}.get(status, b"")
    cycle.respond(status, headers, body)
