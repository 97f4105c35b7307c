"""train.collapse_duplicates against the full batch: ms per training step of configs/leakage-reference.yaml's
models (mlp1 width 25,000 on the leakage data x = y*e_j, d = 10, batch 250: at most 2d = 20 distinct rows per
batch), standard and 8-step l-inf PGD (eps 0.45, step 0.25 eps, no random start), one torch thread (as the
train stage runs each model), without then with collapse_duplicates.

    python tools/bench_collapse.py [STEPS]     (default 40 steps per row)
"""
from __future__ import annotations

import sys
import time

import torch

from fastroar.datasets.leakage import build
from fastroar.models import build_seeded
from fastroar.training.loop import train_model
from fastroar.training.settings import Adversary, Recipe


def main(steps: int = 40) -> None:
    torch.set_num_threads(1)
    ds = build(seed=0, d=10, n_train=250 * steps, n_test=2, signal_blocks="all", clip=True)
    x, y = torch.from_numpy(ds.train.images), torch.from_numpy(ds.train.labels)
    batches = [(x[i:i + 250], y[i:i + 250]) for i in range(0, len(y), 250)]
    for collapse in (False, True):
        for adv in (None, Adversary("linf", 0.45, 8, 0.25 * 0.45, False)):
            model = build_seeded(0, "mlp1", (1, 10, 1), 2, width=25_000)
            recipe = Recipe(epochs=1, batch_size=250, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="step",
                            collapse_duplicates=collapse)
            t = time.perf_counter()
            train_model(model, batches, recipe, adversary=adv, bounds=ds.bounds, progress=False)
            ms = (time.perf_counter() - t) / steps * 1000
            print(f"{'collapsed' if collapse else 'full batch':10s} {'robust' if adv else 'standard':8s} "
                  f"{ms:7.1f} ms/step ({steps} steps)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40)
