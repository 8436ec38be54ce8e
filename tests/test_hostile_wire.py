"""Hostile apps and hostile clients, on the wire: what squall must never let through.

Three single-worker services, one per interface, serve apps that misbehave on
purpose (tests/apps/hostile_wsgi.py, hostile_asgi.py, hostile_native.py); each
is started the first time a test asks for it and serves the rest of the module.
Every test speaks raw bytes over a socket and reads them back with the small
reader below, so nothing a client library would smooth over goes unseen:

- response headers that would split the response or carry control bytes
  (names and values, in every interface) are refused with a 500;
- the app's framing is not trusted: a body longer or shorter than the
  Content-Length the app declared, or an informational status used as the
  final one, must never desynchronize a kept-alive connection;
- WSGI never sees a broken request body as a complete one, and request
  headers with `_` never collide with the environ's own keys;
- standards: absolute-form targets name the host, invalid Host values are a
  400, unknown methods a 501, and custom reason phrases are sent as given.

After each hostile exchange the same worker still answers a fresh connection
(`Target.assert_alive`). Every socket has a timeout, so every wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.apps.hostile_wsgi import BAD_HEADERS, FINAL_1XX, FRAMES, GOOD_HEADERS, LOG_ENV
from tests.service import Service, running_squall

INTERFACES = ("wsgi", "asgi", "native")
APPS = {
    "wsgi": ("tests.apps.hostile_wsgi:app", "wsgi"),
    "asgi": ("tests.apps.hostile_asgi:app", "asgi"),
    "native": ("tests.apps.hostile_native:app", "squall"),
}
TIMEOUT = 3.0  # any one socket operation
EOF_WAIT = 2.0  # how long a connection that must close may take to do so
STATUS_LINE = re.compile(rb"HTTP/1\.[01] \d{3}")


# -- a raw HTTP/1.1 reader -------------------------------------------------------------


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = True  # False: the connection ended before the framed body did

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        for key, value in self.headers:
            if key == name.lower():
                return value
        return None


class Connection:
    """One client connection; responses are read one by one, as their framing says.

    `received` keeps every byte that arrived, so a test can also check that
    something appears nowhere at all.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""  # received and not yet read as part of a response
        self.received = b""
        self.eof = False

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self, timeout: float) -> bool | None:
        """Receive more: True; False once the server has closed; None if nothing came in time."""
        if self.eof:
            return False
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except TimeoutError:
            return None
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        self.received += chunk
        return True

    def _fill(self) -> bool:
        """Receive more; False once the server has closed; AssertionError after TIMEOUT."""
        got = self._recv(TIMEOUT)
        if got is None:
            raise AssertionError(f"nothing more within {TIMEOUT} s; received: {self.received!r}")
        return got

    def _take(self, size: int) -> bytes:
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_response(self) -> Response:
        """The next response: a 1xx, 204 or 304 ends at its head; else by length or chunks."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if not self._fill():
                raise AssertionError(f"closed before a whole head; received: {self.received!r}")
        lines = self._take(end + 4)[:-4].decode("latin-1").split("\r\n")
        _, status, reason = [*lines[0].split(" ", 2), "", ""][:3]
        assert status.isdigit(), f"bad status line {lines[0]!r} in {self.received!r}"
        response = Response(int(status), reason)
        for line in lines[1:]:
            name, _, value = line.partition(":")
            response.headers.append((name.strip().lower(), value.strip()))
        if response.status < 200 or response.status in (204, 304):
            return response
        length = response.header("content-length")
        if "chunked" in (response.header("transfer-encoding") or "").lower():
            self._read_chunked(response)
        elif length is not None:
            while len(self.buffer) < int(length) and self._fill():
                pass
            response.body = self._take(int(length))
            response.complete = len(response.body) == int(length)
        else:
            while self._fill():
                pass
            response.body = self._take(len(self.buffer))
        return response

    def _read_chunked(self, response: Response) -> None:
        while True:
            while (end := self.buffer.find(b"\r\n")) < 0:
                if not self._fill():
                    response.complete = False
                    return
            size = int(self._take(end + 2).split(b";")[0], 16)
            while len(self.buffer) < size + 2:
                if not self._fill():
                    response.body += self._take(size)
                    response.complete = False
                    return
            response.body += self._take(size)
            self._take(2)
            if size == 0:
                return

    def receive_until_closed(self, wait: float = EOF_WAIT) -> bool:
        """Receive (into the buffer) until the server closes; whether it did within `wait`."""
        deadline = time.monotonic() + wait
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._recv(left)
        return True


def get(path: str, close: bool = False) -> bytes:
    """A plain GET; `close` asks the server to close after answering it."""
    connection = b"Connection: close\r\n" if close else b""
    return b"GET %b HTTP/1.1\r\nHost: test\r\n%b\r\n" % (path.encode(), connection)


# -- the services ----------------------------------------------------------------------


@dataclass
class Target:
    """One interface's single-worker service."""

    interface: str
    service: Service
    port: int
    log: Path  # where the WSGI app records what its reads returned
    pid: int = 0

    def connect(self) -> Connection:
        return Connection(self.port)

    def ask_pid(self) -> int:
        with self.connect() as conn:
            conn.send(get("/pid"))
            response = conn.read_response()
        assert response.status == 200, response
        return int(response.body)

    def exchange(self, data: bytes) -> tuple[Response, bytes]:
        """Send `data` on a new connection, read one response, then all until the server closes.

        For requests that ask to close (or that the server must close after):
        returns the response and everything received.
        """
        with self.connect() as conn:
            conn.send(data)
            response = conn.read_response()
            closed = conn.receive_until_closed()
            assert closed, f"the server kept the connection open: {conn.received!r}"
            return response, conn.received

    def assert_alive(self) -> None:
        """The hostile exchange did not cost the worker: the same pid answers a fresh connection."""
        assert self.ask_pid() == self.pid, "the worker was replaced"
        assert self.service.workers() == [self.pid]

    def records(self, token: str) -> list[str]:
        """What the WSGI app recorded for `token`, in order."""
        if not self.log.exists():
            return []
        prefix = f"{token} "
        lines = self.log.read_text().splitlines()
        return [line[len(prefix) :] for line in lines if line.startswith(prefix)]


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Target]]:
    """interface -> its service, started when first asked for, stopped by PID at the end.

    The WSGI service runs one thread: requests then run in the order they came,
    so once `/pid` has answered, a hostile request's app call is over.
    """
    started: dict[str, Target] = {}
    with contextlib.ExitStack() as stack:

        def target(interface: str) -> Target:
            if interface not in started:
                app, flag = APPS[interface]
                base = tmp_path_factory.mktemp(f"hostile-{interface}")
                log = base / "records.log"
                args = ["--interface", flag, "--keepalive-timeout", "5"]
                if interface == "wsgi":
                    args += ["--threads", "1"]
                service, port = stack.enter_context(
                    running_squall(base, app, *args, workers=1, env={LOG_ENV: str(log)})
                )
                found = Target(interface, service, port, log)
                found.pid = found.ask_pid()
                assert service.workers() == [found.pid]
                started[interface] = found
            return started[interface]

        yield target


