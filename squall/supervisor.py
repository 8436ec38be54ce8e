"""The supervisor: forks workers, reaps them, replaces them, stops them.

It is a classic pre-fork master: no event loop and no thread, ever, so that
forking stays safe. It sleeps in a selector on one wake-up pipe (written by
the signal handlers, which only queue the signal) and on one pipe per worker,
on which the worker says `ready`, `heartbeat`, `retire` (its request quota is
spent) or `booterror <message>`. Everything happens in `run`'s loop, one
`handle_<signal>`, message or reap at a time. It knows nothing of HTTP.

`run` returns only in a child, with its task id, like the seed's
`start_child`; the caller then becomes that worker.

Replacing a worker (rolling reload, request quota) never leaves a slot
empty: the successor, with the same task id, must report ready before the old
worker is told to drain, so ids stay dense 0..n-1 and no request is refused.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from squall import handover, privileges, process
from squall.errors import BindError, SquallError
from squall.exits import ExitAction, WorkerExit, decide
from squall.process import WorkerMessage, parse_message

logger = logging.getLogger("squall.supervisor")

HANDLED_SIGNALS = (
    signal.SIGCHLD,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
)

#: A worker that dies younger than this is restarted after a growing delay.
STABLE_AGE = 2.0
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 10.0
_MAX_STREAK = 64  # far past the cap; keeps 2**streak finite in a crash loop of years
#: After SIGABRT (stack dump), a hung worker gets this long before SIGKILL.
ABORT_GRACE = 2.0
#: A worker whose slot closes serves on at least this long after its slot is
#: passed over, and until nothing waits for it: handshakes under way finish.
HANDOFF_SETTLE = 1.0


class TooManyRestarts(SquallError, RuntimeError):
    """More restarts than `max_restarts` allows; the service gives up."""


class WorkerBootError(SquallError):
    """A worker could not start (its app failed to import or to start up)."""


class Listeners(Protocol):
    """The listening sockets, as the supervisor sees them: per worker slot."""

    def open_slot(self, task_id: int) -> None:
        """Make sure the slot's sockets exist (before its worker is forked)."""

    def keep_only(self, task_id: int) -> None:
        """In a new worker: close every socket that is not the slot's."""

    def close_slot(self, task_id: int) -> None:
        """The slot is gone for good (scale-down)."""

    def retire_slot(self, task_id: int) -> bool:
        """Send the slot nothing new; True if its worker should first take what it holds."""

    def park_slot(self, task_id: int) -> None:
        """No worker will take from the slot for a while (a restart delay)."""

    def queued(self, task_id: int) -> int:
        """Connections waiting for the slot's worker."""

    def close_all(self) -> None:
        """Stop: new connections are refused from now on."""

    def named(self) -> dict[str, socket.socket]:
        """Every socket held, by its role's name (for the metrics' queue gauges)."""

    def handover(self) -> tuple[dict[str, int], dict[str, Any]]:
        """For a hot upgrade: the descriptors to pass on by name, and how to adopt them."""

    def release(self) -> None:
        """After a hot upgrade: close this process's copies and change nothing shared."""


class SupervisorEvent(str, enum.Enum):
    """What the supervisor tells its plugins of its life (`Plugin.on_event`)."""

    READY = "ready"  # every worker up, the first time
    RELOADING = "reloading"
    RELOADED = "reloaded"
    STOPPING = "stopping"
    TICK = "tick"  # each pass of the supervisor's loop, a few times a second
    UPGRADED = "upgraded"  # a new supervisor took over; this one drains


class Plugin(Protocol):
    """Something that runs inside the supervisor's loop: metrics, control, systemd.

    It may watch file descriptors (register them with `selector`, data = itself),
    and hears the supervisor's lifecycle. It must never block: the supervisor
    is single-threaded and keeps the workers alive.
    """

    def attach(self, supervisor: Supervisor, selector: selectors.BaseSelector) -> None: ...

    def on_readable(self, key: selectors.SelectorKey, mask: int) -> None: ...

    def on_event(self, event: SupervisorEvent) -> None:
        """The supervisor's lifecycle; see `SupervisorEvent`."""

    def close(self) -> None:
        """In the supervisor at exit, and in every new worker (which must not keep its fds)."""

    def before_spawn(self, task_id: int) -> None:
        """Just before a fork; what is set here, the child inherits."""

    def after_spawn(self, worker: WorkerProcess) -> None:
        """In the supervisor, once the child exists."""

    def after_exit(self, worker: WorkerProcess, status: int) -> None:
        """In the supervisor, once the child is reaped."""

    def handover(self) -> tuple[list[int], dict[str, str]]:
        """For a hot upgrade: descriptors to pass on, and environment variables for the successor."""


