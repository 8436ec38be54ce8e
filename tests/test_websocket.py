"""WebSocket served for real: ASGI (raw and FastAPI) and squall's `WebSocketHandler`.

Each app runs in its own service with two workers. Clients are the
`websockets` library's sync client and raw sockets (for what a polite client
never sends). The ASGI service pings every 0.5 s and gives a pong 1 s.
The graceful shutdown test stops its own service.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.apps.ws_asgi import RECORD_DIR_ENV
from tests.service import Service, Services, free_port, wait_until

TIMEOUT = 5.0
MAX_SIZE = 65536

# squall's WebSocketHandler is routed by `Application.upgrade`, which is wired
# separately; until then these tests must fail (and say so when they pass).


@dataclass
class Server:
    service: Service
    port: int
    record_dir: Path

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def record(self, name: str, timeout: float = TIMEOUT) -> str:
        path = self.record_dir / name
        wait_until(path.exists, timeout)
        return path.read_text()


def start(base: Path, app: str, *options: str) -> Server:
    port = free_port()
    record_dir = base / "records"
    record_dir.mkdir()
    service = Service(
        [
            sys.executable,
            "-m",
            "squall",
            app,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            *options,
        ],
        base / "squall.log",
        env={RECORD_DIR_ENV: str(record_dir)},
    )
    try:
        service.wait_for_port(port)
        service.wait_for_workers(2)
    except BaseException:
        service.stop()
        raise
    return Server(service, port, record_dir)


@pytest.fixture(scope="module")
def asgi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(
        tmp_path_factory.mktemp("ws-asgi"),
        "tests.apps.ws_asgi:app",
        "--interface",
        "asgi",
        "--ws-max-size",
        str(MAX_SIZE),
        "--ws-ping-interval",
        "0.5",
        "--ws-ping-timeout",
        "1",
    )
    try:
        yield server
    finally:
        server.service.stop()


@pytest.fixture(scope="module")
def fastapi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory.mktemp("ws-fastapi"), "tests.apps.ws_fastapi:app")
    try:
        yield server
    finally:
        server.service.stop()


@pytest.fixture(scope="module")
def squall_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start(tmp_path_factory.mktemp("ws-squall"), "tests.apps.ws_squall:app")
    try:
        yield server
    finally:
        server.service.stop()


def client(url: str, **kwargs: Any) -> ClientConnection:
    """The websockets sync client, every wait bounded, no proxy from the environment."""
    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("close_timeout", TIMEOUT)
    kwargs.setdefault("compression", None)
    return connect(url, proxy=None, **kwargs)


def refused(url: str, **kwargs: Any) -> tuple[int, bytes]:
    """The HTTP status and body with which the server refuses the handshake."""
    with pytest.raises(InvalidStatus) as info:
        client(url, **kwargs).close()
    response = info.value.response
    return response.status_code, bytes(response.body or b"")


def send_until_closed(ws: ClientConnection, message: Any) -> None:
    """Send what the server may close the connection over, while it is being sent."""
    with contextlib.suppress(ConnectionClosed):
        ws.send(message)


def closed_by_server(ws: ClientConnection) -> ConnectionClosed:
    """Read until the server closes; the exception that says how."""
    deadline = time.monotonic() + TIMEOUT
    with pytest.raises(ConnectionClosed) as info:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    return info.value


# -- raw sockets ------------------------------------------------------------------------

KEY = base64.b64encode(b"0123456789abcdef").decode()
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A WebSocket client on a plain socket, for frames no library would send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed by the server")
        self.buffer += data

    def handshake_bytes(self, path: str, **headers: str) -> bytes:
        fields = {
            "Host": "127.0.0.1",
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": KEY,
            "Sec-WebSocket-Version": "13",
        }
        fields.update({name.replace("_", "-"): value for name, value in headers.items()})
        lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items() if v)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def read_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    def open(self, path: str, extra: bytes = b"", **headers: str) -> None:
        self.sock.sendall(self.handshake_bytes(path, **headers) + extra)
        status, _ = self.read_head()
        assert status == 101

    def send(self, opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> None:
        self.sock.sendall(frame(opcode, payload, fin, mask))

    def read_frame(self) -> tuple[int, bytes]:
        while len(self.buffer) < 2:
            self._fill()
        opcode = self.buffer[0] & 0x0F
        length = self.buffer[1] & 0x7F
        offset = 2
        if length == 126:
            while len(self.buffer) < 4:
                self._fill()
            (length,) = struct.unpack("!H", self.buffer[2:4])
            offset = 4
        elif length == 127:
            while len(self.buffer) < 10:
                self._fill()
            (length,) = struct.unpack("!Q", self.buffer[2:10])
            offset = 10
        while len(self.buffer) < offset + length:
            self._fill()
        payload = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return opcode, payload

    def read_close(self) -> tuple[int, str]:
        """Skip data and pings until the close frame; its code and reason."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                return code, payload[2:].decode()

    def wait_eof(self) -> None:
        """The server closes the TCP connection (bounded by the socket timeout)."""
        while True:
            if not self.sock.recv(65536):
                return


