"""squall.eager.start_task: a request's coroutine runs at once, as the current task.

On Python 3.11 these exercise squall's own eager start; on 3.12+ the
interpreter's; on 3.10 (ordinary tasks) the ones about running at once skip.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import sniffio
import uvloop

from squall.eager import CONTEXT_TASKS, EAGER_TASKS, start_task

needs_eager = pytest.mark.skipif(
    not CONTEXT_TASKS, reason="Python 3.10 starts tasks on the next pass"
)

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


@pytest.fixture(params=sorted(LOOPS))
def loop(request: pytest.FixtureRequest) -> Any:
    made = LOOPS[request.param]()
    yield made
    made.close()


def from_a_callback(
    loop: asyncio.AbstractEventLoop, coro: Callable[[], Coroutine[Any, Any, None]]
) -> asyncio.Task[None] | None:
    """start_task as the protocol calls it: from a callback of the loop, not a task."""
    started: list[asyncio.Task[None] | None] = []

    async def main() -> None:
        done = loop.create_future()
        loop.call_soon(
            lambda: (started.append(start_task(coro(), loop, "t")), done.set_result(None))
        )
        await done

    loop.run_until_complete(asyncio.wait_for(main(), 5))
    return started[0]


@needs_eager
def test_a_coroutine_that_never_waits_finishes_inside_the_call(loop: Any) -> None:
    seen: list[object] = []

    async def answer() -> None:
        seen.append(asyncio.current_task())
        seen.append(sniffio.current_async_library())

    assert from_a_callback(loop, answer) is None
    assert isinstance(seen[0], asyncio.Task) and seen[1] == "asyncio"


@needs_eager
def test_one_that_waits_goes_on_as_the_same_task_in_the_same_context(loop: Any) -> None:
    seen: dict[str, object] = {}

    async def handler() -> None:
        request_id.set("abc")
        seen["first"] = asyncio.current_task()
        await asyncio.sleep(0.01)
        seen["later"] = asyncio.current_task()
        seen["id"] = request_id.get()

    task = from_a_callback(loop, handler)
    assert task is not None and seen["first"] is task  # ran before start_task returned
    loop.run_until_complete(asyncio.wait_for(task, 5))
    assert seen["later"] is task and seen["id"] == "abc"
    assert request_id.get() == "none"  # the caller's context is untouched


@needs_eager
def test_cancelled_before_its_next_step_the_coroutine_sees_the_cancellation(loop: Any) -> None:
    events: list[str] = []

    async def handler() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        finally:
            events.append("finally")

    task = from_a_callback(loop, handler)
    assert task is not None
    task.cancel()  # before the task's own first step
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(asyncio.wait_for(task, 5))
    assert events == ["cancelled", "finally"] and task.cancelled()


@needs_eager
def test_a_cancel_asked_in_the_first_step_reaches_the_app_at_its_wait(loop: Any) -> None:
    """The task is cancelled before it has a future to cancel: its first step throws it in."""
    events: list[str] = []

    async def handler() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        events.append("asked")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    task = from_a_callback(loop, handler)
    assert task is not None
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(asyncio.wait_for(task, 5))
    assert events == ["asked", "cancelled"] and task.cancelled()


@needs_eager
@pytest.mark.parametrize("waits", [0, 1, 3])
def test_bare_yields_after_the_first_step_each_take_a_pass(loop: Any, waits: int) -> None:
    """`asyncio.sleep(0)` yields None, not a future: the task goes on at its next step."""
    seen: list[object] = []

    async def handler() -> None:
        for _ in range(waits):
            await asyncio.sleep(0)
        seen.append(asyncio.current_task())

    task = from_a_callback(loop, handler)
    if waits == 0:
        assert task is None and len(seen) == 1
        return
    assert task is not None
    loop.run_until_complete(asyncio.wait_for(task, 5))
    assert seen == [task] and task.exception() is None


@needs_eager
def test_an_error_after_a_wait_is_the_tasks(loop: Any) -> None:
    async def handler() -> None:
        await asyncio.sleep(0)
        raise ValueError("late")

    task = from_a_callback(loop, handler)
    assert task is not None
    with pytest.raises(ValueError, match="late"):
        loop.run_until_complete(asyncio.wait_for(task, 5))


def test_from_inside_a_task(loop: Any) -> None:
    ran: list[bool] = []

    async def handler() -> None:
        ran.append(True)

    async def main() -> None:
        outer = asyncio.current_task()
        task = start_task(handler(), loop, "t")
        # Python 3.12 can swap the current task; squall's own eager step cannot.
        assert ran == ([True] if EAGER_TASKS else [])
        assert asyncio.current_task() is outer
        if task is not None:
            await task
        assert ran == [True]

    loop.run_until_complete(asyncio.wait_for(main(), 5))


@pytest.mark.skipif(sys.version_info < (3, 11), reason="anyio's task groups need a real task")
@needs_eager
def test_anyio_cancel_scopes_and_task_groups_work_in_the_first_step(loop: Any) -> None:
    import anyio

    results: list[str] = []

    async def handler() -> None:
        with anyio.move_on_after(0.05):
            await anyio.sleep(1)
        results.append("moved on")
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.sleep, 0.01)
        results.append("group done")

    task = from_a_callback(loop, handler)
    assert task is not None
    loop.run_until_complete(asyncio.wait_for(task, 5))
    assert results == ["moved on", "group done"]
