"""Overload and exhaustion: shed what is beyond the limits, stay fast for what is accepted.

Real supervisors and workers, real sockets on 127.0.0.1, raw-socket clients.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.service import Service, Services, free_port, wait_until, with_descriptor_limit

SCRIPTS = Path(__file__).parent / "scripts"


def serve(
    services: Services, directory: Path, app: str, *args: str, descriptors: int = 0
) -> tuple[Service, int]:
    """squall on `app` (in `directory`), one worker unless told; `descriptors`: ulimit -n."""
    port = free_port()
    prefix = with_descriptor_limit(descriptors) if descriptors else [sys.executable]
    service = services.start(
        [*prefix, "-m", "squall", app, "--bind", f"127.0.0.1:{port}", *args], cwd=directory
    )
    service.wait_for_port(port)
    service.wait_for_log("is ready")
    return service, port


def supervised_app(tmp_path: Path) -> Path:
    directory = tmp_path / "app"
    directory.mkdir(exist_ok=True)
    shutil.copy(SCRIPTS / "supervised.py", directory / "supervised_app.py")
    return directory


def start(services: Services, tmp_path: Path, *args: str) -> tuple[Service, int]:
    return serve(services, supervised_app(tmp_path), "supervised_app:app", *args)


def send(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request)
    return sock


def response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def slow_calls(port: int) -> int:
    return int(httpx.get(f"http://127.0.0.1:{port}/pid", timeout=5).json()["slow_calls"])


SLOW = b"GET /slow?s=1.5 HTTP/1.1\r\nHost: t\r\n\r\n"


def test_limit_concurrency_sheds_with_503_without_calling_the_app(
    services: Services, tmp_path: Path
) -> None:
    _, port = start(services, tmp_path, "--limit-concurrency", "2")
    running = [send(port, SLOW) for _ in range(2)]
    try:
        time.sleep(0.3)  # both are in the app
        started = time.monotonic()
        with send(port, SLOW) as shed:
            head = response(shed)
            took = time.monotonic() - started
        assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), head
        assert b"\r\nretry-after: 1\r\n" in head.lower()
        assert took < 0.5, took  # at once, not after the slow ones
        post = b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        with send(port, post) as shed:
            assert response(shed).startswith(b"HTTP/1.1 503 ")
        for sock in running:
            assert response(sock).startswith(b"HTTP/1.1 200 ")
        assert slow_calls(port) == 2  # the app never saw the shed ones
    finally:
        for sock in running:
            sock.close()
    with send(port, SLOW) as admitted:  # the answered ones freed their places
        assert response(admitted).startswith(b"HTTP/1.1 200 ")


BLOCKING_APP = """
import time

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    time.sleep(float(scope["query_string"] or b"0.2"))  # holds the loop, never awaits
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})
"""


def test_an_app_that_never_awaits_is_limited_per_pass_of_the_loop(
    services: Services, tmp_path: Path
) -> None:
    """Started eagerly (Python 3.12's tasks, squall's own on 3.11), such an app
    finishes inside the pass that read its request, so it is never "in flight"
    when the next one is read: counted that way, a pass served everything it
    read and nothing was ever shed. Each pass starts at most the limit."""
    (tmp_path / "blocking_app.py").write_text(BLOCKING_APP)
    _, port = serve(services, tmp_path, "blocking_app:app", "--limit-concurrency", "1")
    with send(port, b"GET /?0.6 HTTP/1.1\r\nHost: t\r\n\r\n") as blocker:
        time.sleep(0.2)  # the worker is inside it: these wait in the kernel's queue
        queued = [send(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n") for _ in range(4)]
        try:
            assert response(blocker).startswith(b"HTTP/1.1 200 ")
            statuses = [response(sock)[9:12] for sock in queued]
        finally:
            for sock in queued:
                sock.close()
    assert statuses.count(b"503") >= 2 and statuses.count(b"200") >= 1, statuses


def test_a_client_that_leaves_frees_its_place_once_the_app_is_done(
    services: Services, tmp_path: Path
) -> None:
    _, port = start(services, tmp_path, "--limit-concurrency", "1")
    for _ in range(3):
        gone = send(port, SLOW)
        time.sleep(0.2)
        gone.close()  # mid-request: the app still runs it, and it still counts
        with send(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n") as sock:
            assert response(sock).startswith(b"HTTP/1.1 503 ")
        wait_until(lambda: answer(port) == 200, timeout=5)  # never leaked


def answer(port: int) -> int:
    return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code


def test_without_a_limit_every_request_reaches_the_app(services: Services, tmp_path: Path) -> None:
    _, port = start(services, tmp_path)
    clients = [send(port, SLOW) for _ in range(6)]
    try:
        answers = [response(sock) for sock in clients]
    finally:
        for sock in clients:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
    assert slow_calls(port) == 6


SLOW_APPS = """
import asyncio, time

