"""The supervisor: forks workers, reaps them, restarts them by policy.

It is a classic pre-fork master: no event loop and no thread, ever, so that
forking stays safe. It sleeps in a selector on one wake-up pipe (written by
the signal handlers, which only queue the signal) and on one pipe per worker
(on which the worker says `ready` or `booterror ...`). Everything happens in
`run`'s loop, one `handle_<signal>` or reap at a time. It knows nothing of HTTP.

`run` returns only in a child, with its task id, like the seed's
`start_child`; the caller then becomes that worker.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import NoReturn

from squall import process
from squall.errors import SquallError

logger = logging.getLogger("squall.supervisor")

HANDLED_SIGNALS = (
    signal.SIGCHLD,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
)


class TooManyRestarts(SquallError, RuntimeError):
    """More restarts than `max_restarts` allows; the service gives up."""


class WorkerBootError(SquallError):
    """A worker could not start (its app failed to import or to start up)."""


@dataclass
class WorkerProcess:
    task_id: int
    pid: int
    channel: int  # read end of the worker's pipe
    started_at: float = field(default_factory=time.monotonic)
    ready: bool = False
    boot_error: str | None = None
    buffer: bytes = b""


class RestartBudget:
    """At most `max_restarts` restarts within `window` seconds (0: in the process's lifetime)."""

    def __init__(self, max_restarts: int, window: float = 0.0) -> None:
        self.max_restarts = max_restarts
        self.window = window
        self._times: deque[float] = deque()

    def spend(self, now: float) -> bool:
        """Record one restart; False when it is over the budget."""
        if self.window > 0:
            while self._times and now - self._times[0] > self.window:
                self._times.popleft()
        self._times.append(now)
        return len(self._times) <= self.max_restarts


class Supervisor:
    def __init__(
        self,
        num_workers: int,
        *,
        max_restarts: int = 100,
        restart_window: float = 0.0,
        graceful_timeout: float = 30.0,
    ) -> None:
        self.num_workers = num_workers
        self.budget = RestartBudget(max_restarts, restart_window)
        self.graceful_timeout = graceful_timeout
        self.workers: dict[int, WorkerProcess] = {}
        self.pid = os.getpid()
        self._signal_queue: deque[int] = deque()
        self._selector: selectors.BaseSelector | None = None
        self._wakeup_r = -1
        self._wakeup_w = -1
        self._stopping = False
        self._stop_deadline = 0.0
        self._exit_error: SquallError | None = None

    # -- the main loop --------------------------------------------------------

    def run(self) -> int:
        """Fork the workers and supervise them. Returns only in a worker, its task id."""
        self._setup()
        for worker_id in range(self.num_workers):
            if self._spawn(worker_id):
                return worker_id
        while True:
            child_id = self._step()
            if child_id is not None:
                return child_id
            if not self.workers:
                self._exit()

    def _step(self) -> int | None:
        """Wait for something to happen and deal with it; a worker id in a new child."""
        assert self._selector is not None
        timeout = 1.0
        if self._stopping:
            timeout = max(0.0, min(timeout, self._stop_deadline - time.monotonic()))
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wakeup_r:
                _drain_pipe(self._wakeup_r)
            else:
                self._read_channel(key.data)
        while self._signal_queue:
            signum = self._signal_queue.popleft()
            if signum == signal.SIGCHLD:
                child_id = self._reap()
                if child_id is not None:
                    return child_id
            else:
                getattr(self, f"handle_{signal.Signals(signum).name.lower()}")()
        child_id = self._reap()  # a SIGCHLD may have merged with another signal
        if child_id is not None:
            return child_id
        if self._stopping and time.monotonic() >= self._stop_deadline and self.workers:
            logger.warning("graceful timeout: killing %d worker(s)", len(self.workers))
            self._signal_all(signal.SIGKILL)
            self._stop_deadline = time.monotonic() + 5.0
        return None

    # -- signals ----------------------------------------------------------------

    def _setup(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe()
        for fd in (self._wakeup_r, self._wakeup_w):
            os.set_blocking(fd, False)
            os.set_inheritable(fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wakeup_r, selectors.EVENT_READ)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._queue_signal)

    def _queue_signal(self, signum: int, frame: object) -> None:
        self._signal_queue.append(signum)

    def handle_sigterm(self) -> None:
        self.stop(graceful=True)

    def handle_sigint(self) -> None:
        # The first Ctrl-C drains gracefully; a second one stops at once.
        self.stop(graceful=not self._stopping)

    def handle_sigquit(self) -> None:
        self.stop(graceful=False)

    def stop(self, graceful: bool = True, error: SquallError | None = None) -> None:
        """Stop every worker: SIGTERM and a graceful timeout, or SIGKILL now."""
        if error is not None and self._exit_error is None:
            self._exit_error = error
        if self._stopping and graceful:
            return
        if not self._stopping:
            logger.info(
                "stopping %d worker(s)%s", len(self.workers), "" if graceful else " at once"
            )
        self._stopping = True
        if graceful:
            self._stop_deadline = time.monotonic() + self.graceful_timeout
            self._signal_all(signal.SIGTERM)
        else:
            self._stop_deadline = time.monotonic() + 5.0
            self._signal_all(signal.SIGKILL)

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.workers):
            _kill(pid, signum)

    # -- workers ----------------------------------------------------------------

    def _spawn(self, worker_id: int) -> bool:
        """Fork one worker. True in the child, which must then return its id."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            self._forget_in_child()
            process.become_worker(worker_id, write_fd, self.pid)
            return True
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker = WorkerProcess(worker_id, pid, read_fd)
        self.workers[pid] = worker
        assert self._selector is not None
        self._selector.register(read_fd, selectors.EVENT_READ, worker)
        logger.info("worker %d started (pid %d)", worker_id, pid)
        return False

    def _forget_in_child(self) -> None:
        """Drop the supervisor's signal handling and file descriptors in a new child."""
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for fd in (self._wakeup_r, self._wakeup_w, *(w.channel for w in self.workers.values())):
            _close(fd)
        self.workers.clear()
        self._signal_queue.clear()

    def _read_channel(self, worker: WorkerProcess) -> None:
        try:
            data = os.read(worker.channel, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_channel(worker)
            return
        worker.buffer += data
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for line in lines:
            self._handle_message(worker, line.decode("utf-8", "replace"))

    def _handle_message(self, worker: WorkerProcess, line: str) -> None:
        kind, _, detail = line.partition(" ")
        if kind == "ready":
            worker.ready = True
        elif kind == "booterror":
            worker.boot_error = detail or "worker failed to boot"

    def _close_channel(self, worker: WorkerProcess) -> None:
        if worker.channel < 0:
            return
        if self._selector is not None:
            self._selector.unregister(worker.channel)
        _close(worker.channel)
        worker.channel = -1

    def _reap(self) -> int | None:
        """Collect every exited worker; restart those the policy allows."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid == 0:
                return None
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if worker.channel >= 0:
                self._read_channel(worker)  # a last message may be waiting
                self._close_channel(worker)
            if self._worker_exited(worker, status) and self._spawn(worker.task_id):
                return worker.task_id

    def _worker_exited(self, worker: WorkerProcess, status: int) -> bool:
        """Log how a worker ended; True if it should be replaced."""
        worker_id, pid = worker.task_id, worker.pid
        if worker.boot_error is not None:
            logger.debug("worker %d (pid %d) failed to boot", worker_id, pid)
            self.stop(graceful=True, error=WorkerBootError(worker.boot_error))
            return False
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            how = f"killed by signal {signum} ({_signal_name(signum)})"
        elif os.WEXITSTATUS(status) != 0:
            how = f"exited with status {os.WEXITSTATUS(status)}"
        else:
            logger.info("worker %d (pid %d) exited normally", worker_id, pid)
            return False
        if self._stopping:
            logger.info("worker %d (pid %d) %s", worker_id, pid, how)
            return False
        if not self.budget.spend(time.monotonic()):
            logger.warning("worker %d (pid %d) %s", worker_id, pid, how)
            window = f" within {self.budget.window:g} s" if self.budget.window > 0 else ""
            limit = self.budget.max_restarts
            message = f"too many worker restarts (more than {limit}{window}), giving up"
            self.stop(graceful=True, error=TooManyRestarts(message))
            return False
        logger.warning("worker %d (pid %d) %s, restarting", worker_id, pid, how)
        return True

    def _exit(self) -> NoReturn:
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        if self._selector is not None:
            self._selector.close()
        _close(self._wakeup_r)
        _close(self._wakeup_w)
        if self._exit_error is not None:
            raise self._exit_error
        logger.info("all workers have exited; supervisor exits")
        sys.exit(0)


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _close(fd: int) -> None:
    if fd >= 0:
        try:
            os.close(fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
