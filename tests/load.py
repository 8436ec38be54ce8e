"""A bounded load of real HTTP clients, for tests that must lose no request.

Two kinds of client thread run until told to stop (or a deadline):
- keep-alive clients send request after request on one connection;
- fresh clients open a new connection for every request.

A request counts as failed when it gets no complete 200 response. With
`retry=True` (the default, for GETs) one case is retried instead, as RFC 9112
section 9.3.1 lets a client retry an idempotent request: the server closed a
reused keep-alive connection before sending any byte of the response. That is
the race when a server closes an idle connection just as the client reuses
it; browsers and HTTP libraries retry it, and so does this client. A retry
that fails again is a failure. With `method="POST"` and `retry=False`, as a
proxy must treat a request it may have delivered, nothing is retried: every
such close is a failure. Resets (ECONNRESET) are counted apart as well.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

RETRYABLE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    retried: int = 0
    resets: int = 0
    bodies: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ok: bool, body: str = "", error: str = "") -> None:
        with self.lock:
            if "ConnectionResetError" in error:
                self.resets += 1
            if ok:
                self.ok += 1
                self.bodies[body] += 1
            else:
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(error)

    @property
    def total(self) -> int:
        return self.ok + self.failed


@dataclass
class Client:
    port: int
    path: str
    method: str
    retry: bool
    stop: threading.Event
    result: LoadResult

    def request(self, conn: http.client.HTTPConnection) -> tuple[int, str]:
        body = b"x" * 100 if self.method == "POST" else None
        conn.request(self.method, self.path, body=body)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")


def _keepalive_client(client: Client) -> None:
    result, stop = client.result, client.stop
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
    reused = False
    try:
        while not stop.is_set():
            try:
                status, body = client.request(conn)
            except RETRYABLE as exc:
                conn.close()
                if not reused or not client.retry:
                    what = "reused" if reused else "first request"
                    result.record(False, error=f"keep-alive {what}: {exc!r}")
                    reused = False
                    continue
                with result.lock:
                    result.retried += 1
                try:
                    status, body = client.request(conn)  # reconnects: a fresh connection
                except Exception as retry_exc:
                    result.record(False, error=f"keep-alive retry: {retry_exc!r}")
                    conn.close()
                    reused = False
                    continue
            except Exception as exc:
                result.record(False, error=f"keep-alive: {exc!r}")
                conn.close()
                reused = False
                continue
            result.record(status == 200, body, f"status {status}")
            reused = True
    finally:
        conn.close()


def _fresh_client(client: Client) -> None:
    result = client.result
    while not client.stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
        try:
            status, body = client.request(conn)
            result.record(status == 200, body, f"status {status}")
        except Exception as exc:
            result.record(False, error=f"new connection: {exc!r}")
        finally:
            conn.close()


class Load:
    """Start with `with Load(port) as load:`; the threads stop on exit (bounded)."""

    def __init__(
        self,
        port: int,
        path: str = "/",
        keepalive: int = 3,
        fresh: int = 3,
        method: str = "GET",
        retry: bool = True,
    ) -> None:
        self.result = LoadResult()
        self._stop = threading.Event()
        client = Client(port, path, method, retry, self._stop, self.result)
        self._threads = [
            threading.Thread(target=_keepalive_client, args=(client,)) for _ in range(keepalive)
        ] + [threading.Thread(target=_fresh_client, args=(client,)) for _ in range(fresh)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for_requests(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.result.total < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