class PluginBase:
    """A plugin that does nothing; subclass and override what you need."""

    def attach(self, supervisor: Supervisor, selector: selectors.BaseSelector) -> None:
        pass

    def on_readable(self, key: selectors.SelectorKey, mask: int) -> None:
        pass

    def on_event(self, event: SupervisorEvent) -> None:
        pass

    def close(self) -> None:
        pass

    def before_spawn(self, task_id: int) -> None:
        pass

    def after_spawn(self, worker: WorkerProcess) -> None:
        pass

    def after_exit(self, worker: WorkerProcess, status: int) -> None:
        pass

    def handover(self) -> tuple[list[int], dict[str, str]]:
        return [], {}


@dataclass
class Hooks:
    """Plain callables the user may set; each runs in the process named.

    One that raises never takes the supervisor down: its traceback is logged
    and the supervisor carries on. In `post_fork`, it is that worker's boot error.
    """

    on_starting: Callable[[], object] | None = None  # supervisor, before the first fork
    post_fork: Callable[[int], object] | None = None  # new worker, with its task id
    worker_exit: Callable[[int, int], object] | None = None  # supervisor: task id, wait status
    on_reload: Callable[[], object] | None = None  # supervisor, as a reload begins
    when_ready: Callable[[], object] | None = None  # supervisor, once every worker is first ready
    on_exit: Callable[[], object] | None = None  # supervisor, as it exits
    worker_abort: Callable[[int, int], object] | None = None  # supervisor: task id, pid, before
    # the watchdog (or --boot-timeout) sends SIGABRT


@dataclass
class WorkerProcess:
    task_id: int
    pid: int
    channel: int  # read end of the worker's pipe
    started_at: float = field(default_factory=time.monotonic)
    last_heartbeat: float = 0.0
    ready: bool = False
    boot_error: str | None = None
    buffer: bytes = b""
    replaces: WorkerProcess | None = None  # the old worker this one takes over from
    retiring: bool = False
    started_wall: float = field(default_factory=time.time)
    kill_at: float = 0.0  # when a retiring or aborted worker gets SIGKILL
    handoff_since: float = 0.0  # retiring, still serving what its slot holds, since then
    timed_out: bool = False


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

    def describe(self) -> str:
        window = f" within {self.window:g} s" if self.window > 0 else ""
        return f"more than {self.max_restarts}{window}"


class Backoff:
    """Delays before re-forking a slot whose workers keep dying young.

    The first young death restarts at once; each further one in a row waits
    twice as long, up to `BACKOFF_CAP`. A worker that lived `STABLE_AGE`
    resets the slot's streak.
    """

    def __init__(self) -> None:
        self._streaks: dict[int, int] = {}

    def delay(self, task_id: int, age: float) -> float:
        if age >= STABLE_AGE:
            self._streaks.pop(task_id, None)
            return 0.0
        streak = self._streaks[task_id] = min(self._streaks.get(task_id, 0) + 1, _MAX_STREAK)
        if streak == 1:
            return 0.0
        return float(min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (streak - 2)))


@dataclass
class Successor:
    """A new supervisor started by a hot upgrade, until it is ready or gone."""

    pid: int
    channel: int  # read end of its pipe: "ready", or "failed <why>"
    deadline: float
    buffer: bytes = b""


class _BecameWorker(BaseException):
    """Unwinds a freshly forked child out of the supervisor's loop."""

    def __init__(self, task_id: int) -> None:
        self.task_id = task_id


@dataclass(frozen=True)
class SupervisorSettings:
    """How the supervisor restarts, waits and stops: the command line's defaults.

    `squall.config.Config` takes its defaults from here.
    """

    max_restarts: int = 100  # within restart_window; the seed's 100
    restart_window: float = 0.0  # seconds; 0: the whole lifetime
    graceful_timeout: float = 30.0
    timeout: float = 30.0  # the watchdog; 0: off
    boot_timeout: float = 60.0  # 0: off
    on_exhausted: str = "exit"  # or "degrade"
    reload_batch: int = 1


#: The seed's `fork_processes`: no watchdog and no boot deadline, since its
#: workers may run a loop of their own that sends no heartbeat.
SEED_SETTINGS = SupervisorSettings(timeout=0.0, boot_timeout=0.0)


