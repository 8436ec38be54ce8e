"""HTTP/2 end to end: real clients (curl, nghttp, httpx) against native, ASGI and WSGI apps.

Each interface is served twice for the module: over TLS (ALPN offers h2 by
default) and in cleartext with `--h2c` (prior knowledge and `Upgrade: h2c`).
The apps are the framework apps of tests/frameworks (FastAPI, Flask) and the
native handlers of tests/apps/streaming_app.py. Graceful retirement (GOAWAY on
drain and on reload), metrics and the access log have their own services.
Every wait is bounded; every process is stopped by PID.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tests.h2_client import H2Client, window_settings
from tests.h2_client import Stream as H2Stream
from tests.service import Service, Services, free_port, wait_until
from tests.test_http2_conformance import H2Client as RawClient

TIMEOUT = 10.0
NATIVE = "tests.apps.streaming_app:app"
FASTAPI = "tests.frameworks.fastapi_app:app"
FLASK = "tests.frameworks.flask_app:app"


@dataclass(frozen=True)
class Case:
    """An app, a path it answers with 200, and a piece of that answer's body."""

    app: str
    path: str
    expected: bytes


CASES = {
    "native": Case(NATIVE, "/worker", b'"pid"'),
    "fastapi": Case(FASTAPI, "/items/7?q=x", b'"item_id":7'),
    "flask": Case(FLASK, "/hello?name=h2", b"hello, h2"),
}


@dataclass
class Served:
    tls_port: int
    h2c_port: int
    ca_file: Path

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(CA certificate, server certificate chain with its key), as PEM files."""
    directory = tmp_path_factory.mktemp("h2tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    return ca_file, cert_file


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, certificates: tuple[Path, Path]
) -> Iterator[dict[str, Served]]:
    """Every interface, over TLS and over h2c, one worker each."""
    ca_file, cert_file = certificates
    base = tmp_path_factory.mktemp("h2served")
    services: list[Service] = []
    ports: dict[str, tuple[int, int]] = {}
    try:
        for name, case in CASES.items():
            pair = []
            for flags in (["--certfile", str(cert_file)], ["--h2c"]):
                port = free_port()
                command = [
                    *_squall(case.app, port),
                    *flags,
                    "--workers",
                    "1",
                    "--log-level",
                    "warning",
                ]
                services.append(Service(command, base / f"{name}-{len(pair)}.log"))
                pair.append(port)
            ports[name] = (pair[0], pair[1])
        for service, port in zip(
            services, [p for pair in ports.values() for p in pair], strict=True
        ):
            service.wait_for_port(port)
            service.wait_for_workers(1)
        yield {name: Served(tls, h2c, ca_file) for name, (tls, h2c) in ports.items()}
    finally:
        for service in services:
            service.stop()


def _squall(app: str, port: int) -> list[str]:
    return [sys.executable, "-m", "squall", app, "--bind", f"127.0.0.1:{port}"]


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("curl"), "curl is needed (Debian's curl)"
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(TIMEOUT), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 5,
    )


# -- real clients, every interface -------------------------------------------------------


def _curl_args(server: Served, how: str, path: str) -> list[str]:
    """curl's way to HTTP/2: over TLS (ALPN), h2c with prior knowledge, or Upgrade: h2c."""
    if how == "tls":
        return [
            "--http2",
            "--cacert",
            str(server.ca_file),
            f"https://localhost:{server.tls_port}{path}",
        ]
    flag = "--http2-prior-knowledge" if how == "prior-knowledge" else "--http2"
    return ["-v", flag, f"http://127.0.0.1:{server.h2c_port}{path}"]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("how", ["tls", "prior-knowledge", "upgrade"])
def test_curl(served: dict[str, Served], name: str, how: str) -> None:
    case = CASES[name]
    args = _curl_args(served[name], how, case.path)
    result = curl("-w", "\n%{http_version} %{http_code}", *args)
    assert result.returncode == 0, result.stderr
    body, _, tail = result.stdout.rpartition("\n")
    assert tail == "2 200"
    assert case.expected.decode() in body
    assert ("101 Switching Protocols" in result.stderr) == (how == "upgrade")


