"""Logs a shipper can read: `--log-format json` and `--access-log json`, from real processes.

Every line the supervisor and the workers write, on stderr or in `--log-file`,
must be one JSON object and nothing else, also while both workers write at
once. The in-process tests at the end format records without touching the
test run's own logging.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from squall import process
from squall.logs import WHOLE_LINE, LineFormatter
from tests.service import Service, Services, free_port, running_squall, wait_until

APP = "tests.apps.raw_asgi:app"
SECRET = "asgi-secret-exception-text (before start)"
ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"
LOG_KEYS = {"time", "level", "logger", "message", "role", "pid"}
ACCESS_KEYS = {
    *("time", "client", "method", "path", "query", "http_version", "status", "bytes"),
    *("duration_ms", "referer", "user_agent", "worker"),
}


def entries(text: str) -> list[dict[str, Any]]:
    """Each line of `text` as a JSON object; AssertionError naming the first line that is not."""
    parsed = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}\n{text}") from None
        assert isinstance(entry, dict), line
        parsed.append(entry)
    return parsed


def access_entries(text: str) -> list[dict[str, Any]]:
    return [entry for entry in entries(text) if "method" in entry]


def log_entries(text: str) -> list[dict[str, Any]]:
    return [entry for entry in entries(text) if "method" not in entry]


def check_log_entry(entry: dict[str, Any], supervisor: int, workers: set[int]) -> None:
    """The fields of one line of squall's own log, and who wrote it."""
    assert LOG_KEYS <= set(entry) <= LOG_KEYS | {"worker", "exception"}, entry
    assert re.fullmatch(ISO_TIME, entry["time"]), entry
    assert entry["level"] in ("debug", "info", "warning", "error", "critical"), entry
    assert isinstance(entry["logger"], str) and isinstance(entry["message"], str), entry
    if entry["role"] == "supervisor":
        assert entry["pid"] == supervisor and "worker" not in entry, entry
    else:
        assert entry["role"] == "worker", entry
        assert entry["worker"] in (0, 1) and entry["pid"] in workers, entry


def check_access_entry(entry: dict[str, Any]) -> None:
    assert set(entry) == ACCESS_KEYS, entry
    assert re.fullmatch(ISO_TIME, entry["time"]), entry
    assert entry["client"] == "127.0.0.1" and entry["http_version"] == "1.1", entry
    assert entry["worker"] in (0, 1), entry
    assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0, entry


@contextlib.contextmanager
def client_per_worker(url: str) -> Iterator[dict[int, httpx.Client]]:
    """{worker id: a client whose connection that worker holds}, for both workers.

    The connections stay open until both have answered, so that new ones go
    to the other worker (`squall.steering`)."""
    clients: dict[int, httpx.Client] = {}
    with contextlib.ExitStack() as held:
        for attempt in range(50):
            client = held.enter_context(httpx.Client(base_url=url, timeout=10))
            answer = client.get(f"/worker?marker=ask-{attempt}").json()
            clients.setdefault(answer["worker_id"], client)
            if len(clients) == 2:
                break
        assert set(clients) == {0, 1}, clients
        yield clients