@pytest.fixture(scope="module")
def wsgi(targets: Callable[[str], Target]) -> Target:
    return targets("wsgi")


@pytest.fixture(scope="module")
def native(targets: Callable[[str], Target]) -> Target:
    return targets("native")


# -- 1, 2: response headers ------------------------------------------------------------


@pytest.mark.parametrize("case", ["value-crlf", "name-crlf"])
def test_wsgi_response_splitting_is_a_500(wsgi: Target, case: str) -> None:
    """start_response with CR LF in a header must not put a forged Set-Cookie on the wire."""
    response, received = wsgi.exchange(get(f"/header/{case}", close=True))
    assert b"set-cookie" not in received.lower(), received
    assert response.status == 500, received
    wsgi.assert_alive()


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
@pytest.mark.parametrize("interface", INTERFACES)
def test_bad_response_header_is_a_500(
    targets: Callable[[str], Target], interface: str, case: str
) -> None:
    """A header name or value no field may hold is refused whole: a 500, nothing of it sent."""
    target = targets(interface)
    response, received = target.exchange(get(f"/header/{case}", close=True))
    assert b"pwn" not in received, received
    assert response.status == 500, received
    target.assert_alive()


@pytest.mark.parametrize("case", sorted(GOOD_HEADERS))
@pytest.mark.parametrize("interface", INTERFACES)
def test_tab_in_header_value_is_sent(
    targets: Callable[[str], Target], interface: str, case: str
) -> None:
    """The control case: HTAB is allowed inside a field value, so the check is not too wide."""
    target = targets(interface)
    response, received = target.exchange(get(f"/header/{case}", close=True))
    assert response.status == 200, received
    name, value = GOOD_HEADERS[case]
    assert response.header(name) == value, received
    target.assert_alive()


