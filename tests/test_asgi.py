"""ASGI 3 served for real: `squall tests.apps.raw_asgi:app --interface asgi`.

One service with two workers serves the whole module. The lifespan writes
files into a directory named by an environment variable, so its startup and
its shutdown (on SIGTERM) can be checked from outside the workers.
The shutdown test stops the service, so it is the last test of the module.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apps.raw_asgi import RECORD_DIR_ENV, SECRET
from tests.service import ServedApp, ask_each_worker, served_app, wait_until

TIMEOUT = httpx.Timeout(5.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    base = tmp_path_factory.mktemp("asgi")
    with served_app(
        base, "tests.apps.raw_asgi:app", "--interface", "asgi", data_env=RECORD_DIR_ENV
    ) as served:
        yield served


@pytest.fixture
def client(server: ServedApp) -> httpx.Client:
    return server.client


def startup_files(directory: Path) -> dict[int, str]:
    """pid -> worker id, as each worker's lifespan startup wrote it."""
    return {int(p.name.split("-")[1]): p.read_text() for p in directory.glob("startup-*")}


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


# -- lifespan and state -----------------------------------------------------------------


def test_lifespan_startup_ran_in_each_worker(server: ServedApp) -> None:
    wait_until(lambda: len(startup_files(server.data_dir)) == 2, timeout=10)
    started = startup_files(server.data_dir)
    assert sorted(started.values()) == ["0", "1"]
    assert set(started) <= set(server.service.workers())  # the live workers wrote them


def test_lifespan_state_is_visible_in_requests(server: ServedApp, client: httpx.Client) -> None:
    started = startup_files(server.data_dir)
    state = client.get("/scope").json()["state"]
    assert state["started"] is True
    # The state comes from the startup of the worker that answered.
    assert state["startup_pid"] in started
    assert started[state["startup_pid"]] == str(state["worker_id"])
    assert state["startup_worker_id"] == state["worker_id"]


def test_worker_id_is_0_or_1(client: httpx.Client) -> None:
    data = client.get("/worker").json()
    assert data["worker_id"] in (0, 1)


def test_both_workers_answer(server: ServedApp) -> None:
    seen = ask_each_worker(server.url, "/worker", workers=2)
    assert sorted(seen) == [0, 1], f"only worker(s) {sorted(seen)} answered"
    assert seen[0] != seen[1]


# -- the scope --------------------------------------------------------------------------


def test_scope_fields(server: ServedApp, client: httpx.Client) -> None:
    scope = client.get("/scope", params={"a": "1", "b": "two words"}).json()
    assert scope["type"] == "http"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == "/scope"
    assert scope["query_string"] == "a=1&b=two+words"
    assert scope["root_path"] == ""
    assert scope["client"][0] == "127.0.0.1"
    assert isinstance(scope["client"][1], int)
    assert scope["server"] == ["127.0.0.1", server.port]
    assert scope["state"]["worker_id"] in (0, 1)
    assert scope["has_headers"] is True


