"""WSGI (PEP 3333) served for real: `squall tests.apps.wsgi_app:app --interface wsgi`.

One service with two workers serves the whole module. The app's response
iterable records its close() as a file in a directory named by an
environment variable, checked from the test.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.apps.wsgi_app import CLOSE_DIR_ENV, SECRET
from tests.service import ServedApp, ask_each_worker, served_app, wait_until

TIMEOUT = httpx.Timeout(5.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    base = tmp_path_factory.mktemp("wsgi")
    with served_app(
        base, "tests.apps.wsgi_app:app", "--interface", "wsgi", data_env=CLOSE_DIR_ENV
    ) as served:
        yield served


@pytest.fixture
def client(server: ServedApp) -> httpx.Client:
    return server.client


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


# -- request and environ ----------------------------------------------------------------


def test_echo_body(client: httpx.Client) -> None:
    response = client.post("/echo", content=b"hello wsgi", headers={"Content-Type": "text/x-test"})
    assert response.status_code == 200
    assert response.content == b"hello wsgi"
    assert response.headers["content-type"] == "text/x-test"
    assert response.headers["content-length"] == "10"
    assert response.headers["x-method"] == "POST"
    assert response.headers["server"] == "squall"
    assert "date" in response.headers


def test_echo_binary_body(client: httpx.Client) -> None:
    body = bytes(range(256)) * 200
    response = client.put("/echo", content=body)
    assert response.content == body
    assert response.headers["x-method"] == "PUT"


def test_large_body_echo(server: ServedApp) -> None:
    # Over the 256 KiB the server buffers before it pauses reading: an app that
    # runs once the body is whole must still get all of it.
    body = bytes(i % 251 for i in range(1 << 20))
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as fresh:
        response = fresh.post("/echo", content=body)
        assert response.status_code == 200
        assert response.content == body
        assert response.headers["content-length"] == str(len(body))
        assert fresh.get("/worker").status_code == 200  # the connection reads on


def test_environ_keys(server: ServedApp, client: httpx.Client) -> None:
    response = client.post(
        "/environ/sub",
        params={"a": "1", "b": "x y"},
        content=b"name=value",
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-Custom": "custom value"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    environ = response.json()
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/environ/sub"
    assert environ["QUERY_STRING"] == "a=1&b=x+y"
    assert environ["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert environ["CONTENT_LENGTH"] == "10"
    assert environ["HTTP_X_CUSTOM"] == "custom value"
    assert environ["HTTP_HOST"] == f"127.0.0.1:{server.port}"
    assert environ["SERVER_NAME"] == "127.0.0.1"
    assert environ["SERVER_PORT"] == str(server.port)
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["wsgi.version"] == [1, 0]
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input"] is True
    assert environ["wsgi.errors"] is True
    assert environ["squall.worker_id"] in (0, 1)


def test_environ_without_body_has_no_content_headers(client: httpx.Client) -> None:
    environ = client.get("/environ").json()
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["QUERY_STRING"] == ""
    assert environ["CONTENT_TYPE"] is None
    assert environ["CONTENT_LENGTH"] is None
    assert environ["HTTP_X_CUSTOM"] is None


def test_path_info_is_latin1_bytes_as_text(server: ServedApp) -> None:
    # PEP 3333: PATH_INFO holds the percent-decoded bytes, each as one latin-1
    # character; the app gets the UTF-8 text back with .encode("latin-1").
    raw = raw_exchange(
        server.port,
        b"GET /environ/caf%C3%A9%20%E2%98%83 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), raw
    path_info = httpx.Response(200, content=body).json()["PATH_INFO"]
    assert path_info.encode("latin-1").decode("utf-8") == "/environ/caf\u00e9 \u2603"


def test_both_workers_have_ids(server: ServedApp) -> None:
    seen = ask_each_worker(server.url, "/worker", workers=2)
    assert sorted(seen) == [0, 1], f"only worker(s) {sorted(seen)} answered"


# -- response bodies --------------------------------------------------------------------


def test_streaming_iterable_joined_and_closed(server: ServedApp, client: httpx.Client) -> None:
    response = client.get("/stream", params={"token": "joined", "n": "6"})
    assert response.status_code == 200
    assert response.content == b"".join(f"part-{i};".encode() for i in range(6))
    assert response.headers["content-type"] == "text/plain"
    marker = server.data_dir / "closed-joined"
    wait_until(marker.exists, timeout=5)
    assert int(marker.read_text()) in server.service.workers()


def test_streaming_iterable_arrives_chunked(server: ServedApp) -> None:
    raw = raw_exchange(
        server.port,
        b"GET /stream?token=wire&n=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body.endswith(b"0\r\n\r\n")
    wait_until((server.data_dir / "closed-wire").exists, timeout=5)


def test_close_called_for_head(server: ServedApp, client: httpx.Client) -> None:
    response = client.head("/stream", params={"token": "head"})
    assert response.status_code == 200
    assert response.content == b""
    wait_until((server.data_dir / "closed-head").exists, timeout=5)


def test_lazy_generator_start_response(client: httpx.Client) -> None:
    response = client.get("/lazy")
    assert response.status_code == 200
    assert response.content == b"lazy generator"


def test_write_callable_then_iterable(client: httpx.Client) -> None:
    response = client.get("/write")
    assert response.status_code == 200
    assert response.content == b"written directly then returned"


def test_list_body_has_content_length(client: httpx.Client) -> None:
    response = client.get("/worker")
    assert response.headers["content-length"] == str(len(response.content))
    assert "transfer-encoding" not in response.headers


def test_head_has_length_no_body(client: httpx.Client) -> None:
    get = client.post("/echo", content=b"12345")
    head = client.head("/environ")
    assert get.headers["content-length"] == "5"
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0


def test_app_404(client: httpx.Client) -> None:
    response = client.get("/missing")
    assert response.status_code == 404
    assert response.text == "not found"


# -- errors -----------------------------------------------------------------------------


def test_exception_is_500_logged_worker_survives(server: ServedApp, client: httpx.Client) -> None:
    pid = client.get("/worker").json()["pid"]
    response = client.get("/error")
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    assert SECRET not in response.text
    server.service.wait_for_log(SECRET + " (before start_response)", timeout=5)
    log = server.service.output()
    assert "exception in WSGI app" in log
    assert "Traceback (most recent call last)" in log
    after = client.get("/worker")  # same connection, same worker
    assert after.status_code == 200
    assert after.json()["pid"] == pid


def test_exception_in_iterable_before_first_chunk_is_500(
    server: ServedApp, client: httpx.Client
) -> None:
    response = client.get("/error-in-iter")
    assert response.status_code == 500
    assert SECRET not in response.text
    server.service.wait_for_log(SECRET + " (in iterable)", timeout=5)
    assert client.get("/worker").status_code == 200


def test_empty_chunk_does_not_send_the_head(server: ServedApp, client: httpx.Client) -> None:
    # PEP 3333: headers wait for the first non-empty chunk, so an error after
    # an empty one can still become a 500.
    response = client.get("/empty-then-error")
    assert response.status_code == 500
    server.service.wait_for_log(SECRET + " (after an empty chunk)", timeout=5)


def test_start_response_with_exc_info_replaces_head(client: httpx.Client) -> None:
    response = client.get("/exc-info")
    assert response.status_code == 503
    assert response.headers["x-handled"] == "yes"
    assert response.content == b"the app's own error page"


def test_service_healthy_at_the_end(server: ServedApp, client: httpx.Client) -> None:
    assert client.get("/worker").status_code == 200
    assert server.service.proc.poll() is None
    assert len(server.service.workers()) == 2
