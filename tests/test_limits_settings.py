"""Every request limit is a setting: a flag, a SQUALL_* variable and a --config key.

One real server per way of setting them (flags, environment, config file),
each with its own values, and one with the defaults. A raw socket sends a
request just under each limit (served) and one just over it (414, 431 or
413); a WebSocket client sends a message at `--ws-max-size` (echoed) and one
byte over (close 1009). The app, written to a temporary directory, answers
the size of the body it read; it is ASGI, squall's own `Application` or WSGI,
so that the limits are seen to hold on every interface.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from squall.http.core import DEFAULT_LIMITS
from tests.service import ROOT, Service, free_port

TIMEOUT = 5.0

APP = """
from squall.web import Application, RequestHandler
from squall.websocket import WebSocketHandler


async def asgi(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": message["bytes"]})
            else:
                await send({"type": "websocket.send", "text": message["text"]})
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


class Echo(RequestHandler):
    def get(self):
        self.write(str(len(self.request.body)))

    post = get


class WebSocketEcho(WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))


web = Application([(r"/ws", WebSocketEcho), (r"/.*", Echo)])


def wsgi(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(len(body)).encode()]
"""


@dataclass(frozen=True)
class Values:
    line: int
    fields: int
    field_size: int
    headers: int
    body: int
    ws: int | None  # None: not checked (WSGI has no WebSocket)


@dataclass
class Server:
    service: Service
    port: int
    values: Values


MiB = 1024 * 1024
FLAGS = Values(line=300, fields=20, field_size=500, headers=4000, body=1000, ws=2000)
ENVIRONMENT = Values(line=400, fields=30, field_size=600, headers=5000, body=2048, ws=3072)
CONFIG_FILE = Values(line=350, fields=25, field_size=550, headers=4500, body=1024, ws=2500)
DEFAULTS = Values(
    line=DEFAULT_LIMITS.max_target_bytes,
    fields=DEFAULT_LIMITS.max_header_count,
    field_size=DEFAULT_LIMITS.max_field_bytes,
    headers=DEFAULT_LIMITS.max_header_bytes,
    body=DEFAULT_LIMITS.max_body_bytes,
    ws=None,
)


def start(
    base: Path, app: str, *options: str, env: dict[str, str] | None = None, values: Values
) -> Server:
    (base / "limits_app.py").write_text(APP)
    port = free_port()
    command = [sys.executable, "-m", "squall", f"limits_app:{app}", "--bind", f"127.0.0.1:{port}"]
    environment = {"PYTHONPATH": os.pathsep.join([str(ROOT), str(base)]), **(env or {})}
    service = Service([*command, "--workers", "1", *options], base / "squall.log", env=environment)
    try:
        service.wait_for_port(port)
        service.wait_for_workers(1)
    except BaseException:
        service.stop()
        raise
    return Server(service, port, values)


@pytest.fixture(scope="module")
def flags(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    v = FLAGS
    server = start(
        tmp_path_factory.mktemp("flags"),
        "asgi",
        *("--limit-request-line", str(v.line)),
        *("--limit-request-fields", str(v.fields)),
        *("--limit-request-field-size", str(v.field_size)),
        *("--limit-request-headers", str(v.headers)),
        *("--limit-request-body", str(v.body)),
        *("--ws-max-size", str(v.ws)),
        values=v,
    )
    yield server
    server.service.stop()


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    v = ENVIRONMENT
    env = {
        "SQUALL_LIMIT_REQUEST_LINE": str(v.line),
        "SQUALL_LIMIT_REQUEST_FIELDS": str(v.fields),
        "SQUALL_LIMIT_REQUEST_FIELD_SIZE": str(v.field_size),
        "SQUALL_LIMIT_REQUEST_HEADERS": str(v.headers),
        "SQUALL_LIMIT_REQUEST_BODY": "2K",  # a size with a suffix
        "SQUALL_WS_MAX_SIZE": "3K",
    }
    server = start(tmp_path_factory.mktemp("environment"), "web", env=env, values=v)
    yield server
    server.service.stop()


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    v = CONFIG_FILE
    base = tmp_path_factory.mktemp("config-file")
    config = base / "squall_conf.py"
    config.write_text(
        f"limit_request_line = {v.line}\n"
        f"limit_request_fields = {v.fields}\n"
        f"limit_request_field_size = {v.field_size}\n"
        f"limit_request_headers = {v.headers}\n"
        'limit_request_body = "1K"\n'
        f"ws_max_size = {v.ws}\n"
    )
    server = start(base, "asgi", "--config", str(config), values=v)
    yield server
    server.service.stop()


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory.mktemp("defaults"), "wsgi", values=DEFAULTS)
    yield server
    server.service.stop()


CONFIGURED = ["flags", "environment", "config_file"]
ALL = [*CONFIGURED, "defaults"]


@pytest.fixture(params=ALL)
def server(request: pytest.FixtureRequest) -> Server:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture(params=CONFIGURED)
def ws_server(request: pytest.FixtureRequest) -> Server:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


# -- a raw HTTP client --------------------------------------------------------------------


def ask(port: int, data: bytes) -> tuple[int, bytes]:
    """Send `data` on a new connection; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        return read_response(sock)