def hammer(url: str, paths: list[str]) -> None:
    """GET every path in `paths` from both workers' clients at once, one thread each."""
    failures: list[Exception] = []

    def run(client: httpx.Client) -> None:
        try:
            for path in paths:
                client.get(path)
        except Exception as exc:  # reported by the test, in the main thread
            failures.append(exc)

    with client_per_worker(url) as clients:
        threads = [threading.Thread(target=run, args=(c,)) for c in clients.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert not failures and not any(thread.is_alive() for thread in threads), failures


# -- on stderr: --log-format json --access-log json -------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, str]]:
    base = tmp_path_factory.mktemp("json-logs")
    options = ("--log-format", "json", "--access-log", "json", "--log-level", "debug")
    with running_squall(base, APP, *options) as (service, port):
        yield service, f"http://127.0.0.1:{port}"


def test_every_line_on_stderr_is_a_json_object_with_its_process(
    served: tuple[Service, str],
) -> None:
    service, url = served
    with client_per_worker(url):
        pass  # both workers serve, so both have logged
    lines = log_entries(service.output())
    for entry in lines:
        check_log_entry(entry, service.pid, set(service.workers()))
    started = [entry for entry in lines if entry["message"].startswith("squall ")]
    assert started and started[0]["role"] == "supervisor", lines
    serving = {entry["worker"] for entry in lines if entry["message"].startswith("serving on")}
    assert serving == {0, 1}, lines  # a DEBUG line from each worker


def test_access_lines_name_the_worker_that_served(served: tuple[Service, str]) -> None:
    service, url = served
    answered: dict[str, int] = {}
    with client_per_worker(url) as clients:
        for worker_id, client in clients.items():
            for n in range(3):
                query = f"marker=served-{worker_id}-{n}"
                answered[query] = client.get(f"/worker?{query}").json()["worker_id"]
    assert set(answered.values()) == {0, 1}, answered

    def logged() -> dict[str, dict[str, Any]]:
        found = access_entries(service.output())
        return {entry["query"]: entry for entry in found if entry["query"] in answered}

    wait_until(lambda: len(logged()) == len(answered), timeout=5)
    for query, entry in logged().items():
        check_access_entry(entry)
        assert entry["worker"] == answered[query], entry
        assert entry["method"] == "GET" and entry["path"] == "/worker", entry
        assert entry["status"] == 200 and entry["bytes"] > 0, entry


def test_an_error_is_one_line_with_its_traceback(served: tuple[Service, str]) -> None:
    service, url = served
    assert httpx.get(f"{url}/raise?marker=error1", timeout=5).status_code == 500

    def logged() -> list[dict[str, Any]]:
        return [e for e in access_entries(service.output()) if e["query"] == "marker=error1"]

    wait_until(logged, timeout=5)  # the error is logged before the request ends
    (access,) = logged()
    assert access["status"] == 500 and access["path"] == "/raise", access
    errors = [e for e in log_entries(service.output()) if e["message"].endswith("GET /raise")]
    assert errors, service.output()
    error = errors[-1]
    assert error["level"] == "error" and error["logger"] == "squall.asgi", error
    assert error["role"] == "worker" and error["worker"] == access["worker"], error
    assert error["exception"].startswith("Traceback (most recent call last):\n"), error
    assert error["exception"].endswith(f"RuntimeError: {SECRET}"), error


def test_lines_stay_whole_while_both_workers_write(served: tuple[Service, str]) -> None:
    service, url = served

    def tracebacks() -> int:
        return sum(SECRET in e.get("exception", "") for e in log_entries(service.output()))

    before = tracebacks()
    paths = [f"/{'raise' if n % 5 == 0 else 'worker'}?marker=many-{n}" for n in range(80)]
    hammer(url, paths)

    def logged() -> list[dict[str, Any]]:
        found = access_entries(service.output())
        return [entry for entry in found if entry["query"].startswith("marker=many-")]

    wait_until(lambda: len(logged()) == 2 * 80, timeout=10)
    assert {entry["worker"] for entry in logged()} == {0, 1}
    for entry in log_entries(service.output()):
        check_log_entry(entry, service.pid, set(service.workers()))
    for entry in access_entries(service.output()):
        check_access_entry(entry)
    assert tracebacks() == before + 2 * 16


# -- in --log-file, set by SQUALL_LOG_FORMAT and a --config file ----------------------------

WARNING_APP = """\
import warnings

from tests.apps.raw_asgi import app

warnings.warn("json-logs-warning-at-import")
"""


def test_log_file_set_by_environment_and_config_file(services: Services, tmp_path: Path) -> None:
    log = tmp_path / "squall.log"
    (tmp_path / "warning_app.py").write_text(WARNING_APP)
    (tmp_path / "conf.py").write_text('access_log = "json"\nworkers = 2\n')
    port = free_port()
    service = services.squall(
        "warning_app:app",
        *("--bind", f"127.0.0.1:{port}", "--config", "conf.py", "--log-file", str(log)),
        cwd=tmp_path,
        env={"SQUALL_LOG_FORMAT": "json"},
    )
    service.wait_for_port(port)
    workers = set(service.wait_for_workers(2))
    url = f"http://127.0.0.1:{port}"
    hammer(url, [f"/worker?marker=file-{n}" for n in range(30)] + ["/raise?marker=file-raise"])
    wait_until(
        lambda: (
            sum(e["query"].startswith("marker=file-") for e in access_entries(log.read_text()))
            == 2 * 31
        ),
        timeout=10,
    )
    assert service.stop() == 0
    assert service.output() == ""  # everything went to the file
    text = log.read_text()
    for entry in log_entries(text):
        check_log_entry(entry, service.pid, workers)
    for entry in access_entries(text):
        check_access_entry(entry)
    assert sum(SECRET in e.get("exception", "") for e in log_entries(text)) == 2
    warned = [e for e in log_entries(text) if "json-logs-warning-at-import" in e["message"]]
    assert {e["logger"] for e in warned} == {"py.warnings"}, warned
    assert {e["worker"] for e in warned} == {0, 1}, warned  # each worker imports the app
    assert log_entries(text)[-1]["message"] == "all workers have exited; supervisor exits"


# -- in process: the formatter --------------------------------------------------------------


def record(name: str, message: str, *args: object, **extra: Any) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(
        name, logging.INFO, __file__, 1, message, args, None, extra=extra or None
    )


def test_json_wraps_a_text_access_line_and_writes_a_json_one_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(process, "_task_id", 3)
    formatter = LineFormatter("json")
    common = '127.0.0.1 - - [07/Dec/2026:01:02:03 +0000] "GET / HTTP/1.1" 200 2'
    entry = json.loads(formatter.format(record("squall.access", common)))
    assert entry["message"] == common and entry["logger"] == "squall.access", entry
    assert entry["role"] == "worker" and entry["worker"] == 3, entry
    line = '{"method":"GET","worker":3}'
    assert formatter.format(record("squall.access", line, **WHOLE_LINE)) == line
    assert LineFormatter("text").format(record("squall.access", line, **WHOLE_LINE)) == line


def test_json_keeps_a_message_on_one_line() -> None:
    made = record("squall.test", "two\nlines %s", "caf\xe9")
    try:
        raise ValueError("boom\nbang")
    except ValueError:
        made.exc_info = sys.exc_info()
    line = LineFormatter("json").format(made)
    assert "\n" not in line and line.isascii()
    entry = json.loads(line)
    assert entry["message"] == "two\nlines caf\xe9"
    assert entry["exception"].endswith("ValueError: boom\nbang")
    assert entry["role"] == "supervisor" and "worker" not in entry


def test_text_stays_the_default() -> None:
    made = record("squall.test", "hello %s", "world")
    made.worker = "worker 2"
    line = LineFormatter().format(made)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[\d+\] \[worker 2\] INFO squall\.test: hello world",
        line,
    ), line
