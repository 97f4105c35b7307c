"""Fault injection for the resume and concurrency tests. Points mark the dangerous moments of each stage,
e.g. between a chunk's data and its completion record, or a stage holding its lock.

- ``FASTROAR_KILL_AT=<point>:<n>`` SIGKILLs this process the n-th time it passes <point> (1-based);
- ``FASTROAR_PAUSE_AT=<point>:<seconds>`` sleeps there the first time (another process can then meet
  the stage while this one holds its lock).

Unset (the normal case), ``fault_point`` is two dictionary lookups.
"""
from __future__ import annotations

import os
import signal
import time
from collections import Counter

_passes: Counter = Counter()


def fault_point(name: str) -> None:
    kill, pause = os.environ.get("FASTROAR_KILL_AT"), os.environ.get("FASTROAR_PAUSE_AT")
    if not (kill or pause):
        return
    _passes[name] += 1
    if kill:
        point, _, count = kill.rpartition(":")
        if point == name and _passes[name] == int(count):
            os.kill(os.getpid(), signal.SIGKILL)
    if pause:
        point, _, seconds = pause.rpartition(":")
        if point == name and _passes[name] == 1:
            time.sleep(float(seconds))
