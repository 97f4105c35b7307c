"""What a dataset hands to the pipeline: seeded train/test splits plus where each sample's signal lies."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Split:
    """One split. images: (N, C, H, W) uint8 (pixels) or float32 (synthetic features); labels: (N,) int64.

    signal: (N, C*H*W) bool, True on the coordinates of the sample's signal block, or None when the
    dataset has no known signal location (real images).
    """

    images: np.ndarray
    labels: np.ndarray
    signal: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise ValueError("images and labels differ in length")
        if self.signal is not None and self.signal.shape != (len(self.images), int(np.prod(self.images.shape[1:]))):
            raise ValueError(f"signal must be (N, d), got {self.signal.shape}")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    """A prepared dataset: both splits, the class count and the parameters that define it (for keys)."""

    name: str
    train: Split
    test: Split
    num_classes: int
    params: dict[str, Any] = field(default_factory=dict)
    # Value range of model inputs after scaling: PGD clamps to it; None means unbounded features.
    bounds: tuple[float, float] | None = (0.0, 1.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle of range(n) cut into (train, test) index arrays, each sorted."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])

