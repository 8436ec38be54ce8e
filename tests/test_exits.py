"""squall.exits.decide: what the supervisor does when a worker exits, case by case.

The supervisor's reactions themselves run against real processes in
tests/test_supervision.py and tests/test_restart_policy.py; this table
pins the choice, including the precedence between facts that hold at once.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from squall.exits import ExitAction, WorkerExit, decide

#: A crash of an ordinary serving worker.
CRASH = WorkerExit(
    replacing=False,
    boot_failed=False,
    service_ready=True,
    retiring=False,
    stopping=False,
    clean=False,
    has_successor=False,
    slot_wanted=True,
)

TABLE = [
    ("a crash", {}, ExitAction.RESTART),
    ("exit 0 on its own", {"clean": True}, ExitAction.EXITED_CLEANLY),
    (
        "exit 0 before the service was ever ready",
        {"clean": True, "service_ready": False},
        ExitAction.EXITED_CLEANLY,
    ),
    ("a successor that died booting", {"replacing": True}, ExitAction.TAKEOVER_FAILED),
    (
        "a successor that could not boot, even at the first start",
        {"replacing": True, "boot_failed": True, "service_ready": False},
        ExitAction.TAKEOVER_FAILED,
    ),
    (
        "cannot boot at the first start",
        {"boot_failed": True, "service_ready": False},
        ExitAction.STOP_SERVICE,
    ),
    ("cannot boot later: a crash", {"boot_failed": True}, ExitAction.RESTART),
    (
        "cannot boot later, status 0 all the same",
        {"boot_failed": True, "clean": True},
        ExitAction.RESTART,
    ),
    ("retired", {"retiring": True}, ExitAction.RETIRED),
    ("retired, exit 0", {"retiring": True, "clean": True}, ExitAction.RETIRED),
    ("the supervisor stops", {"stopping": True}, ExitAction.RETIRED),
    (
        "stopping at the first start, cannot boot",
        {"stopping": True, "boot_failed": True, "service_ready": False},
        ExitAction.STOP_SERVICE,
    ),
    ("died while its successor boots", {"has_successor": True}, ExitAction.SUCCESSOR_TAKES_OVER),
    (
        "exit 0 while its successor boots",
        {"has_successor": True, "clean": True},
        ExitAction.EXITED_CLEANLY,
    ),
    ("a crash in a slot scaled away", {"slot_wanted": False}, ExitAction.SLOT_UNWANTED),
    (
        "a crash in a slot scaled away while a successor boots",
        {"slot_wanted": False, "has_successor": True},
        ExitAction.SUCCESSOR_TAKES_OVER,
    ),
    (
        "retired from a slot scaled away",
        {"slot_wanted": False, "retiring": True},
        ExitAction.RETIRED,
    ),
]


@pytest.mark.parametrize(("case", "facts", "action"), TABLE, ids=[row[0] for row in TABLE])
def test_decide(case: str, facts: dict[str, bool], action: ExitAction) -> None:
    assert decide(replace(CRASH, **facts)) is action, case


def test_every_action_is_reachable() -> None:
    assert {row[2] for row in TABLE} == set(ExitAction)
