"""Dataset registry: ``build_dataset(name, **params)`` returns a seeded :class:`Dataset`."""
from __future__ import annotations

from typing import Any, Callable

from fastroar.datasets import blockdigits, leakage
from fastroar.datasets.base import Dataset, Split
from fastroar.errors import ConfigError

REGISTRY: dict[str, Callable[..., Dataset]] = {
    "blockdigits": blockdigits.build,
    "blockdigits-top": lambda **kw: blockdigits.build(signal_position="top", **kw),
    "leakage": leakage.build,
}


def build_dataset(name: str, **params: Any) -> Dataset:
    """Build dataset `name` with `params` (its seed, sizes, ...)."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    try:
        ds = REGISTRY[name](**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad parameters for dataset {name!r}: {e}") from e
    ds.name = name
    return ds


__all__ = ["Dataset", "Split", "REGISTRY", "build_dataset"]
