"""X-Forwarded-* and Forwarded (RFC 7239), trusted only from configured proxies."""

from __future__ import annotations

from collections.abc import Callable

from squall.http.protocol import RequestCycle


def make_forwarded(allow_ips: str) -> Callable[[RequestCycle], None] | None:
    """A callback that rewrites a cycle's client and scheme, or None when no proxy is trusted."""
    if not allow_ips.strip():
        return None
    raise NotImplementedError(allow_ips)
