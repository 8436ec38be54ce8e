"""The access log, from real squall processes: `--access-log common|combined|json`.

Each test reads the lines the worker wrote from the service's output: a text
line through the log handler, which tags it ``[worker N]``, a JSON line as it
is, one object and nothing around it.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import httpx
import pytest

from squall.accesslog import escape, make_access_log
from squall.http.core import Request
from squall.http.cycle import RequestCycle
from tests.service import Service, free_port

TIMEOUT = 5.0
APP = "tests.apps.echo_client:app"
CLF_DATE = (
    r"\d{2}/(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}"
)


@dataclass
class Server:
    service: Service
    port: int

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=TIMEOUT, **kwargs)

    def access_lines(self, marker: str, count: int = 1) -> list[str]:
        """The lines holding `marker` (the app logs nothing), once there are `count` of them."""
        found: list[str] = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            found = [line for line in self.service.output().splitlines() if marker in line]
            if len(found) >= count:
                return found
            time.sleep(0.02)
        raise AssertionError(f"{marker!r} x{count} not logged:\n{self.service.output()}")


def start(tmp_path_factory: pytest.TempPathFactory, *options: str) -> Iterator[Server]:
    port = free_port()
    base = tmp_path_factory.mktemp("access")
    service = Service(
        [sys.executable, "-m", "squall", APP, "--bind", f"127.0.0.1:{port}", *options],
        base / "squall.log",
    )
    try:
        service.wait_for_port(port)
        service.wait_for_workers(int(options[options.index("--workers") + 1]))
        yield Server(service, port)
    finally:
        service.stop()


@pytest.fixture(scope="module")
def common(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start(tmp_path_factory, "--access-log", "common", "--workers", "1")


@pytest.fixture(scope="module")
def combined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start(tmp_path_factory, "--access-log", "combined", "--workers", "1")


@pytest.fixture(scope="module")
def json_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start(
        tmp_path_factory,
        "--access-log",
        "json",
        "--workers",
        "2",
        "--forwarded-allow-ips",
        "127.0.0.1",
    )


@pytest.fixture(scope="module")
def off(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from start(tmp_path_factory, "--workers", "1")


def raw_request(port: int, data: bytes) -> bytes:
    """Send `data`, read until the server closes (the request says Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        chunks = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def access_json(line: str) -> Any:
    """The object of a JSON access log line, which is the whole line."""
    return json.loads(line)


# -- common ---------------------------------------------------------------------------


def test_common_format(common: Server) -> None:
    response = common.get("/bytes?n=1234&marker=common1")
    assert response.status_code == 200 and len(response.content) == 1234
    (line,) = common.access_lines("marker=common1")
    assert "[worker 0] INFO squall.access: " in line
    message = line.split(" squall.access: ", 1)[1]
    assert re.fullmatch(
        rf'127\.0\.0\.1 - - \[{CLF_DATE}\] "GET /bytes\?n=1234&marker=common1 HTTP/1\.1" 200 1234',
        message,
    ), message


def test_common_format_empty_body_and_http_1_0(common: Server) -> None:
    raw = raw_request(common.port, b"GET /bytes?n=0&marker=common2 HTTP/1.0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ")
    (line,) = common.access_lines("marker=common2")
    assert line.endswith('"GET /bytes?n=0&marker=common2 HTTP/1.0" 200 -'), line


def test_common_format_escapes_the_request_line(common: Server) -> None:
    raw_request(
        common.port,
        b'GET /bytes?marker=common3&q="x"\\ HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n',
    )
    (line,) = common.access_lines("marker=common3")
    assert line.endswith('"GET /bytes?marker=common3&q=\\"x\\"\\\\ HTTP/1.1" 200 -'), line


def test_error_status_is_logged(common: Server) -> None:
    assert common.get("/status/404?marker=common4").status_code == 404
    (line,) = common.access_lines("marker=common4")
    assert line.endswith('"GET /status/404?marker=common4 HTTP/1.1" 404 -'), line


# -- combined -------------------------------------------------------------------------


def test_combined_format(combined: Server) -> None:
    combined.get(
        "/?marker=combined1",
        headers={"User-Agent": "probe/1.0 (x)", "Referer": "http://ref.example/page"},
    )
    (line,) = combined.access_lines("marker=combined1")
    message = line.split(" squall.access: ", 1)[1]
    assert re.fullmatch(
        rf'127\.0\.0\.1 - - \[{CLF_DATE}\] "GET /\?marker=combined1 HTTP/1\.1" 200 \d+ '
        r'"http://ref\.example/page" "probe/1\.0 \(x\)"',
        message,
    ), message


def test_combined_format_without_referer_or_user_agent(combined: Server) -> None:
    raw_request(
        combined.port, b"GET /?marker=combined2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    (line,) = combined.access_lines("marker=combined2")
    assert line.endswith(' "-" "-"'), line


def test_combined_format_escapes_quotes_in_user_agent(combined: Server) -> None:
    # A quote would otherwise close the field and let the client write its own.
    combined.get(
        "/?marker=combined3",
        headers={"User-Agent": 'evil" 999 "injected', "Referer": 'r"ef'},
    )
    (line,) = combined.access_lines("marker=combined3")
    assert line.endswith(' "r\\"ef" "evil\\" 999 \\"injected"'), line


def test_combined_format_escapes_bytes_outside_ascii(combined: Server) -> None:
    raw_request(
        combined.port,
        b"GET /?marker=combined4 HTTP/1.1\r\nHost: a\r\nUser-Agent: caf\xe9\tbar\\\r\n"
        b"Connection: close\r\n\r\n",
    )
    (line,) = combined.access_lines("marker=combined4")
    assert line.endswith(' "-" "caf\\xe9\\x09bar\\\\"'), line


# -- json -----------------------------------------------------------------------------


def test_json_format(json_log: Server) -> None:
    response = json_log.get(
        "/bytes?n=321&marker=json1",
        headers={"User-Agent": 'json "probe"', "Referer": "http://r.example/"},
    )
    assert response.status_code == 200
    (line,) = json_log.access_lines("marker=json1")
    entry = access_json(line)
    assert set(entry) == {
        "time",
        "client",
        "method",
        "path",
        "query",
        "http_version",
        "status",
        "bytes",
        "duration_ms",
        "referer",
        "user_agent",
        "worker",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", entry["time"])
    assert entry["client"] == "127.0.0.1"
    assert entry["method"] == "GET"
    assert entry["path"] == "/bytes"
    assert entry["query"] == "n=321&marker=json1"
    assert entry["http_version"] == "1.1"
    assert entry["status"] == 200
    assert entry["bytes"] == 321
    assert isinstance(entry["duration_ms"], float) and 0 <= entry["duration_ms"] < 5000
    assert entry["referer"] == "http://r.example/"
    assert entry["user_agent"] == 'json "probe"'
    assert entry["worker"] in (0, 1)
    assert line == json.dumps(entry, separators=(",", ":"))  # the object alone, no log prefix


def test_json_lines_are_the_object_alone_whatever_the_log_format(json_log: Server) -> None:
    for index in range(20):
        json_log.get(f"/?marker=json2-{index}-")
    for index in range(20):
        (line,) = json_log.access_lines(f"marker=json2-{index}-")
        assert line.startswith("{") and line.endswith("}"), line
        assert access_json(line)["worker"] in (0, 1)
    assert "[supervisor] INFO squall" in json_log.service.output()  # the log stays text


def test_json_logs_the_forwarded_client(json_log: Server) -> None:
    json_log.get("/?marker=json3", headers={"X-Forwarded-For": "203.0.113.50"})
    (line,) = json_log.access_lines("marker=json3")
    assert access_json(line)["client"] == "203.0.113.50"


def test_json_escapes_control_and_raw_bytes(json_log: Server) -> None:
    raw_request(
        json_log.port,
        b'GET /?marker=json4 HTTP/1.1\r\nHost: a\r\nUser-Agent: a\tb\xff"}\r\n'
        b"Connection: close\r\n\r\n",
    )
    (line,) = json_log.access_lines("marker=json4")
    assert access_json(line)["user_agent"] == 'a\tb\\xff"}'
    assert "\t" not in line


# -- off ------------------------------------------------------------------------------


def test_off_by_default(off: Server) -> None:
    assert off.get("/?marker=off1").status_code == 200
    assert off.get("/bytes?n=10").status_code == 200
    time.sleep(0.5)  # the line, if any, is written right after the response
    assert "squall.access" not in off.service.output()
    assert "marker=off1" not in off.service.output()


# -- in process: laziness and escaping --------------------------------------------------


class FakeCycle:
    def __init__(self, request: Request) -> None:
        self.request = request
        self.client = ("192.0.2.1", 1234)
        self.status = 204
        self.bytes_sent = 0
        self.started_at = 0.0


def test_nothing_is_formatted_when_info_is_disabled(caplog: pytest.LogCaptureFixture) -> None:
    class Exploding:  # a request whose every field fails when read
        def __getattr__(self, name: str) -> object:
            raise AssertionError("formatted although disabled")

    request = cast(Request, Exploding())
    callback = make_access_log("common")
    assert callback is not None
    with caplog.at_level(logging.WARNING, logger="squall.access"):
        callback(cast(RequestCycle, FakeCycle(request)))
    assert caplog.records == []
    with caplog.at_level(logging.INFO, logger="squall.access"), pytest.raises(AssertionError):
        callback(cast(RequestCycle, FakeCycle(request)))


def test_in_process_common_line(caplog: pytest.LogCaptureFixture) -> None:
    callback = make_access_log("combined")
    assert callback is not None
    request = Request("HEAD", b"/a%20b?x=1", "1.1", [(b"user-agent", b"ua")], True)
    with caplog.at_level(logging.INFO, logger="squall.access"):
        callback(cast(RequestCycle, FakeCycle(request)))
    (record,) = caplog.records
    assert record.name == "squall.access" and record.levelno == logging.INFO
    assert re.fullmatch(
        rf'192\.0\.2\.1 - - \[{CLF_DATE}\] "HEAD /a%20b\?x=1 HTTP/1\.1" 204 - "-" "ua"',
        record.getMessage(),
    ), record.getMessage()


def test_off_and_unknown_formats() -> None:
    assert make_access_log("off") is None
    with pytest.raises(ValueError):
        make_access_log("apache")


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"plain text/1.0 (x; y)", "plain text/1.0 (x; y)"),
        (b'a"b', 'a\\"b'),
        (b"a\\b", "a\\\\b"),
        (b"a\r\nb", "a\\x0d\\x0ab"),
        (b"\x00\x7f\x80\xff", "\\x00\\x7f\\x80\\xff"),
        (b"", ""),
    ],
)
def test_escape(raw: bytes, text: str) -> None:
    assert escape(raw) == text
