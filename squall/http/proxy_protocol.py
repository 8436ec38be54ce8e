"""The PROXY protocol (HAProxy), versions 1 and 2: who the client really is."""

from __future__ import annotations

from dataclasses import dataclass


class ProxyProtocolError(Exception):
    """The connection did not start with a valid PROXY protocol header."""


@dataclass(frozen=True)
class ProxyHeader:
    consumed: int  # bytes of the header; HTTP starts after them
    client: tuple[str, int] | None  # None: LOCAL / UNKNOWN, keep the socket's address
    server: tuple[str, int] | None


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None while incomplete."""
    raise ProxyProtocolError("PROXY protocol not implemented yet")
