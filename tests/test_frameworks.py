"""Real frameworks on squall: FastAPI, Starlette, Flask and Django, each in two workers.

Each framework's app (under tests/frameworks/) is served by `python -m squall` with
`--workers 2` in one module-scoped service, and driven over real sockets by httpx.
Apps that record what happens outside a request (lifespan, background tasks,
disconnects) write files into a directory named by `RECORD_DIR_ENV`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.frameworks import RECORD_DIR_ENV
from tests.service import ROOT, Service, free_port, wait_until

TIMEOUT = httpx.Timeout(5.0)
HAS_MULTIPART = importlib.util.find_spec("python_multipart") is not None


@dataclass
class Served:
    service: Service
    url: str
    client: httpx.Client
    record_dir: Path

    def fresh_client(self, cookies: dict[str, str] | None = None) -> httpx.Client:
        """A client of its own: its connection can be closed without touching `client`."""
        return httpx.Client(base_url=self.url, timeout=TIMEOUT, cookies=cookies)


@contextlib.contextmanager
def serve(
    spec: str,
    base: Path,
    interface: str = "auto",
    env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """`python -m squall SPEC --workers 2` on a free port, until the block ends."""
    port = free_port()
    record_dir = base / "records"
    record_dir.mkdir()
    service = Service(
        [
            sys.executable,
            "-m",
            "squall",
            spec,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--interface",
            interface,
        ],
        base / "squall.log",
        cwd=ROOT,
        env={RECORD_DIR_ENV: str(record_dir), **(env or {})},
    )
    try:
        service.wait_for_port(port)
        service.wait_for_workers(2)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=TIMEOUT) as client:
            yield Served(service, url, client, record_dir)
    finally:
        service.stop()


def records(directory: Path, prefix: str) -> dict[int, str]:
    """pid -> content of the `PREFIX-PID` files an app wrote."""
    return {int(p.name.rsplit("-", 1)[1]): p.read_text() for p in directory.glob(f"{prefix}-*")}


def timed_pieces(response: httpx.Response) -> list[tuple[float, bytes]]:
    return [(time.monotonic(), piece) for piece in response.iter_raw()]


# =======================================================================================
# FastAPI
# =======================================================================================


@pytest.fixture(scope="module")
def fastapi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve("tests.frameworks.fastapi_app:app", tmp_path_factory.mktemp("fastapi")) as s:
        wait_until(lambda: len(records(s.record_dir, "startup")) == 2, timeout=10)
        yield s


def test_fastapi_path_and_query_params(fastapi_server: Served) -> None:
    client = fastapi_server.client
    response = client.get("/items/42", params={"q": "needle", "limit": "5"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"item_id": 42, "q": "needle", "limit": 5}
    assert client.get("/items/7").json() == {"item_id": 7, "q": None, "limit": 10}
    # Validation of path and query parameters.
    bad_path = client.get("/items/not-a-number")
    assert bad_path.status_code == 422
    assert bad_path.json()["detail"][0]["loc"] == ["path", "item_id"]
    bad_query = client.get("/items/1", params={"limit": "1000"})
    assert bad_query.status_code == 422
    assert bad_query.json()["detail"][0]["loc"] == ["query", "limit"]


def test_fastapi_post_pydantic_model(fastapi_server: Served) -> None:
    client = fastapi_server.client
    response = client.post("/items", json={"name": "widget", "price": 2.5, "tags": ["a", "b"]})
    assert response.status_code == 201
    assert response.json() == {
        "item": {"name": "widget", "price": 2.5, "tags": ["a", "b"]},
        "total": 5.0,
    }


@pytest.mark.parametrize(
    ("payload", "loc"),
    [
        ({"price": 1.0}, ["body", "name"]),
        ({"name": "x", "price": -1}, ["body", "price"]),
        ({"name": "x", "price": "free"}, ["body", "price"]),
        ({"name": "x", "price": 1, "tags": "not-a-list"}, ["body", "tags"]),
    ],
)
def test_fastapi_bad_model_is_422(fastapi_server: Served, payload: object, loc: list[str]) -> None:
    response = fastapi_server.client.post("/items", json=payload)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [loc]


def test_fastapi_malformed_json_is_422(fastapi_server: Served) -> None:
    response = fastapi_server.client.post(
        "/items", content=b'{"name": "x", "price":', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_fastapi_streaming_response_in_order(fastapi_server: Served) -> None:
    client = fastapi_server.client
    with client.stream("GET", "/stream", params={"n": "4", "delay": "0.3"}) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        pieces = timed_pieces(response)
    assert b"".join(p for _, p in pieces) == b"chunk-0;chunk-1;chunk-2;chunk-3;"
    # The first chunk came well before the last: nothing buffered the whole body.
    assert len(pieces) >= 2
    assert pieces[-1][0] - pieces[0][0] >= 0.6
    # A longer stream, no delays: every chunk, in order, and the connection is reusable.
    body = client.get("/stream", params={"n": "500"}).text
    assert body == "".join(f"chunk-{i};" for i in range(500))


def test_fastapi_background_task_runs_after_response(fastapi_server: Served) -> None:
    directory = fastapi_server.record_dir
    # The task waits for go-T, which the test writes only once it has the response:
    # had the server held the response until the task ended, this request would
    # time out.
    response = fastapi_server.client.post("/background", params={"token": "bg1"})
    assert response.status_code == 200
    assert response.json() == {"queued": "bg1"}
    done = directory / "done-bg1"
    assert not done.exists()
    (directory / "go-bg1").write_text("go")
    wait_until(done.exists, timeout=10)
    wait_until(lambda: done.read_text() != "", timeout=5)
    assert done.read_text() == "saw-go"
    # The worker that ran the task is still serving.
    assert fastapi_server.client.get("/items/1").status_code == 200


def test_fastapi_lifespan_ran_in_each_worker(fastapi_server: Served) -> None:
    started = records(fastapi_server.record_dir, "startup")
    assert sorted(started.values()) == ["0", "1"]
    assert set(started) == set(fastapi_server.service.workers())


def test_fastapi_lifespan_state_in_requests(fastapi_server: Served) -> None:
    started = records(fastapi_server.record_dir, "startup")
    data = fastapi_server.client.get("/lifespan").json()
    assert data["started"] is True
    # The app.state the request sees was set by this very worker's startup.
    assert data["startup_pid"] == data["pid"]
    assert data["pid"] in started
    assert data["worker_id"] in (0, 1)
    assert started[data["pid"]] == str(data["worker_id"])
    assert data["startup_env_worker"] == str(data["worker_id"])
    # The state the lifespan yielded reaches request.state (ASGI lifespan state).
    assert data["resource"] == "opened-in-lifespan"
    # The lifespan scope carried squall's state, with this worker's id.
    assert data["lifespan_scope"] == {"has_state": True, "worker_id": data["worker_id"]}


def test_fastapi_http_exception_status(fastapi_server: Served) -> None:
    client = fastapi_server.client
    response = client.get("/teapot")
    assert response.status_code == 418
    assert response.json() == {"detail": "short and stout"}
    assert response.headers["x-pot"] == "tea"
    missing = client.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}
    wrong_method = client.delete("/items/1")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "GET"


def test_fastapi_headers_and_cookies(fastapi_server: Served) -> None:
    with fastapi_server.fresh_client(cookies={"flavour": "vanilla"}) as client:
        response = client.get("/headers", headers={"X-Echo": "ping"})
        assert response.status_code == 200
        assert response.json() == {"echo": "ping", "cookie": "vanilla"}
        assert response.headers["x-custom"] == "fastapi-value"
        set_cookie = response.headers["set-cookie"]
        assert set_cookie.startswith("session=s3cr3t;")
        assert "HttpOnly" in set_cookie
        assert client.cookies["session"] == "s3cr3t"
        # Two cookies, two Set-Cookie headers (never folded into one).
        assert [c.split("=")[0] for c in response.headers.get_list("set-cookie")] == [
            "session",
            "theme",
        ]


@pytest.mark.skipif(not HAS_MULTIPART, reason="python-multipart is not installed")
def test_fastapi_form_and_file_upload(fastapi_server: Served) -> None:
    payload = os.urandom(300_000)
    response = fastapi_server.client.post(
        "/upload",
        data={"note": "hello form"},
        files={"file": ("blob.bin", payload, "application/octet-stream")},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "note": "hello form",
        "filename": "blob.bin",
        "content_type": "application/octet-stream",
        "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    missing_file = fastapi_server.client.post("/upload", data={"note": "no file"})
    assert missing_file.status_code == 422


def test_fastapi_request_client(fastapi_server: Served) -> None:
    data = fastapi_server.client.get("/client").json()
    assert data["host"] == "127.0.0.1"
    assert isinstance(data["port"], int) and data["port"] > 0


def test_fastapi_stream_client_disconnect_is_not_an_error(fastapi_server: Served) -> None:
    params = {"n": "500", "delay": "0.02", "token": "cut"}
    with (
        fastapi_server.fresh_client() as client,
        client.stream("GET", "/stream", params=params) as response,
    ):
        assert next(response.iter_raw()).startswith(b"chunk-0;")
    # Leaving the block with the body unread closed the connection mid-stream.
    record = fastapi_server.record_dir / "stream-cut"
    wait_until(lambda: record.exists() and record.read_text() != "", timeout=10)
    assert record.read_text() != "ran-out"  # the stream stopped early
    assert fastapi_server.client.get("/items/1").status_code == 200
    # A client going away is routine: nothing is logged as an app failure. (Under
    # uvicorn, which announces ASGI spec 2.3, Starlette listens for the disconnect
    # instead and nothing is raised at all.)
    with contextlib.suppress(AssertionError):
        fastapi_server.service.wait_for_log("exception in ASGI app", timeout=1.0)
    assert "ClientDisconnect" not in fastapi_server.service.output()
    assert "exception in ASGI app" not in fastapi_server.service.output()


def test_fastapi_websocket_echo(fastapi_server: Served) -> None:
    from websockets.sync.client import connect

    ws_url = fastapi_server.url.replace("http://", "ws://") + "/ws"
    with connect(ws_url, open_timeout=5, close_timeout=5) as ws:
        for text in ("one", "two", "x" * 70_000):
            ws.send(text)
            assert ws.recv(timeout=5) == f"echo:{text}"


def test_fastapi_lifespan_shutdown_on_sigterm(fastapi_server: Served) -> None:
    """Stops the service: the last FastAPI test."""
    workers = set(fastapi_server.service.workers())
    assert len(workers) == 2
    fastapi_server.service.send(signal.SIGTERM)
    assert fastapi_server.service.wait(timeout=15) == 0
    assert set(records(fastapi_server.record_dir, "shutdown")) == workers


# =======================================================================================
# Starlette
# =======================================================================================


@pytest.fixture(scope="module")
def starlette_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(
        "tests.frameworks.starlette_app:app", tmp_path_factory.mktemp("starlette"), "asgi"
    ) as s:
        yield s


def test_starlette_routes_and_middleware_header(starlette_server: Served) -> None:
    client = starlette_server.client
    index = client.get("/")
    assert index.status_code == 200
    assert index.text == "hello, starlette"
    assert index.headers["content-type"] == "text/plain; charset=utf-8"
    assert index.headers["x-middleware"] == "starlette"
    data = client.get("/json", params={"q": "x y"})
    assert data.json() == {"framework": "starlette", "q": "x y"}
    assert data.headers["x-middleware"] == "starlette"
    assert client.get("/users/ad%C3%A9le").json() == {"name": "adéle"}
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.headers["x-middleware"] == "starlette"
    assert client.put("/").status_code == 405


def test_starlette_streaming_response(starlette_server: Served) -> None:
    with starlette_server.client.stream("GET", "/stream", params={"n": "300"}) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert response.headers["x-middleware"] == "starlette"
        body = response.read()
    assert body == "".join(f"part-{i};" for i in range(300)).encode()


def test_starlette_echo_one_mebibyte(starlette_server: Served) -> None:
    payload = os.urandom(1024 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    response = starlette_server.client.post(
        "/echo", content=payload, headers={"content-type": "application/x-test"}
    )
    assert response.status_code == 200
    assert response.content == payload
    assert response.headers["x-length"] == str(len(payload))
    assert response.headers["x-sha256"] == digest
    assert response.headers["content-type"] == "application/x-test"
    # The same body sent chunked (no Content-Length), in uneven pieces.

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(payload), 100_003):
            yield payload[start : start + 100_003]

    chunked = starlette_server.client.post("/echo", content=pieces())
    assert chunked.status_code == 200
    assert chunked.headers["x-sha256"] == digest
    assert chunked.content == payload


def test_starlette_lifespan_state(starlette_server: Served) -> None:
    workers = set(starlette_server.service.workers())
    seen: dict[int, list[int]] = {}
    for _ in range(6):
        data = starlette_server.client.get("/state").json()
        assert data["greeting"] == "hello from lifespan"
        assert data["worker_id"] in (0, 1)
        assert data["boot_pid"] == data["pid"]
        assert data["pid"] in workers
        seen.setdefault(data["pid"], []).append(data["counter"])
    # Each worker's lifespan state is its own; the per-request copy is shallow, so
    # the list the lifespan yielded is shared by that worker's requests.
    for counters in seen.values():
        assert counters == sorted(counters)
        assert counters[-1] - counters[0] == len(counters) - 1


def test_starlette_is_disconnected_while_connected(starlette_server: Served) -> None:
    response = starlette_server.client.post("/disconnected", content=b"x" * 5000)
    assert response.status_code == 200
    assert response.json() == {"size": 5000, "disconnected": [False, False]}


def test_starlette_is_disconnected_polling_stream(starlette_server: Served) -> None:
    # Read to the end: polling is_disconnected() between chunks does not disturb it.
    params = {"token": "full", "n": "20"}
    with starlette_server.client.stream("GET", "/watch", params=params) as response:
        assert response.status_code == 200
        body = response.read()
    assert body == "".join(f"tick-{i};" for i in range(20)).encode()
    record = starlette_server.record_dir / "watch-full"
    wait_until(lambda: record.exists() and record.read_text() != "", timeout=5)
    assert record.read_text() == "ran-out"


def test_starlette_stream_stops_on_client_disconnect(starlette_server: Served) -> None:
    with (
        starlette_server.fresh_client() as client,
        client.stream("GET", "/watch", params={"token": "cut"}) as response,
    ):
        assert next(response.iter_raw()).startswith(b"tick-0;")
    # Leaving the block with the body unread closed the connection mid-stream.
    record = starlette_server.record_dir / "watch-cut"
    wait_until(lambda: record.exists() and record.read_text() != "", timeout=10)
    # The stream stopped on the disconnect, seen either by is_disconnected() or by
    # the send that failed (spec 2.4 OSError, which the generator sees as it is closed).
    assert record.read_text() in {"is_disconnected", "GeneratorExit", "CancelledError"}
    assert "Traceback" not in starlette_server.service.output()
    assert starlette_server.client.get("/").status_code == 200


# =======================================================================================
# Flask
# =======================================================================================


@pytest.fixture(scope="module")
def flask_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # --interface auto: Flask's app is detected as WSGI.
    with serve("tests.frameworks.flask_app:app", tmp_path_factory.mktemp("flask")) as s:
        yield s


def test_flask_get_and_query(flask_server: Served) -> None:
    client = flask_server.client
    index = client.get("/")
    assert index.status_code == 200
    assert index.text == "hello, flask"
    assert index.headers["content-type"] == "text/html; charset=utf-8"
    assert index.headers["content-length"] == str(len("hello, flask"))
    assert client.get("/hello", params={"name": "zoë & co"}).text == "hello, zoë & co"


def test_flask_head_has_length_and_no_body(flask_server: Served) -> None:
    response = flask_server.client.head("/")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len("hello, flask"))
    assert response.content == b""
    assert flask_server.client.get("/").text == "hello, flask"  # the connection is in step


def test_flask_post_form(flask_server: Served) -> None:
    response = flask_server.client.post(
        "/form", data={"name": "ada", "tags": ["x", "y"], "empty": ""}
    )
    assert response.status_code == 200
    assert response.json() == {
        "fields": {"name": ["ada"], "tags": ["x", "y"], "empty": [""]},
        "content_type": "application/x-www-form-urlencoded",
    }


def test_flask_post_json(flask_server: Served) -> None:
    client = flask_server.client
    payload = {"b": [1, 2, 3], "a": {"nested": True}, "text": "ünïcode"}
    response = client.post("/json", json=payload)
    assert response.status_code == 200
    assert response.json() == {"received": payload, "keys": ["a", "b", "text"]}
    broken = client.post(
        "/json", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    wrong_type = client.post("/json", content=b"{}", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415


def test_flask_streamed_response(flask_server: Served) -> None:
    params = {"n": "200", "who": "streamer"}
    with flask_server.client.stream("GET", "/stream", params=params) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        body = response.read()
    # stream_with_context kept the request alive while the generator ran.
    assert body == "".join(f"streamer-{i};" for i in range(200)).encode()


def test_flask_headers_and_cookie(flask_server: Served) -> None:
    with flask_server.fresh_client() as client:
        response = client.get("/headers", headers={"X-Echo": "pong"})
        assert response.json() == {"echo": "pong"}
        assert response.headers["x-custom"] == "flask-value"
        assert response.headers["set-cookie"].startswith("session=flask-cookie;")
        assert client.cookies["session"] == "flask-cookie"
        assert [c.split("=")[0] for c in response.headers.get_list("set-cookie")] == [
            "session",
            "theme",
        ]


def test_flask_redirect(flask_server: Served) -> None:
    client = flask_server.client
    response = client.get("/old")
    assert response.status_code == 302
    assert response.headers["location"] == "/hello?name=redirected"
    followed = client.get("/old", follow_redirects=True)
    assert followed.status_code == 200
    assert followed.text == "hello, redirected"
    assert [r.status_code for r in followed.history] == [302]


def test_flask_abort_404(flask_server: Served) -> None:
    client = flask_server.client
    aborted = client.get("/missing")
    assert aborted.status_code == 404
    assert "Not Found" in aborted.text
    assert client.get("/no/such/route").status_code == 404
    assert client.delete("/").status_code == 405


def test_flask_exception_is_500(flask_server: Served) -> None:
    response = flask_server.client.get("/boom")
    assert response.status_code == 500
    assert "Internal Server Error" in response.text
    assert "failed on purpose" not in response.text
    # Flask logged it (to wsgi.errors, the worker's stderr); the worker serves on.
    flask_server.service.wait_for_log("flask view failed on purpose", timeout=5)
    assert flask_server.client.get("/").status_code == 200


def test_flask_worker_id(flask_server: Served) -> None:
    workers = set(flask_server.service.workers())
    data = flask_server.client.get("/worker").json()
    assert data["worker_id"] in (0, 1)
    assert data["pid"] in workers


def test_flask_post_body_with_length(flask_server: Served) -> None:
    payload = os.urandom(200_000)
    response = flask_server.client.post("/echo", content=payload)
    assert response.json() == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_flask_chunked_request_body(flask_server: Served) -> None:
    # gunicorn sets environ["wsgi.input_terminated"] = True; Werkzeug then reads
    # wsgi.input to its end. Without it (and without CONTENT_LENGTH) Werkzeug
    # returns an empty stream, by design.
    payload = os.urandom(200_000)

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(payload), 65_536):
            yield payload[start : start + 65_536]

    response = flask_server.client.post("/echo", content=pieces())
    assert response.json() == {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def test_flask_stream_stops_when_client_disconnects(flask_server: Served) -> None:
    with (
        flask_server.fresh_client() as client,
        client.stream("GET", "/ticks", params={"token": "cut"}) as response,
    ):
        assert next(response.iter_raw()).startswith(b"tick-0;")
    # Leaving the block with the body unread closed the connection mid-stream. Like
    # gunicorn (whose write raises), the server should stop and close() the iterable.
    record = flask_server.record_dir / "ticks-cut"
    wait_until(lambda: record.exists() and record.read_text() != "", timeout=10)
    outcome = record.read_text()
    assert outcome.startswith("closed "), outcome
    assert int(outcome.split()[1]) < 150  # well before the stream's own end


def test_flask_stream_waits_for_slow_client(flask_server: Served) -> None:
    progress = flask_server.record_dir / "big-slow"
    with (
        flask_server.fresh_client() as client,
        client.stream("GET", "/big", params={"token": "slow"}) as response,
    ):
        assert response.status_code == 200
        next(response.iter_raw())
        time.sleep(1.0)  # a client that reads slowly
        produced = progress.read_text()
        # The generator may run ahead by what the socket buffers hold (a few MiB),
        # not by the whole 64 MiB response.
        assert produced != "all"
        assert int(produced) < 32 * 1024 * 1024


# =======================================================================================
# Django
# =======================================================================================


@pytest.fixture(scope="module")
def django_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # --interface auto: Django's WSGIHandler is detected as WSGI.
    with serve(
        "tests.frameworks.django_project.wsgi:application",
        tmp_path_factory.mktemp("django"),
        env={"DJANGO_SETTINGS_MODULE": "tests.frameworks.django_project.settings"},
    ) as s:
        yield s


def test_django_http_response(django_server: Served) -> None:
    response = django_server.client.get("/")
    assert response.status_code == 200
    assert response.text == "hello, django"
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["content-length"] == str(len("hello, django"))
    assert response.headers["x-custom"] == "django-value"
    # SecurityMiddleware ran.
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "same-origin"


def test_django_json_response(django_server: Served) -> None:
    client = django_server.client
    response = client.get("/json/", params={"q": "search term"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"framework": "django", "q": "search term", "path": "/json/"}
    assert client.get("/items/12/").json() == {"item_id": 12}


def test_django_append_slash_redirect(django_server: Served) -> None:
    response = django_server.client.get("/json", params={"q": "1"})
    assert response.status_code == 301
    assert response.headers["location"] == "/json/?q=1"


def test_django_post_echo_csrf_exempt(django_server: Served) -> None:
    client = django_server.client
    payload = os.urandom(256 * 1024)
    response = client.post(
        "/echo/", content=payload, headers={"content-type": "application/octet-stream"}
    )
    assert response.status_code == 200
    assert response.content == payload
    assert response.headers["x-length"] == str(len(payload))
    text = client.post("/echo/", content="grüße".encode(), headers={"content-type": "text/plain"})
    assert text.content == "grüße".encode()
    assert text.headers["content-type"] == "text/plain"
    assert client.get("/echo/").status_code == 405


def test_django_csrf_still_guards_other_views(django_server: Served) -> None:
    client = django_server.client
    assert client.get("/guarded/").text == "passed"
    assert client.post("/guarded/", content=b"x").status_code == 403


def test_django_streaming_response(django_server: Served) -> None:
    with django_server.client.stream("GET", "/stream/", params={"n": "150"}) as response:
        assert response.status_code == 200
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
        body = response.read()
    assert body == "".join(f"row-{i};" for i in range(150)).encode()


def test_django_unknown_url_is_404(django_server: Served) -> None:
    response = django_server.client.get("/no/such/page/")
    assert response.status_code == 404
    assert "Not Found" in response.text


def test_django_disallowed_host_is_400(django_server: Served) -> None:
    response = django_server.client.get("/", headers={"host": "evil.example"})
    assert response.status_code == 400
    assert django_server.client.get("/", headers={"host": "localhost"}).status_code == 200


def test_django_worker_id(django_server: Served) -> None:
    workers = set(django_server.service.workers())
    data = django_server.client.get("/worker/").json()
    assert data["worker_id"] in (0, 1)
    assert data["pid"] in workers
