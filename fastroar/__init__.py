"""fastroar: do the pixels an attribution ranks highest really carry the label? (DiffROAR at scale).

Public API: ``fastroar.rank``, ``fastroar.rank_and_mask``, ``fastroar.unmask``,
``fastroar.attribute``; for notebooks ``fastroar.evaluate`` and ``fastroar.load_results`` (fastroar.api).
They are imported lazily so that ``import fastroar`` stays cheap for the CLI.
"""
from __future__ import annotations

import importlib
from typing import Any

# First, before anything imports torch: importing fastroar.cpu pins torch's CPU kernels, so the same config
# gives the same bits on any x86 CPU.
from fastroar.cpu import PINNED  # noqa: F401

__version__ = "0.1.0"

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
