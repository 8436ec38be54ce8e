"""WSGI (PEP 3333) served for real: `squall tests.apps.wsgi_app:app --interface wsgi`.

One service with two workers serves `tests.apps.wsgi_app` for the whole
module. The app's response iterable records its close() as a file in a
directory named by an environment variable, checked from the test. A second
service, one worker, serves `tests.apps.wsgi_body` for the request body
(`wsgi.input`), header-name and start_response checks; that app records what
its reads saw the same way.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.apps.wsgi_app import CLOSE_DIR_ENV, SECRET
from tests.apps.wsgi_body import RECORD_DIR_ENV
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


# -- wsgi.input integrity ----------------------------------------------------------------
#
# A body that ends before it is complete (the client half-closed or left, a
# chunk broke the framing, the body timed out) must never read as a short
# complete body: every read raises `RequestBodyError`, an OSError. Bytes that
# really arrived are returned to reads that they can satisfy; the read that
# needs more than arrived raises, and so does every read after it. Served by
# tests/apps/wsgi_body.py, one worker, which records what each read saw.

BODY_TIMEOUT = 2.0
READ_MODES = ("all", "length", "n", "line", "lines", "iter")
DISCONNECTED = "client disconnected before the request body was complete"
INVALID = "request body invalid"


@pytest.fixture(scope="module")
def body_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    base = tmp_path_factory.mktemp("wsgi-body")
    with served_app(
        base,
        "tests.apps.wsgi_body:app",
        "--interface",
        "wsgi",
        "--body-timeout",
        str(BODY_TIMEOUT),
        data_env=RECORD_DIR_ENV,
        workers=1,
    ) as served:
        yield served


def send_raw(port: int, *parts: bytes, half_close: bool = False, timeout: float = 5.0) -> bytes:
    """Send `parts` (a short pause between them), maybe half-close; what came back until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for i, part in enumerate(parts):
            if i:
                time.sleep(0.1)  # the server sees the parts in separate reads
            sock.sendall(part)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def record_of(server: ServedApp, token: str) -> str:
    path = server.data_dir / token
    wait_until(path.exists, timeout=10)
    return path.read_text()


def assert_raised(record: str, message: str, got: int) -> None:
    assert not record.startswith("len:"), f"a cut-off body read as complete: {record}"
    assert record.startswith(f"exc:RequestBodyError:OSError=True:got:{got}:"), record
    assert message in record, record


# What each read mode had returned when the read that needed more raised:
# b"line1\nabcd" of a declared 300,000 bytes. (A body that fits the
# connection's buffer, 256 KiB, is read before the app is called: cut off,
# the app never sees it, and the client gets a 400 from the server.)
STREAMED = 300_000
HALF_CLOSED_GOT = {"all": 0, "length": 0, "n": 8, "line": 6, "lines": 0, "iter": 6}


@pytest.mark.parametrize("mode", READ_MODES)
def test_half_closed_body_raises(body_server: ServedApp, mode: str) -> None:
    token = f"half-closed-{mode}"
    send_raw(
        body_server.port,
        f"POST /read?mode={mode}&token={token} HTTP/1.1\r\nHost: t\r\n"
        f"Content-Length: {STREAMED}\r\n\r\nline1\nabcd".encode(),
        half_close=True,
    )
    assert_raised(record_of(body_server, token), DISCONNECTED, HALF_CLOSED_GOT[mode])


def test_a_small_body_cut_off_never_reaches_the_app(body_server: ServedApp) -> None:
    token = "small-cut-off"
    raw = send_raw(
        body_server.port,
        f"POST /read?mode=all&token={token} HTTP/1.1\r\nHost: t\r\n"
        "Content-Length: 100\r\n\r\nline1\nabcd".encode(),
        half_close=True,
    )
    assert raw.startswith(b"HTTP/1.1 400 "), raw
    time.sleep(0.3)
    assert not (body_server.data_dir / token).exists()  # no thread was taken for it


# b"hello" arrived whole, then a chunk size that is not hex.
BAD_CHUNK_GOT = {"all": 0, "n": 4, "line": 0, "lines": 0, "iter": 0}


@pytest.mark.parametrize("mode", sorted(BAD_CHUNK_GOT))
def test_bad_chunk_raises(body_server: ServedApp, mode: str) -> None:
    token = f"bad-chunk-{mode}"
    raw = send_raw(
        body_server.port,
        f"POST /read?mode={mode}&token={token} HTTP/1.1\r\nHost: t\r\n"
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".encode(),
        b"xyz\r\nmore\r\n0\r\n\r\n",
    )
    assert_raised(record_of(body_server, token), INVALID, BAD_CHUNK_GOT[mode])
    assert raw.startswith(b"HTTP/1.1 400 "), raw  # the server's answer, not the app's


def test_silent_body_times_out_and_raises(body_server: ServedApp) -> None:
    token = "timed-out"
    send_raw(
        body_server.port,
        f"POST /read?mode=all&token={token} HTTP/1.1\r\nHost: t\r\n"
        f"Content-Length: {STREAMED}\r\n\r\nline1\nabcd".encode(),
        timeout=BODY_TIMEOUT + 5,
    )
    record = record_of(body_server, token)
    assert not record.startswith("len:"), record
    assert record.startswith("exc:RequestBodyError:OSError=True:got:0:"), record
    assert "timed out" in record or DISCONNECTED in record, record


