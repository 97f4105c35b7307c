"""Stopping tasks that run on threads of this process, between two of their steps.

Ctrl-C reaches only the main thread; without this, a task on another thread (a stack of 16 models, a
base model's training) would run to its end before the command could exit, and its work be dropped
anyway. Each executor pool has a stop event, which its tasks see through a context variable (so nothing
outside a pool is ever stopped, and one pool's stop touches no other). The pool sets it when its caller
stops reading (Ctrl-C, or a task's error); the long loops call ``check()`` between steps (a training
step, an attribution batch) and end with ``Cancelled``. A cancelled task writes nothing more: what it
finished is complete (chunks, models, records are written whole), and a rerun redoes the rest.
"""
from __future__ import annotations

import contextvars
import threading
from typing import Any, Callable

_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("fastroar_stop", default=None)


class Cancelled(Exception):
    """A task stopped between two steps because its pool was stopped (Ctrl-C, or another task's error)."""


def check() -> None:
    """Raises Cancelled when the pool running this task has been stopped; else nothing (two lookups)."""
    stop = _STOP.get()
    if stop is not None and stop.is_set():
        raise Cancelled("stopped: the run was interrupted")


def submit(pool: Any, stop: threading.Event, fn: Callable, *args: Any):
    """pool.submit(fn, *args), the task seeing `stop` through check()."""
    context = contextvars.copy_context()
    context.run(_STOP.set, stop)
    return pool.submit(context.run, fn, *args)
