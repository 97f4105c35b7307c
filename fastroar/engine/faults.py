"""Fault injection for the resume tests: ``FASTROAR_KILL_AT=<point>:<n>`` SIGKILLs this process the n-th
time it passes <point> (1-based). Points mark the dangerous moments of each stage, e.g. between a chunk's
data and its completion record. Unset (the normal case), ``fault_point`` is a dictionary lookup.
"""
from __future__ import annotations

import os
import signal
from collections import Counter

_passes: Counter = Counter()


def fault_point(name: str) -> None:
    spec = os.environ.get("FASTROAR_KILL_AT")
    if not spec:
        return
    point, _, count = spec.rpartition(":")
    if point != name:
        return
    _passes[name] += 1
    if _passes[name] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
