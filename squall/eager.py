"""Tasks that start at once: the request's coroutine runs in the pass that read it.

A task made the ordinary way waits for the loop's next pass, behind every
callback already queued; under load that is behind every request the
previous pass started. Python 3.12's eager tasks run the coroutine up to its
first wait at once, as the current task (anyio and sniffio look for one),
and are scheduled only if it waits. On 3.11 `start_task` does the same
with a real task made first: the task's coroutine (`_carry`) takes the
app's first step while that task is the current one, in the task's own
context, pauses, and goes on from there when the task takes its own first
step.

Compiled, nothing on the way of a coroutine that never waits raises
StopIteration: mypyc records every exception that leaves a compiled
frame as a traceback entry (a code object, a frame and a formatted name),
and two of those cost more than the task itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine, Generator
from types import CoroutineType
from typing import Any, Final

EAGER_TASKS: Final = sys.version_info >= (3, 12)
#: A task can be given the context its first step ran in (3.10's cannot: ordinary tasks there).
CONTEXT_TASKS: Final = sys.version_info >= (3, 11)

_enter_task: Final = asyncio.tasks._enter_task
_leave_task: Final = asyncio.tasks._leave_task
#: Each loop's current task, before 3.12 (`asyncio.current_task` is a Python function around it).
_current_tasks: Final[dict[Any, Any]] = getattr(asyncio.tasks, "_current_tasks", {})
_Task: Final = asyncio.Task

#: What `_carry` hands `start_task` when the app's coroutine returned in its first step.
_FINISHED: Final = object()


def start_task(
    coro: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop, name: str
) -> asyncio.Task[None] | None:
    """Run `coro` until it first waits; its task, or None if it has finished.

    Call it from a callback of the loop, not from inside a task (a task
    there could not be made the current one): from a task it is an
    ordinary task, started on the next pass.
    """
    if EAGER_TASKS:
        task = asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg, unused-ignore]  # 3.12 knows eager_start
        return None if task.done() else task
    if not CONTEXT_TASKS or _current_tasks.get(loop) is not None:
        return asyncio.Task(coro, loop=loop, name=name)
    carry = _carry(coro)
    context = contextvars.copy_context()
    if loop.get_task_factory() is None:
        # Made directly: the loop's create_task would format a "Task-N" name first.
        task = _Task(carry, loop=loop, name=name, context=context)  # type: ignore[call-arg, unused-ignore]  # 3.10 has no context=
    else:
        task = loop.create_task(carry, name=name, context=context)  # type: ignore[call-arg, unused-ignore]
    _enter_task(loop, task)
    try:
        waiting_on = context.run(carry.send, None)
    finally:
        _leave_task(loop, task)
    return None if waiting_on is _FINISHED else task


async def _carry(coro: Coroutine[Any, Any, None]) -> None:
    """The task's coroutine: the app's first step, a pause, and the rest.

    `start_task` runs it up to the pause with the task entered, and learns
    from the pause's value whether the app has finished. The task's first
    step ends the pause. Whatever that step throws in (a cancellation made
    before it) lands in the try around the pause and reaches the app's
    coroutine where its first step stopped.
    """
    error: BaseException | None = None
    try:
        waiting_on = _first_step(coro)
    except BaseException as exc:  # the task's first step raises it again
        waiting_on = _FINISHED
        error = exc
    try:
        await _Pause(waiting_on)
    except GeneratorExit:
        if waiting_on is not _FINISHED:
            coro.close()
        raise
    except BaseException as exc:
        if waiting_on is _FINISHED:
            raise
        try:
            waiting_on = coro.throw(exc)
        except StopIteration:
            return
    if waiting_on is _FINISHED:
        if error is not None:
            raise error
        return
    await _Resume(coro, waiting_on)


#: Per type of coroutine: whether `next()` steps it (mypyc's do; the interpreter's only `send`).
_stepped_by_next: Final[dict[type, bool]] = {}


def _first_step(coro: Coroutine[Any, Any, None]) -> Any:
    """What `coro` waits on after its first step, or `_FINISHED`."""
    kind = type(coro)
    by_next = _stepped_by_next.get(kind)
    if by_next is None:
        by_next = _stepped_by_next[kind] = kind is not CoroutineType and hasattr(kind, "__next__")
    if by_next:
        # The coroutine's return ends in C: no StopIteration reaches this frame.
        return next(coro, _FINISHED)  # type: ignore[call-overload]
    try:
        return coro.send(None)
    except StopIteration:
        return _FINISHED


class _Pause:
    """Yields `value` once, then ends: a tuple iterator's end is no exception, even compiled."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        return iter((self.value,))  # type: ignore[return-value]  # an iterator is all await needs


class _Resume:
    """The app's coroutine from where its first step stopped: what it waits on, then the rest.

    An iterator by the protocol `await` delegates to (`send`, `throw`,
    `close`), so that the task's wake-ups and cancellations reach the app.
    """

    __slots__ = ("coro", "handed", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self.coro = coro
        self.waiting_on = waiting_on  # handed to the task at its first step
        self.handed = False

    def __await__(self) -> Generator[Any, Any, None]:
        return self  # a generator by protocol

    def __iter__(self) -> _Resume:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        if self.handed:
            return self.coro.send(value)
        self.handed = True
        waiting_on, self.waiting_on = self.waiting_on, None
        return waiting_on

    def throw(self, kind: Any, exc: Any = None, *_: object) -> Any:
        self.handed = True
        self.waiting_on = None
        return self.coro.throw(exc if exc is not None else kind)

    def close(self) -> None:
        self.coro.close()
