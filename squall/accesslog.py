"""The access log: one line per request, off by default.

Lines go to the logger ``squall.access`` at INFO, so they land wherever the
rest of the log goes (stderr or `--log-file`). Formats:

- ``common``: NCSA Common Log Format,
  ``127.0.0.1 - - [28/Nov/2026:06:17:39 +0000] "GET /path?q HTTP/1.1" 200 1234``
- ``combined``: common plus ``"referer" "user-agent"``
- ``json``: one JSON object with the keys time, client, method, path, query,
  http_version, status, bytes, duration_ms, referer, user_agent, worker.

The text formats are the message of a log line, which the log handler tags
with the worker (or, with ``--log-format json``, wraps in its JSON object). A
JSON line is written as it is (`squall.logs.WHOLE_LINE`): the object and
nothing around it, whatever the log format.

The time is when the response finished, in local time. ``bytes`` counts the
response body (``-`` in the text formats when it is empty, as in CLF). A
Unix-socket client has no address: ``-`` (null in JSON). In the text formats,
bytes of the request line, referer and user agent outside printable ASCII, and
``"`` and ``\\``, are escaped (``\\xhh``, ``\\"``, ``\\\\``) so that a request
cannot forge a log line or break the quoting; JSON escapes them its own way.

Nothing is formatted unless the logger is enabled for INFO, and the date is
formatted once per second.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping

from squall import process
from squall.http.cycle import RequestCycle
from squall.logs import WHOLE_LINE

logger = logging.getLogger("squall.access")

FORMATS = ("off", "common", "combined", "json")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: How a request line names each version: the ASGI "2" is the log's "HTTP/2.0".
_VERSIONS = {"2": "2.0"}
_UNSAFE = re.compile(rb'[^\x20-\x7e]|["\\]')


def make_access_log(fmt: str) -> Callable[[RequestCycle], None] | None:
    """A per-request callback for format `fmt` (common, combined, json), or None for off."""
    if fmt == "off":
        return None
    if fmt == "common":
        return AccessLog(_common)
    if fmt == "combined":
        return AccessLog(_combined)
    if fmt == "json":
        return AccessLog(_json, WHOLE_LINE)
    raise ValueError(f"unknown access log format {fmt!r}; expected one of {', '.join(FORMATS)}")


class _Clock:
    """The wall-clock time as the formats want it, formatted once per second."""

    __slots__ = ("_clf", "_iso", "_iso_zone", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._clf = ""
        self._iso = ""
        self._iso_zone = ""

    def _update(self, second: int) -> None:
        local = time.localtime(second)
        offset = local.tm_gmtoff or 0
        sign = "-" if offset < 0 else "+"
        hours, minutes = divmod(abs(offset) // 60, 60)
        self._clf = (
            f"{local.tm_mday:02d}/{_MONTHS[local.tm_mon - 1]}/{local.tm_year}:"
            f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} "
            f"{sign}{hours:02d}{minutes:02d}"
        )
        self._iso = (
            f"{local.tm_year}-{local.tm_mon:02d}-{local.tm_mday:02d}T"
            f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d}"
        )
        self._iso_zone = f"{sign}{hours:02d}:{minutes:02d}"
        self._second = second

    def clf(self) -> str:
        """``28/Nov/2026:06:17:39 +0000``"""
        second = int(time.time())
        if second != self._second:
            self._update(second)
        return self._clf

    def iso(self) -> str:
        """``2026-11-28T06:17:39.123+00:00``"""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._update(second)
        return f"{self._iso}.{int((now - second) * 1000):03d}{self._iso_zone}"


_clock = _Clock()


class AccessLog:
    """The callback `ServerState.access_log` calls once per finished request."""

    __slots__ = ("_extra", "_format")

    def __init__(
        self,
        format_line: Callable[[RequestCycle], str],
        extra: Mapping[str, object] | None = None,
    ) -> None:
        self._format = format_line
        self._extra = extra  # WHOLE_LINE: the line is complete, written without a prefix

    def __call__(self, cycle: RequestCycle) -> None:
        if logger.isEnabledFor(logging.INFO) and cycle.request is not None:
            # No args: the line is never %-formatted.
            logger.info(self._format(cycle), extra=self._extra)


def escape(value: bytes) -> str:
    """`value` as printable ASCII for a quoted log field."""
    if _UNSAFE.search(value) is None:
        return value.decode("ascii")
    return _UNSAFE.sub(_escape_byte, value).decode("ascii")


def _escape_byte(match: re.Match[bytes]) -> bytes:
    byte = match.group()
    if byte in (b'"', b"\\"):
        return b"\\" + byte
    return b"\\x%02x" % byte[0]


def _headers(cycle: RequestCycle) -> tuple[bytes | None, bytes | None]:
    """The Referer and User-Agent of the request (the first of each)."""
    referer = user_agent = None
    request = cycle.request
    assert request is not None
    for name, value in request.headers:
        if name == b"referer":
            if referer is None:
                referer = value
        elif name == b"user-agent" and user_agent is None:
            user_agent = value
    return referer, user_agent


def _common(cycle: RequestCycle) -> str:
    request = cycle.request
    assert request is not None
    client = cycle.client
    size = cycle.bytes_sent
    return (
        f"{client[0] if client else '-'} - - [{_clock.clf()}] "
        f'"{request.method} {escape(request.target)} HTTP/{_VERSIONS.get(request.http_version, request.http_version)}" '
        f"{cycle.status} {size if size else '-'}"
    )


def _combined(cycle: RequestCycle) -> str:
    referer, user_agent = _headers(cycle)
    return (
        f'{_common(cycle)} "{"-" if referer is None else escape(referer)}" '
        f'"{"-" if user_agent is None else escape(user_agent)}"'
    )


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "backslashreplace")


def _json(cycle: RequestCycle) -> str:
    request = cycle.request
    assert request is not None
    client = cycle.client
    referer, user_agent = _headers(cycle)
    started = cycle.started_at
    duration = (time.perf_counter() - started) * 1000 if started else 0.0
    return json.dumps(
        {
            "time": _clock.iso(),
            "client": client[0] if client else None,
            "method": request.method,
            "path": _text(request.path),
            "query": _text(request.query),
            "http_version": request.http_version,
            "status": cycle.status,
            "bytes": cycle.bytes_sent,
            "duration_ms": round(max(duration, 0.0), 3),
            "referer": _text(referer),
            "user_agent": _text(user_agent),
            "worker": process.task_id(),
        },
        separators=(",", ":"),
    )