cancelled = []


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/cancelled":
        body = str(len(cancelled)).encode()
    else:
        try:
            if path == "/stream":
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"part", "more_body": True})
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(path)
            raise
        body = b"late"
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def wsgi(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(3)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done"]
"""


def start_app(services: Services, tmp_path: Path, app: str, *args: str) -> tuple[Service, int]:
    (tmp_path / "slow_apps.py").write_text(SLOW_APPS)
    return serve(services, tmp_path, f"slow_apps:{app}", *args)


def test_request_timeout_answers_504_and_cancels_the_task(
    services: Services, tmp_path: Path
) -> None:
    service, port = start_app(services, tmp_path, "asgi", "--request-timeout", "1")
    started = time.monotonic()
    answer = httpx.get(f"http://127.0.0.1:{port}/wait", timeout=10)
    took = time.monotonic() - started
    assert answer.status_code == 504 and 0.9 <= took < 2.5, (answer.status_code, took)
    assert httpx.get(f"http://127.0.0.1:{port}/cancelled", timeout=5).text == "1"
    assert "GET /wait still running after 1 s (--request-timeout): answered 504" in service.output()
    # Its response begun, a request that runs too long has its connection closed.
    with send(port, b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n") as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b"part" in data
    assert httpx.get(f"http://127.0.0.1:{port}/cancelled", timeout=5).text == "2"
    assert len(service.workers()) == 1 and "is ready" in service.output()


def answered_504_at_one_second(service: Service, port: int, path: str, then: str) -> None:
    """Under --request-timeout 1: a 504 within 2.5 s, and the log says what became of it."""
    started = time.monotonic()
    answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    assert answer.status_code == 504 and time.monotonic() - started < 2.5
    assert (
        f"GET {path} still running after 1 s (--request-timeout): answered 504; {then}"
        in service.output()
    )


def test_request_timeout_for_a_wsgi_thread(services: Services, tmp_path: Path) -> None:
    service, port = start_app(services, tmp_path, "wsgi", "--request-timeout", "1")
    (worker,) = service.workers()
    answered_504_at_one_second(service, port, "/sleep", "a WSGI thread runs on")
    time.sleep(2.5)  # the thread finishes; what it returns goes nowhere
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "done"
    assert service.workers() == [worker]


def test_without_a_request_timeout_a_slow_request_is_answered(
    services: Services, tmp_path: Path
) -> None:
    _, port = start(services, tmp_path)
    assert httpx.get(f"http://127.0.0.1:{port}/slow?s=1.5", timeout=10).text == "slow done"


def test_shed_and_timed_out_requests_are_counted_by_cause(
    services: Services, tmp_path: Path
) -> None:
    mport = free_port()
    _, port = start_app(
        services,
        tmp_path,
        "asgi",
        *("--limit-concurrency", "1", "--request-timeout", "1"),
        *("--metrics", f"127.0.0.1:{mport}"),
    )
    with send(port, b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n") as waiting:
        time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 503
        assert response(waiting).startswith(b"HTTP/1.1 504 ")
    text = httpx.get(f"http://127.0.0.1:{mport}/metrics", timeout=5).text
    assert 'squall_overload_responses_total{status="503",cause="limit_concurrency"} 1' in text
    assert 'squall_overload_responses_total{status="504",cause="request_timeout"} 1' in text


TRICKLE = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"


def trickle(port: int, seconds: float) -> tuple[bytes, float]:
    """Send a body one byte every 0.6 s (under --body-timeout 2) for `seconds` at most."""
    started = time.monotonic()
    with send(port, TRICKLE) as sock:
        sock.settimeout(0.6)
        while time.monotonic() - started < seconds:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                sock.sendall(b"x")
                continue
            return data, time.monotonic() - started
    return b"", time.monotonic() - started


def test_a_body_that_trickles_under_the_minimum_rate_gets_408(
    services: Services, tmp_path: Path
) -> None:
    service, port = start(services, tmp_path, "--body-timeout", "2", "--body-min-rate", "500")
    data, took = trickle(port, seconds=8)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert 2.0 <= took < 3.5, took
    big = b"y" * 1_000_000  # at full speed: never too slow
    answer = httpx.post(f"http://127.0.0.1:{port}/", content=big, timeout=10)
    assert answer.status_code == 200 and len(service.workers()) == 1


def test_without_a_minimum_rate_a_trickle_is_held(services: Services, tmp_path: Path) -> None:
    _, port = start(services, tmp_path, "--body-timeout", "2", "--body-min-rate", "0")
    data, took = trickle(port, seconds=4)
    assert data == b"" and took >= 4  # each byte within 2 s: held as long as it likes


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_with_256_descriptors(
    services: Services, tmp_path: Path, *args: str
) -> tuple[Service, int]:
    directory = supervised_app(tmp_path)
    return serve(services, directory, "supervised_app:app", *args, descriptors=256)


def test_out_of_descriptors_nothing_is_dropped_and_nothing_spins(
    services: Services, tmp_path: Path
) -> None:
    # ulimit -n 256 and 400 idle connections: the worker stops accepting short of
    # EMFILE, the kernel queues the rest, and a request made meanwhile is
    # answered once descriptors free, not closed unanswered.
    service, port = start_with_256_descriptors(services, tmp_path)
    (worker,) = service.wait_for_workers(1)
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(400)]
    try:
        service.wait_for_log("accepting paused until one closes")
        before = cpu_seconds(worker)
        time.sleep(3)
        assert cpu_seconds(worker) - before < 0.1  # no accept spin
        waiting = send(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        waiting.settimeout(1)
        with pytest.raises(TimeoutError):
            waiting.recv(1)  # queued in the kernel, not closed
        for sock in held[:300]:  # the idle ones leave
            sock.close()
        waiting.settimeout(10)
        assert response(waiting).startswith(b"HTTP/1.1 200 ")
        waiting.close()
        # The idle ones that waited in the queue are open: no EOF, no reset.
        readable, _, _ = select.select(held[300:], [], [], 0.3)
        assert not readable, f"{len(readable)} queued idle connections were closed"
    finally:
        for sock in held:
            sock.close()
    output = service.output()
    assert output.count("accepting paused until one closes") == 1
    assert "from ulimit -n" in output and "Too many open files" not in output
    assert len(service.workers()) == 1


def test_max_connections_holds_the_rest_in_the_queue(services: Services, tmp_path: Path) -> None:
    service, port = start(services, tmp_path, "--max-connections", "3")
    held = [send(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n") for _ in range(3)]
    try:
        for sock in held:
            assert response(sock).startswith(b"HTTP/1.1 200 ")  # served, kept alive
        fourth = send(port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        fourth.settimeout(1)
        with pytest.raises(TimeoutError):
            fourth.recv(1)  # not accepted: the kernel holds it
        held[0].close()  # one closes: the fourth is accepted and answered at once
        fourth.settimeout(5)
        started = time.monotonic()
        assert response(fourth).startswith(b"HTTP/1.1 200 ")
        assert time.monotonic() - started < 1
        fourth.close()
    finally:
        for sock in held:
            sock.close()
    assert "3 connections open (--max-connections): accepting paused" in service.output()


SLOW_UPLOAD_WSGI = """
def app(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"got %d" % len(body)]
"""


def test_slow_wsgi_uploads_hold_no_thread(services: Services, tmp_path: Path) -> None:
    # Two threads, two slow uploads: the bodies are read by the event loop,
    # so a GET still finds a free thread at once.
    (tmp_path / "upload_app.py").write_text(SLOW_UPLOAD_WSGI)
    _, port = serve(services, tmp_path, "upload_app:app", "--threads", "2")
    head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n"
    uploads = [send(port, head + b"x") for _ in range(2)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert answer.text == "got 0" and time.monotonic() - started < 0.5
        for sock in uploads:
            sock.sendall(b"yyy")
            assert response(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in uploads:
            sock.close()


def test_request_timeout_for_a_native_async_handler(services: Services, tmp_path: Path) -> None:
    service, port = start(services, tmp_path, "--request-timeout", "1")
    answered_504_at_one_second(service, port, "/slow?s=5", "its task is cancelled")
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "1"  # the worker lives on
