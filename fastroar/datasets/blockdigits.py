"""blockdigits: BlockMNIST's construction on the 8x8 handwritten digits shipped inside scikit-learn.

Each image stacks two 8x8 blocks vertically (1 x 16 x 8): a signal block holding the digit and a null
block holding the same fixed pattern in every image. The signal block is placed on top or at the bottom
at random (or always on top with ``signal_position="top"``, as in BlockMNIST-Top). The null block is
label-independent, so a classifier needs only the signal block: an attribution that highlights
discriminative pixels should rank the signal block first.
"""
from __future__ import annotations

import numpy as np

from fastroar.datasets.base import Dataset, Split, split_indices

BLOCK = 8


def null_pattern() -> np.ndarray:
    """The null block: a fixed 8x8 uint8 square outline, as bright as the digits' strokes."""
    p = np.zeros((BLOCK, BLOCK), np.uint8)
    p[1, 1:7] = p[6, 1:7] = p[1:7, 1] = p[1:7, 6] = 255
    return p


def load_digit_blocks() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as (N, 8, 8) uint8 in 0..255 and (N,) int64 labels."""
    from sklearn.datasets import load_digits  # shipped with scikit-learn: no download

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def build(seed: int = 0, test_fraction: float = 0.2, signal_position: str = "random") -> Dataset:
    """The blockdigits dataset; signal_position is "random" (BlockMNIST) or "top" (BlockMNIST-Top)."""
    if signal_position not in ("random", "top"):
        raise ValueError(f"signal_position must be 'random' or 'top', got {signal_position!r}")
    digits, labels = load_digit_blocks()
    n = len(labels)
    rng = np.random.default_rng(seed)
    on_top = np.ones(n, bool) if signal_position == "top" else rng.random(n) < 0.5
    null = null_pattern()
    images = np.empty((n, 1, 2 * BLOCK, BLOCK), np.uint8)
    images[on_top, 0, :BLOCK] = digits[on_top]
    images[on_top, 0, BLOCK:] = null
    images[~on_top, 0, :BLOCK] = null
    images[~on_top, 0, BLOCK:] = digits[~on_top]
    signal = np.zeros((n, 1, 2 * BLOCK, BLOCK), bool)
    signal[on_top, 0, :BLOCK] = True
    signal[~on_top, 0, BLOCK:] = True
    signal = signal.reshape(n, -1)
    train, test = split_indices(n, test_fraction, seed)
    params = {"seed": seed, "test_fraction": test_fraction, "signal_position": signal_position}
    return Dataset(
        name="blockdigits",
        train=Split(images[train], labels[train], signal[train]),
        test=Split(images[test], labels[test], signal[test]),
        num_classes=10,
        params=params,
    )
