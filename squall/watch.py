"""`--reload` for development: a separate watcher process sends SIGHUP on changes.

The watcher runs watchfiles in its own process, so the supervisor stays
free of threads (it must be, to fork safely). A change starts the same
rolling reload as SIGHUP: if the new code cannot boot, the old workers keep
serving and the error is logged once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from squall.errors import UsageError


def start_watcher(directory: str, supervisor_pid: int) -> subprocess.Popen[bytes]:
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise UsageError("--reload needs watchfiles: pip install 'squall[reload]'") from None
    return subprocess.Popen(
        [sys.executable, "-m", "squall.watch", str(supervisor_pid), directory],
        stdin=subprocess.DEVNULL,
    )


def main(argv: list[str]) -> None:
    import logging

    import watchfiles

    from squall.logs import configure

    configure("info")
    logger = logging.getLogger("squall.watch")
    supervisor_pid, directory = int(argv[0]), argv[1]
    watch = watchfiles.watch(
        directory,
        watch_filter=watchfiles.PythonFilter(),
        rust_timeout=500,
        yield_on_timeout=True,
        raise_interrupt=False,
    )
    for changes in watch:
        if os.getppid() != supervisor_pid:
            return  # the supervisor is gone
        if changes:
            names = sorted({os.path.relpath(path, directory) for _, path in changes})
            logger.info("changed: %s; reloading", ", ".join(names))
            os.kill(supervisor_pid, signal.SIGHUP)


if __name__ == "__main__":
    main(sys.argv[1:])