# -- ASGI -----------------------------------------------------------------------------


def test_echo_text_and_bytes(asgi: Server) -> None:
    with client(asgi.ws("/echo")) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=TIMEOUT) == "héllo"
        ws.send(b"\x00\xffbytes")
        assert ws.recv(timeout=TIMEOUT) == b"\x00\xffbytes"
        ws.send("")
        assert ws.recv(timeout=TIMEOUT) == ""


def test_http_route_on_the_same_server(asgi: Server) -> None:
    response = httpx.get(asgi.http("/http"), timeout=TIMEOUT)
    assert (response.status_code, response.text) == (200, "plain http")


def test_fragmented_messages_are_reassembled(asgi: Server) -> None:
    with client(asgi.ws("/echo")) as ws:
        ws.send(iter(["frag", "ment", "ed"]))
        assert ws.recv(timeout=TIMEOUT) == "fragmented"
        ws.send(iter([b"ab", b"cd"]))
        assert ws.recv(timeout=TIMEOUT) == b"abcd"


def test_ping_between_fragments_is_answered(asgi: Server) -> None:
    with RawClient(asgi.port) as raw:
        raw.open("/echo")
        raw.send(TEXT, b"hel", fin=False)
        raw.send(PING, b"mid")
        raw.send(CONTINUATION, "lo wörld".encode())
        assert raw.read_frame() == (PONG, b"mid")
        assert raw.read_frame() == (TEXT, "hello wörld".encode())
        raw.send(CLOSE, struct.pack("!H", 1000))
        assert raw.read_close() == (1000, "")
        raw.wait_eof()


def test_frames_sent_with_the_handshake_are_not_lost(asgi: Server) -> None:
    with RawClient(asgi.port) as raw:
        raw.open("/echo", extra=frame(TEXT, b"early"))
        assert raw.read_frame() == (TEXT, b"early")


def test_scope(asgi: Server) -> None:
    with client(asgi.ws("/scope?a=1&b=%20"), subprotocols=["one", "two"]) as ws:
        scope = json.loads(ws.recv(timeout=TIMEOUT))
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == "/scope"
    assert scope["query_string"] == "a=1&b=%20"
    assert scope["root_path"] == ""
    assert scope["subprotocols"] == ["one", "two"]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == ["127.0.0.1", asgi.port]
    assert "worker_id" in scope["state"]
    assert "websocket.http.response" in scope["extensions"]
    headers = dict((k, v) for k, v in scope["headers"])
    assert headers["upgrade"].lower() == "websocket"
    assert headers["sec-websocket-protocol"] == "one, two"


