"""What the experiments of `fastroar replicate` measure on a trained model: signed gradients, the share of
|gradient| mass in a region, fastroar's ranks of scores, the model's status (accuracy, chance, warnings)
and the interval of a mean share; and where an experiment's sub-workdir goes."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats

from fastroar.attribution import attribute
from fastroar.config import Config
from fastroar.engine.kernels import rank
from fastroar.engine.workspace import Workdir
from fastroar.keys import digest
from fastroar.metrics.aq import majority_rate
from fastroar.stages.artifacts import model_warnings
from fastroar.stages.replicate.results import ModelStatus


def signed_gradient(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """d logit_yhat / dx (signed), yhat the predicted label, in eval mode; |.| of it is fastroar's
    `gradient` attribution."""
    return attribute(model, x, "gradient:signed").detach()


def signed_margin_gradient(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """d (z_yhat - max_{c != yhat} z_c) / dx (signed); |.| of it is `gradient:margin`."""
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        top2 = model(x).topk(2, dim=1).values
        (g,) = torch.autograd.grad((top2[:, 0] - top2[:, 1]).sum(), x)
    return g.detach()


SIGNED = {"gradient": signed_gradient, "gradient:margin": signed_margin_gradient}


def mass_shares(grad: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Per sample: sum of |grad| inside `region` / sum of |grad| (NaN where the gradient is all zero)."""
    a = np.abs(np.asarray(grad, np.float64)).reshape(len(grad), -1)
    total = a.sum(1)
    inside = (a * region.reshape(len(grad), -1)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)


def ranks_of(scores: np.ndarray) -> np.ndarray:
    """fastroar's ranks (0 = largest score, ties to the lower index) of (N, d) scores."""
    return np.asarray(rank(torch.from_numpy(np.ascontiguousarray(scores, np.float32))))


def model_status(cfg: Config, ckpt: dict[str, Any], labels: np.ndarray, x: torch.Tensor,
                 model: torch.nn.Module) -> ModelStatus:
    """Clean accuracy (recomputed), accuracy under attack (from training), chance and warnings of a model."""
    chance = majority_rate(labels)
    with torch.no_grad():
        acc = float((model(x).argmax(1).numpy() == labels).mean())
    ck = {**ckpt, "summary": {**ckpt["summary"], "test_acc": acc}}
    return ModelStatus(test_acc=acc, robust_test_acc=ckpt["summary"].get("robust_test_acc"), chance=chance,
                       warnings=model_warnings(cfg.train.min_test_acc, ck, chance, len(labels)))


def share_interval(shares: np.ndarray) -> list[float]:
    """95% t-interval of the mean of per-test-point shares (scipy's one-sample t; the points are independent
    draws of the test distribution); [nan, nan] for fewer than two points. A constant sample gives its value."""
    x = np.asarray(shares, dtype=float)
    if x.size < 2:
        return [math.nan, math.nan]
    if np.all(x == x[0]):
        return [float(x[0]), float(x[0])]
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(0.95)
    return [float(ci.low), float(ci.high)]


def sub_workdir(out_dir: Path, name: str, cfgs: Sequence[Config], quick: bool) -> Workdir:
    """<out>/<name>/<digest of the configs>: quick and full settings (or edited configs) never collide."""
    return Workdir(out_dir / name / f"{'quick-' if quick else ''}{digest([c.saved() for c in cfgs], 10)}", create=True)
