#!/usr/bin/env python
"""A fastroar study written as a plain PyTorch script: the baseline of `python tools/bench.py --only e2e`
(the default config, blockdigits) and of `--only realdata` (configs/blockmnist-cpu.yaml on real MNIST).

It reads the same YAML config as `fastroar run` (with plain yaml, not fastroar's config layer) and does the
same study by hand: same data (fastroar.datasets, same seed and split), same models (build_model), same
recipe (SGD with Nesterov momentum, weight decay, linear warm-up then cosine per step; retrain: the train
section with the retrain section's overrides), same PGD budget for the robust models (step 2.5 eps / steps
unless the config sets step_size, random start unless turned off, clipped to the data bounds), same
attributions (|d logit_yhat / dx| and seeded random scores), the same retrainings (models x attributions x
levels x directions x seeds), each evaluated on its masked test split. Written the way one would by hand: a
Dataset that masks in __getitem__, a DataLoader, torch.optim.SGD with a LambdaLR schedule, one model at a
time, every attribution's retrainings for every model (fastroar runs a model-independent attribution's once).

    python tools/plain_pipeline.py                                   # the default config (blockdigits)
    python tools/plain_pipeline.py --config configs/blockmnist-cpu.yaml --data-root ROOT [--set KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import yaml  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from fastroar.datasets import build_dataset  # noqa: E402
from fastroar.models import build_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "blockdigits.yaml")
# the schema's defaults for keys a config may leave out (fastroar/config/schema.py)
RECIPE_DEFAULTS = {"epochs": 10, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                   "warmup_epochs": 0.0, "label_smoothing": 0.0}
RECIPE_KEYS = tuple(RECIPE_DEFAULTS)


class MaskedImages(Dataset):
    """Images as x/255, coordinates outside the kept rank range set to 0, in __getitem__."""

    def __init__(self, images, labels, ranks=None, lo=0, hi=0):
        self.shape = images.shape[1:]
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
        return x.view(self.shape), self.y[i]


def project(delta, norm, eps):
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (delta.dim() - 1)))
    return delta * (eps / flat).clamp(max=1.0)


def pgd(model, x, y, adv, bounds):
    eps, steps = float(adv["eps"]), int(adv.get("steps", 7))
    alpha = float(adv.get("step_size") or 2.5 * eps / steps)
    model.eval()
    delta = torch.zeros_like(x)
    if adv.get("random_start", True):
        delta = project(torch.randn_like(x) * eps if adv["norm"] == "l2" else (torch.rand_like(x) * 2 - 1) * eps,
                        adv["norm"], eps)
    delta = (x + delta).clamp(*bounds) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta), y), delta)
        with torch.no_grad():
            if adv["norm"] == "linf":
                step = grad.sign()
            else:
                step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
            delta = project(delta + alpha * step, adv["norm"], eps)
            delta = (x + delta).clamp(*bounds) - x
    model.train()
    return (x + delta).detach()


def train(model, dataset, recipe, seed, adversary=None, bounds=(0.0, 1.0)):
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=recipe["batch_size"], shuffle=True, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=recipe["lr"], momentum=recipe["momentum"],
                          weight_decay=recipe["weight_decay"], nesterov=recipe["momentum"] > 0)
    total, warmup = recipe["epochs"] * len(loader), int(recipe["warmup_epochs"] * len(loader))

    def factor(s):
        if warmup and s < warmup:
            return (s + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, total - warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    for _ in range(recipe["epochs"]):
        for x, y in loader:
            if adversary:
                x = pgd(model, x, y, adversary, bounds)
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe["label_smoothing"])
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


def gradient_scores(model, dataset):
    out = []
    for x, _ in DataLoader(dataset, batch_size=512):
        x = x.clone().requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), x)
        out.append(grad.abs().flatten(1).numpy())
    return np.concatenate(out)


def load_study(path, data_root, overrides):
    """The config's YAML with KEY=VALUE overrides (values parsed as YAML), refusing what this script does not do."""
    with open(path) as f:
        cfg = yaml.safe_load(f)
    for item in overrides:
        key, _, value = item.partition("=")
        *sections, last = key.split(".")
        target = cfg
        for part in sections:
            target = target.setdefault(part, {})
        target[last] = yaml.safe_load(value)
    if data_root:
        cfg["dataset"].setdefault("params", {})["root"] = data_root
    retrain = cfg.get("retrain", {})
    if retrain.get("recipe", "paper") != "paper" or cfg.get("train", {}).get("name", "paper") != "paper":
        sys.exit("plain_pipeline: only the paper recipe (cosine schedule) is written out here")
    if set(cfg.get("attributions", [])) - {"gradient", "random"}:
        sys.exit("plain_pipeline: only the gradient and random attributions are written out here")
    if retrain.get("fill", "zero") != "zero" or retrain.get("seeds", 5) == "auto":
        sys.exit("plain_pipeline: only fill zero and a fixed number of seeds are written out here")
    return cfg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    cfg = load_study(args.config, args.data_root, args.overrides)
    base = {**RECIPE_DEFAULTS, **{k: v for k, v in cfg.get("train", {}).items() if k in RECIPE_KEYS}}
    retrain_cfg = cfg.get("retrain", {})
    again = {**base, **{k: v for k, v in retrain_cfg.items() if k in RECIPE_KEYS}}
    seeds, directions = int(retrain_cfg.get("seeds", 5)), retrain_cfg.get("directions", ["top", "bottom"])
    ds = build_dataset(cfg["dataset"]["name"], **cfg["dataset"].get("params", {}))
    shape, classes, d = tuple(ds.shape), ds.num_classes, int(np.prod(ds.shape))
    bounds = tuple(float(b) for b in (ds.bounds or (0.0, 1.0)))
    arch, params = cfg["model"]["arch"], cfg["model"].get("params", {})
    train_set, test_set = MaskedImages(ds.train.images, ds.train.labels), MaskedImages(ds.test.images, ds.test.labels)
    t0 = time.perf_counter()
    models = {}
    for spec in cfg["models"]:
        seed = int(spec.get("seed", 0))
        torch.manual_seed(seed)
        models[spec["name"]] = train(build_model(arch, shape, classes, **params), train_set, base, seed,
                                     spec.get("adversary"), bounds)
        print(f"[plain] {spec['name']}: test acc {accuracy(models[spec['name']], test_set):.3f}", file=sys.stderr)
    t_base = time.perf_counter() - t0
    rows = []
    for name, model in models.items():
        for attribution in cfg["attributions"]:
            ranks = {}
            for split, data in (("train", train_set), ("test", test_set)):
                scores = (gradient_scores(model, data) if attribution == "gradient"
                          else np.random.default_rng(0).random((len(data), d)))
                ranks[split] = ranks_of(scores)
            for k in cfg["levels"]:
                n = int(math.floor(k * d + 0.5))
                for direction in directions:
                    lo, hi = (0, n) if direction == "top" else (d - n, d)
                    tr = MaskedImages(ds.train.images, ds.train.labels, ranks["train"], lo, hi)
                    te = MaskedImages(ds.test.images, ds.test.labels, ranks["test"], lo, hi)
                    for seed in range(seeds):
                        torch.manual_seed(seed)
                        m = train(build_model(arch, shape, classes, **params), tr, again, seed)
                        rows.append((name, attribution, k, direction, seed, accuracy(m, te)))
                        print(f"[plain] retrained {len(rows)}: {name} {attribution} k={k} {direction} seed {seed}",
                              file=sys.stderr, flush=True)
    t_retrain = time.perf_counter() - t0 - t_base
    for name in models:
        for attribution in cfg["attributions"]:
            for k in cfg["levels"]:
                acc = {dr: np.mean([r[5] for r in rows if r[:4] == (name, attribution, k, dr)]) for dr in directions}
                if len(acc) == 2:
                    print(f"{name:>8} {attribution:>8} {k:.2f} top {acc['top']:.3f} bottom {acc['bottom']:.3f} "
                          f"diffroar {acc['top'] - acc['bottom']:+.3f}")
    wall = time.perf_counter() - T_START
    print(f"[plain] {len(rows)} retrainings; base {t_base:.1f}s, retrain {t_retrain:.1f}s, wall {wall:.1f}s "
          f"(imports included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