def test_scope_path_is_decoded_raw_path_is_not(server: ServedApp) -> None:
    raw = raw_exchange(
        server.port,
        b"GET /scope%20x/caf%C3%A9?q=%20 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    assert raw.startswith(b"HTTP/1.1 404 ")  # the app only knows "/scope"
    raw = raw_exchange(server.port, b"GET /scope?q=%20 HTTP/1.0\r\nHost: t\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    scope = httpx.Response(200, content=body).json()
    assert scope["http_version"] == "1.0"
    assert scope["query_string"] == "q=%20"


def test_method_in_scope(client: httpx.Client) -> None:
    assert client.post("/scope", content=b"ignored").json()["method"] == "POST"
    assert client.request("PATCH", "/scope").json()["method"] == "PATCH"


def test_request_headers_echo(client: httpx.Client) -> None:
    response = client.get("/headers", headers=[("X-Custom", "one"), ("X-Custom", "two")])
    assert response.status_code == 200
    headers = response.json()
    assert ["x-custom", "one"] in headers
    assert ["x-custom", "two"] in headers
    assert all(name == name.lower() for name, _ in headers)
    assert response.headers.get_list("x-multi") == ["one", "two"]
    assert response.headers["server"] == "squall"
    assert "date" in response.headers


def test_single_message_body_has_content_length(client: httpx.Client) -> None:
    response = client.get("/headers")
    assert response.headers["content-length"] == str(len(response.content))
    assert "transfer-encoding" not in response.headers


def test_head_has_app_length_and_no_body(server: ServedApp) -> None:
    # The app's own content-length is kept and no body follows it, whether
    # the app sends the body in one message or streams it.
    for path, length in (("/worker", None), ("/stream-length", "10")):
        raw = raw_exchange(
            server.port, f"HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
        )
        head, sep, body = raw.partition(b"\r\n\r\n")
        assert sep and head.startswith(b"HTTP/1.1 200 OK")
        assert body == b""
        lengths = [
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ]
        assert len(lengths) == 1
        assert int(lengths[0]) > 0
        if length is not None:
            assert lengths[0] == length.encode()


# -- streaming --------------------------------------------------------------------------


def test_streaming_response_arrives_in_pieces(client: httpx.Client) -> None:
    pieces: list[tuple[float, bytes]] = []
    with client.stream("GET", "/stream", params={"n": "5", "delay": "0.1"}) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        for piece in response.iter_raw():
            pieces.append((time.monotonic(), piece))
    body = b"".join(piece for _, piece in pieces)
    assert body == b"".join(f"chunk-{i};".encode() for i in range(5))
    assert len(pieces) >= 3
    # The first piece came long before the last: nothing waited for the whole body.
    assert pieces[-1][0] - pieces[0][0] >= 0.2


def test_streaming_with_app_content_length_is_not_chunked(client: httpx.Client) -> None:
    response = client.get("/stream-length")
    assert response.content == b"0123456789"
    assert response.headers["content-length"] == "10"
    assert "transfer-encoding" not in response.headers


def test_large_upload_echoed_exactly(client: httpx.Client) -> None:
    body = bytes(i % 251 for i in range(1 << 20))
    response = client.post("/echo", content=body)
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(body))
    assert response.content == body
    # 1 MiB cannot arrive in one http.request message (the server buffers less).
    assert int(response.headers["x-body-chunks"]) >= 2


def test_chunked_upload_echoed_as_stream(client: httpx.Client) -> None:
    parts = [b"first;", b"second;", b"third" * 1000]

    def generate() -> Iterator[bytes]:
        yield from parts

    response = client.post("/echo-stream", content=generate())
    assert response.status_code == 200
    assert response.content == b"".join(parts)


def test_empty_body_echo(client: httpx.Client) -> None:
    response = client.post("/echo")
    assert response.content == b""
    assert response.headers["x-body-chunks"] == "1"


def test_bodies_may_be_bytearrays_and_memoryviews(client: httpx.Client) -> None:
    whole = client.get("/buffer-bodies?whole")
    assert whole.status_code == 200 and whole.content == b"bytearray"
    assert whole.headers["content-length"] == "9"
    streamed = client.get("/buffer-bodies")
    assert streamed.status_code == 200 and streamed.content == b"one,two,three"


def test_a_worker_imports_nothing_it_does_not_use(client: httpx.Client) -> None:
    """HTTP/2's packages load with HTTP/2, and the Date header needs no email package
    (a third of a MiB per worker)."""
    client.get("/scope")
    loaded = set(client.get("/modules").json())
    assert "squall" in loaded
    assert not loaded & {"email", "h2", "hpack", "hyperframe"}


def test_start_without_body_message(client: httpx.Client) -> None:
    response = client.get("/start-only")
    assert response.status_code == 201
    assert response.headers["x-start"] == "only"
    assert response.content == b""


def test_empty_body_message(client: httpx.Client) -> None:
    response = client.get("/empty-body")
    assert response.status_code == 200
    assert response.headers["content-length"] == "0"
    assert response.content == b""


def test_send_after_client_disconnect_raises_oserror(server: ServedApp) -> None:
    # ASGI spec 2.4 (announced in scope["asgi"]): send() on a closed connection
    # raises an OSError, so an endless stream stops; the server does not log it.
    params = {"token": "t1"}
    with (
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as fresh,
        fresh.stream("GET", "/stream-until-disconnect", params=params) as response,
    ):
        assert response.status_code == 200
        assert next(response.iter_raw()).startswith(b"tick;")
    # Leaving the block with the body unread closes the connection.
    record = server.data_dir / "disconnect-t1"
    wait_until(record.exists, timeout=5)
    assert record.read_text() == "ClientDisconnected"
    assert "exception in ASGI app for GET /stream-until-disconnect" not in server.service.output()


def test_receive_after_response_is_disconnect(server: ServedApp, client: httpx.Client) -> None:
    response = client.post("/disconnect", content=b"abc")
    assert response.json() == {"body": "abc"}
    assert client.get("/worker").status_code == 200


# -- failures ---------------------------------------------------------------------------


def test_exception_is_500_and_logged(server: ServedApp, client: httpx.Client) -> None:
    pid = client.get("/worker").json()["pid"]
    response = client.get("/raise")
    assert response.status_code == 500
    assert SECRET not in response.text
    assert response.text == "Internal Server Error"
    server.service.wait_for_log(SECRET + " (before start)", timeout=5)
    assert "exception in ASGI app for GET /raise" in server.service.output()
    assert "Traceback (most recent call last)" in server.service.output()
    # Same connection, same worker: still serving.
    after = client.get("/worker")
    assert after.status_code == 200
    assert after.json()["pid"] == pid


@pytest.mark.parametrize("query", ["", "after-wait"])
def test_a_cancellation_the_app_raises_is_a_500(
    server: ServedApp, client: httpx.Client, query: str
) -> None:
    """No one cancelled the task: the request is answered, not left open (uvicorn answers 500 too)."""
    pid = client.get("/worker").json()["pid"]
    response = client.get("/raise-cancelled", params=query or None)
    assert response.status_code == 500 and response.text == "Internal Server Error"
    output = server.service.output()
    assert "ASGI app raised CancelledError for GET /raise-cancelled" in output
    assert "raise asyncio.CancelledError()" in output  # its traceback
    after = client.get("/worker")
    assert after.status_code == 200 and after.json()["pid"] == pid


def test_a_cancellation_the_app_raises_after_start_closes_connection(server: ServedApp) -> None:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as fresh:
        with pytest.raises(httpx.RemoteProtocolError):
            fresh.get("/raise-cancelled-after-start")
        assert fresh.get("/worker").status_code == 200


def test_exception_after_start_closes_connection(server: ServedApp) -> None:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as fresh:
        with pytest.raises(httpx.RemoteProtocolError):
            fresh.get("/raise-after-start")
        assert fresh.get("/worker").status_code == 200
    server.service.wait_for_log(SECRET + " (after start)", timeout=5)


def test_returning_without_response_is_500(server: ServedApp, client: httpx.Client) -> None:
    response = client.get("/no-response")
    assert response.status_code == 500
    server.service.wait_for_log("ASGI app returned without a response for GET /no-response", 5)
    assert client.get("/worker").status_code == 200


def test_body_before_start_is_500_and_logged(server: ServedApp, client: httpx.Client) -> None:
    response = client.get("/body-before-start")
    assert response.status_code == 500
    assert "too early" not in response.text
    server.service.wait_for_log("'http.response.body' before 'start'", timeout=5)
    assert "exception in ASGI app for GET /body-before-start" in server.service.output()
    assert client.get("/worker").status_code == 200


def test_double_start_is_500(server: ServedApp, client: httpx.Client) -> None:
    assert client.get("/double-start").status_code == 500
    server.service.wait_for_log("'http.response.start' twice", timeout=5)


def test_app_404(client: httpx.Client) -> None:
    response = client.get("/nothing")
    assert response.status_code == 404
    assert response.text == "not found"


# -- shutdown: last, it stops the module's service ----------------------------------------


def test_lifespan_shutdown_runs_on_sigterm(server: ServedApp) -> None:
    started = startup_files(server.data_dir)
    assert len(started) == 2
    status = server.service.stop()  # SIGTERM to the supervisor, which stops its workers
    assert status == 0, server.service.output()
    for pid, worker_id in started.items():
        shutdown = server.data_dir / f"shutdown-{pid}"
        assert shutdown.exists(), server.service.output()
        assert shutdown.read_text() == worker_id
    log = server.service.output()
    for failure in ("lifespan shutdown failed", "shutdown did not complete", "shutdown raised"):
        assert failure not in log
    assert server.service.leftovers() == []
