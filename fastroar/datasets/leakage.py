"""leakage: the synthetic data of the paper's eq. (2) (Shah et al. 2021, Section 4).

x has d blocks of size d~ (block_dim). The label y is +-1 (stored as class 0 for -1 and 1 for +1).
One block j holds the signal y*u* + eta*g_j (u* a fixed unit vector, (1, ..., 1)/sqrt(d~)); every other
block holds eta*g_i, each g_i uniform in the d~-dimensional unit ball. Images are float32 (N, 1, d, d~):
row i is block i. The sample's signal block j is recorded.

signal_blocks says where j is drawn from: ``relevant`` (default, eq. (2)) draws it uniformly from the first
d/2 blocks, so the last d/2 are pure noise; ``all`` draws it uniformly from all d blocks (no noise blocks),
the data of the reference notebook's synthetic check (x = y*e_j for d~ = 1, eta = 0).

clip=True gives the data bounds (the train split's minimum and maximum value), so PGD keeps x + delta inside
them as the reference notebook's attack does (its bounds are the train data's range); default: unbounded.

The test split is label-balanced (floor(n/2) samples of one class, the rest of the other, in random order),
so its chance accuracy is 0.5 (n even); the train split draws labels i.i.d.
"""
from __future__ import annotations

import numpy as np

from fastroar.datasets.base import Dataset, Split

SIGNAL_BLOCKS = ("relevant", "all")


def uniform_ball(rng: np.random.Generator, shape: tuple[int, ...], dim: int) -> np.ndarray:
    """Points uniform in the unit ball of R^dim, array of shape (*shape, dim)."""
    g = rng.standard_normal((*shape, dim))
    g /= np.linalg.norm(g, axis=-1, keepdims=True)
    return g * rng.random((*shape, 1)) ** (1.0 / dim)


def sample(n: int, d: int, block_dim: int, eta: float, rng: np.random.Generator, *,
           signal_blocks: str = "relevant", balanced: bool = False) -> Split:
    """n samples of eq. (2); balanced=True gives floor(n/2) labels of class 0 and the rest class 1, shuffled."""
    if d < 2 or d % 2:
        raise ValueError(f"leakage needs an even number of blocks d >= 2, got d={d}")
    if block_dim < 1:
        raise ValueError(f"block_dim must be >= 1, got {block_dim}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if signal_blocks not in SIGNAL_BLOCKS:
        raise ValueError(f"signal_blocks must be one of {', '.join(SIGNAL_BLOCKS)}, got {signal_blocks!r}")
    y = rng.permutation(np.arange(n) >= n // 2).astype(np.int64) if balanced else rng.integers(0, 2, n)
    j = rng.integers(0, d // 2 if signal_blocks == "relevant" else d, n)
    u_star = np.full(block_dim, 1.0 / np.sqrt(block_dim))
    x = eta * uniform_ball(rng, (n, d), block_dim)          # eta*g_i in every block ...
    x[np.arange(n), j] += (2 * y - 1)[:, None] * u_star     # ... plus y*u* in the signal block
    signal = np.zeros((n, d, block_dim), bool)
    signal[np.arange(n), j] = True
    return Split(x[:, None].astype(np.float32), y.astype(np.int64), signal.reshape(n, -1))


def build(seed: int = 0, d: int = 10, block_dim: int = 1, eta: float = 0.0,
          n_train: int = 2000, n_test: int = 500, signal_blocks: str = "relevant", clip: bool = False) -> Dataset:
    """The leakage dataset with independent seeded train and test draws."""
    rng = np.random.default_rng(seed)
    params = {"seed": seed, "d": d, "block_dim": block_dim, "eta": eta, "n_train": n_train, "n_test": n_test}
    if signal_blocks != "relevant":  # the default stays out of params, as before the option existed
        params["signal_blocks"] = signal_blocks
    if clip:  # likewise
        params["clip"] = True
    train = sample(n_train, d, block_dim, eta, rng, signal_blocks=signal_blocks)
    return Dataset(
        name="leakage",
        train=train,
        test=sample(n_test, d, block_dim, eta, rng, signal_blocks=signal_blocks, balanced=True),
        num_classes=2,
        params=params,
        bounds=(float(train.images.min()), float(train.images.max())) if clip else None,
    )
