"""Log lines that say which process wrote them: the supervisor or worker N.

Two formats (`--log-format`):

- ``text`` (the default): ``FORMAT``, a traceback on the lines after it.
- ``json``: one JSON object a line, for a log shipper: time (ISO 8601, local,
  with its offset), level, logger, message, role ("supervisor" or "worker"),
  worker (the worker's id; absent in the supervisor), pid, and exception (the
  traceback's text) or stack when there is one. Python's warnings come as
  records of the logger ``py.warnings``, so that they are JSON lines too.

A record made with ``extra=WHOLE_LINE`` (the JSON access log) is already a
whole line: both formats write its message as it is.

Each line is written whole: the handler writes a record with one write
(stderr is line-buffered, the log file opened for appending), so the lines of
the supervisor and the workers sharing the stream do not interleave (on a
pipe, the kernel keeps that promise for writes up to PIPE_BUF, 4096 bytes).
"""

from __future__ import annotations

import datetime
import faulthandler
import json
import logging
import sys
from types import MappingProxyType

from squall import process

FORMATS = ("text", "json")
FORMAT = "%(asctime)s [%(process)d] [%(worker)s] %(levelname)s %(name)s: %(message)s"

#: ``logger.info(line, extra=WHOLE_LINE)``: `line` is written as it is, nothing around it.
WHOLE_LINE = MappingProxyType({"whole_line": True})


class WorkerTag(logging.Filter):
    """Adds `record.worker`: "supervisor", or "worker N" inside worker N."""

    def filter(self, record: logging.LogRecord) -> bool:
        worker_id = process.task_id()
        record.worker = "supervisor" if worker_id is None else f"worker {worker_id}"
        return True


class LineFormatter(logging.Formatter):
    """A record as a log line in the format `log_format` (text or json)."""

    def __init__(self, log_format: str = "text") -> None:
        if log_format not in FORMATS:
            raise ValueError(f"unknown log format {log_format!r}; expected one of {FORMATS}")
        super().__init__(FORMAT)
        self.json = log_format == "json"

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "whole_line", False):
            return record.getMessage()
        if not self.json:
            return super().format(record)
        worker_id = process.task_id()
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created)
            .astimezone()
            .isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "role": "supervisor" if worker_id is None else "worker",
        }
        if worker_id is not None:
            entry["worker"] = worker_id
        entry["pid"] = record.process
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, separators=(",", ":"))


def make_handler(log_format: str = "text", log_file: str | None = None) -> logging.Handler:
    """A handler writing to `log_file` (appending), else to stderr, in `log_format`."""
    if log_file is not None:
        handler: logging.Handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(log_format))
    handler.addFilter(WorkerTag())
    return handler


_log_file_handler: logging.FileHandler | None = None


def configure(level: str = "info", log_file: str | None = None, log_format: str = "text") -> None:
    """The command line's logging: to stderr (or `log_file`), tagged with the worker."""
    global _log_file_handler
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = make_handler(log_format, log_file)
    _log_file_handler = handler if isinstance(handler, logging.FileHandler) else None
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(log_format == "json")


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
