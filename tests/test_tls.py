"""TLS: squall serving https with a certificate from a test CA (trustme).

One module-scoped service, `--workers 2` with `--certfile/--keyfile`, answers
httpx (verifying against the CA), a raw `ssl` socket (for ALPN) and a plain
HTTP client that should never have spoken to a TLS port. Bad TLS options are
one `squall: error:` line and exit status 2. Every wait is bounded.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme

from tests.service import ROOT, Service, free_port

APP = "tests.apps.scheme_app:app"
TIMEOUT = 5.0


@dataclass
class TLSServer:
    service: Service
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def get(self, path: str = "/") -> httpx.Response:
        with httpx.Client(verify=self.client_context(), timeout=TIMEOUT) as client:
            return client.get(self.url + path)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate chain, server key), as PEM files."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = directory / "ca.pem"
    cert_file = directory / "server.pem"
    key_file = directory / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    for i, pem in enumerate(cert.cert_chain_pems):
        pem.write_to_path(str(cert_file), append=i > 0)
    cert.private_key_pem.write_to_path(str(key_file))
    return ca_file, cert_file, key_file


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certificates: tuple[Path, Path, Path]
) -> Iterator[TLSServer]:
    ca_file, cert_file, key_file = certificates
    port = free_port()
    log = tmp_path_factory.mktemp("tls-service") / "squall.log"
    command = [
        sys.executable,
        "-m",
        "squall",
        APP,
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "2",
        "--certfile",
        str(cert_file),
        "--keyfile",
        str(key_file),
    ]
    service = Service(command, log)
    try:
        service.wait_for_port(port)
        service.wait_for_workers(2)
        yield TLSServer(service, port, ca_file, cert_file, key_file)
    finally:
        service.stop()


def test_https_request_verified_against_the_ca(tls_server: TLSServer) -> None:
    response = tls_server.get("/hello")
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    data = response.json()
    assert data["path"] == "/hello"
    assert data["pid"] in tls_server.service.workers()


def test_scope_scheme_is_https(tls_server: TLSServer) -> None:
    data = tls_server.get("/").json()
    assert data["scheme"] == "https"
    assert data["http_version"] == "1.1"


def test_alpn_negotiates_http11(tls_server: TLSServer) -> None:
    context = tls_server.client_context()
    context.set_alpn_protocols(["http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", tls_server.port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        tls.sendall(b"GET /alpn HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        received = b""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            chunk = tls.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), received[:200]
    assert json.loads(body)["scheme"] == "https"


def test_untrusted_client_refuses_the_certificate(tls_server: TLSServer) -> None:
    # The server presents the test CA's certificate, not one the system trusts.
    with (
        httpx.Client(verify=ssl.create_default_context(), timeout=TIMEOUT) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.get(tls_server.url + "/")


def test_plain_http_to_the_tls_port_fails_cleanly(tls_server: TLSServer) -> None:
    workers = sorted(tls_server.service.workers())
    assert len(workers) == 2
    log_start = tls_server.service.log_path.stat().st_size
    for _ in range(4):  # enough to reach both workers most of the time
        with socket.create_connection(("127.0.0.1", tls_server.port), timeout=TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            received = b""
            deadline = time.monotonic() + TIMEOUT
            try:
                while time.monotonic() < deadline:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                else:
                    raise AssertionError("the TLS port kept a plain HTTP connection open")
            except ConnectionResetError:
                pass
        # No HTTP answer: at most a TLS alert record, then the connection ends.
        assert not received.startswith(b"HTTP/"), received[:200]
    # The workers live on and still serve https.
    assert sorted(tls_server.service.workers()) == workers
    for _ in range(4):
        response = tls_server.get("/after")
        assert response.status_code == 200
        assert response.json()["pid"] in workers
    assert sorted(tls_server.service.workers()) == workers
    with open(tls_server.service.log_path, "rb") as log:
        log.seek(log_start)
        output = log.read().decode(errors="replace")
    for sign in ("Traceback", "Fatal error", "ERROR"):
        assert sign not in output, output


# -- bad TLS options ----------------------------------------------------------------


def run_squall(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squall", APP, "--bind", f"127.0.0.1:{free_port()}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        stdin=subprocess.DEVNULL,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if " INFO " not in line]


def test_missing_certificate_file_is_one_error_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-cert.pem"
    result = run_squall("--certfile", str(missing))
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("squall: error: "), lines
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("which", ["certfile", "keyfile"])
def test_missing_tls_file_error_names_the_file(
    tmp_path: Path, certificates: tuple[Path, Path, Path], which: str
) -> None:
    _, cert_file, _ = certificates
    missing = tmp_path / f"no-such-{which}.pem"
    if which == "certfile":
        result = run_squall("--certfile", str(missing))
    else:
        result = run_squall("--certfile", str(cert_file), "--keyfile", str(missing))
    assert result.returncode == 2, result.stderr
    assert str(missing) in result.stderr, result.stderr


def test_certificate_that_is_not_pem_is_one_error_line(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    result = run_squall("--certfile", str(garbage))
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("squall: error: "), lines
    assert "Traceback" not in result.stderr


def test_missing_key_file_is_one_error_line(
    tmp_path: Path, certificates: tuple[Path, Path, Path]
) -> None:
    _, cert_file, _ = certificates
    missing = tmp_path / "no-such-key.pem"
    result = run_squall("--certfile", str(cert_file), "--keyfile", str(missing))
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("squall: error: "), lines
    assert "Traceback" not in result.stderr


def test_keyfile_without_certfile_is_a_usage_error(certificates: tuple[Path, Path, Path]) -> None:
    _, _, key_file = certificates
    result = run_squall("--keyfile", str(key_file))
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("squall: error: "), lines
    assert "--certfile" in lines[0]
