"""Config checks that need the science registries: dataset, architecture and attribution names, the
train and retrain recipes, each model's adversary. The config package checks structure and values; this
runs right after it, before any stage does work."""
from __future__ import annotations

from typing import Any

from fastroar.attribution import METHODS, check_attribution
from fastroar.datasets import REGISTRY
from fastroar.errors import ConfigError
from fastroar.models import check_arch
from fastroar.training import Adversary, Recipe


def check_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """cfg, once its names resolve in the registries and its recipes and adversaries are valid."""
    name = cfg["dataset"].get("name")
    if name not in REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    check_arch(cfg["model"].get("arch"))
    Recipe(**cfg["train"])
    for m in cfg["models"]:
        if m.get("adversary"):
            Adversary(**m["adversary"])
    scores = cfg.get("scores") or {}
    for name in scores:
        if name in METHODS:
            raise ConfigError(f"scores name {name!r} is a built-in attribution; import the scores under another name")
    for a in cfg["attributions"]:
        if a not in scores:
            check_attribution(a)
    rt = cfg["retrain"]
    Recipe(**{**cfg["train"], **{k: v for k, v in rt.items() if k in Recipe.__dataclass_fields__}})
    return cfg