# -- 3: framing does not trust the app -------------------------------------------------


@pytest.mark.parametrize("mode", ["whole", "stream"])
@pytest.mark.parametrize("case", sorted(FRAMES))
@pytest.mark.parametrize("interface", INTERFACES)
def test_body_not_matching_declared_length_closes(
    targets: Callable[[str], Target], interface: str, case: str, mode: str
) -> None:
    """The app's Content-Length frames its response; a body that breaks it never
    reaches the client as sent.

    `long`: 5 declared, 44 sent, of which the last 39 are a forged response that
    a client would take for the answer to its pipelined request. `short`: 100
    declared, 5 sent. `stream` has sent the head before the body goes wrong: the
    client gets at most the declared bytes, then EOF, and the pipelined `/pid`
    is never answered on this connection. `whole` sends the body in one piece,
    where the server sees the mismatch before anything is sent: it answers 500
    in its place, and the pipelined `/pid` gets its own, genuine answer.
    """
    target = targets(interface)
    declared, sent = FRAMES[case]
    with target.connect() as conn:
        conn.send(get(f"/frame/{case}/{mode}") + get("/pid"))
        if mode == "whole":
            first = conn.read_response()
            assert first.status == 500, conn.received
            second = conn.read_response()
            assert second.status == 200 and second.body == str(target.pid).encode(), conn.received
            assert b"X-Forged" not in conn.received, conn.received
            target.assert_alive()
            return
        closed = conn.receive_until_closed()
        received = conn.received
        assert b"X-Forged" not in received, f"a forged response reached the client: {received!r}"
        assert len(STATUS_LINE.findall(received)) <= 1, f"more than one response: {received!r}"
        assert closed, f"the connection stayed open after a broken framing: {received!r}"
        if received:  # (nothing at all, then EOF, is within "at most the declared bytes")
            first = conn.read_response()
            assert conn.buffer == b"", f"bytes past the declared framing: {received!r}"
            assert first.status == 200, received
            assert first.header("content-length") == str(declared), received
            assert sent.startswith(first.body), received
            assert len(first.body) <= declared, received
    target.assert_alive()


@pytest.mark.parametrize("code", sorted(FINAL_1XX))
@pytest.mark.parametrize("interface", INTERFACES)
def test_informational_final_status_is_a_500(
    targets: Callable[[str], Target], interface: str, code: int
) -> None:
    """A 1xx is no final response: sent as one, the client would take the next response for it.

    The first request gets a 500 (no 1xx line from the app), and the pipelined
    second one its own 200 on the same connection.
    """
    target = targets(interface)
    with target.connect() as conn:
        conn.send(get(f"/status/{code}") + get("/pid"))
        first = conn.read_response()
        assert first.status == 500, f"first response {first.status}: {conn.received!r}"
        second = conn.read_response()
        assert (second.status, second.body) == (200, str(target.pid).encode()), conn.received
    target.assert_alive()


