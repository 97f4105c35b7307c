"""Progress from inside a task, for a bar drawn by the caller: a stack of 16 models that trains for minutes
moves its caller's bar per epoch instead of once at its end.

The caller sets a sink (its bar's update) around an executor's map; a task declares what it is worth
(``task(units)``, e.g. its job count) and its loops ``tick`` fractions of it (an epoch of a stack of n models:
n / epochs). Ticks outside a task (a base model's training) go nowhere, and a task never ticks more than
it is worth. Tasks on threads of the caller's process see the sink through a context variable (copied when
the executor submits them); tasks in other processes see none, and their caller counts them when they
end, less what they ticked (``Task.done``).
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator

_SINK: contextvars.ContextVar[Callable[[float], object] | None] = contextvars.ContextVar("fastroar_sink",
                                                                                         default=None)
_TASK: contextvars.ContextVar["Task | None"] = contextvars.ContextVar("fastroar_task", default=None)


class Task:
    """A running task's share of the bar: `units` in all, `done` ticked so far."""

    def __init__(self, units: float, update: Callable[[float], object]) -> None:
        self.units, self.done, self.update = float(units), 0.0, update


@contextlib.contextmanager
def sink(update: Callable[[float], object]) -> Iterator[None]:
    """Ticks of tasks started (submitted) inside this block call `update(units)`."""
    token = _SINK.set(update)
    try:
        yield
    finally:
        _SINK.reset(token)


@contextlib.contextmanager
def task(units: float) -> Iterator[Task | None]:
    """The block is a task worth `units`; None when no sink is set (nothing to move)."""
    update = _SINK.get()
    if update is None:
        yield None
        return
    current = Task(units, update)
    token = _TASK.set(current)
    try:
        yield current
    finally:
        _TASK.reset(token)


def tick(units: float) -> None:
    """Moves the bar by `units` of the running task (capped at what the task is worth); else nothing."""
    current = _TASK.get()
    if current is None:
        return
    units = min(float(units), current.units - current.done)
    if units > 0:
        current.done += units
        current.update(units)
