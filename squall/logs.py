"""Log lines on stderr that say which process wrote them: the supervisor or worker N."""

from __future__ import annotations

import faulthandler
import logging
import sys

from squall import process

FORMAT = "%(asctime)s [%(process)d] [%(worker)s] %(levelname)s %(name)s: %(message)s"


class WorkerTag(logging.Filter):
    """Adds `record.worker`: "supervisor", or "worker N" inside worker N."""

    def filter(self, record: logging.LogRecord) -> bool:
        worker_id = process.task_id()
        record.worker = "supervisor" if worker_id is None else f"worker {worker_id}"
        return True


def make_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(WorkerTag())
    return handler


_log_file_handler: logging.FileHandler | None = None


def configure(level: str = "info", log_file: str | None = None) -> None:
    """The command line's logging: to stderr (or `log_file`), tagged with the worker."""
    global _log_file_handler
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    if log_file is not None:
        _log_file_handler = logging.FileHandler(log_file)
        handler: logging.Handler = _log_file_handler
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(WorkerTag())
    else:
        handler = make_handler()
    root.addHandler(handler)
    root.setLevel(level.upper())


def reopen_log_file() -> None:
    """After logrotate moved the file away (SIGUSR1): write to a new one at the same path."""
    handler = _log_file_handler
    if handler is not None:
        handler.acquire()
        try:
            handler.close()
            handler.stream = handler._open()
        finally:
            handler.release()
        if faulthandler.is_enabled():
            enable_stack_dumps()  # to the new file


def enable_stack_dumps() -> None:
    """On SIGABRT (the watchdog's, or --boot-timeout's), print every thread's
    stack where the log goes: the log file if there is one, else stderr.
    Enabled before the app is imported, so a hung import shows where it hangs."""
    handler = _log_file_handler
    stream = handler.stream if handler is not None and handler.stream is not None else sys.stderr
    faulthandler.enable(file=stream, all_threads=True)


def ensure_logging() -> None:
    """In library use, show squall's own messages unless the program set up logging itself."""
    squall_logger = logging.getLogger("squall")
    if logging.getLogger().handlers or squall_logger.handlers:
        return
    squall_logger.addHandler(make_handler())
    squall_logger.setLevel(logging.INFO)
