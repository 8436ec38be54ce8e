"""squall behind nginx: an instance that stops (gracefully, or killed) costs no request.

nginx balances two squall instances (two workers each) on 127.0.0.1. Under a
steady load of keep-alive clients, instance A is stopped gracefully (SIGTERM)
and started again, then instance B is killed outright (SIGKILL). nginx's
`proxy_next_upstream error timeout http_502` retries a GET that failed on one
instance on the other, so the clients must see no failure at all: the graceful
stop closes A's listening sockets first (connect refused: retried) and answers
requests in flight; the kill leaves nothing half-sent for such small answers.

nginx is the Debian package (`apt-get install nginx`); without it the test is
skipped.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.service import Service, Services, alive, free_port, wait_until

OPS_APP = "tests.scripts.ops_app:app"
THREADS = 4

NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;

events {{
    worker_connections 512;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;

    upstream squall {{
        # max_fails=0: keep trying both; this test is about retries, not passive health checks
        server 127.0.0.1:{port_a} max_fails=0;
        server 127.0.0.1:{port_b} max_fails=0;
        keepalive 16;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://squall;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_502;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 2s;
            proxy_read_timeout 10s;
        }}
    }}
}}
"""


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    pids: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def total(self) -> int:
        return self.ok + self.failed


def client(port: int, stop: threading.Event, tally: Tally, method: str = "GET") -> None:
    """`method` /pid over one keep-alive connection to nginx until told to stop; no retries."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        while not stop.is_set():
            try:
                answer = http.request(
                    method, "/pid", content=b"x" * 64 if method == "POST" else None
                )
                pid = int(answer.json()["pid"]) if answer.status_code == 200 else 0
                error = "" if pid else f"status {answer.status_code}: {answer.text[:200]}"
            except Exception as exc:  # every failure counts
                pid, error = 0, repr(exc)
            with tally.lock:
                if pid:
                    tally.ok += 1
                    tally.pids[pid] += 1
                else:
                    tally.failed += 1
                    if len(tally.errors) < 20:
                        tally.errors.append(error)


def start_squall(services: Services, port: int) -> Service:
    service = services.squall(OPS_APP, "--bind", f"127.0.0.1:{port}", "--workers", "2")
    service.wait_for_port(port)
    service.wait_for_log("is ready", count=2)
    return service


def served_by(tally: Tally, pids: set[int]) -> int:
    with tally.lock:
        return sum(tally.pids[pid] for pid in pids)


def start_nginx(
    services: Services, tmp_path: Path, port: int, port_a: int, port_b: int
) -> tuple[Service, Path]:
    """nginx on `port` in front of two upstream ports, and its prefix directory."""
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, port=port, port_a=port_a, port_b=port_b))
    command = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    proxy = services.start([*command, "-g", "daemon off;"])
    proxy.wait_for_port(port)
    assert httpx.get(f"http://127.0.0.1:{port}/pid", timeout=5).status_code == 200
    return proxy, prefix


def test_nginx_loses_no_request_when_an_instance_stops_or_dies(
    services: Services, tmp_path: Path
) -> None:
    port_a, port_b, port = free_port(), free_port(), free_port()
    a = start_squall(services, port_a)
    b = start_squall(services, port_b)
    workers_b = set(b.wait_for_workers(2))
    proxy, prefix = start_nginx(services, tmp_path, port, port_a, port_b)

    tally = Tally()
    stop = threading.Event()
    threads = [threading.Thread(target=client, args=(port, stop, tally)) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: tally.total >= 200, timeout=10)
        time.sleep(1.0)  # both serve

        # Phase 1: A stops gracefully while B serves; then A comes back.
        workers_a = set(a.wait_for_workers(2))
        a.send(signal.SIGTERM)
        assert a.wait(timeout=20) == 0
        time.sleep(1.0)  # B alone
        a2 = start_squall(services, port_a)
        workers_a2 = set(a2.wait_for_workers(2))
        wait_until(lambda: served_by(tally, workers_a2) >= 100, timeout=10)
        time.sleep(1.0)  # both serve again

        # Phase 2: B is killed while A serves.
        b.send(signal.SIGKILL)
        b.wait(timeout=10)
        wait_until(lambda: not any(alive(pid) for pid in workers_b), timeout=10)
        time.sleep(2.0)  # A alone
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    assert not any(thread.is_alive() for thread in threads)

    retried = sum("upstream" in line for line in (prefix / "error.log").read_text().splitlines())
    print(
        f"nginx in front of two squall instances: {tally.total} requests, "
        f"{tally.failed} failed ({retried} upstream errors retried by nginx)"
    )
    assert tally.failed == 0, tally.errors
    assert tally.total >= 1000
    assert served_by(tally, workers_a) > 0 and served_by(tally, workers_b) > 0
    assert served_by(tally, workers_a2) >= 100
    assert a2.stop() == 0
    proxy.stop(signal.SIGQUIT)  # nginx's graceful shutdown
    assert not proxy.leftovers()


def test_nginx_gets_no_502_for_keep_alive_posts_through_reloads(
    services: Services, tmp_path: Path
) -> None:
    # One instance behind nginx's upstream keep-alive; POSTs, which nginx does
    # not retry once sent. Each reload retires every worker: a connection
    # closed as nginx reuses it would be a 502 for a user.
    port_a, port = free_port(), free_port()
    service = start_squall(services, port_a)
    _, prefix = start_nginx(services, tmp_path, port, port_a, port_a)
    tally = Tally()
    stop = threading.Event()
    threads = [
        threading.Thread(target=client, args=(port, stop, tally, "POST")) for _ in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: tally.total >= 200, timeout=10)
        for count in (1, 2, 3):
            service.send(signal.SIGHUP)
            service.wait_for_log("reload complete", count=count, timeout=30)
            start = tally.total
            wait_until(lambda start=start: tally.total >= start + 200, timeout=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    # nginx resends a request that failed on a reused upstream connection
    # (even a POST, if none of it was answered); it logs each.
    upstream_errors = [
        line for line in (prefix / "error.log").read_text().splitlines() if "upstream" in line
    ]
    print(
        f"nginx, POSTs through 3 reloads: {tally.total} requests, {tally.failed} failed, "
        f"{len(upstream_errors)} upstream errors"
    )
    assert tally.failed == 0, tally.errors
    assert upstream_errors == []
    assert tally.total >= 800
