"""train.collapse_duplicates against the full batch: ms per training step of configs/leakage-reference.yaml's
models (mlp1 width 25,000 on the leakage data x = y*e_j, d = 10, batch 250: at most 2d = 20 distinct rows per
batch), standard and 8-step l-inf PGD (eps 0.45, step 0.25 eps, no random start), one torch thread (as the
train stage runs each model), the full batch (baseline) then collapse_duplicates, in the same run.

    python tools/bench.py --only collapse [--quick]     (40 steps per row; --quick 10)
    python tools/bench_collapse.py [STEPS]
"""
from __future__ import annotations

import sys
import time

import torch
from bench import Row, print_table

from fastroar.datasets.leakage import build
from fastroar.models import build_seeded
from fastroar.training.loop import train_model
from fastroar.training.settings import Adversary, Recipe

PGD = Adversary(norm="linf", eps=0.45, steps=8, step_size=0.25 * 0.45, random_start=False)


def ms_per_step(steps: int, adversary: Adversary | None, collapse: bool) -> float:
    ds = build(seed=0, d=10, n_train=250 * steps, n_test=2, signal_blocks="all", clip=True)
    x, y = torch.from_numpy(ds.train.images), torch.from_numpy(ds.train.labels)
    batches = [(x[i:i + 250], y[i:i + 250]) for i in range(0, len(y), 250)]
    model = build_seeded(0, "mlp1", (1, 10, 1), 2, width=25_000)
    recipe = Recipe(epochs=1, batch_size=250, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="step",
                    collapse_duplicates=collapse)
    t = time.perf_counter()
    train_model(model, batches, recipe, adversary=adversary, bounds=ds.bounds, progress=False)
    return (time.perf_counter() - t) / steps * 1000


def rows(quick: bool, steps: int | None = None) -> list[Row]:
    steps = steps or (10 if quick else 40)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = []
        for kind, adversary in (("standard", None), ("robust (8-step PGD)", PGD)):
            section = f"leakage-reference step, {kind}"
            full, collapsed = ms_per_step(steps, adversary, False), ms_per_step(steps, adversary, True)
            out.append(Row(section, "full batch", full, "ms/step", "full batch", 1.0, f"{steps} steps, 1 thread"))
            out.append(Row(section, "collapse_duplicates", collapsed, "ms/step", "full batch", full / collapsed,
                           "ratio = full / collapsed time"))
        return out
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print_table(rows(False, int(sys.argv[1]) if len(sys.argv) > 1 else None))
