"""Request smuggling over the wire: the invalid corpus, each case followed by a request.

Every case in tests/requests/invalid/ (bar those marked "xfail": httptools
accepts them) is sent to a real squall in one write, with a second request
appended right after its bytes:

    GET /pid HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n

The connection must answer the requests that came whole before the error
(a few cases have a good request first), then exactly one error response with
the case's status, then close: the appended request is never answered, however
the broken framing (CL+TE, duplicate or invalid Content-Length, invalid chunk
sizes, obs-fold, bare CR/LF, Transfer-Encoding variants...) could have been
read. A request that asked to close ends the exchange before the error.

Cases with "limits" run against `tests.apps.limited_server` with those limits
(the command line has no options for them); the rest against
`squall tests.apps.wire:app --workers 1`. After each case the same worker
still serves and logged no error. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from squall.http.core import END_OF_MESSAGE, Request, RequestError, ServerConnection
from tests.service import Service, free_port
from tests.test_http_core import INVALID, Case
from tests.test_http_wire import Client, ServerClosed, serve

SECOND = b"GET /pid HTTP/1.1\r\nHost: x\r\n\r\n"
TIMEOUT = 5.0
LOG_SIGNS = ("Traceback", "Fatal error", "ERROR", "CRITICAL")


# -- the services --------------------------------------------------------------------


@dataclass
class Target:
    """A serving process: its port, its one serving pid and its log."""

    port: int
    pid: int
    log_path: Path
    workers: Callable[[], list[int]]

    def current_pid(self) -> int:
        with Client(self.port, TIMEOUT) as client:
            response = client.request("GET", "/pid")
        assert response.status == 200, response
        return int(response.body)

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def check_worker(self, log_start: int) -> None:
        assert self.current_pid() == self.pid, "the worker was replaced"
        assert self.workers() == [self.pid]
        with open(self.log_path, "rb") as log:
            log.seek(log_start)
            output = log.read().decode(errors="replace")
        for sign in LOG_SIGNS:
            assert sign not in output, output


@pytest.fixture(scope="module")
def default_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with serve(tmp_path_factory, "smuggling", "--workers", "1", "--keepalive-timeout", "5") as srv:
        srv.service.wait_for_workers(1)
        pid = srv.pid()
        yield Target(srv.port, pid, srv.service.log_path, srv.service.workers)


@pytest.fixture(scope="module")
def limited_targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[dict], Target]]:
    """One single-process server per set of limits, started when first asked for."""
    started: dict[str, tuple[Service, Target]] = {}

    def get(limits: dict) -> Target:
        key = json.dumps(limits, sort_keys=True)
        if key not in started:
            port = free_port()
            log = tmp_path_factory.mktemp("limited") / "server.log"
            command = [sys.executable, "-m", "tests.apps.limited_server", str(port), key]
            service = Service(command, log)
            try:
                service.wait_for_port(port)
            except BaseException:
                service.stop()
                raise
            target = Target(port, service.pid, log, lambda pid=service.pid: [pid])
            assert target.current_pid() == service.pid
            started[key] = (service, target)
        return started[key][1]

    try:
        yield get
    finally:
        for service, _ in started.values():
            service.stop()


# -- what each case must produce ---------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    answered: list[Request]  # requests complete before the error, answered in order
    error: int | None  # the error response's status; None: a request closed first


def expected(case: Case, payload: bytes) -> Expected:
    """What the wire must show, from squall's parser on the same bytes and the case's JSON."""
    events = ServerConnection(case.limits).receive_data(payload)
    errors = [event for event in events if isinstance(event, RequestError)]
    assert [error.status for error in errors] == [case.meta["status"]], events
    assert events[-1] is errors[0], events
    begun = [event for event in events if isinstance(event, Request)]
    # The appended request never parses: the corpus' requests are all there are.
    assert [r.target.decode("latin-1") for r in begun] == [
        r["target"] for r in case.meta.get("requests", [])
    ], events
    answered: list[Request] = []
    current: Request | None = None
    for event in events:
        if isinstance(event, Request):
            current = event
        elif event is END_OF_MESSAGE:
            assert current is not None
            answered.append(current)
            if not current.keep_alive:
                return Expected(answered, None)  # its response ends the connection
            current = None
    return Expected(answered, case.meta["status"])


def case_params() -> list[object]:
    params = []
    for case in INVALID:
        marks = []
        if "xfail" in case.meta:
            marks.append(pytest.mark.skip(reason=f"corpus xfail: {case.meta['xfail']}"))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", case_params())
def test_invalid_request_then_a_second_request(
    case: Case,
    default_target: Target,
    limited_targets: Callable[[dict], Target],
) -> None:
    target = limited_targets(case.meta["limits"]) if "limits" in case.meta else default_target
    payload = case.data + SECOND
    want = expected(case, payload)
    log_start = target.log_size()
    pid_body = str(target.pid).encode()
    with Client(target.port, TIMEOUT) as client:
        client.send(payload)  # one write: the second request arrives with the first
        responses = []
        for request in want.answered:
            response = client.read_response(head=request.method == "HEAD")
            assert 200 <= response.status < 500, (request, response)
            assert response.body != pid_body, "the appended request was answered"
            responses.append(response)
        if want.error is not None:
            response = client.read_response()
            assert response.status == want.error, response
            assert response.version == "HTTP/1.1"
            responses.append(response)
        assert responses[-1].closes, responses
        # And then nothing more, ever: no response to the appended request.
        with contextlib.suppress(ConnectionResetError):
            client.wait_closed(TIMEOUT)
    target.check_worker(log_start)


def test_every_invalid_case_is_covered() -> None:
    # The corpus is large and every case of it runs here, save those httptools accepts.
    runnable = [case for case in INVALID if "xfail" not in case.meta]
    assert len(runnable) >= 80
    assert {case.meta["status"] for case in runnable} == {400, 413, 414, 431, 501}


def test_a_smuggled_request_on_a_good_connection_is_answered_in_order(
    default_target: Target,
) -> None:
    # The control case: after a well-framed request the same bytes are a real request.
    good = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    with Client(default_target.port, TIMEOUT) as client:
        client.send(good + SECOND)
        first = client.read_response()
        assert (first.status, first.body) == (200, b"hello")
        second = client.read_response()
        assert (second.status, second.body) == (200, str(default_target.pid).encode())
        client.assert_open(0.2)


def test_reader_reports_a_close_without_response(default_target: Target) -> None:
    with Client(default_target.port, TIMEOUT) as client:
        client.sock.shutdown(socket.SHUT_WR)
        with pytest.raises(ServerClosed):
            client.read_response()
