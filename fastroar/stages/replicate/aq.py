"""Experiment 2 of `fastroar replicate`: the reference notebook's synthetic score (configs/leakage-all.yaml):
AQ = P(top-1 = j*) - P(bottom-1 = j*) of the loss gradient on x = y*e_j with j over all d coordinates, per
seed, and per kind (standard, robust) over seeds."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fastroar.attribution import attribute
from fastroar.config import Config
from fastroar.method import to_model_input
from fastroar.metrics.aq import aq_hits, attribution_quality
from fastroar.metrics.intervals import differences_interval
from fastroar.stages.artifacts import load_model
from fastroar.stages.contract import Context, resolve_config
from fastroar.stages.prepare import prepare
from fastroar.stages.replicate.leakage import QUICK_LEAKAGE
from fastroar.stages.replicate.measures import model_status, ranks_of, sub_workdir
from fastroar.stages.replicate.results import AqKind, AqModel, AqOverSeeds, AqResult
from fastroar.stages.train import train

AQ_ATTRIBUTIONS = ("gradient:loss", "gradient:margin", "gradient")  # the notebook's first
RECIPE = "leakage-all"
REFERENCE_RECIPE = "leakage-reference"   # --reference: the notebook's exact recipe (a config name or a YAML path)


def recipe_config(recipe: str, overrides: list[str]) -> Config:
    """The config of a recipe: configs/<recipe>.yaml, or the YAML file `recipe` names."""
    if recipe.endswith((".yaml", ".yml")):
        return resolve_config(config_path=recipe, overrides=overrides)
    return resolve_config(dataset=recipe, overrides=overrides)


def aq_experiment(out_dir: Path, *, quick: bool, device: str | None, progress: bool, log: Callable,
                  reference: bool = False) -> AqResult:
    """AQ of the MLPs of configs/leakage-all.yaml (per seed; mean and std over seeds per kind); with
    `reference`, of the reference notebook's exact recipe (REFERENCE_RECIPE), its wall time logged."""
    t0 = time.perf_counter()
    recipe = REFERENCE_RECIPE if reference else RECIPE
    sets = list(QUICK_LEAKAGE if quick else []) + ["loader=resident"]
    if device:
        sets.append(f"device={device}")
    cfg = recipe_config(recipe, sets)
    name = Path(recipe).stem
    wd = sub_workdir(out_dir, name, [cfg], quick)
    ctx = Context(cfg, wd, log, progress)
    prepared, _ = prepare(ctx)
    t = time.perf_counter()
    train(ctx)
    log(f"[replicate] {name} models ready in {time.perf_counter() - t:.1f}s")
    images, labels = prepared.arrays("test")
    x = to_model_input(images)
    y = torch.from_numpy(np.array(labels))   # a copy: the prepared arrays are read-only memory maps
    signal = prepared.signal("test")
    models: dict[str, AqModel] = {}
    per_image: dict[str, dict[str, list[np.ndarray]]] = {"standard": {}, "robust": {}}   # kind -> a -> per model
    for spec in cfg.models:
        model, ckpt = load_model(wd, spec.name, prepared)
        entry = AqModel(kind="robust" if spec.adversary else "standard", seed=spec.seed,
                        status=model_status(cfg, ckpt, labels, x, model))
        for a in AQ_ATTRIBUTIONS:
            scores = attribute(model, x, a, labels=y).reshape(len(x), -1).detach().numpy()
            ranks = ranks_of(scores)
            entry.aq[a] = attribution_quality(ranks, signal)
            top, bottom = aq_hits(ranks, signal)
            per_image[entry.kind].setdefault(a, []).append(top - bottom)
        models[spec.name] = entry
    kinds: dict[str, AqKind] = {}
    for kind in ("standard", "robust"):
        members = [m for m in models.values() if m.kind == kind]
        if members:
            kinds[kind] = AqKind(runs=len(members), test_acc=float(np.mean([m.status.test_acc for m in members])),
                                 chance=members[0].status.chance,
                                 aq={a: aq_over_seeds(members, per_image[kind][a], a) for a in AQ_ATTRIBUTIONS})
    res = AqResult(config={"dataset": prepared.meta["params"], "model": cfg.model.saved(), "train": cfg.train.saved(),
                           "models": cfg.saved()["models"]},
                   workdir=str(wd.root), attributions=list(AQ_ATTRIBUTIONS), models=models, kinds=kinds,
                   recipe=name, reference=reference)
    if reference:
        log(f"[replicate] {name} (the reference notebook's recipe): AQ experiment wall time "
            f"{time.perf_counter() - t0:.1f}s")
    return res


def aq_over_seeds(members: list[AqModel], per_image: list[np.ndarray], a: str) -> AqOverSeeds:
    """Attribution a's AQ over one kind's models, with `per_image` their per-test-point top - bottom hits."""
    v = np.array([m.aq[a]["aq"] for m in members])
    # AQ has DiffROAR's structure (a score in [-1, 1] per test point and model): the same interval,
    # over the kind's models (seeds) and the test points
    iv = differences_interval(np.stack(per_image))
    return AqOverSeeds(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                       se=max(m.aq[a]["aq_se"] for m in members),
                       top_hit=float(np.mean([m.aq[a]["top_hit"] for m in members])),
                       bottom_hit=float(np.mean([m.aq[a]["bottom_hit"] for m in members])),
                       ci=[iv.lo, iv.hi], interval=iv.method)
