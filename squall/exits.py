"""What the supervisor does when a worker exits: a pure decision, tested as a table.

`Supervisor._worker_exited` gathers the facts, `decide` picks the action,
and the supervisor carries it out. Keeping the choice free of effects
makes every case visible at once (`tests/test_exits.py`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ExitAction(enum.Enum):
    TAKEOVER_FAILED = "a successor died before it was ready: the worker it replaces serves on"
    STOP_SERVICE = "the service's first start cannot boot: stop, with the worker's error"
    RETIRED = "it was retired, or the supervisor stops: nothing to replace"
    EXITED_CLEANLY = "exit 0 on its own: not restarted (the seed's rule)"
    SUCCESSOR_TAKES_OVER = "it died while its successor boots: the successor takes the slot"
    SLOT_UNWANTED = "its slot is beyond the current worker count: not restarted"
    RESTART = "a crash: restart, within the budget and after the backoff"


@dataclass(frozen=True)
class WorkerExit:
    """The facts about one exit that the decision depends on."""

    replacing: bool  # it was booting to replace another worker
    boot_failed: bool  # it said it could not boot
    service_ready: bool  # the whole service has been ready once
    retiring: bool  # the supervisor was retiring it (reload, scale-down, recycle)
    stopping: bool  # the supervisor is stopping
    clean: bool  # exit status 0, and not killed by the watchdog
    has_successor: bool  # a replacement for it is booting
    slot_wanted: bool  # its slot is within the current worker count


def decide(exit: WorkerExit) -> ExitAction:
    if exit.replacing:
        return ExitAction.TAKEOVER_FAILED
    if exit.boot_failed and not exit.service_ready:
        # The first start: the app cannot run at all, and an operator is
        # watching. Later, a replacement that cannot boot (a dependency
        # briefly down) is a crash like any other.
        return ExitAction.STOP_SERVICE
    if exit.retiring or exit.stopping:
        return ExitAction.RETIRED
    if exit.clean and not exit.boot_failed:
        return ExitAction.EXITED_CLEANLY
    if exit.has_successor:
        return ExitAction.SUCCESSOR_TAKES_OVER
    if not exit.slot_wanted:
        return ExitAction.SLOT_UNWANTED
    return ExitAction.RESTART
