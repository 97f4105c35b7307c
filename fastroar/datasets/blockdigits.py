"""BlockMNIST's construction (Shah et al. 2021, Sec. 5), and ``blockdigits``: the same on the 8x8
handwritten digits shipped inside scikit-learn (no download).

Each image stacks two square blocks vertically (1 x 2s x s): a signal block holding the digit and a null
block holding the same fixed pattern in every image. The signal block is placed on top or at the bottom
at random (or always on top with ``signal_position="top"``, as in BlockMNIST-Top). The null block is
label-independent, so a classifier needs only the signal block: an attribution that highlights
discriminative pixels should rank the signal block first.
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from fastroar.datasets.base import Dataset, Split, split_indices

BLOCK = 8


def null_pattern(size: int = BLOCK) -> np.ndarray:
    """The null block: a fixed size x size uint8 square outline (1/8 of the side in from the border,
    strokes 1/8 of the side thick), as bright as the digits' strokes."""
    p = np.zeros((size, size), np.uint8)
    m = max(1, size // 8)
    p[m:size - m, m:size - m] = 255
    p[2 * m:size - 2 * m, 2 * m:size - 2 * m] = 0
    return p


def load_digit_blocks() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as (N, 8, 8) uint8 in 0..255 and (N,) int64 labels."""
    data = _digits_table()
    images = np.round(data[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)
    return images, data[:, -1].astype(np.int64)


def _digits_table() -> np.ndarray:
    """The (1797, 65) table behind sklearn.datasets.load_digits (64 pixels in 0..16, then the label), read
    from the file scikit-learn ships (no download). Read directly: importing sklearn costs more than a
    second, a fifth of a small run's start-up. Falls back to load_digits if the file has moved."""
    spec = importlib.util.find_spec("sklearn")   # locates the package without importing it
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                return np.loadtxt(f, delimiter=",")
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.column_stack([digits.data, digits.target])


def stack_blocks(digits: np.ndarray, signal_position: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(N, s, s) uint8 digits -> ((N, 1, 2s, s) images, (N, 2s*s) bool signal masks)."""
    if signal_position not in ("random", "top"):
        raise ValueError(f"signal_position must be 'random' or 'top', got {signal_position!r}")
    n, s = len(digits), digits.shape[-1]
    on_top = np.ones(n, bool) if signal_position == "top" else rng.random(n) < 0.5
    null = null_pattern(s)
    images = np.empty((n, 1, 2 * s, s), np.uint8)
    images[on_top, 0, :s] = digits[on_top]
    images[on_top, 0, s:] = null
    images[~on_top, 0, :s] = null
    images[~on_top, 0, s:] = digits[~on_top]
    signal = np.zeros((n, 1, 2 * s, s), bool)
    signal[on_top, 0, :s] = True
    signal[~on_top, 0, s:] = True
    return images, signal.reshape(n, -1)


def build(seed: int = 0, test_fraction: float = 0.2, signal_position: str = "random") -> Dataset:
    """The blockdigits dataset; signal_position is "random" (BlockMNIST) or "top" (BlockMNIST-Top)."""
    digits, labels = load_digit_blocks()
    images, signal = stack_blocks(digits, signal_position, np.random.default_rng(seed))
    train, test = split_indices(len(labels), test_fraction, seed)
    params = {"seed": seed, "test_fraction": test_fraction, "signal_position": signal_position}
    return Dataset(
        name="blockdigits",
        train=Split(images[train], labels[train], signal[train]),
        test=Split(images[test], labels[test], signal[test]),
        num_classes=10,
        params=params,
    )
