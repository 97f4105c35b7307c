"""Config checks that need the science registries: dataset, architecture and attribution names, the
train and retrain recipes, each model's adversary. The config package checks structure and values; this
runs right after it, before any stage does work."""
from __future__ import annotations

from typing import Any

from fastroar.attribution import check_attribution
from fastroar.datasets import REGISTRY
from fastroar.errors import ConfigError
from fastroar.models import BUILDERS
from fastroar.stages.artifacts import train_settings
from fastroar.training import Adversary, Recipe


def check_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """cfg, once its names resolve in the registries and its recipes and adversaries are valid."""
    name = cfg["dataset"].get("name")
    if name not in REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    arch = cfg["model"].get("arch")
    if arch not in BUILDERS:
        raise ConfigError(f"unknown model architecture {arch!r}; choose one of: {', '.join(sorted(BUILDERS))}")
    train = train_settings(cfg)  # without train.min_test_acc: a check, not a recipe field
    Recipe(**train)
    for m in cfg["models"]:
        if m.get("adversary"):
            Adversary(**m["adversary"])
    for a in cfg["attributions"]:
        check_attribution(a)
    rt = cfg["retrain"]
    Recipe(**{**train, **{k: v for k, v in rt.items() if k in Recipe.__dataclass_fields__}})
    return cfg
