"""Status lines, encoded once per status code."""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

LINES: Final[dict[int, bytes]] = {
    status.value: b"HTTP/1.1 %d %b\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in HTTPStatus
}


#: Every final status (200-599), with its phrase or an empty one: a status
#: found here needs no other check.
FINAL_LINES: Final[dict[int, bytes]] = {
    status: LINES.get(status) or b"HTTP/1.1 %d \r\n" % status for status in range(200, 600)
}


def status_line(status: int) -> bytes:
    line = LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status code {status}")
        line = LINES[status] = b"HTTP/1.1 %d \r\n" % status
    return line


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
