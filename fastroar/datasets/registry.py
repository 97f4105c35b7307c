"""Dataset registry: ``build_dataset(name, **params)`` returns a seeded :class:`Dataset`."""
from __future__ import annotations

import functools
import re
from typing import Any, Callable

from fastroar.datasets import blockdigits, folder, leakage, torchvision_sets
from fastroar.datasets.base import Dataset, Split
from fastroar.errors import ConfigError, FastroarError

REGISTRY: dict[str, Callable[..., Dataset]] = {
    "blockdigits": blockdigits.build,
    "blockdigits-top": functools.partial(blockdigits.build, signal_position="top"),
    "leakage": leakage.build,
    "mnist": torchvision_sets.builder("mnist"),
    "fashion-mnist": torchvision_sets.builder("fashion-mnist"),
    "cifar10": torchvision_sets.builder("cifar10"),
    "svhn": torchvision_sets.builder("svhn"),
    "blockmnist": torchvision_sets.build_blockmnist,
    "blockmnist-top": functools.partial(torchvision_sets.build_blockmnist, signal_position="top"),
    "imagenet10": folder.build_imagenet10,
    "folder": folder.build_folder,
}


# Why a parameter may not apply to a dataset, for the ones users pass by habit.
PARAM_HINTS = {"image_size": " (--image-size applies to imagenet10 and folder; the others have a fixed size)",
               "root": " (it is built in: drop --data-root)", "download": " (it is built in: drop --download)"}


def build_dataset(name: str, **params: Any) -> Dataset:
    """Build dataset `name` with `params` (its seed, sizes, ...)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    try:
        ds = REGISTRY[name](**params)
    except FastroarError:
        raise
    except (TypeError, ValueError) as e:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if unknown:
            raise ConfigError(f"dataset {name!r} takes no parameter {unknown[1]!r}"
                              f"{PARAM_HINTS.get(unknown[1], '')}") from e
        raise ConfigError(f"bad parameters for dataset {name!r}: {e}") from e
    ds.name = name
    return ds


__all__ = ["Dataset", "Split", "REGISTRY", "PARAM_HINTS", "build_dataset"]
