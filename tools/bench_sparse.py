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


def rows(quick: bool) -> list[Row]:
    from fastroar.training.batched import sparse_available

    if not sparse_available("cpu"):
        print("[bench] bench_sparse: fastroar._C is not built: no sparse rows", file=sys.stderr)
        return []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return (_case("blockdigits-shaped", (1, 16, 8), 1500 if quick else 6000, 2 if quick else 3, 1 if quick else 2)
                + _case("blockmnist-shaped", (1, 56, 28), 1000 if quick else 6000, 1 if quick else 2,
                        1 if quick else 2)
                + _case("blockmnist-shaped", (1, 56, 28), 1000 if quick else 6000, 1 if quick else 2,
                        1 if quick else 2, random_ranks=True))
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    from bench import print_table

    print_table(rows("--quick" in sys.argv))
