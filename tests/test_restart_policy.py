"""The restart policy, without processes: the restart budget and the backoff of young deaths."""

from __future__ import annotations

import pytest

from squall.supervisor import BACKOFF_CAP, STABLE_AGE, Backoff, RestartBudget

YOUNG = STABLE_AGE / 4  # a worker that died this long after its start died young


def spend(budget: RestartBudget, times: list[float]) -> list[bool]:
    return [budget.spend(now) for now in times]


# -- RestartBudget ---------------------------------------------------------------------


@pytest.mark.parametrize("max_restarts", [0, 1, 5, 100])
def test_lifetime_budget_allows_exactly_max_restarts(max_restarts: int) -> None:
    # Window 0 is the seed's count: the restart after the max_restarts-th is refused,
    # however long ago the earlier ones were.
    budget = RestartBudget(max_restarts)
    times = [float(day * 86_400) for day in range(max_restarts + 3)]
    assert spend(budget, times) == [True] * max_restarts + [False] * 3


def test_lifetime_budget_never_forgets() -> None:
    budget = RestartBudget(2, window=0.0)
    assert spend(budget, [0.0, 1.0]) == [True, True]
    assert budget.spend(10 * 365 * 86_400.0) is False  # ten years later: still spent


@pytest.mark.parametrize("max_restarts", [1, 3, 10])
def test_window_allows_exactly_max_restarts_in_a_burst(max_restarts: int) -> None:
    budget = RestartBudget(max_restarts, window=60.0)
    burst = [100.0 + i * 0.001 for i in range(max_restarts + 1)]
    assert spend(budget, burst) == [True] * max_restarts + [False]


def test_sliding_window_forgets_old_restarts() -> None:
    budget = RestartBudget(2, window=10.0)
    assert spend(budget, [0.0, 5.0]) == [True, True]
    assert budget.spend(8.0) is False  # three within 10 s
    fresh = RestartBudget(2, window=10.0)
    assert spend(fresh, [0.0, 5.0, 10.5]) == [True, True, True]  # 0.0 slid out of the window
    assert fresh.spend(12.0) is False  # 5.0, 10.5 and 12.0 are within 10 s
    assert spend(fresh, [30.0, 31.0]) == [True, True]  # all earlier ones are forgotten


def test_sliding_window_spaced_restarts_never_run_out() -> None:
    budget = RestartBudget(3, window=60.0)
    assert all(spend(budget, [i * 21.0 for i in range(1000)]))  # at most 3 in any 60 s


def test_budget_describes_itself() -> None:
    assert RestartBudget(5).describe() == "more than 5"
    assert RestartBudget(5, window=60.0).describe() == "more than 5 within 60 s"
    assert RestartBudget(3, window=0.5).describe() == "more than 3 within 0.5 s"


# -- Backoff ---------------------------------------------------------------------------


def test_young_deaths_back_off_doubling_up_to_the_cap() -> None:
    backoff = Backoff()
    delays = [backoff.delay(0, YOUNG) for _ in range(14)]
    expected = [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4]
    assert delays[: len(expected)] == pytest.approx(expected)
    assert delays[len(expected) :] == [BACKOFF_CAP] * (len(delays) - len(expected))
    assert all(delay <= BACKOFF_CAP for delay in delays)


def test_a_stable_worker_resets_the_streak() -> None:
    backoff = Backoff()
    assert [backoff.delay(0, YOUNG) for _ in range(4)] == pytest.approx([0.0, 0.1, 0.2, 0.4])
    assert backoff.delay(0, STABLE_AGE) == 0.0  # lived STABLE_AGE: restarted at once
    assert [backoff.delay(0, YOUNG) for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])
    assert backoff.delay(0, STABLE_AGE * 100) == 0.0
    assert backoff.delay(0, YOUNG) == 0.0


def test_stable_deaths_never_wait() -> None:
    backoff = Backoff()
    assert [backoff.delay(0, STABLE_AGE + i) for i in range(20)] == [0.0] * 20


def test_just_under_the_stable_age_is_young() -> None:
    backoff = Backoff()
    assert backoff.delay(0, STABLE_AGE - 0.01) == 0.0
    assert backoff.delay(0, STABLE_AGE - 0.01) == pytest.approx(0.1)


def test_streaks_are_kept_per_task_id() -> None:
    backoff = Backoff()
    assert [backoff.delay(0, YOUNG) for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])
    assert backoff.delay(1, YOUNG) == 0.0  # task 1's first young death
    assert backoff.delay(0, YOUNG) == pytest.approx(0.4)  # task 0's streak went on
    assert backoff.delay(1, YOUNG) == pytest.approx(0.1)
    assert backoff.delay(1, STABLE_AGE) == 0.0  # resets task 1 only
    assert backoff.delay(0, YOUNG) == pytest.approx(0.8)
    assert backoff.delay(1, YOUNG) == 0.0


def test_a_very_long_crash_loop_stays_at_the_cap() -> None:
    # Reachable when the budget never runs out, e.g. --max-restarts 10 --restart-window 60
    # with a worker that crashes on every boot: about 6 capped restarts a minute, within
    # budget, and after about 3 hours the supervisor itself dies with a traceback.
    backoff = Backoff()
    delays = [backoff.delay(0, YOUNG) for _ in range(1100)]
    assert delays[-1] == BACKOFF_CAP
