"""Tasks that start at once: the request's coroutine runs in the pass that read it.

A task made the ordinary way waits for the loop's next pass, behind every
callback already queued; under load that is behind every request the
previous pass started. Python 3.12's eager tasks run the coroutine up to its
first wait at once, as the current task (anyio and sniffio look for one),
and are scheduled only if it waits. On 3.11 `start_task` does the same
with a real task made first: the coroutine's first step runs while that
task is the current one, in the task's own context, and the task's
coroutine (`_resume`) goes on from wherever that step stopped.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Coroutine, Generator
from typing import Any

EAGER_TASKS = sys.version_info >= (3, 12)
#: A task can be given the context its first step ran in (3.10's cannot: ordinary tasks there).
CONTEXT_TASKS = sys.version_info >= (3, 11)

_enter_task = asyncio.tasks._enter_task
_leave_task = asyncio.tasks._leave_task


def start_task(
    coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop, name: str
) -> asyncio.Task[None] | None:
    """Run `coro` until it first waits; its task, or None if it has finished.

    Call it from a callback of the loop, not from inside a task (a task
    there could not be made the current one): from a task it is an
    ordinary task, started on the next pass.
    """
    if EAGER_TASKS:
        task = asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg]
        return None if task.done() else task
    if not CONTEXT_TASKS or asyncio.current_task(loop) is not None:
        return asyncio.Task(coro, loop=loop, name=name)
    step = _FirstStep(coro)
    resumed = _resume(step)
    resumed.send(None)  # parked: a cancellation before the task's first step reaches it
    context = contextvars.copy_context()
    task = loop.create_task(resumed, name=name, context=context)  # type: ignore[call-arg, unused-ignore]  # 3.10 has no context=
    _enter_task(loop, task)
    try:
        step.yielded = context.run(coro.send, None)
    except StopIteration:
        step.finished = True
    except BaseException as exc:  # the task's first step raises it again
        step.finished = True
        step.error = exc
    finally:
        _leave_task(loop, task)
    return None if step.finished else task


class _FirstStep:
    """How the eager first step ended."""

    __slots__ = ("coro", "error", "finished", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self.coro = coro
        self.finished = False
        self.error: BaseException | None = None
        self.yielded: Any = None  # what the coroutine waits on


async def _resume(step: _FirstStep) -> None:
    """The task's coroutine: it ends as the first step did, or goes on from it."""
    try:
        await _park()
    except BaseException as exc:  # cancelled before the task's first step
        if step.finished:
            raise
        await _forward(step.coro, None, exc)
        return
    if step.finished:
        if step.error is not None:
            raise step.error
        return
    await _forward(step.coro, step.yielded, None)


@types.coroutine
def _park() -> Generator[None, None, None]:
    yield


@types.coroutine
def _forward(
    coro: Coroutine[Any, Any, None], waiting_on: Any, thrown: BaseException | None
) -> Generator[Any, Any, None]:
    """`yield from` a coroutine that has already run: it waits on `waiting_on`."""
    try:
        if thrown is not None:
            waiting_on = coro.throw(thrown)
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:
                waiting_on = coro.throw(exc)
            else:
                waiting_on = coro.send(sent)
    except StopIteration:
        return