# -- 4: WSGI never sees a broken request body as complete ------------------------------


def new_token() -> str:
    return uuid.uuid4().hex[:12]


def assert_no_complete_read(wsgi: Target, token: str) -> list[str]:
    """The app either never ran, or its read raised an OSError: it never got a `len:`."""
    try:
        wsgi.assert_alive()  # one WSGI thread: once /pid is answered, the app call is over
    except AssertionError as exc:
        raise AssertionError(
            f"/pid went unanswered: is the app's read still blocked? {wsgi.records(token)}"
        ) from exc
    records = wsgi.records(token)
    outcomes = [event for event in records if event != "called"]
    if records:
        assert len(outcomes) == 1, f"the app's read did not end: {records}"
        assert outcomes[0].startswith("error:"), f"the app read a broken body as whole: {records}"
    return records


def test_wsgi_body_cut_by_client_raises(wsgi: Target) -> None:
    """Content-Length: 100, 10 bytes, then the client's FIN: a read must raise, never give 10."""
    token = new_token()
    with wsgi.connect() as conn:
        conn.send(
            b"POST /read/%b HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n0123456789"
            % token.encode()
        )
        time.sleep(0.2)  # the app is reading by now
        conn.sock.shutdown(socket.SHUT_WR)
        closed = conn.receive_until_closed()
        received = conn.received
    assert closed, f"the server kept a half-closed connection open: {received!r}"
    if received:  # whatever the client gets, it is not the app's answer to a whole body
        assert not received.startswith(b"HTTP/1.1 200"), received
    assert_no_complete_read(wsgi, token)


@pytest.mark.parametrize("pause", [False, True], ids=["one-write", "two-writes"])
def test_wsgi_invalid_chunk_raises(wsgi: Target, pause: bool) -> None:
    """A valid chunk, then an invalid one: the client gets a 400, the app never gets `len:5`."""
    token = new_token()
    head = b"POST /read/%b HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n" % (
        token.encode()
    )
    good, bad = b"5\r\nhello\r\n", b"zz\r\nbroken\r\n0\r\n\r\n"
    with wsgi.connect() as conn:
        if pause:
            conn.send(head + good)
            time.sleep(0.2)  # the app has read the first chunk and waits for more
            conn.send(bad)
        else:
            conn.send(head + good + bad)
        response = conn.read_response()
        closed = conn.receive_until_closed()
        received = conn.received
    assert response.status == 400, received
    assert closed, f"the server kept the connection open after a 400: {received!r}"
    assert_no_complete_read(wsgi, token)


@pytest.mark.parametrize(
    "coding",
    ["xchunked", "chunked, gzip", "gzip"],
    ids=["xchunked", "chunked-gzip", "gzip"],
)
def test_wsgi_unframed_transfer_coding_never_reaches_app(wsgi: Target, coding: str) -> None:
    """A Transfer-Encoding whose final coding is not chunked leaves the body without
    framing (RFC 9112 6.3): 400 before the app runs."""
    statuses = {400}
    token = new_token()
    request = (
        b"POST /read/%b HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: %b\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n" % (token.encode(), coding.encode())
    )
    response, received = wsgi.exchange(request)
    assert response.status in statuses, received
    records = assert_no_complete_read(wsgi, token)
    assert records == [], f"the app ran: {records}"


def test_wsgi_codings_before_chunked_reach_the_app_still_applied(wsgi: Target) -> None:
    """`gzip, chunked` is framed: squall removes the chunked coding and hands the
    app the rest as sent, with the header that names it (as gunicorn and uvicorn do)."""
    token = new_token()
    request = (
        b"POST /read/%b HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip, chunked\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n" % token.encode()
    )
    response, received = wsgi.exchange(request)
    assert response.status == 200, received


# -- 5: WSGI header names with "_" ----------------------------------------------------


