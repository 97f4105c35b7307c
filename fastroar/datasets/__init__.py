"""Datasets: ``build_dataset(name, **params)`` returns a seeded Dataset (registry.py); each dataset is one module."""
from fastroar.datasets.base import Dataset, Split
from fastroar.datasets.registry import REGISTRY, build_dataset

__all__ = ["Dataset", "Split", "REGISTRY", "build_dataset"]