def test_percent_encoded_path_is_decoded(asgi: Server) -> None:
    with client(asgi.ws("/%65cho")) as ws:  # %65 is "e"
        ws.send("decoded")
        assert ws.recv(timeout=TIMEOUT) == "decoded"


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(["chat.v1", "chat.v2"], "chat.v1"), (["other", "chat.v2"], "chat.v2"), (["other"], None)],
)
def test_subprotocol_negotiation(asgi: Server, offered: list[str], chosen: str | None) -> None:
    with client(asgi.ws("/subprotocol"), subprotocols=offered) as ws:
        assert ws.subprotocol == chosen
        assert ws.recv(timeout=TIMEOUT) == (chosen or "")


def test_accept_headers_reach_the_client(asgi: Server) -> None:
    with client(asgi.ws("/headers")) as ws:
        assert ws.response is not None
        assert ws.response.headers["x-accept"] == "yes"


@pytest.mark.parametrize("path", ["/reject", "/no-such-route"])
def test_close_before_accept_is_403(asgi: Server, path: str) -> None:
    assert refused(asgi.ws(path))[0] == 403


def test_denial_response_extension(asgi: Server) -> None:
    assert refused(asgi.ws("/deny")) == (401, b"denied")


@pytest.mark.parametrize("path", ["/raise-before-accept", "/return-before-accept"])
def test_app_failing_before_accept_is_500(asgi: Server, path: str) -> None:
    assert refused(asgi.ws(path))[0] == 500


def test_exception_after_accept_closes_1011(asgi: Server) -> None:
    with client(asgi.ws("/raise-after-accept")) as ws:
        ws.send("boom")
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1011


def test_return_after_accept_closes_1000(asgi: Server) -> None:
    with client(asgi.ws("/return-after-accept")) as ws:
        ws.send("bye")
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1000


def test_client_ping_gets_pong(asgi: Server) -> None:
    with client(asgi.ws("/echo")) as ws:
        assert ws.ping(b"are you there").wait(TIMEOUT)
        ws.send("still open")
        assert ws.recv(timeout=TIMEOUT) == "still open"


def test_server_close_code_and_reason_reach_the_client(asgi: Server) -> None:
    with client(asgi.ws("/server-close?code=4001&reason=see+you")) as ws:
        closed = closed_by_server(ws)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (4001, "see you")


def test_client_close_code_reaches_the_app(asgi: Server) -> None:
    with client(asgi.ws("/record?token=close")) as ws:
        ws.send("x")
        assert ws.recv(timeout=TIMEOUT) == "x"
        ws.close(code=4005, reason="client bye")
    assert asgi.record("disconnect-close") == "4005 client bye"


def test_abrupt_disconnect_is_1006(asgi: Server) -> None:
    with RawClient(asgi.port) as raw:
        raw.open("/record?token=abrupt")
    assert asgi.record("disconnect-abrupt") == "1006 "


def test_message_over_max_size_closes_1009(asgi: Server) -> None:
    with client(asgi.ws("/record?token=big")) as ws:
        ws.send(b"x" * MAX_SIZE)  # at the limit: fine
        assert ws.recv(timeout=TIMEOUT) == b"x" * MAX_SIZE
        send_until_closed(ws, b"x" * (MAX_SIZE + 1))
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1009
    assert asgi.record("disconnect-big").startswith("1009 ")


