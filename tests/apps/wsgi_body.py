"""A PEP 3333 app that reads `wsgi.input` in a chosen way, for tests/test_wsgi.py.

- `/read?mode=M&token=T`  reads the whole body with mode M:
    `all` read(), `n` read(4) until b"", `length` read(CONTENT_LENGTH),
    `line` readline() until b"", `lines` readlines(), `iter` iteration.
  It answers `len:N sha:HEX` and, with a token, writes the same text into
  `T` in the directory named by `SQUALL_TEST_WSGI_BODY_DIR`; when a read raises,
  it writes `exc:CLASS:OSError=BOOL:got:N:MESSAGE` instead (N: the bytes the
  earlier reads returned) and answers 400.
- `/uncaught`             read() without catching anything.
- `/headers`              every HTTP_* and CONTENT_* key of the environ, as JSON.
- `/status?s=S`           start_response(S, []) with the status S.
- `/header?kind=K`        start_response with a bad header: K is `bytes-name`,
                          `bytes-value` or `int-value` (not str), or `crlf-value`
                          (CR LF in the value, which the HTTP core refuses).
- `/worker`               the pid.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from tests.apps import write_marker

RECORD_DIR_ENV = "SQUALL_TEST_WSGI_BODY_DIR"

StartResponse = Callable[..., Callable[[bytes], None]]


def _read(stream: Any, mode: str, environ: dict[str, Any], got: list[bytes]) -> None:
    """Read the whole body into `got`, piece by piece, the way `mode` says."""
    if mode == "all":
        got.append(stream.read())
    elif mode == "length":
        got.append(stream.read(int(environ.get("CONTENT_LENGTH") or 0)))
    elif mode == "n":
        while piece := stream.read(4):
            got.append(piece)
    elif mode == "line":
        while line := stream.readline():
            got.append(line)
    elif mode == "lines":
        got.extend(stream.readlines())
    elif mode == "iter":
        for line in stream:
            got.append(line)
    else:
        raise ValueError(f"unknown mode {mode!r}")


def _record(token: str, text: str) -> None:
    directory = os.environ.get(RECORD_DIR_ENV)
    if directory and token:
        write_marker(Path(directory, token), text)


def _text(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
    path = environ["PATH_INFO"]
    query = {key: values[0] for key, values in parse_qs(environ["QUERY_STRING"]).items()}

    if path == "/read":
        got: list[bytes] = []
        try:
            _read(environ["wsgi.input"], query.get("mode", "all"), environ, got)
        except Exception as exc:
            size = sum(map(len, got))
            text = f"exc:{type(exc).__name__}:OSError={isinstance(exc, OSError)}:got:{size}:{exc}"
            _record(query.get("token", ""), text)
            return _text(start_response, "400 Bad Request", text)
        body = b"".join(got)
        text = f"len:{len(body)} sha:{hashlib.sha256(body).hexdigest()}"
        _record(query.get("token", ""), text)
        return _text(start_response, "200 OK", text)

    if path == "/uncaught":
        body = environ["wsgi.input"].read()
        _record(query.get("token", ""), f"len:{len(body)}")
        return _text(start_response, "200 OK", f"len:{len(body)}")

    if path == "/headers":
        data = {k: v for k, v in environ.items() if k.startswith(("HTTP_", "CONTENT_"))}
        body = json.dumps(data).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    if path == "/status":
        start_response(query.get("s", ""), [("Content-Type", "text/plain")])
        return [b"status given"]

    if path == "/header":
        kind = query.get("kind", "")
        header: Any = {
            "bytes-name": (b"X-Bad", "v"),
            "bytes-value": ("X-Bad", b"v"),
            "int-value": ("X-Bad", 5),
            "crlf-value": ("X-Bad", "a\r\nX-Injected: 1"),
        }[kind]
        start_response("200 OK", [("Content-Type", "text/plain"), header])
        return [b"header given"]

    if path == "/worker":
        return _text(start_response, "200 OK", str(os.getpid()))

    return _text(start_response, "404 Not Found", "not found")