@pytest.mark.parametrize(
    ("legit", "forwarded_for"),
    [(b"", None), (b"X-Forwarded-For: 1.2.3.4\r\n", "1.2.3.4")],
    ids=["alone", "with-legit"],
)
def test_wsgi_underscore_headers_are_dropped(
    wsgi: Target, legit: bytes, forwarded_for: str | None
) -> None:
    """`X_Forwarded_For` and `Content_Length` would land on the environ keys of the real ones."""
    request = (
        b"GET /environ HTTP/1.1\r\nHost: test\r\n%bX_Forwarded_For: 6.6.6.6\r\n"
        b"Content-Length: 0\r\nContent_Length: 999\r\nConnection: close\r\n\r\n" % legit
    )
    response, received = wsgi.exchange(request)
    assert response.status == 200, received
    environ = json.loads(response.body)
    assert environ["HTTP_X_FORWARDED_FOR"] == forwarded_for, environ
    assert environ["CONTENT_LENGTH"] == "0", environ
    assert "6.6.6.6" not in environ["values"] and "999" not in environ["values"], environ
    wsgi.assert_alive()


# -- 6: standards ----------------------------------------------------------------------


@pytest.mark.parametrize("interface", INTERFACES)
def test_absolute_form_target_names_the_host(
    targets: Callable[[str], Target], interface: str
) -> None:
    """RFC 9112 3.2.2: with an absolute-form target, its authority is the host, not Host's."""
    target = targets(interface)
    request = b"GET http://a.example/x?y=1 HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n"
    response, received = target.exchange(request)
    assert response.status == 200, received
    seen = json.loads(response.body)
    if interface == "asgi":
        assert seen["hosts"] == ["a.example"], seen  # the scope's only host header
    else:
        assert seen["host"] == "a.example", seen
    assert (seen["path"], seen["query"]) == ("/x", "y=1"), seen
    target.assert_alive()


@pytest.mark.parametrize(
    "host",
    [b"a b", b"a/b", b"[::1", b"a@b", b"a\x00b"],
    ids=["space", "slash", "bracket", "at", "nul"],
)
@pytest.mark.parametrize("interface", INTERFACES)
def test_invalid_host_is_a_400(
    targets: Callable[[str], Target], interface: str, host: bytes
) -> None:
    """RFC 9112 3.2: a Host that is no valid uri-host[:port] is a 400."""
    target = targets(interface)
    request = b"GET /x HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n" % host
    response, received = target.exchange(request)
    assert response.status == 400, received
    target.assert_alive()


@pytest.mark.parametrize("host", [b"a.example", b"a.example:8080", b"127.0.0.1", b"[::1]:8000"])
@pytest.mark.parametrize("interface", INTERFACES)
def test_valid_host_is_served(
    targets: Callable[[str], Target], interface: str, host: bytes
) -> None:
    """The control case: names, ports, IPv4 and bracketed IPv6 hosts are all fine."""
    target = targets(interface)
    request = b"GET /x HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n" % host
    response, received = target.exchange(request)
    assert response.status == 200, received
    target.assert_alive()


@pytest.mark.parametrize("interface", INTERFACES)
def test_unknown_method_is_a_501(targets: Callable[[str], Target], interface: str) -> None:
    """FOO is a valid token the parser does not know: 501 Not Implemented, not a 400."""
    target = targets(interface)
    response, received = target.exchange(
        b"FOO / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    assert response.status == 501, received
    target.assert_alive()


def test_custom_reason_phrase_is_sent(native: Target) -> None:
    """set_status(299, "Custom Reason"): the status line says exactly that."""
    _, received = native.exchange(get("/reason/custom", close=True))
    status_line = received.partition(b"\r\n")[0]
    assert status_line == b"HTTP/1.1 299 Custom Reason", received
    native.assert_alive()


def test_reason_phrase_with_crlf_is_a_500(native: Target) -> None:
    """A reason phrase is part of the head: CR LF in it must not forge a header."""
    response, received = native.exchange(get("/reason/crlf", close=True))
    assert b"pwn" not in received, received
    assert response.status == 500, received
    native.assert_alive()