def test_fragmented_message_over_max_size_closes_1009(asgi: Server) -> None:
    piece = "y" * (MAX_SIZE // 4)
    with client(asgi.ws("/echo")) as ws:
        send_until_closed(ws, iter([piece] * 5))
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1009


def test_text_size_counts_utf8_bytes(asgi: Server) -> None:
    with client(asgi.ws("/echo")) as ws:
        ws.send("é" * (MAX_SIZE // 2))  # exactly MAX_SIZE bytes
        assert ws.recv(timeout=TIMEOUT) == "é" * (MAX_SIZE // 2)
        send_until_closed(ws, "é" * (MAX_SIZE // 2 + 1))
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1009


def test_unmasked_client_frame_is_a_protocol_error(asgi: Server) -> None:
    with RawClient(asgi.port) as raw:
        raw.open("/echo")
        raw.send(TEXT, b"unmasked", mask=False)
        code, _ = raw.read_close()
        assert code == 1002
        raw.wait_eof()


def test_invalid_utf8_closes_1007(asgi: Server) -> None:
    with RawClient(asgi.port) as raw:
        raw.open("/echo")
        raw.send(TEXT, b"\xff\xfe")
        code, _ = raw.read_close()
        assert code == 1007


def test_server_pings_and_closes_without_pong(asgi: Server) -> None:
    with RawClient(asgi.port) as raw:
        raw.open("/echo")
        started = time.monotonic()
        opcode, _ = raw.read_frame()
        assert opcode == PING
        code, reason = raw.read_close()  # no pong sent: 1 s later, 1011
        assert (code, reason) == (1011, "keepalive ping timeout")
        assert 0.9 < time.monotonic() - started < 4.0
        raw.wait_eof()


def test_client_answering_pings_stays_open(asgi: Server) -> None:
    with client(asgi.ws("/echo"), ping_interval=None) as ws:
        time.sleep(2.2)  # four server pings, each answered by the client library
        ws.send("alive")
        assert ws.recv(timeout=TIMEOUT) == "alive"


def test_app_reading_slowly_loses_nothing(asgi: Server) -> None:
    count = 500
    with client(asgi.ws(f"/slow-reader?n={count}")) as ws:
        for i in range(count):
            ws.send(str(i))
        assert ws.recv(timeout=TIMEOUT) == f"count={count} sum={sum(range(count))}"


def test_client_reading_slowly_gets_everything(asgi: Server) -> None:
    count, size = 300, 32 * 1024
    with client(asgi.ws(f"/flood?n={count}&size={size}"), max_queue=4) as ws:
        time.sleep(0.5)  # the server's writes pile up meanwhile
        for i in range(count):
            assert ws.recv(timeout=TIMEOUT) == bytes([i % 256]) * size
        assert ws.recv(timeout=TIMEOUT) == "done"


def test_send_after_close_raises_oserror(asgi: Server) -> None:
    with client(asgi.ws("/send-after-close")) as ws:
        closed_by_server(ws)
    assert asgi.record("send-after-close") == "WebSocketClosedError True"


def test_unknown_websocket_version_is_426(asgi: Server) -> None:
    with RawClient(asgi.port) as raw:
        raw.sock.sendall(raw.handshake_bytes("/echo", Sec_WebSocket_Version="8"))
        status, headers = raw.read_head()
        assert status == 426
        assert headers["sec-websocket-version"] == "13"
        raw.wait_eof()


def test_upgrade_header_without_handshake_is_answered_in_http(asgi: Server) -> None:
    with RawClient(asgi.port) as raw:
        raw.sock.sendall(raw.handshake_bytes("/http", Sec_WebSocket_Key=""))
        status, headers = raw.read_head()
        assert status == 200
        length = int(headers["content-length"])
        while len(raw.buffer) < length:
            raw._fill()
        assert raw.buffer == b"plain http"


def test_handshake_with_a_large_head_and_odd_host(asgi: Server) -> None:
    # 40 KiB of cookie (within squall's 64 KiB header limit) and a Host that is
    # no valid IDNA name: neither is the handshake's business.
    headers = {"Cookie": "c=" + "v" * 40_000, "Host": "xn--zz"}
    with RawClient(asgi.port) as raw:
        raw.open("/echo", **headers)
        raw.send(TEXT, b"big head")
        assert raw.read_frame() == (TEXT, b"big head")


def test_many_concurrent_connections(asgi: Server) -> None:
    errors: list[BaseException] = []

    def talk(n: int) -> None:
        try:
            with client(asgi.ws("/echo")) as ws:
                for i in range(20):
                    ws.send(f"{n}-{i}")
                    assert ws.recv(timeout=TIMEOUT) == f"{n}-{i}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=talk, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []


def test_wss_over_tls(services: Services, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(cert_file), append=i > 0)
    cert.private_key_pem.write_to_path(str(key_file))
    port = free_port()
    service = services.squall(
        "tests.apps.ws_asgi:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--interface",
        "asgi",
        "--certfile",
        str(cert_file),
        "--keyfile",
        str(key_file),
    )
    service.wait_for_port(port)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with client(f"wss://127.0.0.1:{port}/scope", ssl=context) as ws:
        scope = json.loads(ws.recv(timeout=TIMEOUT))
        assert scope["scheme"] == "wss"
        ws.send("secure")
        assert ws.recv(timeout=TIMEOUT) == "secure"


# -- FastAPI ----------------------------------------------------------------------------


def test_fastapi_websocket_and_http_on_one_server(fastapi_server: Server) -> None:
    with client(fastapi_server.ws("/ws")) as ws:
        ws.send(json.dumps({"n": 1, "s": "ü"}))
        assert json.loads(ws.recv(timeout=TIMEOUT)) == {"echo": {"n": 1, "s": "ü"}}
        response = httpx.get(fastapi_server.http("/http"), timeout=TIMEOUT)
        assert response.json() == {"hello": "http"}
        ws.send(json.dumps([1, 2]))
        assert json.loads(ws.recv(timeout=TIMEOUT)) == {"echo": [1, 2]}


def test_fastapi_path_and_query_parameters(fastapi_server: Server) -> None:
    with client(fastapi_server.ws("/items/42?q=hi")) as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT)) == {"item": 42, "q": "hi"}
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1000


def test_fastapi_unknown_websocket_route_is_403(fastapi_server: Server) -> None:
    assert refused(fastapi_server.ws("/nowhere"))[0] == 403


# -- squall's WebSocketHandler ------------------------------------------------------------


def test_handler_echo(squall_server: Server) -> None:
    with client(squall_server.ws("/ws/echo")) as ws:
        ws.send("text")
        assert ws.recv(timeout=TIMEOUT) == "text"
        ws.send(b"\x01bytes")
        assert ws.recv(timeout=TIMEOUT) == b"\x01bytes"


def test_handler_async_open_and_on_message_with_path_args(squall_server: Server) -> None:
    with client(squall_server.ws("/ws/hello/ana")) as ws:
        assert ws.recv(timeout=TIMEOUT) == "hello ana"
        for word in ("one", "two", "three"):
            ws.send(word)
        assert [ws.recv(timeout=TIMEOUT) for _ in range(3)] == [
            "ana: one",
            "ana: two",
            "ana: three",
        ]


def test_handler_selects_subprotocol(squall_server: Server) -> None:
    with client(squall_server.ws("/ws/sub"), subprotocols=["v1", "v2"]) as ws:
        assert ws.subprotocol == "v2"
        assert ws.recv(timeout=TIMEOUT) == "v2"
    with client(squall_server.ws("/ws/sub"), subprotocols=["v0"]) as ws:
        assert ws.subprotocol is None
        assert ws.recv(timeout=TIMEOUT) == ""


def test_handler_close_code_and_reason(squall_server: Server) -> None:
    with client(squall_server.ws("/ws/close")) as ws:
        closed = closed_by_server(ws)
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (4002, "handler bye")


def test_handler_exception_closes_1011(squall_server: Server) -> None:
    with client(squall_server.ws("/ws/raise")) as ws:
        ws.send("boom")
        closed = closed_by_server(ws)
    assert closed.rcvd is not None and closed.rcvd.code == 1011


def test_handler_prepare_answers_in_http(squall_server: Server) -> None:
    assert refused(squall_server.ws("/ws/forbidden"))[0] == 401


def test_handler_origin_check(squall_server: Server) -> None:
    assert refused(squall_server.ws("/ws/echo"), origin="http://evil.example")[0] == 403
    same = f"http://127.0.0.1:{squall_server.port}"
    with client(squall_server.ws("/ws/echo"), origin=same) as ws:
        ws.send("same origin")
        assert ws.recv(timeout=TIMEOUT) == "same origin"


def test_handler_on_close_sees_the_client_code(squall_server: Server) -> None:
    with client(squall_server.ws("/ws/record?token=h1")) as ws:
        ws.send("x")
        assert ws.recv(timeout=TIMEOUT) == "x"
        ws.close(code=4010, reason="done here")
    assert squall_server.record("handler-h1") == "4010 done here"


def test_handler_request(squall_server: Server) -> None:
    with client(squall_server.ws("/ws/request?x=1")) as ws:
        info = json.loads(ws.recv(timeout=TIMEOUT))
    assert info == {
        "method": "GET",
        "path": "/ws/request",
        "query": "x=1",
        "protocol": "http",
        "host": f"127.0.0.1:{squall_server.port}",
        "upgrade": "websocket",
    }


def test_plain_request_to_a_websocket_route_is_400(squall_server: Server) -> None:
    response = httpx.get(squall_server.http("/ws/echo"), timeout=TIMEOUT)
    assert response.status_code == 400


def test_handshake_to_a_non_websocket_route_is_answered_in_http(squall_server: Server) -> None:
    with RawClient(squall_server.port) as raw:
        raw.sock.sendall(raw.handshake_bytes("/plain"))
        status, headers = raw.read_head()
        assert status == 200
        assert headers["connection"] == "close"
        length = int(headers["content-length"])
        while len(raw.buffer) < length:
            raw._fill()
        assert raw.buffer == b"plain"
        raw.wait_eof()


def test_handshake_right_behind_an_answered_request(squall_server: Server) -> None:
    # The first answer is still held (it goes out once the read is handled) when
    # the handshake hands the connection over: it must reach the client first.
    with RawClient(squall_server.port) as raw:
        first = b"GET /plain HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        raw.sock.sendall(first + raw.handshake_bytes("/ws/echo"))
        status, headers = raw.read_head()
        assert status == 200
        length = int(headers["content-length"])
        while len(raw.buffer) < length:
            raw._fill()
        assert raw.buffer[:length] == b"plain"
        raw.buffer = raw.buffer[length:]
        status, _ = raw.read_head()
        assert status == 101
        raw.send(TEXT, b"after a pipelined request")
        assert raw.read_frame() == (TEXT, b"after a pipelined request")


# -- apps without WebSocket support ---------------------------------------------------------


def test_wsgi_app_answers_a_handshake_in_http(services: Services) -> None:
    port = free_port()
    service = services.squall(
        "tests.apps.wsgi_app:app", "--bind", f"127.0.0.1:{port}", "--interface", "wsgi"
    )
    service.wait_for_port(port)
    with RawClient(port) as raw:
        raw.sock.sendall(raw.handshake_bytes("/environ"))
        status, headers = raw.read_head()
        assert status == 200
        assert headers["content-type"].startswith("application/json")
        raw.wait_eof()


# -- shutdown (stops its own service) --------------------------------------------------------


def test_graceful_shutdown_closes_websockets_with_1001(services: Services) -> None:
    port = free_port()
    service = services.squall(
        "tests.apps.ws_asgi:app",
        "--bind",
        f"127.0.0.1:{port}",
        "--interface",
        "asgi",
        "--workers",
        "1",
        "--graceful-timeout",
        "5",
    )
    service.wait_for_port(port)
    service.wait_for_workers(1)
    with client(f"ws://127.0.0.1:{port}/echo") as ws:
        ws.send("before")
        assert ws.recv(timeout=TIMEOUT) == "before"
        started = time.monotonic()
        service.send(signal.SIGTERM)
        closed = closed_by_server(ws)
        assert closed.rcvd is not None and closed.rcvd.code == 1001
        assert time.monotonic() - started < 4.0
    assert service.wait(10) == 0
