"""The paper's image datasets read through torchvision's dataset classes from --data-root.

``--download`` lets torchvision fetch them (users with internet; never in tests). Images are returned
as uint8 (N, C, H, W) with int64 labels, torchvision's own train/test splits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from fastroar.datasets.base import Dataset, Split
from fastroar.errors import ConfigError, MissingInputError

# name -> (torchvision class name, expected layout under --data-root, for error messages)
LAYOUTS = {
    "mnist": ("MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"),
    "svhn": ("SVHN", "{train,test}_32x32.mat"),
}


def _open(name: str, root: str | None, download: bool, train: bool):
    import torchvision.datasets as tvd

    if not root:
        raise ConfigError(f"dataset {name!r} is read from disk: pass --data-root DIR (add --download to fetch it)")
    cls_name, layout = LAYOUTS[name]
    if not Path(root).is_dir() and not download:
        raise MissingInputError(f"--data-root {root} does not exist (expected {layout} inside it; "
                                "add --download to fetch the dataset)")
    cls = getattr(tvd, cls_name)
    kwargs = {"split": "train" if train else "test"} if name == "svhn" else {"train": train}
    try:
        return cls(root, download=download, **kwargs)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted ..."
        raise MissingInputError(f"no readable {name} data under {root} (expected {layout}); "
                                f"add --download to fetch it ({e})") from None


def _arrays(name: str, ds) -> tuple[np.ndarray, np.ndarray]:
    if name == "svhn":
        return np.ascontiguousarray(ds.data, dtype=np.uint8), np.asarray(ds.labels, np.int64)
    data = np.asarray(ds.data)
    if data.ndim == 3:  # (N, H, W) grayscale
        data = data[:, None]
    else:  # (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(data, dtype=np.uint8), np.asarray(ds.targets, np.int64)


def load_split(name: str, root: str | None, download: bool, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, C, H, W), labels int64) of torchvision's train or test split."""
    return _arrays(name, _open(name, root, download, train))


def builder(name: str) -> Callable[..., Dataset]:
    def build(root: str | None = None, download: bool = False, seed: int = 0) -> Dataset:
        train, test = (Split(*load_split(name, root, download, t)) for t in (True, False))
        return Dataset(name=name, train=train, test=test, num_classes=10,
                       params={"root": str(Path(root).resolve()) if root else None, "seed": seed})

    return build


def build_blockmnist(root: str | None = None, download: bool = False, seed: int = 0,
                     signal_position: str = "random") -> Dataset:
    """BlockMNIST (1 x 56 x 28): MNIST digit block and null block, signal on top or bottom at random."""
    from fastroar.datasets.blockdigits import stack_blocks

    rng = np.random.default_rng(seed)
    splits = []
    for train in (True, False):
        images, labels = load_split("mnist", root, download, train)
        stacked, signal = stack_blocks(images[:, 0], signal_position, rng)
        splits.append(Split(stacked, labels, signal))
    return Dataset(name="blockmnist", train=splits[0], test=splits[1], num_classes=10,
                   params={"root": str(Path(root).resolve()) if root else None, "seed": seed,
                           "signal_position": signal_position})
