"""squall's handler API (squall.web), served for real: `squall tests.apps.handlers:app`.

One service with two workers serves the whole module; every request goes
through httpx (or a raw socket, where the bytes on the wire matter).
"""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from squall.web import Application
from tests.apps.handlers import SECRET, HelloHandler, RequestInfoHandler
from tests.service import ServedApp, served_app, wait_until

TIMEOUT = httpx.Timeout(5.0)
JSON_BODY = b'{"hello": "world", "number": 3, "html": "<\\/script>"}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApp]:
    base = tmp_path_factory.mktemp("web")
    with served_app(base, "tests.apps.handlers:app") as served:
        yield served


@pytest.fixture
def client(server: ServedApp) -> httpx.Client:
    return server.client


def raw_request(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` on a new connection and read until the server closes it."""
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


def split_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, raw
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


# -- basic responses -------------------------------------------------------------------


def test_hello_with_standard_headers(client: httpx.Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.text == "Hello, world"
    assert response.headers["content-type"] == "text/html; charset=UTF-8"
    assert response.headers["content-length"] == str(len(b"Hello, world"))
    assert response.headers["server"] == "squall"
    date = email.utils.parsedate_to_datetime(response.headers["date"])
    assert abs(date.timestamp() - time.time()) < 60
    assert "transfer-encoding" not in response.headers


def test_dict_is_json(client: httpx.Client) -> None:
    response = client.get("/json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    assert response.json() == {"hello": "world", "number": 3, "html": "</script>"}
    assert response.content == JSON_BODY  # "</" is escaped in JSON output
    assert response.headers["content-length"] == str(len(response.content))


def test_bytes_are_written_as_is(client: httpx.Client) -> None:
    response = client.get("/bytes")
    assert response.content == b"\x00\x01\x02\xff"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-length"] == "4"


def test_str_is_utf8_and_length_counts_bytes(client: httpx.Client) -> None:
    response = client.get("/unicode")
    assert response.text == "h\u00e9llo \u2603"
    assert response.headers["content-length"] == str(len("h\u00e9llo \u2603".encode()))


def test_set_header_add_header_set_status(client: httpx.Client) -> None:
    response = client.get("/headers")
    assert response.status_code == 201
    assert response.headers.get_list("x-single") == ["second"]
    assert response.headers.get_list("x-multi") == ["a", "b"]
    assert response.headers["x-number"] == "42"
    assert response.headers.get_list("content-type") == ["text/plain"]
    assert response.text == "headers"


@pytest.mark.parametrize("code", [200, 202, 299, 404, 410, 503])
def test_set_status_codes(client: httpx.Client, code: int) -> None:
    response = client.get(f"/status/{code}")
    assert response.status_code == code
    assert response.text == f"status {code}"


def test_204_has_no_body_and_no_length(server: ServedApp) -> None:
    raw = raw_request(
        server.port, b"GET /status/204 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    status, headers, body = split_response(raw)
    assert status == "HTTP/1.1 204 No Content"
    assert "content-length" not in headers
    assert "transfer-encoding" not in headers
    assert body == b""


# -- routing and arguments ---------------------------------------------------------------


def test_positional_path_args(client: httpx.Client) -> None:
    response = client.get("/positional/abc/123")
    assert response.json() == {"args": ["abc", "123"], "path_args": ["abc", "123"]}


def test_named_path_args(client: httpx.Client) -> None:
    response = client.get("/named/widget/7")
    assert response.json() == {
        "name": "widget",
        "number": "7",
        "path_kwargs": {"name": "widget", "number": "7"},
    }


def test_optional_named_group_not_matched_uses_default(client: httpx.Client) -> None:
    # A named group that took no part in the match is left out: the method's
    # default applies (it used to arrive as a positional "").
    assert client.get("/optional").json() == {"page": "1", "path_args": [], "path_kwargs": {}}
    assert client.get("/optional/5").json() == {
        "page": "5",
        "path_args": [],
        "path_kwargs": {"page": "5"},
    }


def test_route_must_match_whole_path(client: httpx.Client) -> None:
    assert client.get("/positional/abc/123/extra").status_code == 404
    assert client.get("/jsonx").status_code == 404


def test_query_arguments(client: httpx.Client) -> None:
    response = client.get(
        "/query",
        params=[
            ("name", "  spaced  "),
            ("tag", "a"),
            ("tag", "b"),
            ("q", "x y"),
            ("padded", " p "),
        ],
    )
    assert response.status_code == 200
    assert response.json() == {
        "name": "spaced",
        "default": "fallback",
        "none": None,
        "tags": ["a", "b"],
        "query": "x y",
        "query_all": ["a", "b"],
        "padded": "p",
        "raw_padded": " p ",
    }


def test_query_argument_last_value_wins_and_blank_kept(client: httpx.Client) -> None:
    response = client.get("/query?name=first&name=second&q=")
    data = response.json()
    assert data["name"] == "second"
    assert data["query"] == ""


def test_form_body_arguments(client: httpx.Client) -> None:
    response = client.post(
        "/form?either=from-query",
        data={"name": "n\u00e9", "multi": ["1", "2"], "either": "from-body"},
    )
    assert response.status_code == 200
    assert response.json() == {
        "name": "n\u00e9",
        "multi": ["1", "2"],
        "either": "from-body",  # get_argument: the last of query + body
        "all_either": ["from-query", "from-body"],
        "query_only": "from-query",
        "body_default": "none-given",
    }


def test_form_arguments_need_form_content_type(client: httpx.Client) -> None:
    response = client.post("/required", content=b"needed=1", headers={"content-type": "text/plain"})
    assert response.status_code == 400


def test_missing_argument_is_400(server: ServedApp, client: httpx.Client) -> None:
    response = client.get("/required")
    assert response.status_code == 400
    assert "400: Bad Request" in response.text
    assert client.post("/required", data={"other": "x"}).status_code == 400
    assert client.get("/required", params={"needed": "yes"}).text == "yes"
    assert client.post("/required", data={"needed": "posted"}).text == "posted"
    server.service.wait_for_log("Missing argument needed", timeout=5)


def test_initialize_receives_route_kwargs(client: httpx.Client) -> None:
    assert client.get("/init").text == "hi!"
    assert client.get("/init-default").text == "none"


# -- the request object -----------------------------------------------------------------


def test_request_attributes(server: ServedApp, client: httpx.Client) -> None:
    response = client.post(
        "/request/a%20b?x=1&y=2",
        content=b"the body",
        headers=[("X-Custom", "one"), ("X-Custom", "two")],
    )
    data = response.json()
    assert data["method"] == "POST"
    assert data["uri"] == "/request/a%20b?x=1&y=2"
    assert data["path"] == "/request/a b"
    assert data["query"] == "x=1&y=2"
    assert data["version"] == "HTTP/1.1"
    assert data["remote_ip"] == "127.0.0.1"
    assert data["host"] == f"127.0.0.1:{server.port}"
    assert data["full_url"] == f"http://127.0.0.1:{server.port}/request/a%20b?x=1&y=2"
    assert data["x_custom"] == "one"
    assert data["x_custom_list"] == ["one", "two"]
    assert data["has_x_custom"] is True
    assert data["body"] == "the body"


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_other_methods_reach_their_handler(client: httpx.Client, method: str) -> None:
    response = client.request(method, "/echo", content=b"payload-" + method.encode())
    assert response.status_code == 200
    assert response.headers["x-method"] == method
    assert response.content == b"payload-" + method.encode()


def test_binary_body_echo(client: httpx.Client) -> None:
    body = bytes(range(256)) * 64
    response = client.post("/echo", content=body)
    assert response.content == body
    assert response.headers["content-length"] == str(len(body))


def test_large_body_echo(server: ServedApp) -> None:
    # Over the 256 KiB the server buffers before it pauses reading: an app that
    # runs once the body is whole must still get all of it.
    body = bytes(i % 251 for i in range(1 << 20))
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as fresh:
        response = fresh.post("/echo", content=body)
        assert response.status_code == 200
        assert response.content == body
        assert response.headers["content-length"] == str(len(body))
        assert fresh.get("/").status_code == 200  # the connection reads on


# -- redirects and errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "location"),
    [
        ("temporary", 302, "/target"),
        ("permanent", 301, "/target"),
        ("see-other", 303, "/target?from=see-other"),
        ("relative", 302, "/redirect/sibling"),
    ],
)
def test_redirect(client: httpx.Client, kind: str, status: int, location: str) -> None:
    response = client.get(f"/redirect/{kind}", follow_redirects=False)
    assert response.status_code == status
    assert response.headers["location"] == location
    assert response.content == b""
    assert response.headers["content-length"] == "0"


def test_http_error_custom_status_and_log_message(server: ServedApp, client: httpx.Client) -> None:
    response = client.get("/teapot")
    assert response.status_code == 418
    assert response.reason_phrase == "I'm a Teapot"
    assert "418" in response.text
    assert "log message" not in response.text
    server.service.wait_for_log("teapot log message for the log", timeout=5)


def test_write_error_override(client: httpx.Client) -> None:
    response = client.get("/custom-error")
    assert response.status_code == 409
    assert response.json() == {"error": 409}
    assert response.headers["x-error-page"] == "custom"


def test_send_error_discards_output_and_headers(client: httpx.Client) -> None:
    response = client.get("/send-error")
    assert response.status_code == 503
    assert "partial output" not in response.text
    assert "503: Service Unavailable" in response.text
    assert "x-dropped" not in response.headers


def test_404_for_unrouted_path(client: httpx.Client) -> None:
    response = client.get("/no/such/path")
    assert response.status_code == 404
    assert response.headers["content-type"] == "text/html; charset=UTF-8"
    assert "404: Not Found" in response.text


def test_405_for_missing_method(client: httpx.Client) -> None:
    response = client.post("/get-only", content=b"x")
    assert response.status_code == 405
    assert "x-get-ran" not in response.headers
    assert client.delete("/json").status_code == 405


def test_405_for_unsupported_method(client: httpx.Client) -> None:
    assert client.request("PROPFIND", "/get-only").status_code == 405


def test_uncaught_exception_is_500_logged_and_worker_survives(
    server: ServedApp, client: httpx.Client
) -> None:
    before = client.get("/request/who")
    pid = before.json()["pid"]

    response = client.get("/error")
    assert response.status_code == 500
    assert SECRET not in response.text
    assert "RuntimeError" not in response.text
    assert "Traceback" not in response.text
    assert "written before the failure" not in response.text
    assert "500: Internal Server Error" in response.text

    server.service.wait_for_log(SECRET + " (sync)", timeout=5)
    log = server.service.output()
    assert "uncaught exception in GET /error" in log
    assert "Traceback (most recent call last)" in log

    # The same connection, so the same worker: it is alive and serving.
    after = client.get("/request/who")
    assert after.status_code == 200
    assert after.json()["pid"] == pid
    assert server.service.proc.poll() is None


def test_write_after_finish_is_logged_response_kept(
    server: ServedApp, client: httpx.Client
) -> None:
    response = client.get("/write-after-finish")
    assert response.status_code == 200
    assert response.text == "done"
    server.service.wait_for_log("cannot write() after finish()", timeout=5)
    assert client.get("/").status_code == 200


def test_invalid_status_is_500(client: httpx.Client) -> None:
    assert client.get("/bad-status").status_code == 500


# -- HEAD --------------------------------------------------------------------------------


def test_head_falls_back_to_get_without_body(client: httpx.Client) -> None:
    get = client.get("/get-only")
    head = client.head("/get-only")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"] == "13"
    assert head.headers["x-get-ran"] == "yes"


def test_head_on_the_wire_has_length_but_no_body(server: ServedApp) -> None:
    # Two HEADs on one connection: if a body leaked after the first head, the
    # second response would not start right after it.
    request = b"HEAD /get-only HTTP/1.1\r\nHost: t\r\n\r\n"
    last = b"HEAD /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    raw = raw_request(server.port, request + last)
    first, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 13\r\n" in first + b"\r\n"
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")
    status, headers, body = split_response(rest)
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-length"] == str(len(JSON_BODY))
    assert body == b""


def test_explicit_head_method_wins(client: httpx.Client) -> None:
    response = client.head("/head")
    assert response.headers["x-explicit-head"] == "yes"
    assert response.content == b""


def test_head_404(client: httpx.Client) -> None:
    response = client.head("/nothing-here")
    assert response.status_code == 404
    assert response.content == b""
    assert int(response.headers["content-length"]) > 0


# -- async handlers and hooks ------------------------------------------------------------


def test_async_get_and_post(client: httpx.Client) -> None:
    response = client.get("/async")
    assert response.status_code == 200
    assert response.json()["async"] is True
    response = client.post("/async", content=b"async body")
    assert response.json() == {"async": True, "body": "async body"}


def test_async_head(client: httpx.Client) -> None:
    response = client.head("/async")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) > 0


def test_async_exception_is_500_and_logged(server: ServedApp, client: httpx.Client) -> None:
    response = client.get("/async-error")
    assert response.status_code == 500
    assert SECRET not in response.text
    server.service.wait_for_log(SECRET + " (async)", timeout=5)
    assert "uncaught exception in GET /async-error" in server.service.output()
    assert client.get("/async").status_code == 200


@pytest.mark.parametrize("path", ["/cancelled", "/async-cancelled"])
def test_a_handlers_own_cancelled_error_is_a_500(
    server: ServedApp, client: httpx.Client, path: str
) -> None:
    pid = client.get("/request/who").json()["pid"]
    response = client.get(path)
    assert response.status_code == 500
    server.service.wait_for_log(f"uncaught exception in GET {path}", timeout=5)
    # Where the handler raised it, from its traceback.
    wait_until(lambda: "raise asyncio.CancelledError()" in server.service.output(), timeout=5)
    after = client.get("/request/who")  # the same connection: it was kept
    assert after.status_code == 200 and after.json()["pid"] == pid


def test_async_http_error(client: httpx.Client) -> None:
    assert client.get("/async-http-error").status_code == 402


def test_async_explicit_finish(client: httpx.Client) -> None:
    assert client.get("/async-finish").text == "finished explicitly"


def test_concurrent_async_requests(server: ServedApp) -> None:
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as fresh:
        for _ in range(20):
            assert fresh.get("/async").status_code == 200


def test_sync_prepare(client: httpx.Client) -> None:
    response = client.get("/prepare")
    assert response.json() == {"prepared": "sync prepare ran"}
    assert response.headers["x-prepared"] == "yes"


def test_async_prepare(client: httpx.Client) -> None:
    assert client.get("/prepare-async").json() == {"prepared": "async prepare ran"}


def test_prepare_that_finishes_skips_the_method(client: httpx.Client) -> None:
    response = client.get("/prepare-finish")
    assert response.status_code == 202
    assert response.text == "finished in prepare"
    response = client.get("/prepare-async-finish")
    assert response.status_code == 200
    assert response.text == "finished in async prepare"


def test_prepare_raising_http_error(client: httpx.Client) -> None:
    response = client.get("/prepare-error")
    assert response.status_code == 403
    assert "must not be reached" not in response.text


def test_on_finish_runs_after_each_response(server: ServedApp) -> None:
    # One keep-alive connection stays with one worker, whose counter rises.
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as fresh:
        first = fresh.get("/on-finish").json()["finished_before"]
        second = fresh.get("/on-finish").json()["finished_before"]
        third = fresh.get("/on-finish").json()["finished_before"]
    assert second == first + 1
    assert third == first + 2


def test_a_finish_the_handler_overrides_is_the_one_called(client: httpx.Client) -> None:
    # squall calls its own finish() directly where a class keeps it; this class
    # overrides it, and its override must run when get() returns unfinished.
    for _ in range(3):
        response = client.get("/own-finish")
        assert response.text == "body"
        assert response.headers["x-finished-by"] == "OwnFinishHandler"


def test_a_path_is_routed_the_same_every_time(client: httpx.Client) -> None:
    # Paths that found a route without groups are remembered; those with
    # groups are matched each time, and a path that found nothing finds nothing.
    for _ in range(3):
        assert client.get("/").text == "Hello, world"
        assert client.get("/positional/a/1").json()["args"] == ["a", "1"]
        assert client.get("/positional/b/2").json()["args"] == ["b", "2"]
        assert client.get("/request/one").json()["path"] == "/request/one"
        assert client.get("/request/two").json()["path"] == "/request/two"
        assert client.get("/no-such-route").status_code == 404


def test_remembered_routes_are_bounded_and_forgotten_when_routes_change() -> None:
    app = Application([(r"/p/.*", HelloHandler)])
    for n in range(3000):  # the client chooses the paths: they must not pile up
        found = app.find_handler(f"/p/{n}")
        assert found is not None and found[0] is HelloHandler
    assert len(app._found) == 1024
    long_path = "/p/" + "x" * 4000  # routed, not kept: 1,024 of them would hold 4 MiB
    fresh = Application([(r"/p/.*", HelloHandler)])
    found = fresh.find_handler(long_path)
    assert found is not None and found[0] is HelloHandler
    assert fresh._found == {}
    assert app.find_handler("/q/1") is None
    app.add_route(r"/q/.*", RequestInfoHandler)
    assert app._found == {}
    found = app.find_handler("/q/1")
    assert found is not None and found[0] is RequestInfoHandler
    assert app.find_handler("/p/1") == (HelloHandler, {}, [], {})


def test_service_still_healthy_at_the_end(server: ServedApp, client: httpx.Client) -> None:
    assert client.get("/").status_code == 200
    assert server.service.proc.poll() is None
    assert len(server.service.workers()) == 2
