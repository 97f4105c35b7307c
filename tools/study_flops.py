"""The matrix-product FLOPs a fastroar study needs, counted from its config: the numerator of the benchmarks'
compute-limit estimate (study FLOPs / this machine's torch.mm speed).

Per-sample costs are counted by torch.utils.flop_counter on the config's own model (any architecture: the
counter sees every mm/conv that runs), for three kinds of pass:

- a training step: forward + backward with parameter gradients (no input gradient: inputs need none);
- a PGD step or an attribution: forward + the input gradient (parameters frozen);
- an evaluation: forward.

The study: each base model's epochs x train images x (training step + PGD steps), its test evaluation; the
gradient attribution of train and test images per model; and every DISTINCT retraining (a model-independent
attribution such as `random` retrains once for all models, as `fastroar run` does) x epochs x train images
x training step, plus its test evaluation. Dense counts: the sparse first layer of the MLP retrain performs
fewer products (tools/bench_sparse.py counts both ways); elementwise work is not counted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from fastroar.models import build_model

MODEL_INDEPENDENT = ("random", "edge")
BATCH = 32


def _count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def per_sample_flops(arch: str, params: dict, shape: tuple[int, ...], classes: int) -> dict[str, float]:
    """FLOPs per sample of a training step, a PGD/attribution step and an evaluation of a fresh model."""
    torch.manual_seed(0)
    model = build_model(arch, tuple(shape), classes, **params)
    x, y = torch.rand(BATCH, *shape), torch.randint(0, classes, (BATCH,))

    def train_step():
        model.train()
        F.cross_entropy(model(x), y).backward()

    def input_gradient():   # parameters frozen, so backward computes the input gradient only
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        F.cross_entropy(model(x.clone().requires_grad_(True)), y).backward()
        for p in model.parameters():
            p.requires_grad_(True)

    def evaluate():
        model.eval()
        with torch.no_grad():
            model(x)

    return {"train": _count(train_step) / BATCH, "input_grad": _count(input_gradient) / BATCH,
            "eval": _count(evaluate) / BATCH}


def study_flops(cfg: dict, shape: tuple[int, ...], classes: int, n_train: int, n_test: int) -> dict[str, float]:
    """{"base", "attribution", "retrain", "total", "distinct_retrainings"} for a config as YAML gives it."""
    per = per_sample_flops(cfg["model"]["arch"], cfg["model"].get("params", {}), shape, classes)
    train, retrain_cfg = cfg.get("train", {}), cfg.get("retrain", {})
    base = 0.0
    for spec in cfg["models"]:
        steps = int((spec.get("adversary") or {}).get("steps", 7)) if spec.get("adversary") else 0
        base += train.get("epochs", 10) * n_train * (per["train"] + steps * per["input_grad"])
        base += n_test * per["eval"]
    attributions = cfg["attributions"]
    n_models = len(cfg["models"])
    dependent = [a for a in attributions if a.split(":")[0] not in MODEL_INDEPENDENT]
    attribution = n_models * len(dependent) * (n_train + n_test) * per["input_grad"]
    seeds = int(retrain_cfg.get("seeds", 5))
    cells = len(cfg["levels"]) * len(retrain_cfg.get("directions", ["top", "bottom"])) * seeds
    distinct = cells * (n_models * len(dependent) + (len(attributions) - len(dependent)))
    epochs = retrain_cfg.get("epochs", train.get("epochs", 10))
    retrain = distinct * (epochs * n_train * per["train"] + n_test * per["eval"])
    return {"base": base, "attribution": attribution, "retrain": retrain, "total": base + attribution + retrain,
            "distinct_retrainings": float(distinct)}
