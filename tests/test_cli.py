"""The command line: clear errors for bad input, and the demo served by N workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from squall.cli import parse_config
from squall.config import ENV_PREFIX, SETTINGS, Config
from squall.errors import UsageError
from squall.http.core import DEFAULT_LIMITS
from tests.service import ROOT, Services, alive, free_port, wait_until


def run_squall(
    *args: str, cwd: Path | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "squall", *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if " INFO " not in line]


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["nosuchmodule:app"], 1, "could not import module 'nosuchmodule': no such module"),
        (["examples.demo:nope"], 1, "module 'examples.demo' has no attribute 'nope'"),
        (["examples.demo"], 2, "app must be given as MODULE:ATTR"),
        (["examples.demo:HelloHandler"], 1, "is not an app"),
        (["examples.demo:app", "--workers", "-1"], 2, "--workers must be 0 (one per CPU) or more"),
        (
            ["examples.demo:app", "--workers", "many"],
            2,
            "argument --workers: 'many' is not a whole number",
        ),
        (
            ["examples.demo:app", "--bind", "127.0.0.1:70000"],
            2,
            "port must be a number from 0 to 65535",
        ),
        (
            ["examples.demo:app", "--bind", "no-such-host.invalid:80"],
            1,
            "cannot resolve address 'no-such-host.invalid'",
        ),
        (["examples.demo:app", "--bind", "192.0.2.1:8000"], 1, "cannot bind 192.0.2.1:8000"),
        (
            ["examples.demo:app", "--interface", "cgi"],
            2,
            "argument --interface: invalid choice: 'cgi'",
        ),
        (
            ["examples.demo:app", "--graceful-timeout", "soon"],
            2,
            "'soon' is not a number of seconds",
        ),
        (["examples.demo:app", "--frobnicate"], 2, "unrecognized arguments: --frobnicate"),
        (
            ["examples.demo:app", "--reuse-port", "--shared-socket"],
            2,
            "--reuse-port and --shared-socket: give one or the other",
        ),
        (
            ["tests.scripts.hang_on_boot:app", "--workers", "3"],
            1,
            "RuntimeError: database unreachable",
        ),
        (
            ["examples.demo:app", "--limit-request-body", "10X"],
            2,
            "argument --limit-request-body: '10X' is not a number of bytes",
        ),
        (
            ["examples.demo:app", "--limit-request-line", "0"],
            2,
            "--limit-request-line must be 1 or more, not 0",
        ),
        (
            ["examples.demo:app", "--limit-request-field_size", "-5"],
            2,
            "is not a number of bytes",
        ),
        (
            ["examples.demo:app", "--proxy-protocol", "--proxy-allow-from", "10.0.0.1,proxy"],
            2,
            "--proxy-allow-from: 'proxy' is not an IP address, a network or *",
        ),
    ],
)
def test_bad_input_gives_one_clear_error(args: list[str], status: int, message: str) -> None:
    result = run_squall(*args, "--log-level", "info")
    lines = error_lines(result)
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr  # one line, no traceback wall
    assert lines[0].startswith("squall: error: ")
    assert message in lines[0]
    assert "restarting" not in result.stderr  # a boot failure is not a restart loop


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_squall("examples.demo:app", "--bind", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert error_lines(result) == [
        f"squall: error: cannot bind 127.0.0.1:{port}: address already in use"
    ]


def test_settings_from_environment_are_validated() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "squall", "examples.demo:app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "SQUALL_WORKERS": "two"},
    )
    assert result.returncode == 2
    assert "invalid value 'two' for SQUALL_WORKERS" in result.stderr


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)


@pytest.mark.usefixtures("clean_environment")
def test_limits_defaults_suffixes_and_gunicorn_spellings() -> None:
    config = parse_config(["app:app"])
    assert config.limit_request_line == 8192
    assert config.limit_request_fields == 100
    assert config.limit_request_field_size == DEFAULT_LIMITS.max_field_bytes
    assert config.limit_request_headers == 65536
    assert config.limit_request_body == 100 * 1024 * 1024
    assert config.ws_max_size == 16 * 1024 * 1024
    assert config.proxy_allow_from == "127.0.0.1,::1"
    config = parse_config(
        [
            "app:app",
            *("--limit-request-body", "10M"),
            *("--limit-request-headers", "64k"),
            *("--limit-request-field_size", "1000"),  # gunicorn's spelling
            *("--websocket-max-message-size", "1MiB"),
            *("--limit-request-line", "2KB"),
        ]
    )
    assert config.limit_request_body == 10 * 1024 * 1024
    assert config.limit_request_headers == 64 * 1024
    assert config.limit_request_field_size == 1000
    assert config.ws_max_size == 1024 * 1024
    assert config.limit_request_line == 2048
    assert parse_config(["app:app", "--limit-request-body", "1G"]).limit_request_body == 1 << 30


@pytest.mark.usefixtures("clean_environment")
def test_limits_from_environment_and_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text('limit_request_body = "2M"\nlimit_request_fields = 50\n')
    monkeypatch.setenv("SQUALL_LIMIT_REQUEST_FIELDS", "60")
    monkeypatch.setenv("SQUALL_PROXY_ALLOW_FROM", "10.0.0.0/8, 2001:db8::/32")
    config = parse_config(["app:app", "--config", str(conf)])
    assert config.limit_request_body == 2 * 1024 * 1024
    assert config.limit_request_fields == 60  # the environment wins over the file
    assert config.proxy_allow_from == "10.0.0.0/8, 2001:db8::/32"
    monkeypatch.setenv("SQUALL_LIMIT_REQUEST_BODY", "0")
    with pytest.raises(UsageError, match="--limit-request-body must be 1 or more, not 0"):
        parse_config(["app:app"])
    monkeypatch.delenv("SQUALL_LIMIT_REQUEST_BODY")
    conf.write_text("limit_request_headers = 1.5\n")
    with pytest.raises(
        UsageError, match=r"limit_request_headers in --config file .* number of bytes"
    ):
        parse_config(["app:app", "--config", str(conf)])


@pytest.mark.usefixtures("clean_environment")
def test_log_format_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_config(["app:app"]).log_format == "text"
    assert parse_config(["app:app", "--log-format", "json"]).log_format == "json"
    conf = tmp_path / "conf.py"
    conf.write_text('log_format = "json"\n')
    assert parse_config(["app:app", "--config", str(conf)]).log_format == "json"
    monkeypatch.setenv("SQUALL_LOG_FORMAT", "text")  # the environment wins over the file
    assert parse_config(["app:app", "--config", str(conf)]).log_format == "text"
    monkeypatch.setenv("SQUALL_LOG_FORMAT", "logfmt")
    with pytest.raises(UsageError, match="--log-format must be one of text, json"):
        parse_config(["app:app"])
    monkeypatch.delenv("SQUALL_LOG_FORMAT")
    with pytest.raises(UsageError, match="invalid choice: 'xml'"):
        parse_config(["app:app", "--log-format", "xml"])


def test_demo_with_a_worker_per_cpu_answers_curl_and_stops_clean(services: Services) -> None:
    port = free_port()
    service = services.squall("examples.demo:app", "--workers", "0", "--bind", f"127.0.0.1:{port}")
    service.wait_for_port(port)
    workers = service.wait_for_workers(len(os.sched_getaffinity(0)))
    curl = shutil.which("curl")
    assert curl is not None
    result = subprocess.run(
        [curl, "-s", f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=10
    )
    assert result.stdout.startswith("Hello from squall worker ")
    assert service.stop(signal.SIGTERM) == 0
    assert service.leftovers() == []
    assert all(not alive(pid) for pid in workers)
    assert "all workers have exited" in service.output()


def test_worker_id_reaches_every_worker_and_logs_carry_it(services: Services) -> None:
    port = free_port()
    service = services.squall(
        "tests.scripts.asgi_basic:app",
        "--workers",
        "2",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-level",
        "debug",
    )
    service.wait_for_port(port)
    seen = set()
    for _ in range(300):
        seen.add(httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()["worker_id"])
        if seen == {0, 1}:
            break
    assert seen == {0, 1}
    output = service.output()
    assert "[worker 0]" in output and "[worker 1]" in output and "[supervisor]" in output


def test_serves_on_a_unix_socket(services: Services, tmp_path: Path) -> None:
    path = tmp_path / "squall.sock"
    service = services.squall("tests.scripts.asgi_basic:app", "--bind", f"unix:{path}")
    wait_until(path.exists, timeout=15)
    transport = httpx.HTTPTransport(uds=str(path))
    with httpx.Client(transport=transport, timeout=5) as client:
        wait_until(lambda: service.workers(), timeout=10)
        response = client.get("http://squall/")
    assert response.status_code == 200
    assert response.json()["worker_id"] == 0


def test_sigint_twice_stops_at_once(services: Services) -> None:
    port = free_port()
    service = services.squall("examples.demo:app", "--workers", "2", "--bind", f"127.0.0.1:{port}")
    service.wait_for_port(port)
    workers = service.wait_for_workers(2)
    service.send(signal.SIGINT)
    service.send(signal.SIGINT)
    assert service.wait(timeout=10) == 0
    assert all(not alive(pid) for pid in workers)


def test_workers_die_with_a_killed_supervisor(services: Services) -> None:
    port = free_port()
    service = services.squall("examples.demo:app", "--workers", "2", "--bind", f"127.0.0.1:{port}")
    service.wait_for_port(port)
    workers = service.wait_for_workers(2)
    service.send(signal.SIGKILL)
    service.wait(timeout=5)
    wait_until(lambda: all(not alive(pid) for pid in workers), timeout=2)


BOUNDED = [setting for setting in SETTINGS if setting.minimum is not None]


@pytest.mark.parametrize("setting", BOUNDED, ids=[each.flag for each in BOUNDED])
def test_each_minimum_is_checked_from_its_setting(setting: object) -> None:
    """Validation derives from the setting: below its minimum, one line naming the flag."""
    from squall.config import Setting

    assert isinstance(setting, Setting) and setting.minimum is not None
    kind = float if isinstance(setting.default, float) else int
    below, least = kind(setting.minimum - 1), kind(setting.minimum)
    with pytest.raises(UsageError, match=f"^{setting.flag} must be {int(least)}"):
        Config(app="m:a", **{setting.name: below}).validate()
    Config(app="m:a", **{setting.name: least}).validate()


def test_help_states_each_default_once_from_the_config() -> None:
    """The help says what Config says, and no help text repeats a default by hand."""
    described = {setting.name: setting.described for setting in SETTINGS}
    assert described["graceful_timeout"].endswith("(default 30)")
    assert described["limit_request_body"].endswith("(default 100M)")
    assert described["workers"].endswith("(default 1)")
    for setting in SETTINGS:
        assert setting.described.count("(default") <= 1, setting.flag
        if not setting.repeated:  # a list's default is made afresh for each Config
            assert setting.default == getattr(Config(), setting.name), setting.flag
