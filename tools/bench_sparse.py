"""The sparse first layer (retrain.sparse_input, csrc/sparse_input.cpp) against the dense one: the same M = 10
jobs of a sweep (5 levels x top/bottom) trained as one stacked MLP retrain, dense then sparse, on the CPU with
one torch thread (as the retrain stage runs each task), interleaved, best of each.

Shapes: blockdigits' (1 x 16 x 8, mlp2 width 256: the default study) and BlockMNIST's (1 x 56 x 28 = 1568
inputs, mlp2 width 256: the real-data study of issue 27), on generated data of those shapes (real data are
not read): MNIST-like images, about a quarter of the pixels lit, ranks from the lit pixels plus noise, so
top-k keeps mostly lit pixels and bottom-k mostly black ones, as gradient ranks do; at the BlockMNIST shape
also random ranks (the random attribution's), whose kept pixels are lit as often as any.

GFLOP/s of the training steps (evaluation excluded) are counted two ways: dense-equivalent (the dense
model's multiply-adds x 2, what the dense retrain performs) and performed (the sparse first layer's products
counted over the kept, non-black coordinates it actually multiplies). The sparse row's ratio is its time
against the dense row's, measured in the same run; its context gives the largest test-accuracy difference
between the two (float rounding: the sums run in another order).

The mask-only probe (fastroar.metrics.mask_probe) at the BlockMNIST shape, on the same generated data's
keep-masks (10,000 train and 10,000 test images, 5 levels x top/bottom; quick: 2,000 / 1,000 at two cells):
version 1 (scikit-learn's LogisticRegression on the dense float64 masks, L-BFGS, C = 1, max_iter 1000) against
the current probe, cell by cell interleaved, one BLAS thread. Both minimize one objective and stop at the same
gradient tolerance (1e-4), at different points near its minimum: the context gives each one's largest
test-accuracy difference from the minimizer itself (the current fit run to gtol 1e-7, untimed).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Row  # noqa: E402

LEVELS = [0.05, 0.1, 0.2, 0.3, 0.5]
CLASSES = 10


def _data(n: int, shape: tuple[int, ...], seed: int, random_ranks: bool = False):
    """(images uint8, labels, ranks): lit pixels carry the label (class c lights columns c, c + 10, ...
    more often), ranks by brightness plus noise (ties among black pixels broken by the noise), or at random
    (the random attribution's: kept pixels lit as often as any)."""
    from fastroar.engine.kernels.reference import rank_reference

    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    y = rng.integers(0, CLASSES, n)
    p = np.full((n, d), 0.2, np.float32)
    for c in range(CLASSES):
        p[y == c, c::CLASSES] = 0.45
    lit = rng.random((n, d), dtype=np.float32) < p
    x = np.where(lit, rng.integers(64, 256, (n, d)), 0).astype(np.uint8)
    scores = x.astype(np.float32) * (0 if random_ranks else 1) + rng.random((n, d), dtype=np.float32) * 96
    return x.reshape(n, *shape), y.astype(np.int64), rank_reference(scores)


def _flops(train, specs, width: int, epochs: int) -> tuple[float, float]:
    """(dense-equivalent, performed) FLOPs of the training steps of every model of the stack (mlp2: layers
    d -> w -> w -> classes; forward and weight gradients of every layer, input gradients of all but the
    first: 2 x (2 d w + 3 w^2 + 3 w c) per image dense; the first layer's d counts the kept non-black
    coordinates when performed)."""
    from fastroar.method import keep_range

    images, _, ranks = train
    n, d = len(images), ranks.shape[1]
    lit = images.reshape(n, d) != 0
    rest = 3 * width * width + 3 * width * CLASSES
    dense = performed = 0.0
    for s in specs:
        lo, hi = keep_range(s.k, s.direction, d)
        nnz = ((ranks >= lo) & (ranks < hi) & lit).sum()          # over the split, i.e. one epoch
        dense += 2.0 * epochs * n * (2 * d * width + rest)
        performed += 2.0 * epochs * (2 * nnz * width + n * rest)
    return dense, performed


def _case(name: str, shape: tuple[int, ...], n: int, epochs: int, repeats: int, random_ranks: bool = False
          ) -> list[Row]:
    from fastroar.training.batched import Spec, train_stacked
    from fastroar.training.settings import Recipe

    width = 256
    train, test = _data(n, shape, 0, random_ranks), _data(max(500, n // 6), shape, 1, random_ranks)
    specs = [Spec(k, dr, i) for i, (k, dr) in enumerate((k, dr) for k in LEVELS for dr in ("top", "bottom"))]
    recipe = Recipe(epochs=epochs, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4)
    args = ("mlp2", {"width": width}, shape, CLASSES, train, test, specs, recipe)
    best = {False: float("inf"), True: float("inf")}
    acc = {}
    for _ in range(repeats):   # interleaved, best of each: the machine's load comes and goes
        for sparse in (False, True):
            timings: dict[str, float] = {}
            out = train_stacked(*args, timings=timings, sparse_input=sparse)
            best[sparse] = min(best[sparse], timings["train"])
            acc[sparse] = [r["accuracy"] for r in out]
    dense_flops, performed = _flops(train, specs, width, epochs)
    images = len(specs) * epochs * n
    diff = max(abs(a - b) for a, b in zip(acc[False], acc[True]))
    ranks = "random ranks" if random_ranks else "ranks by brightness"
    section = f"sparse input {len(specs)}x mlp2-{width} {name} d={int(np.prod(shape))}, {ranks}"
    t_d, t_s = best[False], best[True]
    ctx = f"{epochs} epochs x {n} img, batch 128, 1 thread"
    return [Row(section, "dense first layer", images / t_d, "img/s", "dense", 1.0,
                f"{t_d:.2f}s; {dense_flops / t_d / 1e9:.1f} GFLOP/s; {ctx}"),
            Row(section, "sparse first layer", images / t_s, "img/s", "dense", t_d / t_s,
                f"{t_s:.2f}s; {dense_flops / t_s / 1e9:.1f} GFLOP/s dense-equivalent, "
                f"{performed / t_s / 1e9:.1f} performed ({performed / dense_flops:.0%} of the dense work); "
                + ("accuracies equal" if diff == 0 else f"max |accuracy difference| {diff:.4f}"))]


def _probe_case(quick: bool) -> list[Row]:
    import time
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    from fastroar.metrics.mask_probe import PROBE, keep_mask, probe_accuracy

    shape = (1, 56, 28)
    (_, ytr, rtr), (_, yte, rte) = (_data(n, shape, seed) for n, seed in ((2000 if quick else 10_000, 0),
                                                                           (1000 if quick else 10_000, 1)))
    cells = [(0.05, "top"), (0.5, "bottom")] if quick else [(k, dr) for k in LEVELS for dr in ("top", "bottom")]
    t_old = t_new = 0.0
    off = {"v1": 0.0, "v2": 0.0}   # largest |accuracy - the minimizer's accuracy|
    for k, direction in cells:
        xtr, xte = keep_mask(rtr, k, direction), keep_mask(rte, k, direction)
        t0 = time.perf_counter()
        with warnings.catch_warnings(), threadpool_limits(1):   # version 1, as it ran
            warnings.simplefilter("ignore", ConvergenceWarning)
            old = LogisticRegression(C=1.0, max_iter=1000).fit(xtr.astype(np.float64), ytr)
            acc_old = float(np.mean(old.predict(xte.astype(np.float64)) == yte))
        t1 = time.perf_counter()
        acc_new = probe_accuracy(xtr, ytr, xte, yte)
        t_old, t_new = t_old + t1 - t0, t_new + time.perf_counter() - t1
        minimum = probe_accuracy(xtr, ytr, xte, yte, tol=1e-7, max_iter=50 * PROBE["max_iter"])
        off = {"v1": max(off["v1"], abs(acc_old - minimum)), "v2": max(off["v2"], abs(acc_new - minimum))}
    section = f"mask probe blockmnist-shaped d={int(np.prod(shape))}, {len(cells)} cells, {len(ytr)} train img"
    return [Row(section, "v1: sklearn on dense masks", len(cells) / t_old, "cells/s", "v1", 1.0,
                f"{t_old:.1f}s, {t_old / len(cells):.2f}s a cell; accuracy within {off['v1']:.4f} of the minimizer's"),
            Row(section, "v2: centred L-BFGS, CSR", len(cells) / t_new, "cells/s", "v1", t_old / t_new,
                f"{t_new:.1f}s, {t_new / len(cells):.2f}s a cell; accuracy within {off['v2']:.4f} of the minimizer's")]


def rows(quick: bool) -> list[Row]:
    from fastroar.training.batched import sparse_available

    probe = _probe_case(quick)
    if not sparse_available("cpu"):
        print("[bench] bench_sparse: fastroar._C is not built: no sparse rows", file=sys.stderr)
        return probe
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return (_case("blockdigits-shaped", (1, 16, 8), 1500 if quick else 6000, 2 if quick else 3, 1 if quick else 2)
                + _case("blockmnist-shaped", (1, 56, 28), 1000 if quick else 6000, 1 if quick else 2,
                        1 if quick else 2)
                + _case("blockmnist-shaped", (1, 56, 28), 1000 if quick else 6000, 1 if quick else 2,
                        1 if quick else 2, random_ranks=True) + probe)
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    from bench import print_table

    print_table(rows("--quick" in sys.argv))
