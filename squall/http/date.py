"""The `Date` and `Server` response headers, formatted once per second."""

from __future__ import annotations

import time
from typing import Final

SERVER_NAME: Final = b"squall"
_now: Final = time.time
_DAYS: Final = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS: Final = (
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun",
    b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
)  # fmt: skip


def imf_fixdate(seconds: float) -> bytes:
    """RFC 9110's preferred date format, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.

    Its own, not email.utils' formatdate: that would import the email
    package into every worker (a third of a MiB each), and strftime's `%a`
    and `%b` follow the locale an app may set.
    """
    t = time.gmtime(seconds)
    return b"%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday],
        t.tm_mday,
        _MONTHS[t.tm_mon - 1],
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


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
        date = imf_fixdate(now)
        cached.header = b"date: " + date + b"\r\nserver: " + SERVER_NAME + b"\r\n"
        cached.date = date
        cached.second = now
    return cached.header


def http_date() -> bytes:
    """The `Date` header's value alone (HTTP/2 sends fields, not lines)."""
    date_and_server_header()
    return _cached.date
