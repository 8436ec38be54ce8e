"""The `Date` and `Server` response headers, formatted once per second."""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Final

SERVER_NAME: Final = b"squall"
_now: Final = time.time


class _Cached:
    """The header lines of the current second (an object: compiled, its fields are C slots)."""

    def __init__(self) -> None:
        self.second = -1
        self.header = b""
        self.date = b""


_cached: Final = _Cached()


def date_and_server_header() -> bytes:
    """`date: ...\\r\\nserver: squall\\r\\n`, rebuilt only when the second changes."""
    cached = _cached
    now = int(_now())
    if now != cached.second:
        date = formatdate(now, usegmt=True).encode("ascii")
        cached.header = b"date: " + date + b"\r\nserver: " + SERVER_NAME + b"\r\n"
        cached.date = date
        cached.second = now
    return cached.header


def http_date() -> bytes:
    """The `Date` header's value alone (HTTP/2 sends fields, not lines)."""
    date_and_server_header()
    return _cached.date