def test_uncaught_body_error_is_one_line_and_worker_lives(body_server: ServedApp) -> None:
    pid = httpx.get(f"{body_server.url}/worker", timeout=TIMEOUT).text
    start = len(body_server.service.output())
    send_raw(
        body_server.port,
        b"POST /uncaught?token=uncaught HTTP/1.1\r\nHost: t\r\n"
        b"Content-Length: 300000\r\n\r\n0123456789",
        half_close=True,
    )
    body_server.service.wait_for_log("/uncaught", timeout=5)
    time.sleep(0.3)  # anything else it would log comes with it
    log = body_server.service.output()[start:]
    assert log.count(DISCONNECTED) == 1, log
    assert "Traceback" not in log, log
    assert not (body_server.data_dir / "uncaught").exists()  # read() never returned
    assert httpx.get(f"{body_server.url}/worker", timeout=TIMEOUT).text == pid


def _lines_body(size: int) -> bytes:
    line = bytes(range(32, 127)) + b"\n"  # 96 bytes
    return (line * (size // len(line) + 1))[:size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [11, 1_500_000], ids=["small", "large"])
@pytest.mark.parametrize("mode", READ_MODES)
def test_complete_body_reads_fully(
    body_server: ServedApp, mode: str, size: int, chunked: bool
) -> None:
    if chunked and mode == "length":
        pytest.skip("a chunked body has no CONTENT_LENGTH to read")
    body = _lines_body(size)
    content: Any = body
    if chunked:  # an iterable makes httpx send it chunked, in pieces
        content = iter([body[i : i + 100_000] for i in range(0, len(body), 100_000)])
    with httpx.Client(base_url=body_server.url, timeout=TIMEOUT) as fresh:
        response = fresh.post("/read", params={"mode": mode}, content=content)
    assert response.status_code == 200, response.text
    assert response.text == f"len:{size} sha:{hashlib.sha256(body).hexdigest()}"


# -- request header names ----------------------------------------------------------------


def test_header_names_with_underscores_are_dropped(body_server: ServedApp) -> None:
    # Otherwise X_Forwarded_For would pass for X-Forwarded-For, and
    # Content_Length override the real one (nginx and gunicorn drop them too).
    raw = send_raw(
        body_server.port,
        b"POST /headers HTTP/1.1\r\nHost: t\r\n"
        b"X_Forwarded_For: 6.6.6.6\r\n"
        b"X-Forwarded-For: 1.2.3.4\r\n"
        b"Content_Length: 999\r\n"
        b"Content_Type: text/evil\r\n"
        b"X_Only: underscore\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 4\r\nConnection: close\r\n\r\nbody",
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), raw
    environ = json.loads(body)
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"
    assert environ["CONTENT_LENGTH"] == "4"
    assert environ["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_X_ONLY" not in environ
    assert not {"6.6.6.6", "999", "text/evil", "underscore"} & set(environ.values()), environ


# -- start_response checks ---------------------------------------------------------------


@pytest.mark.parametrize("status", ["200", "200OK", "2000 OK", "20 OK", " 200 OK", "abc OK"])
def test_bad_status_is_500_with_a_clear_error(body_server: ServedApp, status: str) -> None:
    start = len(body_server.service.output())
    response = httpx.get(f"{body_server.url}/status", params={"s": status}, timeout=TIMEOUT)
    assert response.status_code == 500
    body_server.service.wait_for_log("status must be 'NNN reason'", timeout=5)
    assert repr(status) in body_server.service.output()[start:]


def test_custom_status_and_reason_accepted(body_server: ServedApp) -> None:
    response = httpx.get(
        f"{body_server.url}/status", params={"s": "299 Custom Reason"}, timeout=TIMEOUT
    )
    assert response.status_code == 299
    assert response.reason_phrase == "Custom Reason"
    assert response.content == b"status given"


@pytest.mark.parametrize("kind", ["bytes-name", "bytes-value", "int-value"])
def test_non_str_header_is_500_with_a_clear_error(body_server: ServedApp, kind: str) -> None:
    start = len(body_server.service.output())
    response = httpx.get(f"{body_server.url}/header", params={"kind": kind}, timeout=TIMEOUT)
    assert response.status_code == 500
    assert "x-bad" not in response.headers
    body_server.service.wait_for_log("header names and values must be str", timeout=5)
    assert "X-Bad" in body_server.service.output()[start:]


def test_body_service_healthy_at_the_end(body_server: ServedApp) -> None:
    assert httpx.get(f"{body_server.url}/worker", timeout=TIMEOUT).status_code == 200
    assert body_server.service.proc.poll() is None
    assert len(body_server.service.workers()) == 1


def test_header_refused_by_the_core_is_one_500(body_server: ServedApp) -> None:
    # The HTTP core refuses a value with CR LF (response splitting) for every
    # interface; WSGI passes it the app's headers and lets it answer.
    start = len(body_server.service.output())
    response = httpx.get(
        f"{body_server.url}/header", params={"kind": "crlf-value"}, timeout=TIMEOUT
    )
    assert response.status_code == 500
    assert "x-injected" not in response.headers
    assert "x-bad" not in response.headers
    time.sleep(0.3)  # anything else it would log comes with it
    log = body_server.service.output()[start:]
    assert "Traceback" not in log, log
    assert httpx.get(f"{body_server.url}/worker", timeout=TIMEOUT).status_code == 200