class Supervisor:
    def __init__(
        self,
        num_workers: int,
        settings: SupervisorSettings = SEED_SETTINGS,
        *,
        listeners: Listeners | None = None,
        hooks: Hooks | None = None,
        on_log_reopen: Callable[[], object] | None = None,
        plugins: list[Plugin] | None = None,
        report_ready_fd: int = -1,
    ) -> None:
        self.num_workers = num_workers
        self.budget = RestartBudget(settings.max_restarts, settings.restart_window)
        self.backoff = Backoff()
        self.graceful_timeout = settings.graceful_timeout
        self.timeout = settings.timeout
        self.boot_timeout = settings.boot_timeout
        self.on_exhausted = settings.on_exhausted
        self.reload_batch = max(1, settings.reload_batch)
        self.listeners = listeners
        self.hooks = hooks or Hooks()
        self.on_log_reopen = on_log_reopen
        self.workers: dict[int, WorkerProcess] = {}
        self.pid = os.getpid()
        self.degraded = False
        self.restarts = 0
        self.restart_causes: dict[str, int] = {}  # signal, exit, watchdog, recycle, reload
        self.plugins = list(plugins or [])
        self.started_at = time.time()
        self._announced_ready = False
        self._pending_spawns: dict[int, float] = {}  # task id -> when to fork it
        self._reload_queue: deque[WorkerProcess] | None = None
        self._reload_again = False
        self._signal_queue: deque[int] = deque()
        self._selector: selectors.BaseSelector | None = None
        self._wakeup_r = -1
        self._wakeup_w = -1
        self._stopping = False
        self._stop_deadline = 0.0
        self._exit_error: SquallError | None = None
        self._successor: Successor | None = None
        # Started by a hot upgrade: the pipe to say "ready" on, and until then
        # the sockets and maps are the old supervisor's as much as ours.
        self._report_ready_fd = report_ready_fd
        self._owns_listeners = report_ready_fd < 0
        self.upgraded_to = 0  # the pid of the supervisor that took over
        self.upgrade_error: str | None = None  # why the last upgrade failed

    # -- the main loop --------------------------------------------------------

    def run(self) -> int:
        """Fork the workers and supervise them. Returns only in a worker, its task id."""
        try:
            try:
                self._setup()
            except BaseException:
                for plugin in self.plugins:
                    plugin.close()  # e.g. a metrics socket file already made
                raise
            self._hook("on_starting")
            for worker_id in range(self.num_workers):
                self._spawn(worker_id)
            while True:
                self._step()
                if not self.workers and not self._pending_spawns:
                    self._exit()
        except _BecameWorker as child:
            return child.task_id

    def _step(self) -> None:
        """Wait for something to happen and deal with it."""
        assert self._selector is not None
        for key, mask in self._selector.select(self._next_timeout()):
            if key.fd == self._wakeup_r:
                _drain_pipe(self._wakeup_r)
            elif isinstance(key.data, WorkerProcess):
                self._read_channel(key.data)
            elif isinstance(key.data, Successor):
                self._read_successor(key.data)
            else:
                key.data.on_readable(key, mask)
        while self._signal_queue:
            signum = self._signal_queue.popleft()
            if signum != signal.SIGCHLD:
                getattr(self, f"handle_{signal.Signals(signum).name.lower()}")()
        self._reap()  # every time: SIGCHLDs merge, and a pipe may close first
        now = time.monotonic()
        self._spawn_due(now)
        self._enforce_deadlines(now)
        self._emit(SupervisorEvent.TICK)

    def _next_timeout(self) -> float:
        timeout = 1.0
        now = time.monotonic()
        for due in self._pending_spawns.values():
            timeout = min(timeout, due - now)
        if self._stopping:
            timeout = min(timeout, self._stop_deadline - now)
        elif any(w.handoff_since for w in self.workers.values()):
            timeout = min(timeout, 0.05)  # watch the retiring slot's queue
        return max(0.0, timeout)

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
        for plugin in self.plugins:
            plugin.attach(self, self._selector)

    def _queue_signal(self, signum: int, frame: object) -> None:
        self._signal_queue.append(signum)

    def handle_sigterm(self) -> None:
        self.stop(graceful=True)

    def handle_sigint(self) -> None:
        # The first Ctrl-C drains gracefully; a second one stops at once.
        self.stop(graceful=not self._stopping)

    def handle_sigquit(self) -> None:
        self.stop(graceful=False)

    def handle_sighup(self) -> None:
        self.reload()

    def handle_sigttin(self) -> None:
        self.scale(self.num_workers + 1)

    def handle_sigttou(self) -> None:
        self.scale(self.num_workers - 1)

    def handle_sigusr2(self) -> None:
        refused = self.upgrade()
        if refused is not None:
            logger.warning("no upgrade: %s", refused)

    def handle_sigusr1(self) -> None:
        if self.on_log_reopen is not None:
            self.on_log_reopen()
        self._signal_all(signal.SIGUSR1)
        logger.info("log files reopened")

    # -- commands -----------------------------------------------------------------

    def stop(self, graceful: bool = True, error: SquallError | None = None) -> None:
        """Stop every worker: SIGTERM and a graceful timeout, or SIGKILL now."""
        if error is not None and self._exit_error is None:
            self._exit_error = error
        if self._stopping and graceful:
            return
        if not self._stopping:
            how = "gracefully" if graceful else "at once"
            logger.info("stopping %d worker(s) %s", len(self.workers), how)
            successor = self._successor
            if successor is not None:  # a stop wins over an upgrade under way
                logger.warning(
                    "upgrade abandoned: stopping the new supervisor (pid %d)", successor.pid
                )
                _kill(successor.pid, signal.SIGTERM)
                self._close_successor_channel(successor)
                self._successor = None
            self._emit(SupervisorEvent.STOPPING)  # first: systemd's fd store may keep the sockets
            self._close_listeners()
        self._stopping = True
        self._pending_spawns.clear()
        self._reload_queue = None
        if graceful:
            self._stop_deadline = time.monotonic() + self.graceful_timeout
            self._signal_all(signal.SIGTERM)
        else:
            self._stop_deadline = time.monotonic() + 5.0
            self._signal_all(signal.SIGKILL)

    def reload(self) -> None:
        """Replace every worker, `reload_batch` at a time, each successor ready first."""
        if self._stopping:
            return
        if self._reload_queue is not None:
            self._reload_again = True  # signals during a reload coalesce into one more
            logger.info("reload requested while one runs; another will follow")
            return
        self._hook("on_reload")
        old = sorted(self._serving(), key=lambda w: w.task_id)
        logger.info("reloading %d worker(s)", len(old))
        self._emit(SupervisorEvent.RELOADING)
        self._reload_queue = deque(old)
        self._advance_reload()

    def scale(self, count: int) -> None:
        """Run `count` workers (at least 1): fork new slots or retire the highest."""
        if self._stopping:
            return
        count = max(1, count)
        if count == self.num_workers:
            return
        logger.info("scaling from %d to %d worker(s)", self.num_workers, count)
        previous, self.num_workers = self.num_workers, count
        for task_id in range(previous, count):
            self._spawn(task_id)
        for task_id in range(count, previous):
            self._pending_spawns.pop(task_id, None)
            workers = [w for w in self.workers.values() if w.task_id == task_id]
            # With a socket per slot: new connections stop going there, and
            # its worker takes what is queued before it drains; the socket
            # closes once no worker holds it (`_worker_exited`).
            hand_off = self.listeners is not None and self.listeners.retire_slot(task_id)
            if not hand_off or not workers:
                self._close_slot(task_id)
            for worker in workers:
                if worker.retiring:
                    continue
                if hand_off and worker.ready and worker.replaces is None:
                    self._hand_off(worker)
                else:
                    self._retire(worker)
            if self._reload_queue is not None:
                self._reload_queue = deque(w for w in self._reload_queue if w.task_id < count)

    def upgrade(self) -> str | None:
        """Start a new supervisor on the same sockets (hot upgrade); why not, if it cannot."""
        if self._stopping:
            return "the service is stopping"
        if self._successor is not None:
            return f"an upgrade is under way (new supervisor pid {self._successor.pid})"
        if self.listeners is None or not self._owns_listeners:
            return "this supervisor has no sockets of its own to hand over"
        named, listeners = self.listeners.handover()
        fds = list(named.values())
        env: dict[str, str] = {}
        for plugin in self.plugins:
            plugin_fds, plugin_env = plugin.handover()
            fds += plugin_fds
            env.update(plugin_env)
        parts = {"listeners": listeners, "fds": named, "workers": self.num_workers}
        try:
            read_fd, write_fd = os.pipe()
        except OSError as exc:  # out of descriptors
            logger.error("cannot start a new supervisor: %s", exc)
            return str(exc)
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = handover.start_successor(fds, parts, env, write_fd)
        except OSError as exc:
            _close(read_fd)
            logger.error("cannot start a new supervisor: %s", exc)
            return str(exc)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            _close(write_fd)
        os.set_blocking(read_fd, False)
        deadline = time.monotonic() + (self.boot_timeout or 60.0) + 10.0
        self._successor = Successor(pid, read_fd, deadline)
        self.upgrade_error = None
        assert self._selector is not None
        self._selector.register(read_fd, selectors.EVENT_READ, self._successor)
        logger.info("upgrading: new supervisor started (pid %d); serving until it is ready", pid)
        return None

    def _read_successor(self, successor: Successor) -> None:
        data = _read_pipe(successor.channel)
        if data is None:
            return
        successor.buffer += data
        if b"ready\n" in successor.buffer:
            self._hand_over(successor)
        elif not data:
            self._close_successor_channel(successor)

    def _close_successor_channel(self, successor: Successor) -> None:
        if successor.channel >= 0:
            if self._selector is not None:
                self._selector.unregister(successor.channel)
            _close(successor.channel)
            successor.channel = -1

    def _successor_failed(self, how: str) -> None:
        successor = self._successor
        if successor is None:
            return
        self._successor = None
        said = successor.buffer.decode(errors="replace").strip()
        if said.startswith("failed "):
            how = said[len("failed ") :]
        self._close_successor_channel(successor)
        self.upgrade_error = f"the new supervisor (pid {successor.pid}) {how}"
        logger.error(
            "upgrade failed: the new supervisor (pid %d) %s; this one (pid %d) serves on",
            successor.pid,
            how,
            self.pid,
        )

    def _hand_over(self, successor: Successor) -> None:
        """The new supervisor's workers are all ready: it serves, this one drains and exits."""
        self._close_successor_channel(successor)
        self._successor = None
        self.upgraded_to = successor.pid
        logger.info(
            "upgrade: the new supervisor (pid %d) is ready; this one (pid %d) drains and exits",
            successor.pid,
            self.pid,
        )
        if self.listeners is not None:
            self.listeners.release()
        self._owns_listeners = False
        self._emit(SupervisorEvent.UPGRADED)  # plugins leave their files to the new supervisor
        self.stop(graceful=True)

    def _report_ready(self) -> None:
        """Started by a hot upgrade: tell the old supervisor that it may go."""
        if self._report_ready_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._report_ready_fd, b"ready\n")
        _close(self._report_ready_fd)
        self._report_ready_fd = -1
        self._owns_listeners = True
        logger.info("upgrade: every worker is ready; the old supervisor drains")

    def keep_listeners(self) -> None:
        """Someone else holds the sockets and maps for the next supervisor: change nothing."""
        self._owns_listeners = False

    def _close_listeners(self) -> None:
        if self.listeners is None:
            return
        if self._owns_listeners:
            self.listeners.close_all()
        else:
            self.listeners.release()  # shared with the other supervisor: change nothing

    # -- workers ----------------------------------------------------------------

    def _serving(self) -> list[WorkerProcess]:
        """Workers that are neither retiring nor a successor still booting."""
        return [w for w in self.workers.values() if not w.retiring and w.replaces is None]

    def _spawn(self, worker_id: int, replaces: WorkerProcess | None = None) -> None:
        """Fork one worker; in the child, unwind to `run` with `_BecameWorker`."""
        try:
            if self.listeners is not None:
                self.listeners.open_slot(worker_id)
            read_fd, write_fd = os.pipe()
        except (OSError, BindError) as exc:  # out of descriptors, say: the others serve on
            self._not_spawned(worker_id, replaces, exc)
            return
        for plugin in self.plugins:
            plugin.before_spawn(worker_id)
        # A signal sent to the child before it drops the supervisor's handlers
        # would be queued in its copy of this object and lost: block them
        # across fork(); the child unblocks once its handlers are the defaults.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except BaseException as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            if not isinstance(exc, OSError):
                raise
            _close(read_fd)
            _close(write_fd)
            self._not_spawned(worker_id, replaces, exc)  # EAGAIN, ENOMEM: the others serve on
            return
        if pid == 0:
            os.close(read_fd)
            self._forget_in_child(worker_id)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            process.become_worker(worker_id, write_fd, self.pid)
            try:
                privileges.drop_capabilities()
            except OSError as exc:
                process.notify(WorkerMessage.BOOT_ERROR, f"cannot give up its capabilities: {exc}")
                os._exit(process.BOOT_FAILURE_EXIT)
            if self.hooks.post_fork is not None:
                try:
                    self.hooks.post_fork(worker_id)
                except Exception as exc:
                    logger.exception("the post_fork hook raised in worker %d", worker_id)
                    process.notify(WorkerMessage.BOOT_ERROR, f"the post_fork hook raised {exc!r}")
                    os._exit(process.BOOT_FAILURE_EXIT)
            raise _BecameWorker(worker_id)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        worker = WorkerProcess(worker_id, pid, read_fd, replaces=replaces)
        self.workers[pid] = worker
        assert self._selector is not None
        self._selector.register(read_fd, selectors.EVENT_READ, worker)
        logger.info("worker %d started (pid %d)", worker_id, pid)
        for plugin in self.plugins:
            plugin.after_spawn(worker)

    def _not_spawned(
        self, worker_id: int, replaces: WorkerProcess | None, exc: BaseException
    ) -> None:
        """A worker could not be started (descriptors, processes, memory): try again later."""
        if replaces is not None:
            self._takeover_failed(worker_id, None, f"could not be started: {exc}")
            return
        logger.error(
            "cannot start worker %d (%s); trying again in %.0f s", worker_id, exc, BACKOFF_CAP
        )
        self._pending_spawns[worker_id] = time.monotonic() + BACKOFF_CAP

    def _takeover_failed(self, worker_id: int, pid: int | None, reason: str) -> None:
        """A successor never became ready: the old worker keeps serving, the reload ends."""
        which = f"worker {worker_id}" + (f" (pid {pid})" if pid is not None else "")
        logger.error("%s could not take over: %s; the old worker keeps serving", which, reason)
        if self._reload_queue is not None:
            self._reload_queue = None
            self._emit(SupervisorEvent.RELOADED)
        self._reload_again = False

    def _forget_in_child(self, worker_id: int) -> None:
        """Drop the supervisor's signal handling and file descriptors in a new child."""
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        # Until the worker's loop takes over: the supervisor's own signals must
        # not kill a booting worker (their default is to terminate or stop it).
        for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(signum, signal.SIG_IGN)
        reopen = self.on_log_reopen
        signal.signal(signal.SIGUSR1, (lambda *_: reopen()) if reopen else signal.SIG_IGN)
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        successor = [self._successor.channel] if self._successor is not None else []
        others = (w.channel for w in self.workers.values())
        for fd in (self._wakeup_r, self._wakeup_w, self._report_ready_fd, *successor, *others):
            _close(fd)
        self._report_ready_fd = -1
        self._successor = None
        if self.listeners is not None:
            self.listeners.keep_only(worker_id)
        for plugin in self.plugins:
            plugin.close()
        self.plugins.clear()
        self.workers.clear()
        self._signal_queue.clear()

    def _retire(self, worker: WorkerProcess) -> None:
        """Ask a worker to drain and exit; SIGKILL after the graceful timeout."""
        worker.retiring = True
        worker.handoff_since = 0.0
        worker.kill_at = time.monotonic() + self.graceful_timeout
        _kill(worker.pid, signal.SIGTERM)

    def _hand_off(self, worker: WorkerProcess) -> None:
        """Retire a worker whose slot closes, once it has taken what the slot holds.

        Its slot gets nothing new from now on; `_enforce_deadlines` tells it
        to drain when the slot's queue is empty (after `HANDOFF_SETTLE`), or
        after the graceful timeout. Told at once, it would stop accepting,
        and the kernel would reset what waits in its queue when it closes.
        """
        worker.retiring = True
        worker.handoff_since = time.monotonic()
        logger.info(
            "worker %d (pid %d) takes no new connections; it drains once its queue is empty",
            worker.task_id,
            worker.pid,
        )

    def _replace(self, old: WorkerProcess, cause: str) -> None:
        """Fork a successor for `old`; `old` drains once the successor is ready."""
        self._count_restart(cause)
        self._spawn(old.task_id, replaces=old)

    def restart_worker(self, task_id: int) -> bool:
        """Replace worker `task_id` gracefully (its successor ready first); False if none."""
        if self._stopping:
            return False
        for worker in self._serving():
            if worker.task_id == task_id and self._successor_of(worker) is None:
                logger.info("restarting worker %d (pid %d) on request", task_id, worker.pid)
                self._replace(worker, "manual")
                return True
        return False

    def _count_restart(self, cause: str) -> None:
        self.restart_causes[cause] = self.restart_causes.get(cause, 0) + 1

    def _hook(self, name: str, *args: int) -> None:
        """Run a user's hook; one that raises is logged, and the supervisor goes on."""
        hook = getattr(self.hooks, name)
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            logger.exception("the %s hook raised; the supervisor carries on", name)

    def _emit(self, event: SupervisorEvent) -> None:
        for plugin in self.plugins:
            try:
                plugin.on_event(event)
            except Exception:  # a plugin must never take the supervisor down
                logger.exception("supervisor plugin %r failed on %s", plugin, event)

    def snapshot(self) -> dict[str, object]:
        """The supervisor's state, for status pages and the control command."""
        now = time.monotonic()
        workers = []
        for worker in sorted(self.workers.values(), key=lambda w: (w.task_id, w.started_at)):
            if worker.retiring:
                state = "draining"
            elif worker.replaces is not None:
                state = "replacing"
            else:
                state = "ready" if worker.ready else "booting"
            workers.append(
                {
                    "task_id": worker.task_id,
                    "pid": worker.pid,
                    "state": state,
                    "started_at": worker.started_wall,
                    "heartbeat_age": now - worker.last_heartbeat if worker.last_heartbeat else None,
                }
            )
        return {
            "pid": self.pid,
            "started_at": self.started_at,
            "workers_wanted": self.num_workers,
            "degraded": self.degraded,
            "stopping": self._stopping,
            "reloading": self._reload_queue is not None,
            "restarts": self.restarts,
            "restart_causes": dict(self.restart_causes),
            "upgrading": self._successor.pid if self._successor is not None else None,
            "taking_over": self._report_ready_fd >= 0,  # started by an upgrade, not ready yet
            "upgraded_to": self.upgraded_to or None,
            "upgrade_error": self.upgrade_error,
            "workers": workers,
        }

    def _read_channel(self, worker: WorkerProcess) -> None:
        data = _read_pipe(worker.channel)
        if data is None:
            return
        if not data:
            self._close_channel(worker)
            return
        worker.buffer += data
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for line in lines:
            self._handle_message(worker, line.decode("utf-8", "replace"))

    def _handle_message(self, worker: WorkerProcess, line: str) -> None:
        kind, detail = parse_message(line)
        worker.last_heartbeat = time.monotonic()
        if kind is WorkerMessage.READY:
            self._worker_ready(worker)
        elif kind is WorkerMessage.RETIRE:
            if not worker.retiring and not self._stopping and self._successor_of(worker) is None:
                reason, _, amount = detail.partition(" ")
                if reason == "memory":
                    logger.warning(
                        "worker %d (pid %d) uses %.0f MiB, over --max-worker-memory; replacing it",
                        worker.task_id,
                        worker.pid,
                        int(amount or 0) / 2**20,
                    )
                    self._replace(worker, "memory")
                    return
                logger.info(
                    "worker %d (pid %d) served its quota; replacing it", worker.task_id, worker.pid
                )
                self._replace(worker, "recycle")
        elif kind is WorkerMessage.BOOT_ERROR:
            worker.boot_error = detail or "worker failed to boot"

    def _successor_of(self, worker: WorkerProcess) -> WorkerProcess | None:
        for other in self.workers.values():
            if other.replaces is worker:
                return other
        return None

    def _worker_ready(self, worker: WorkerProcess) -> None:
        worker.ready = True
        logger.info("worker %d (pid %d) is ready", worker.task_id, worker.pid)
        if not self._announced_ready and sum(w.ready for w in self._serving()) >= self.num_workers:
            self._announced_ready = True
            self._emit(SupervisorEvent.READY)
            self._hook("when_ready")
            self._report_ready()
        old = worker.replaces
        if old is None:
            return
        worker.replaces = None
        if old.pid in self.workers and not old.retiring:
            self._retire(old)
        self._advance_reload()

    def _advance_reload(self) -> None:
        queue = self._reload_queue
        if queue is None:
            return
        booting = sum(1 for w in self.workers.values() if w.replaces is not None)
        while queue and booting < self.reload_batch:
            old = queue.popleft()
            if old.pid in self.workers and not old.retiring:
                self._replace(old, "reload")
                booting += 1
        if not queue and booting == 0:
            self._reload_queue = None
            logger.info("reload complete")
            self._emit(SupervisorEvent.RELOADED)
            if self._reload_again:
                self._reload_again = False
                self.reload()

    def _close_channel(self, worker: WorkerProcess) -> None:
        if worker.channel < 0:
            return
        if self._selector is not None:
            self._selector.unregister(worker.channel)
        _close(worker.channel)
        worker.channel = -1

    # -- deaths -------------------------------------------------------------------

    def _reap(self) -> None:
        """Collect every exited worker and decide what follows."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self._successor is not None and pid == self._successor.pid:
                self._successor_failed(_describe_status(status))
                continue
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            if worker.channel >= 0:
                self._read_channel(worker)  # a last message may be waiting
                self._close_channel(worker)
            self._hook("worker_exit", worker.task_id, status)
            for plugin in self.plugins:
                plugin.after_exit(worker, status)
            self._worker_exited(worker, status)

    def _worker_exited(self, worker: WorkerProcess, status: int) -> None:
        worker_id, pid = worker.task_id, worker.pid
        how = _describe_status(status)
        clean = how == "exited normally" and not worker.timed_out
        if worker.timed_out:
            how = "was killed by the watchdog"
        if worker.boot_error is not None:
            how = f"failed to boot ({worker.boot_error})"
        successor = self._successor_of(worker)
        action = decide(
            WorkerExit(
                replacing=worker.replaces is not None,
                boot_failed=worker.boot_error is not None,
                service_ready=self._announced_ready,
                retiring=worker.retiring,
                stopping=self._stopping,
                clean=clean,
                has_successor=successor is not None,
                slot_wanted=worker_id < self.num_workers,
            )
        )
        if action is ExitAction.TAKEOVER_FAILED:
            self._takeover_failed(worker_id, pid, worker.boot_error or how)
        elif action is ExitAction.STOP_SERVICE:
            logger.debug("worker %d (pid %d) failed to boot", worker_id, pid)
            self.stop(graceful=True, error=WorkerBootError(worker.boot_error or how))
        elif action is ExitAction.RETIRED:
            logger.info("worker %d (pid %d) %s", worker_id, pid, how)
            if worker_id >= self.num_workers and not any(
                w.task_id == worker_id for w in self.workers.values()
            ):
                self._close_slot(worker_id)  # the last worker holding it is gone
            self._advance_reload()
        elif action is ExitAction.EXITED_CLEANLY:
            logger.info("worker %d (pid %d) exited normally", worker_id, pid)
        elif action is ExitAction.SUCCESSOR_TAKES_OVER:
            logger.warning("worker %d (pid %d) %s; its successor takes over", worker_id, pid, how)
            assert successor is not None
            successor.replaces = None
        elif action is ExitAction.SLOT_UNWANTED:
            logger.info("worker %d (pid %d) %s; slot no longer wanted", worker_id, pid, how)
        else:
            self._restart(worker, status, how)

    def _restart(self, worker: WorkerProcess, status: int, how: str) -> None:
        """After a crash: count it, then restart within the budget, after the backoff."""
        worker_id, pid = worker.task_id, worker.pid
        self.restarts += 1
        self._count_restart(_restart_cause(worker, status))
        if self.degraded or not self.budget.spend(time.monotonic()):
            self._budget_spent(worker, how)
            return
        delay = self.backoff.delay(worker_id, time.monotonic() - worker.started_at)
        if delay > 0:
            logger.warning(
                "worker %d (pid %d) %s, restarting in %.1f s", worker_id, pid, how, delay
            )
            if any(w.task_id != worker_id for w in self._serving()) and self.listeners:
                # A socket of its own would take new connections for the whole
                # delay; parked, they go to the other workers (`_spawn` opens
                # it again). With no other worker, they wait for this one.
                self.listeners.park_slot(worker_id)
        else:
            logger.warning("worker %d (pid %d) %s, restarting", worker_id, pid, how)
        self._pending_spawns[worker_id] = time.monotonic() + delay
        self._spawn_due(time.monotonic())

    def _budget_spent(self, worker: WorkerProcess, how: str) -> None:
        message = f"too many worker restarts ({self.budget.describe()}), giving up"
        logger.warning("worker %d (pid %d) %s", worker.task_id, worker.pid, how)
        if self.on_exhausted == "degrade":
            if not self.degraded:
                logger.error(
                    "%s: no more restarts; %d worker(s) keep serving (degraded)",
                    message.replace(", giving up", ""),
                    len(self._serving()),
                )
            self.degraded = True
            self._close_slot(worker.task_id)  # no worker will accept from it again
            if not self._serving() and not self._pending_spawns:
                self.stop(graceful=True, error=TooManyRestarts(message))
            return
        self.stop(graceful=True, error=TooManyRestarts(message))

    def _close_slot(self, task_id: int) -> None:
        if self.listeners is not None:
            self.listeners.close_slot(task_id)

    def _spawn_due(self, now: float) -> None:
        for task_id, due in sorted(self._pending_spawns.items()):
            if due <= now:
                del self._pending_spawns[task_id]
                self._spawn(task_id)

    def _enforce_deadlines(self, now: float) -> None:
        """The watchdog, the retirement deadline, and the stop deadline."""
        if self._successor is not None and now >= self._successor.deadline:
            _kill(self._successor.pid, signal.SIGTERM)
            self._successor_failed("was not ready in time")
        if self._stopping:
            if now >= self._stop_deadline and self.workers:
                logger.warning("graceful timeout: killing %d worker(s)", len(self.workers))
                self._signal_all(signal.SIGKILL)
                self._stop_deadline = now + 5.0
            return
        for worker in list(self.workers.values()):
            if worker.kill_at and now >= worker.kill_at:
                worker.kill_at = 0.0
                _kill(worker.pid, signal.SIGKILL)
            elif worker.handoff_since:
                waited = now - worker.handoff_since
                if waited >= HANDOFF_SETTLE and (
                    waited >= self.graceful_timeout
                    or self.listeners is None
                    or not self.listeners.queued(worker.task_id)
                ):
                    self._retire(worker)
            elif worker.retiring or worker.timed_out:
                continue
            elif not worker.ready:
                if self.boot_timeout > 0 and now - worker.started_at > self.boot_timeout:
                    # Judged like a boot error: the first start stops, a
                    # replacement counts as a crash.
                    worker.boot_error = f"not ready within {self.boot_timeout:g} s (--boot-timeout)"
                    logger.error(
                        "worker %d (pid %d) is %s; dumping its stacks and stopping it",
                        worker.task_id,
                        worker.pid,
                        worker.boot_error,
                    )
                    self._abort(worker, now)
            elif self.timeout > 0:
                silent = now - (worker.last_heartbeat or worker.started_at)
                if silent > self.timeout:
                    logger.error(
                        "worker %d (pid %d) timed out: no heartbeat for %.1f s; "
                        "dumping its stacks and replacing it",
                        worker.task_id,
                        worker.pid,
                        silent,
                    )
                    self._abort(worker, now)

    def _abort(self, worker: WorkerProcess, now: float) -> None:
        """SIGABRT (faulthandler prints every thread's stack), then SIGKILL."""
        self._hook("worker_abort", worker.task_id, worker.pid)
        worker.timed_out = True
        worker.kill_at = now + ABORT_GRACE
        _kill(worker.pid, signal.SIGABRT)

    def _signal_all(self, signum: int) -> None:
        for pid in list(self.workers):
            _kill(pid, signum)

    def _exit(self) -> NoReturn:
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        if self._selector is not None:
            self._selector.close()
        _close(self._wakeup_r)
        _close(self._wakeup_w)
        self._close_listeners()
        for plugin in self.plugins:
            plugin.close()
        self._hook("on_exit")
        if self._exit_error is not None:
            raise self._exit_error
        logger.info("all workers have exited; supervisor exits")
        raise SystemExit(0)


def _restart_cause(worker: WorkerProcess, status: int) -> str:
    """The label a crash is counted under in the metrics."""
    if worker.boot_error is not None:
        return "boot"
    if worker.timed_out:
        return "watchdog"
    return "signal" if os.WIFSIGNALED(status) else "exit"


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return f"killed by signal {signum} ({_signal_name(signum)})"
    code = os.WEXITSTATUS(status)
    return f"exited with status {code}" if code else "exited normally"


def _read_pipe(fd: int) -> bytes | None:
    """What a child wrote; b"" once it closed its end (or died), None if nothing yet."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


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
