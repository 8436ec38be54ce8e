"""Hot upgrade: start a new supervisor on the same sockets, and hand over when it is ready.

On SIGUSR2 or `squall ctl upgrade`, the supervisor forks and execs its own
command line again (`sys.orig_argv`), which may now run a new squall, a new
Python or a new virtualenv. The child inherits the listening sockets, the
steering maps and the plugins' sockets, described in one environment
variable, so nothing is bound twice and no connection is refused. It forks
its own workers, which accept on the same sockets beside the old ones, and
says `ready` on a pipe once every worker is ready. Only then does the old
supervisor drain its workers and exit. If the new one exits, or is not
ready in time, the old one kills it and serves on as if nothing happened.

This is the supervisor's business, below HTTP: it knows descriptors,
environment variables and processes, not what is served.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from squall.errors import SquallError

logger = logging.getLogger("squall.handover")

#: What the new supervisor inherits: {"format", "from": pid, "report": fd, "parts": {...}}.
ENV = "SQUALL_HANDOVER"
#: The description's shape; a squall that reads another refuses it (the old one serves on).
FORMAT = 1


def start_successor(
    fds: Iterable[int], parts: Mapping[str, Any], env: Mapping[str, str], report_fd: int
) -> int:
    """Fork and exec this process's command line, handing it `fds`; the child's pid.

    Call with the supervisor's signals blocked: the child unblocks them once
    it has exec'd (a new program starts with default handlers).
    """
    argv = list(sys.orig_argv)
    environment = dict(os.environ)
    environment.update(env)
    environment[ENV] = json.dumps(
        {"format": FORMAT, "from": os.getpid(), "report": report_fd, "parts": parts}
    )
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: nothing here may return into the supervisor's loop
        for fd in [*fds, report_fd]:
            os.set_inheritable(fd, True)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execve(argv[0] if os.path.isabs(argv[0]) else sys.executable, argv, environment)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.write(report_fd, f"failed cannot exec {argv[0]}: {exc}\n".encode())
    os._exit(127)


def inherited(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """In a new supervisor: what its predecessor handed over, or None; the variable is consumed."""
    env = os.environ if environ is None else environ
    text = env.pop(ENV, None)
    if text is None:
        return None
    try:
        handover: dict[str, Any] = json.loads(text)
        report = int(handover["report"])
    except (ValueError, KeyError, TypeError):
        logger.warning("%s is not a handover description; ignored", ENV)
        return None
    if handover.get("from") != os.getppid():
        logger.warning(
            "%s names pid %s, not this process's parent; ignored", ENV, handover.get("from")
        )
        with contextlib.suppress(OSError):
            os.close(report)
        return None
    if handover.get("format") != FORMAT:
        # Another squall's description: its old supervisor hears why, and serves on.
        why = f"handover format {handover.get('format')!r}, this squall reads {FORMAT}"
        with contextlib.suppress(OSError):
            os.write(report, f"failed cannot take over: {why}\n".encode())
        raise SquallError(f"cannot take over from pid {handover.get('from')}: {why}")
    return handover