def read_response(sock: socket.socket, buffer: bytes = b"") -> tuple[int, bytes]:
    deadline = time.monotonic() + TIMEOUT
    while b"\r\n\r\n" not in buffer:
        assert time.monotonic() < deadline, buffer
        chunk = sock.recv(65536)
        assert chunk, f"closed after {buffer!r}"
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        assert time.monotonic() < deadline, buffer
        chunk = sock.recv(65536)
        assert chunk, f"closed after {head + body!r}"
        body += chunk
    return int(head.split(b" ", 2)[1]), body[:length]


def get(target: bytes = b"/", fields: list[bytes] | None = None) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: t", *(fields or [])]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def field(name: bytes, size: int) -> bytes:
    """A header field whose name and value together are `size` bytes."""
    assert size > len(name)
    return name + b": " + b"v" * (size - len(name))


def head_of_size(total: int, field_size: int) -> bytes:
    """A GET whose head, request line to blank line, is exactly `total` bytes."""
    fields: list[bytes] = []
    while True:
        request = get(b"/", fields)
        missing = total - len(request)
        if missing == 0:
            return request
        assert missing > 0
        name = b"x-fill-%d" % len(fields)
        size = min(missing - 4, field_size // 2)  # a field adds ": " and CRLF to its size
        if size <= len(name):  # no room for one more: lengthen the last one
            fields[-1] += b"v" * missing
        else:
            fields.append(field(name, size))


# -- HTTP limits --------------------------------------------------------------------------


def test_request_target(server: Server) -> None:
    limit = server.values.line
    assert ask(server.port, get(b"/" + b"a" * (limit - 1))) == (200, b"0")
    assert ask(server.port, get(b"/" + b"a" * limit))[0] == 414


def test_header_field_count(server: Server) -> None:
    limit = server.values.fields  # Host counts as one
    fields = [b"x-%d: 1" % i for i in range(limit - 1)]
    assert ask(server.port, get(b"/", fields)) == (200, b"0")
    assert ask(server.port, get(b"/", [*fields, b"x-last: 1"]))[0] == 431


@pytest.mark.parametrize("server", CONFIGURED, indirect=True)  # by default, the block bounds it
def test_header_field_size(server: Server) -> None:
    limit = server.values.field_size  # the whole line: name, ": ", value and CRLF
    assert ask(server.port, get(b"/", [field(b"x-big", limit - 4)])) == (200, b"0")
    assert ask(server.port, get(b"/", [field(b"x-big", limit - 3)]))[0] == 431


def test_header_block(server: Server) -> None:
    limit = server.values.headers
    # Within: the whole head, request line to blank line, is `limit` bytes.
    assert ask(server.port, head_of_size(limit, server.values.field_size)) == (200, b"0")
    # Over by any count: the head less its request line and blank line is over it.
    over = head_of_size(limit + 18 + len(b"GET / HTTP/1.1\r\n"), server.values.field_size)
    assert ask(server.port, over)[0] == 431


def post(body: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


def chunked(body: bytes, piece: int = 700) -> bytes:
    head = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    parts = [body[i : i + piece] for i in range(0, len(body), piece)]
    return head + b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("server", CONFIGURED, indirect=True)
def test_request_body(server: Server) -> None:
    limit = server.values.body
    assert ask(server.port, post(b"b" * limit)) == (200, str(limit).encode())
    # Over, by Content-Length: refused at the head, before any body is sent.
    over = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (limit + 1)
    assert ask(server.port, over)[0] == 413
    # Over, chunked: refused once the count passes the limit.
    assert ask(server.port, chunked(b"c" * limit)) == (200, str(limit).encode())
    assert ask(server.port, chunked(b"c" * (limit + 1)))[0] == 413


def test_default_limits() -> None:
    assert DEFAULTS.line == 8192
    assert DEFAULTS.fields == 100
    assert DEFAULTS.headers == 65536
    assert DEFAULTS.body == 100 * MiB


def test_default_body_limit_is_100_mib(defaults: Server) -> None:
    over = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (100 * MiB + 1)
    assert ask(defaults.port, over)[0] == 413
    # At the limit the body is wanted: the server asks for it (100 Continue).
    head = b"POST / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (
        100 * MiB
    )
    with socket.create_connection(("127.0.0.1", defaults.port), timeout=TIMEOUT) as sock:
        sock.sendall(head)
        assert read_response(sock)[0] == 100


# -- WebSocket ----------------------------------------------------------------------------


def test_websocket_message(ws_server: Server) -> None:
    limit = ws_server.values.ws
    assert limit is not None
    url = f"ws://127.0.0.1:{ws_server.port}/ws"
    with connect(
        url, proxy=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT, compression=None
    ) as ws:
        ws.send(b"m" * limit)
        assert ws.recv(timeout=TIMEOUT) == b"m" * limit
        with contextlib.suppress(ConnectionClosed):
            ws.send(b"m" * (limit + 1))
        with pytest.raises(ConnectionClosed) as closed:
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
