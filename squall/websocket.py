"""WebSocket (RFC 6455) on an upgraded squall connection, for ASGI apps and squall handlers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WebSocketOptions:
    max_size: int = 16 * 1024 * 1024
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
