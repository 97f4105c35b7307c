"""fastroar: do the pixels an attribution ranks highest really carry the label? (DiffROAR at scale).

Public API: ``fastroar.rank``, ``fastroar.rank_and_mask``, ``fastroar.unmask``,
``fastroar.attribute``; for notebooks ``fastroar.evaluate`` and ``fastroar.load_results`` (fastroar.api). They are imported lazily so that ``import fastroar`` stays cheap for the CLI.
"""
from __future__ import annotations

import importlib
from typing import Any

from fastroar.cpu import pin_cpu_kernels

__version__ = "0.1.0"

# Before anything imports torch: the same kernels, hence the same bits, on any x86 CPU (fastroar.cpu).
pin_cpu_kernels()

_PUBLIC = {
    "rank": "fastroar.engine.kernels",
    "rank_and_mask": "fastroar.engine.kernels",
    "unmask": "fastroar.engine.kernels",
    "attribute": "fastroar.attribution",
    "evaluate": "fastroar.api",
    "load_results": "fastroar.api",
    "Results": "fastroar.api",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'fastroar' has no attribute {name!r}")
