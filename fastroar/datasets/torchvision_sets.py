"""The paper's image datasets (MNIST, Fashion-MNIST, CIFAR-10, SVHN) read from --data-root in torchvision's
layout, by the readers of :mod:`fastroar.datasets.native` (torchvision's MD5s of the official files as reference).

``--download`` fetches missing files with torchvision's helpers (users with internet; never in tests).
``verify_checksums=False`` accepts faithful copies whose bytes are not the official ones. Images are returned
as uint8 (N, C, H, W) with int64 labels, torchvision's own train/test splits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from fastroar.datasets.base import Dataset, Split
from fastroar.datasets.native import read_dataset


def load_split(name: str, root: str | None, download: bool, train: bool,
               verify_checksums: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, C, H, W), labels int64) of torchvision's train or test split."""
    return read_dataset(name, root, download, verify_checksums)["train" if train else "test"]


def builder(name: str) -> Callable[..., Dataset]:
    def build(root: str | None = None, download: bool = False, seed: int = 0,
              verify_checksums: bool = True) -> Dataset:
        splits = read_dataset(name, root, download, verify_checksums)
        train, test = Split(*splits["train"]), Split(*splits["test"])
        return Dataset(name=name, train=train, test=test, num_classes=10,
                       params={"root": str(Path(root).resolve()) if root else None, "seed": seed})

    return build


def build_blockmnist(root: str | None = None, download: bool = False, seed: int = 0,
                     signal_position: str = "random", verify_checksums: bool = True) -> Dataset:
    """BlockMNIST (1 x 56 x 28): MNIST digit block and null block, signal on top or bottom at random."""
    from fastroar.datasets.blockdigits import stack_blocks

    rng = np.random.default_rng(seed)
    asked = "blockmnist-top" if signal_position == "top" else "blockmnist"
    mnist = read_dataset("mnist", root, download, verify_checksums, asked=asked)
    splits = []
    for split in ("train", "test"):
        images, labels = mnist[split]
        stacked, signal = stack_blocks(images[:, 0], signal_position, rng)
        splits.append(Split(stacked, labels, signal))
    return Dataset(name="blockmnist", train=splits[0], test=splits[1], num_classes=10,
                   params={"root": str(Path(root).resolve()) if root else None, "seed": seed,
                           "signal_position": signal_position})
