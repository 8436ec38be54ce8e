"""The `Date` and `Server` response headers, formatted once per second."""

from __future__ import annotations

import time
from email.utils import formatdate

SERVER_NAME = b"squall"

_cached_second = -1
_cached_header = b""


def date_and_server_header() -> bytes:
    """`date: ...\\r\\nserver: squall\\r\\n`, rebuilt only when the second changes."""
    global _cached_second, _cached_header
    now = int(time.time())
    if now != _cached_second:
        date = formatdate(now, usegmt=True).encode("ascii")
        _cached_header = b"date: " + date + b"\r\nserver: " + SERVER_NAME + b"\r\n"
        _cached_second = now
    return _cached_header
