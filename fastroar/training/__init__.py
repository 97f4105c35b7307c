"""Standard and PGD adversarial training. The settings (Recipe, Adversary: settings.py) import without torch;
the loops that need it (loop.py, pgd.py) are imported when first used, so config checks stay cheap."""
import importlib
from typing import Any

from fastroar.training.settings import Adversary, Recipe, airbench_recipe, fast_recipe

_LAZY = {
    "train_model": "fastroar.training.loop",
    "evaluate": "fastroar.training.loop",
    "robust_accuracy": "fastroar.training.loop",
    "pgd_attack": "fastroar.training.pgd",
    "project": "fastroar.training.pgd",
}

__all__ = ["Recipe", "fast_recipe", "airbench_recipe", "Adversary", "train_model", "evaluate", "robust_accuracy",
           "pgd_attack", "project"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastroar.training' has no attribute {name!r}")
