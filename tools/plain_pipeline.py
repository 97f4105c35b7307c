#!/usr/bin/env python
"""The default study of `fastroar run` (blockdigits) written as a plain PyTorch script: the baseline of
`python tools/bench.py --only bench_e2e`.

Same data (blockdigits rebuilt with fastroar.datasets, same seed and split), same MLP (build_model),
same recipes (base: 30 epochs, batch 64, SGD lr 0.05 Nesterov momentum 0.9, weight decay 5e-4, cosine
per step; retrain: the same with 15 epochs), same PGD budget for the robust model (l2, eps 1, 5 steps,
step 2.5 eps / steps, random start, clipped to the data bounds), same attributions (|d logit_yhat / dx|
and seeded random scores), same 80 retrainings (2 models x 2 attributions x 5 levels x top/bottom x 2
seeds), each evaluated on its masked test split. Written the way one would by hand: a Dataset that
masks in __getitem__, a DataLoader, torch.optim.SGD with a LambdaLR schedule, one model at a time.

    python tools/plain_pipeline.py          # prints the DiffROAR table and the wall time
"""
from __future__ import annotations

import math
import sys
import time

T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from fastroar.datasets import build_dataset  # noqa: E402
from fastroar.models import build_model  # noqa: E402

LEVELS = (0.05, 0.1, 0.2, 0.3, 0.5)
BATCH, LR, MOMENTUM, WD = 64, 0.05, 0.9, 5e-4
BASE_EPOCHS, RETRAIN_EPOCHS, SEEDS = 30, 15, 2
PGD = dict(eps=1.0, steps=5)


class MaskedDigits(Dataset):
    """Images as x/255, coordinates outside the kept rank range set to 0, in __getitem__."""

    def __init__(self, images, labels, ranks=None, lo=0, hi=0):
        self.x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        self.y = torch.from_numpy(labels.astype(np.int64))
        self.ranks = None if ranks is None else torch.from_numpy(ranks.astype(np.int64))
        self.lo, self.hi = lo, hi

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.ranks is not None:
            r = self.ranks[i]
            x = torch.where((r >= self.lo) & (r < self.hi), x, torch.zeros_like(x))
        return x, self.y[i]


def pgd_l2(model, x, y, eps, steps, bounds):
    alpha = 2.5 * eps / steps
    model.eval()
    delta = torch.randn_like(x) * eps
    delta = delta * (eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    delta = (x + delta).clamp(*bounds) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
        with torch.no_grad():
            delta = delta + alpha * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            delta = delta * (eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
            delta = (x + delta).clamp(*bounds) - x
    model.train()
    return (x + delta).detach()


def train(model, dataset, epochs, seed, adversarial=False, bounds=(0.0, 1.0)):
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD, nesterov=True)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            if adversarial:
                x = pgd_l2(model, x, y, PGD["eps"], PGD["steps"], bounds)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model, dataset):
    correct = 0
    for x, y in DataLoader(dataset, batch_size=512):
        correct += int((model(x).argmax(1) == y).sum())
    return correct / len(dataset)


def ranks_of(scores):
    """Rank 0 = highest score (stable)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), axis=1)
    return ranks


def gradient_scores(model, x):
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), x)
    return grad.abs().numpy()


def main() -> int:
    ds = build_dataset("blockdigits", seed=0, test_fraction=0.2)
    shape, classes, d = tuple(ds.shape), ds.num_classes, int(np.prod(ds.shape))
    bounds = tuple(float(b) for b in (ds.bounds or (0.0, 1.0)))
    train_set, test_set = MaskedDigits(ds.train.images, ds.train.labels), MaskedDigits(ds.test.images, ds.test.labels)
    t0 = time.perf_counter()
    models = {}
    for name, adversarial in (("standard", False), ("robust", True)):
        torch.manual_seed(0)
        models[name] = train(build_model("mlp2", shape, classes, width=256), train_set, BASE_EPOCHS, 0,
                             adversarial, bounds)
        print(f"[plain] {name}: test acc {accuracy(models[name], test_set):.3f}", file=sys.stderr)
    t_base = time.perf_counter() - t0
    rows = []
    for name, model in models.items():
        for attribution in ("gradient", "random"):
            ranks = {}
            for split, data in (("train", train_set), ("test", test_set)):
                scores = (gradient_scores(model, data.x) if attribution == "gradient"
                          else np.random.default_rng(0).random((len(data), d)))
                ranks[split] = ranks_of(scores)
            for k in LEVELS:
                n = int(math.floor(k * d + 0.5))
                for direction in ("top", "bottom"):
                    lo, hi = (0, n) if direction == "top" else (d - n, d)
                    tr = MaskedDigits(ds.train.images, ds.train.labels, ranks["train"], lo, hi)
                    te = MaskedDigits(ds.test.images, ds.test.labels, ranks["test"], lo, hi)
                    for seed in range(SEEDS):
                        torch.manual_seed(seed)
                        m = train(build_model("mlp2", shape, classes, width=256), tr, RETRAIN_EPOCHS, seed)
                        rows.append((name, attribution, k, direction, seed, accuracy(m, te)))
    t_retrain = time.perf_counter() - t0 - t_base
    for name in models:
        for attribution in ("gradient", "random"):
            for k in LEVELS:
                acc = {dr: np.mean([r[5] for r in rows if r[:4] == (name, attribution, k, dr)])
                       for dr in ("top", "bottom")}
                print(f"{name:>8} {attribution:>8} {k:.2f} top {acc['top']:.3f} bottom {acc['bottom']:.3f} "
                      f"diffroar {acc['top'] - acc['bottom']:+.3f}")
    wall = time.perf_counter() - T_START
    print(f"[plain] {len(rows)} retrainings; base {t_base:.1f}s, retrain {t_retrain:.1f}s, wall {wall:.1f}s "
          f"(imports included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
