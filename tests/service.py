"""Real processes for tests: start a command, wait for it with a bound, stop it by PID.

Every wait here has a deadline, and `Service.stop` leaves nothing running: it
signals the process it started, waits, then SIGKILLs that process and every
descendant it had (found through /proc, recorded before the stop).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A free port below the ephemeral range, where client sockets never take it meanwhile."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll `predicate` until it is true; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def listeners_on(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on 127.0.0.1:`port` (from /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {int(row[9]) for row in rows if row[1] == wanted and row[3] == "0A"}


def children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def descendants_of(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children_of(pending.pop()):
            found.append(child)
            pending.append(child)
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Service:
    """One process started by a test, its stderr captured to a file."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        cwd: Path | str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT), full_env.get("PYTHONPATH", "")])
        )
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env.update(env or {})
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(args),
            cwd=cwd or ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        self._known: set[int] = set()

    def workers(self) -> list[int]:
        """The live child processes (worker pids), remembered for the final cleanup."""
        pids = [p for p in children_of(self.pid) if alive(p)]
        self._known.update(pids)
        return pids

    def wait_for_port(self, port: int, timeout: float = 15.0) -> None:
        wait_until(lambda: port_open(port) or self.proc.poll() is not None, timeout)
        if self.proc.poll() is not None:
            raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.output()}")

    def wait_for_workers(self, count: int, timeout: float = 15.0) -> list[int]:
        try:
            wait_until(lambda: len(self.workers()) == count, timeout)
        except AssertionError:
            raise AssertionError(
                f"wanted {count} workers, have {self.workers()} "
                f"(exit status {self.proc.poll()}):\n{self.output()}"
            ) from None
        return self.workers()

    def wait_for_log(self, text: str, timeout: float = 15.0, count: int = 1) -> None:
        try:
            wait_until(lambda: self.output().count(text) >= count, timeout)
        except AssertionError:
            raise AssertionError(f"{text!r} x{count} not in the log:\n{self.output()}") from None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 15.0) -> int:
        """The exit status; AssertionError if it has not exited in time."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"service still running after {timeout} s:\n{self.output()}"
            ) from None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Stop the process and anything it started; its exit status if it exited in time."""
        self._known.update(descendants_of(self.pid))
        status: int | None = self.proc.poll()
        if status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)
            try:
                status = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                status = None
        for pid in self._known:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._log.close()
        return status

    def leftovers(self) -> list[int]:
        """Processes this service started that still run."""
        return [pid for pid in self._known if alive(pid)]


def with_descriptor_limit(limit: int) -> list[str]:
    """A command prefix: this Python, run with at most `limit` open descriptors (ulimit -n)."""
    code = (
        f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit})); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    return [sys.executable, "-c", code]


def stop_process_tree(proc: subprocess.Popen[bytes], known: Sequence[int] = ()) -> None:
    """SIGTERM `proc` (SIGKILL after 15 s), then SIGKILL what is left of its descendants.

    `known`: descendants seen earlier, for those already orphaned by now.
    """
    remaining = {*known, *descendants_of(proc.pid)}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for pid in remaining:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_squall(
    log_dir: Path,
    app: str,
    *args: str,
    workers: int = 2,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[Service, int]]:
    """A squall service for a whole test module: started, waited for, stopped by PID."""
    port = free_port()
    command = [sys.executable, "-m", "squall", app, "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", str(workers), *args]
    service = Service(command, log_dir / "squall.log", env=env)
    try:
        service.wait_for_port(port)
        service.wait_for_workers(workers)
        yield service, port
    finally:
        service.stop()


@dataclass
class ServedApp:
    """A test module's squall service, a client for it, and a directory its app may write to."""

    service: Service
    port: int
    url: str
    client: httpx.Client
    data_dir: Path


@contextlib.contextmanager
def served_app(
    base: Path,
    app: str,
    *args: str,
    data_env: str | None = None,
    workers: int = 2,
    timeout: float = 5.0,
) -> Iterator[ServedApp]:
    """`running_squall` plus an httpx client; `data_env` names the app's records directory."""
    data_dir = base / "data"
    data_dir.mkdir()
    env = {data_env: str(data_dir)} if data_env else None
    with running_squall(base, app, *args, workers=workers, env=env) as (service, port):
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=timeout) as client:
            yield ServedApp(service, port, url, client, data_dir)


def ask_each_worker(url: str, path: str, workers: int, attempts: int = 50) -> dict[int, int]:
    """worker id -> pid, each answer on a new connection, all held open until the end.

    Held open because new connections go to the worker holding the fewest
    (`squall.steering`): closed one by one, they could all reach the same
    worker while another holds a client's idle connection.
    """
    seen: dict[int, int] = {}
    with contextlib.ExitStack() as held:
        for _ in range(attempts):
            client = held.enter_context(httpx.Client(base_url=url, timeout=5.0))
            data = client.get(path).json()
            seen[data["worker_id"]] = data["pid"]
            if len(seen) == workers:
                break
    return seen


class Services:
    """The pytest fixture's object: starts services and stops them all at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Service] = []

    def start(
        self,
        args: Sequence[str],
        cwd: Path | str | None = None,
        env: dict[str, str] | None = None,
    ) -> Service:
        log = self.tmp_path / f"service-{len(self.started)}.log"
        service = Service(args, log, cwd=cwd, env=env)
        self.started.append(service)
        return service

    def squall(
        self, *args: str, cwd: Path | str | None = None, env: dict[str, str] | None = None
    ) -> Service:
        return self.start([sys.executable, "-m", "squall", *args], cwd=cwd, env=env)

    def python(self, script: Path | str, *args: str, cwd: Path | str | None = None) -> Service:
        return self.start([sys.executable, str(script), *args], cwd=cwd)

    def stop_all(self) -> None:
        for service in self.started:
            service.stop(signal.SIGKILL, timeout=5)
