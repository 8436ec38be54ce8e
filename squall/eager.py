"""Tasks that start at once: the request's coroutine runs in the pass that read it.

A task made the ordinary way waits for the loop's next pass, behind every
callback already queued; under load that is behind every request the
previous pass started. Python 3.12's eager tasks run the coroutine up to its
first wait at once, as the current task (anyio and sniffio look for one),
and are scheduled only if it waits. On 3.11 `start_task` does the same
with a real task made first: the coroutine's first step runs while that
task is the current one, in the task's own context, and the task's
coroutine (`_Carrier`) goes on from wherever that step stopped.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine
from typing import Any, Final

EAGER_TASKS: Final = sys.version_info >= (3, 12)
#: A task can be given the context its first step ran in (3.10's cannot: ordinary tasks there).
CONTEXT_TASKS: Final = sys.version_info >= (3, 11)

_enter_task: Final = asyncio.tasks._enter_task
_leave_task: Final = asyncio.tasks._leave_task
#: Each loop's current task, before 3.12 (`asyncio.current_task` is a Python function around it).
_current_tasks: Final[dict[Any, Any]] = getattr(asyncio.tasks, "_current_tasks", {})


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
    carrier = _Carrier(coro)
    context = contextvars.copy_context()
    task = loop.create_task(carrier, name=name, context=context)  # type: ignore[arg-type, call-arg, unused-ignore]  # a Coroutine by registration; 3.10 has no context=
    _enter_task(loop, task)
    try:
        carrier.waiting_on = context.run(coro.send, None)
    except StopIteration:
        carrier.finished = True
    except BaseException as exc:  # the task's first step raises it again
        carrier.finished = True
        carrier.error = exc
    finally:
        _leave_task(loop, task)
    return None if carrier.finished else task


class _Carrier:
    """The task's coroutine: it ends as the eager first step did, or goes on from it.

    A coroutine by the protocol asyncio's tasks use (`send`, `throw`, `close`),
    not a generator: no frame of its own in front of the app's coroutine, and
    compiled, a C object. A cancellation before the task's first step reaches
    the app's coroutine where that step stopped.
    """

    __slots__ = ("coro", "error", "finished", "started", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, None]) -> None:
        self.coro = coro
        self.finished = False  # in the eager first step
        self.started = False  # the task has taken its first step
        self.error: BaseException | None = None
        self.waiting_on: Any = None  # what the coroutine waits on after its first step

    def send(self, value: Any) -> Any:
        if self.started:
            return self.coro.send(value)
        self.started = True
        if self.finished:
            error, self.error = self.error, None
            if error is not None:
                raise error
            raise StopIteration
        waiting_on, self.waiting_on = self.waiting_on, None
        return waiting_on

    def throw(self, exc: BaseException, *_: object) -> Any:
        self.started = True
        if self.finished:
            raise exc
        return self.coro.throw(exc)

    def close(self) -> None:
        if not self.finished:
            self.coro.close()


Coroutine.register(_Carrier)
