"""The seed's `fork_processes`: this process becomes the supervisor of n workers."""

from __future__ import annotations

from dataclasses import replace

from squall.cpus import cpu_count
from squall.logs import ensure_logging
from squall.process import check_fork_safety
from squall.supervisor import SEED_SETTINGS, Supervisor


def fork_processes(num_processes: int | None, max_restarts: int | None = None) -> int:
    """Fork `num_processes` workers and return the task id in each of them.

    The calling process becomes the supervisor and never returns: it restarts
    workers that crash (signal or non-zero exit), exits 0 once all have exited
    cleanly, and raises `TooManyRestarts` (after stopping the rest) when more
    than `max_restarts` restarts were needed (default 100, as in the seed).
    """
    check_fork_safety()
    ensure_logging()
    if num_processes is None or num_processes <= 0:
        num_processes = cpu_count()
    settings = SEED_SETTINGS
    if max_restarts is not None:
        settings = replace(settings, max_restarts=max_restarts)
    supervisor = Supervisor(num_processes, settings)
    return supervisor.run()
