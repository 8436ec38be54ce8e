"""A WSGI app that misbehaves on purpose, for tests/test_hostile_wire.py.

It also holds the tables the ASGI and native hostile apps share
(`BAD_HEADERS`, `FRAMES`, `FINAL_1XX`), so all three misbehave alike.

- `/pid`                    the worker's pid, as text
- `/header/<case>`          200 with the response header `BAD_HEADERS[case]`
                            (or `GOOD_HEADERS[case]`)
- `/frame/<case>/<mode>`    declares `Content-Length: FRAMES[case][0]`, sends the
                            bytes `FRAMES[case][1]`: `whole` as one list item,
                            `stream` from a generator, piece by piece
- `/status/<code>`          start_response with a 1xx status as the final one
- `/x`                      what the app sees of the request as JSON: host,
                            path, query (for the absolute-form request target)
- `/environ`                a few environ keys as JSON (header-name collisions)
- `/read/<token>`           reads all of wsgi.input and appends to the file
                            named by `HOSTILE_LOG` one line `<token> called`,
                            then `<token> len:N`, or `<token> error:<Class>`
                            if the read raised an OSError (any other exception:
                            `<token> not-oserror:<Class>`); the exception is
                            raised again, as an app that does not expect it would
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

LOG_ENV = "HOSTILE_LOG"

#: Response headers no server may send as given: each would split the head,
#: forge a header, or put a byte on the wire that no field may hold. Every one
#: carries "pwn", which must then appear nowhere in what the client receives.
BAD_HEADERS: dict[str, tuple[str, str]] = {
    "name-crlf": ("X-A\r\nSet-Cookie: pwn", "1"),
    "name-cr": ("X-A\rSet-Cookie: pwn", "1"),
    "name-lf": ("X-A\nSet-Cookie: pwn", "1"),
    "name-nul": ("X-pwn\x00", "1"),
    "name-vt": ("X-pwn\x0b", "1"),
    "name-space": ("X-pwn A", "1"),
    "name-colon": ("Set-Cookie: pwn=1; X", "1"),
    "value-crlf": ("X-A", "ok\r\nSet-Cookie: pwn=1"),
    "value-cr": ("X-A", "ok\rSet-Cookie: pwn=1"),
    "value-lf": ("X-A", "ok\nSet-Cookie: pwn=1"),
    "value-nul": ("X-A", "ok\x00pwn"),
    "value-ctl": ("X-A", "ok\x01pwn"),
    "value-vt": ("X-A", "ok\x0bpwn"),
    "value-esc": ("X-A", "ok\x1bpwn"),
    "value-del": ("X-A", "ok\x7fpwn"),
}

#: Headers that are fine, though unusual: HTAB may sit inside a field value.
GOOD_HEADERS: dict[str, tuple[str, str]] = {
    "value-htab": ("X-A", "ok\tfine"),
}

#: A response that a client reading past the declared length would take for
#: the answer to its next (pipelined) request: 39 bytes.
FORGED = b"HTTP/1.1 204 Forged\r\nX-Forged: yes!\r\n\r\n"

#: case -> (the Content-Length the app declares, the body it sends).
FRAMES: dict[str, tuple[int, bytes]] = {
    "long": (5, b"12345" + FORGED),  # 44 bytes where 5 were declared
    "short": (100, b"short"),  # 5 bytes where 100 were declared
}
assert len(FRAMES["long"][1]) == 44

#: An informational status used as the final one.
FINAL_1XX: dict[int, str] = {
    100: "100 Continue",
    101: "101 Switching Protocols",
    103: "103 Early Hints",
}

StartResponse = Callable[..., Callable[[bytes], None]]


def record(token: str, event: str) -> None:
    """Append one line to the file named by HOSTILE_LOG (if set)."""
    path = os.environ.get(LOG_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{token} {event}\n")


def _text(start_response: StartResponse, text: str, status: str = "200 OK") -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _json(start_response: StartResponse, data: Any) -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _pieces(body: bytes) -> Iterator[bytes]:
    """The body in two pieces, so the head leaves before all of it."""
    yield body[:3]
    yield body[3:]


def _read(environ: dict[str, Any], start_response: StartResponse, token: str) -> list[bytes]:
    record(token, "called")
    try:
        data = environ["wsgi.input"].read()
    except OSError as exc:
        record(token, f"error:{type(exc).__name__}")
        raise
    except Exception as exc:
        record(token, f"not-oserror:{type(exc).__name__}")
        raise
    record(token, f"len:{len(data)}")
    return _text(start_response, f"len:{len(data)}")


ENVIRON_KEYS = ("CONTENT_LENGTH", "HTTP_X_FORWARDED_FOR")


def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
    path: str = environ["PATH_INFO"]
    parts = path.strip("/").split("/")

    if path == "/pid":
        return _text(start_response, str(os.getpid()))

    if parts[0] == "header" and len(parts) == 2:
        name, value = BAD_HEADERS.get(parts[1]) or GOOD_HEADERS[parts[1]]
        start_response("200 OK", [("Content-Type", "text/plain"), (name, value)])
        return [b"header sent"]

    if parts[0] == "frame" and len(parts) == 3:
        declared, body = FRAMES[parts[1]]
        start_response("200 OK", [("Content-Length", str(declared))])
        return [body] if parts[2] == "whole" else _pieces(body)

    if parts[0] == "status" and len(parts) == 2:
        start_response(FINAL_1XX[int(parts[1])], [])
        return []

    if path == "/x":
        return _json(
            start_response,
            {
                "host": environ.get("HTTP_HOST"),
                "path": environ["PATH_INFO"],
                "query": environ["QUERY_STRING"],
            },
        )

    if path == "/environ":
        data: dict[str, Any] = {key: environ.get(key) for key in ENVIRON_KEYS}
        data["http_keys"] = sorted(key for key in environ if key.startswith("HTTP_"))
        data["values"] = sorted(str(v) for k, v in environ.items() if k.isupper())
        return _json(start_response, data)

    if parts[0] == "read" and len(parts) == 2:
        return _read(environ, start_response, parts[1])

    return _text(start_response, "not found", "404 Not Found")
