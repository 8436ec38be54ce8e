"""A worker's life: make the loop, start the app, serve, drain, exit.

The loop is created here, after the fork (uvloop where installed). SIGTERM
and SIGINT start a graceful drain: stop accepting, finish the requests in
flight, run the app's shutdown. A second SIGINT stops at once.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys

from squall import process, procfs
from squall.asgi import LifespanFailed
from squall.errors import SquallError
from squall.logs import enable_stack_dumps, reopen_log_file
from squall.process import WorkerMessage
from squall.server import HTTPServer, import_serving_modules, take_waiting

logger = logging.getLogger("squall.worker")

HEARTBEAT_INTERVAL = 1.0
BOOT_FAILURE_EXIT = process.BOOT_FAILURE_EXIT


def import_worker_modules() -> None:
    """What every worker runs, imported before the first fork (`import_serving_modules`)."""
    import squall.metrics  # noqa: F401

    import_serving_modules()


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_forever(
    graceful_timeout: float = 30.0, watchdog_timeout: float = 0.0, memory_limit: int = 0
) -> None:
    """Run this process's loop, serving every `HTTPServer` given sockets, until stopped.

    `watchdog_timeout`: the supervisor's --timeout; heartbeats come four
    times within it (at most once a second), so that an idle worker is never
    taken for a hung one. `memory_limit`: bytes of resident memory past which
    the worker asks to be replaced (checked with each heartbeat).
    """
    servers = take_waiting()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(servers, graceful_timeout)
    worker.memory_limit = memory_limit
    if watchdog_timeout > 0:
        worker.heartbeat_interval = min(HEARTBEAT_INTERVAL, watchdog_timeout / 4)
    try:
        loop.run_until_complete(worker.main())
    except BootFailure as exc:
        if process.task_id() is None:
            logger.error("%s", exc)
        process.notify(WorkerMessage.BOOT_ERROR, str(exc))
        sys.exit(BOOT_FAILURE_EXIT)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()


class BootFailure(Exception):
    """The worker could not start serving."""


class Worker:
    def __init__(self, servers: list[HTTPServer], graceful_timeout: float) -> None:
        self.servers = servers
        self.graceful_timeout = graceful_timeout
        self.heartbeat_interval = HEARTBEAT_INTERVAL
        self.memory_limit = 0  # bytes; 0: no limit
        self._stop: asyncio.Event | None = None

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGUSR1, reopen_log_file)
        enable_stack_dumps()  # the watchdog's SIGABRT prints every thread's stack
        try:
            for server in self.servers:
                await server.startup()
                await server.start_serving()
        except (SquallError, LifespanFailed, OSError) as exc:
            raise BootFailure(str(exc)) from None
        # What the app built to start lives as long as the worker. Frozen, it is
        # out of the collector's sight: a full collection then walks what the
        # requests left, not the whole heap (over 20 ms for a 40-route FastAPI
        # app: bench/gc_pauses.py).
        gc.freeze()
        process.notify(WorkerMessage.READY)
        heartbeat = loop.create_task(self._heartbeat())
        await self._stop.wait()
        heartbeat.cancel()
        await self._shutdown()

    def _on_stop_signal(self, signum: int) -> None:
        # A second signal changes nothing here: the supervisor kills on a second Ctrl-C.
        assert self._stop is not None
        self._stop.set()

    async def _heartbeat(self) -> None:
        asked = False
        while True:
            process.notify(WorkerMessage.HEARTBEAT)
            if self.memory_limit and not asked:
                resident = (procfs.memory() or (0, 0))[1]
                if resident > self.memory_limit:
                    process.notify(
                        WorkerMessage.RETIRE, f"memory {resident}"
                    )  # once: the supervisor replaces us
                    asked = True
            if process.orphaned():
                logger.warning("supervisor is gone; stopping")
                assert self._stop is not None
                self._stop.set()
            await asyncio.sleep(self.heartbeat_interval)

    async def _shutdown(self) -> None:
        for server in self.servers:
            server.stop_accepting()
        drained = await asyncio.gather(
            *(server.drain(self.graceful_timeout) for server in self.servers)
        )
        if not all(drained):
            logger.warning("graceful timeout: closing connections with requests in flight")
        for server in self.servers:
            await server.shutdown()