def test_an_upgrade_with_a_body_is_answered_in_http11_with_its_body(
    served: dict[str, Served],
) -> None:
    # llhttp skips an Upgrade request's body; the core reads it. Before, the app
    # ran with an empty body (and answered as if the client had sent none).
    server = served["flask"]
    result = curl(
        "--http2",
        "-w",
        "\n%{http_version} %{http_code}",
        "--data-binary",
        '{"a": 1}',
        "-H",
        "content-type: application/json",
        f"http://127.0.0.1:{server.h2c_port}/json",
    )
    assert result.returncode == 0, result.stderr
    body, _, tail = result.stdout.rpartition("\n")
    assert tail == "1.1 200"  # not upgraded: RFC 7540 3.2 lets a server stay in HTTP/1.1
    assert '"received":{"a":1}' in body.replace(" ", "")


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("tls", [False, True], ids=["h2c", "tls"])
def test_nghttp(served: dict[str, Served], name: str, tls: bool) -> None:
    assert shutil.which("nghttp"), "nghttp is needed (Debian's nghttp2-client)"
    server = served[name]
    case = CASES[name]
    url = (
        f"https://localhost:{server.tls_port}{case.path}"
        if tls
        else f"http://127.0.0.1:{server.h2c_port}{case.path}"
    )
    result = subprocess.run(
        ["nghttp", "-v", "-t", str(int(TIMEOUT)), url],
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 5,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert ":status: 200" in result.stdout
    assert case.expected.decode() in result.stdout
    assert "GOAWAY" not in result.stdout.split("recv DATA")[0]  # no error before the answer


@pytest.mark.parametrize("name", CASES)
def test_httpx_over_tls(served: dict[str, Served], name: str) -> None:
    server = served[name]
    case = CASES[name]
    with httpx.Client(http2=True, verify=server.tls_context(), timeout=TIMEOUT) as client:
        for _ in range(3):  # one connection, several streams
            response = client.get(f"https://localhost:{server.tls_port}{case.path}")
            assert response.http_version == "HTTP/2"
            assert response.status_code == 200
            assert case.expected in response.content


@pytest.mark.parametrize("name", CASES)
def test_httpx_with_prior_knowledge(served: dict[str, Served], name: str) -> None:
    server = served[name]
    case = CASES[name]
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        response = client.get(f"http://127.0.0.1:{server.h2c_port}{case.path}")
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    assert case.expected in response.content


def test_fastapi_post_json_and_status(served: dict[str, Served]) -> None:
    server = served["fastapi"]
    with httpx.Client(http2=True, verify=server.tls_context(), timeout=TIMEOUT) as client:
        response = client.post(
            f"https://localhost:{server.tls_port}/items",
            json={"name": "a", "price": 2.5, "tags": ["x", "y"]},
        )
        assert response.http_version == "HTTP/2"
        assert response.status_code == 201
        assert response.json()["total"] == 5.0
        assert client.get(f"https://localhost:{server.tls_port}/teapot").status_code == 418


def test_flask_post_json_and_streamed_response(served: dict[str, Served]) -> None:
    server = served["flask"]
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        url = f"http://127.0.0.1:{server.h2c_port}"
        response = client.post(url + "/json", json={"b": 1, "a": 2})
        assert response.http_version == "HTTP/2"
        assert response.json() == {"received": {"a": 2, "b": 1}, "keys": ["a", "b"]}
        streamed = client.get(url + "/stream?n=3&who=z")
        assert streamed.text == "z-0;z-1;z-2;"
        assert "transfer-encoding" not in streamed.headers  # connection-specific: never in h2


def test_response_fields_are_lowercase_and_connection_specific_ones_dropped(
    served: dict[str, Served],
) -> None:
    server = served["flask"]
    with H2Client(server.h2c_port) as client:
        stream = client.get("/headers", headers=[(b"x-echo", b"v")])
    assert stream.status == 200
    names = [name for name, _ in stream.headers]
    assert names == [name.lower() for name in names]
    assert b"x-custom" in names
    for banned in (b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"):
        assert banned not in names


# -- the ASGI scope and switches -------------------------------------------------------------


def test_asgi_scope_says_http_version_2(
    services: Services, certificates: tuple[Path, Path]
) -> None:
    ca_file, cert_file = certificates
    port = free_port()
    service = services.squall(
        "tests.apps.scheme_app:app", "--bind", f"127.0.0.1:{port}", "--certfile", str(cert_file)
    )
    service.wait_for_port(port)
    context = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(http2=True, verify=context, timeout=TIMEOUT) as client:
        data = client.get(f"https://localhost:{port}/scope").json()
    assert data["http_version"] == "2"
    assert data["scheme"] == "https"
    assert data["path"] == "/scope"


def test_no_http2_offers_only_http11(services: Services, certificates: tuple[Path, Path]) -> None:
    ca_file, cert_file = certificates
    port = free_port()
    service = services.squall(
        NATIVE, "--bind", f"127.0.0.1:{port}", "--certfile", str(cert_file), "--no-http2"
    )
    service.wait_for_port(port)
    context = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(http2=True, verify=context, timeout=TIMEOUT) as client:
        response = client.get(f"https://localhost:{port}/worker")
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"


def test_without_h2c_cleartext_stays_http11(services: Services) -> None:
    port = free_port()
    service = services.squall(NATIVE, "--bind", f"127.0.0.1:{port}")
    service.wait_for_port(port)
    result = curl("--http2-prior-knowledge", f"http://127.0.0.1:{port}/worker")
    assert result.returncode != 0  # the preface is no HTTP/1.1 request: 400, not HTTP/2
    upgraded = curl("--http2", "-w", "\n%{http_version}", f"http://127.0.0.1:{port}/worker")
    assert upgraded.returncode == 0
    assert upgraded.stdout.endswith("\n1.1")  # the Upgrade is not taken


# -- flow control and multiplexing ---------------------------------------------------------


@pytest.fixture(scope="module")
def streaming(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """tests/apps/streaming_app.py's three interfaces, with --h2c."""
    base = tmp_path_factory.mktemp("h2stream")
    ports: dict[str, int] = {}
    services = []
    try:
        for interface in ("squall", "asgi", "wsgi"):
            port = free_port()
            app = "tests.apps.streaming_app:" + {"squall": "app"}.get(interface, interface)
            command = [*_squall(app, port), "--h2c", "--workers", "1", "--interface", interface]
            services.append(Service(command, base / f"{interface}.log"))
            ports[interface] = port
        for service, port in zip(services, ports.values(), strict=True):
            service.wait_for_port(port)
        yield ports
    finally:
        for service in services:
            service.stop()


@pytest.mark.parametrize("interface", ["squall", "asgi", "wsgi"])
def test_a_large_answer_through_a_small_window(streaming: dict[str, int], interface: str) -> None:
    size = 3 * 1024 * 1024
    # A 16 KiB stream window: the answer goes out as the client opens it, no faster.
    with H2Client(streaming[interface], settings=window_settings(16384), timeout=20) as client:
        stream = client.get(f"/big?size={size}")
    assert stream.status == 200
    assert stream.reset is None
    assert len(stream.body) == size


@pytest.mark.parametrize(
    ("interface", "path"),
    [("squall", "/length"), ("squall", "/upload"), ("wsgi", "/progress?token=h2&half=1")],
)
def test_a_large_upload(streaming: dict[str, int], interface: str, path: str) -> None:
    body = bytes(range(256)) * 16384  # 4 MiB
    with httpx.Client(http1=False, http2=True, timeout=20) as client:
        response = client.post(f"http://127.0.0.1:{streaming[interface]}{path}", content=body)
    assert response.http_version == "HTTP/2"
    assert response.status_code == 200
    data = response.json()
    assert data.get("total", data.get("length")) == len(body)
    assert data.get("crc", data.get("crc32")) == zlib.crc32(body)


def test_many_streams_at_once_on_one_connection(streaming: dict[str, int]) -> None:
    with H2Client(streaming["asgi"]) as client:
        streams = [client.request(f"/big?size={1000 + i}") for i in range(60)]
        client.pump(lambda: all(stream.done for stream in streams))
    assert [stream.status for stream in streams] == [200] * 60
    assert [len(stream.body) for stream in streams] == [1000 + i for i in range(60)]


def test_a_large_answer_to_a_client_with_wide_windows_goes_out_whole(services: Services) -> None:
    # Windows of 1 GiB: the client never needs to send a WINDOW_UPDATE. Each flush
    # frames 256 KiB; before, the rest waited for a WINDOW_UPDATE that never came.
    port = free_port()
    service = services.squall(
        "tests.apps.h2_limits_app:app", "--bind", f"127.0.0.1:{port}", "--h2c", "--workers", "1"
    )
    service.wait_for_port(port)
    with H2Client(port, settings=window_settings(1 << 30)) as client:
        client.conn.increment_flow_control_window(1 << 30)
        client.flush()
        stream = client.get(f"/big?size={4 << 20}")
    assert stream.status == 200
    assert len(stream.body) == 4 << 20


def test_no_new_app_starts_while_the_connection_holds_a_megabyte_unsent(services: Services) -> None:
    # A client that opens no window and asks for big answers: each is framed only
    # as its window allows, and past OUTPUT_HIGH_WATER (1 MiB) held for this
    # connection, the next stream's app waits, as a pipelined HTTP/1.1 request
    # waits behind a full transport. Before, every stream ran and held its answer.
    port = free_port()
    service = services.squall(
        "tests.apps.h2_limits_app:app", "--bind", f"127.0.0.1:{port}", "--h2c", "--workers", "1"
    )
    service.wait_for_port(port)
    with H2Client(port, settings=window_settings(0)) as client:
        big = [client.request("/big?size=600000") for _ in range(2)]
        client.pump(lambda: all(stream.status == 200 for stream in big))  # heads need no window
        waits = client.request("/pid")
        with pytest.raises(AssertionError):
            client.pump(lambda: waits.status is not None, timeout=0.8)
        assert waits.status is None  # its app has not run: no head came
        for stream in (*big, waits):
            client.conn.increment_flow_control_window(1 << 22, stream.stream_id)
        client.conn.increment_flow_control_window(1 << 22)
        client.flush()
        client.pump(lambda: all(stream.done for stream in (*big, waits)), timeout=10)
    assert [len(stream.body) for stream in big] == [600000, 600000]
    assert waits.status == 200
    assert bytes(waits.body).strip().isdigit()


# -- retirement: GOAWAY on drain and reload ----------------------------------------------------

SLOW = "/stream?n=4&delay=0.25"  # FastAPI: about 0.75 s, in four pieces


def test_drain_answers_streams_in_flight_and_refuses_none(services: Services) -> None:
    port = free_port()
    service = services.squall(FASTAPI, "--bind", f"127.0.0.1:{port}", "--h2c", "--workers", "1")
    service.wait_for_port(port)
    service.wait_for_workers(1)
    with H2Client(port) as client:
        assert client.get("/items/1").status == 200
        slow = client.request(SLOW)
        client.pump(lambda: bool(slow.body))  # the app is running
        service.send(signal.SIGTERM)
        client.pump(lambda: client.goaway is not None)
        # First a GOAWAY that refuses nothing: a stream sent before the client
        # saw it would still be answered.
        assert client.goaways[0] == (2**31 - 1, 0)
        client.pump(lambda: slow.done and len(client.goaways) == 2 and client.closed, timeout=10)
    assert slow.status == 200
    assert bytes(slow.body) == b"chunk-0;chunk-1;chunk-2;chunk-3;"
    assert client.goaways[1] == (slow.stream_id, 0)  # the last stream taken
    assert service.wait(timeout=10) == 0


def test_a_connection_that_turns_http2_during_a_drain_is_retired(services: Services) -> None:
    # Accepted before the drain, its preface sent after: it is answered, then
    # retired by GOAWAY at once. Before, it was served on until the graceful
    # timeout cut it off.
    port = free_port()
    service = services.squall(FASTAPI, "--bind", f"127.0.0.1:{port}", "--h2c", "--workers", "1")
    service.wait_for_log("is ready")
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    time.sleep(0.3)  # accepted by the worker, no request yet: a drain leaves it open
    service.send(signal.SIGTERM)
    service.wait_for_log("stopping 1 worker(s) gracefully")
    time.sleep(0.3)
    with H2Client(port, sock=raw) as client:
        stream = client.get("/items/3")
        client.pump(lambda: len(client.goaways) == 2 and client.closed, timeout=5)
    assert stream.status == 200
    assert client.goaways[-1] == (stream.stream_id, 0)
    assert service.wait(timeout=10) == 0


def test_a_drain_does_not_wait_on_a_ping_the_client_never_answers(services: Services) -> None:
    # The first GOAWAY's PING goes unanswered and the client keeps opening
    # streams: the last GOAWAY comes after DRAIN_IDLE (1 s) anyway. Before, each
    # new stream put off that deadline, and the connection lived on until
    # --graceful-timeout.
    port = free_port()
    service = services.squall(FASTAPI, "--bind", f"127.0.0.1:{port}", "--h2c", "--workers", "1")
    service.wait_for_log("is ready")
    with RawClient(port) as client:
        client.ack_pings = False
        client.handshake()
        assert client.get(1, "/items/1").status == 200
        service.send(signal.SIGTERM)
        client.wait(lambda: client.goaway is not None, "the first GOAWAY")
        started = time.monotonic()
        stream_id = 3
        while client.goaway.last_stream_id == 2**31 - 1 and time.monotonic() - started < 4:
            client.request(stream_id, "/items/2")
            stream_id += 2
            client.poll(lambda: False, 0.2)
        took = time.monotonic() - started
        assert client.goaway.last_stream_id < 2**31 - 1, "no last GOAWAY"
        assert took < 2.5, took
    assert service.wait(timeout=10) == 0


def test_a_stream_after_the_last_goaway_is_refused_for_a_retry(services: Services) -> None:
    port = free_port()
    service = services.squall(FASTAPI, "--bind", f"127.0.0.1:{port}", "--h2c", "--workers", "1")
    service.wait_for_port(port)
    with H2Client(port) as client:
        slow = client.request(SLOW)
        client.pump(lambda: bool(slow.body))
        service.send(signal.SIGTERM)
        client.pump(lambda: len(client.goaways) == 2)
        late = client.request("/items/2")  # a client that ignored the GOAWAY
        client.pump(lambda: late.done and slow.done)
    assert late.reset == 7  # REFUSED_STREAM: not processed, safe to retry (RFC 9113 8.7)
    assert slow.status == 200


@dataclass
class LoadTally:
    ok: int = 0
    failed: int = 0
    reset: int = 0
    retried: int = 0
    goaways: int = 0
    errors: list[str] | None = None


def h2_load(port: int, stop: threading.Event, tally: LoadTally, lock: threading.Lock) -> None:
    """Streams, four at a time, on one connection after another until `stop`.

    A stream above a GOAWAY's last stream id, or refused, was not processed:
    it is retried on a new connection (RFC 9113 6.8). Any other stream that
    ends without a whole 200 is a failure.
    """
    while not stop.is_set():
        try:
            client = H2Client(port, timeout=10)
        except OSError as exc:
            with lock:
                tally.failed += 1
                (tally.errors or []).append(repr(exc))
            time.sleep(0.05)
            continue
        with client:
            while not stop.is_set() and client.goaway is None and not client.closed:
                streams = [client.request(f"/items/{i}") for i in range(4)]
                client.pump(_all_done(client, streams), timeout=10)
                for stream in streams:
                    last = client.goaway[0] if client.goaway else 2**31
                    with lock:
                        if stream.ended and stream.status == 200:
                            tally.ok += 1
                        elif stream.reset == 7 or (not stream.done and stream.stream_id > last):
                            tally.retried += 1
                            tally.reset += stream.reset is not None
                        else:
                            tally.failed += 1
                            tally.reset += stream.reset is not None
                            if tally.errors is not None and len(tally.errors) < 10:
                                tally.errors.append(f"{stream} goaway={client.goaway}")
            if client.goaway is not None:
                with lock:
                    tally.goaways += 1


def _all_done(client: H2Client, streams: list[H2Stream]) -> Callable[[], bool]:
    return lambda: all(stream.done for stream in streams) or client.closed


def test_reloads_under_http2_load_lose_nothing(services: Services) -> None:
    port = free_port()
    service = services.squall(FASTAPI, "--bind", f"127.0.0.1:{port}", "--h2c", "--workers", "2")
    service.wait_for_port(port)
    service.wait_for_workers(2)
    tally = LoadTally(errors=[])
    lock = threading.Lock()
    stop = threading.Event()
    threads = [threading.Thread(target=h2_load, args=(port, stop, tally, lock)) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: tally.ok > 100, timeout=20)
        for reloads in (1, 2):
            service.send(signal.SIGHUP)
            service.wait_for_log("reload complete", timeout=30, count=reloads)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)
    assert tally.failed == 0, tally.errors
    assert tally.reset == 0, tally  # the two-step GOAWAY refuses nothing a client sent in time
    assert tally.goaways >= 4  # every connection of the old workers was retired by GOAWAY
    assert tally.ok > 200


# -- observability ---------------------------------------------------------------------------


def test_metrics_count_http2_and_the_access_log_says_http_2_0(services: Services) -> None:
    port = free_port()
    metrics_port = free_port()
    service = services.squall(
        FASTAPI,
        "--bind",
        f"127.0.0.1:{port}",
        "--h2c",
        "--workers",
        "1",
        "--metrics",
        f"127.0.0.1:{metrics_port}",
        "--access-log",
        "common",
    )
    service.wait_for_port(port)
    service.wait_for_port(metrics_port)
    with H2Client(port) as client:
        streams = [client.request(f"/items/{i}") for i in range(5)]
        client.pump(lambda: all(stream.done for stream in streams))
    with httpx.Client(http1=False, http2=True, timeout=TIMEOUT) as client:
        assert client.get(f"http://127.0.0.1:{port}/items/9").status_code == 200

    def value(name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=TIMEOUT).text
        found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else -1.0

    wait_until(lambda: value("squall_http2_streams_total") == 6, timeout=5)
    assert value("squall_http2_connections_total") == 2
    service.wait_for_log('"GET /items/9 HTTP/2.0" 200')
