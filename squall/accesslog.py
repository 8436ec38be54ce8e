"""The access log: one line per request, off by default."""

from __future__ import annotations

from collections.abc import Callable

from squall.http.protocol import RequestCycle


def make_access_log(fmt: str) -> Callable[[RequestCycle], None] | None:
    """A per-request callback for format `fmt` (common, combined, json), or None for off."""
    if fmt == "off":
        return None
    raise NotImplementedError(fmt)
