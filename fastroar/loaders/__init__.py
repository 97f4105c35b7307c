"""Data paths for training and retraining: FFCV .beton shards, the masked FFCV loader, the resident loader.

Imports of FFCV (slow: several seconds) happen inside the functions, so importing this package is cheap.
"""
from __future__ import annotations

from fastroar.loaders.beton import BetonError, beton_meta, read_beton, verify_beton, write_beton

__all__ = ["BetonError", "beton_meta", "read_beton", "verify_beton", "write_beton", "make_loader",
           "ResidentLoader", "choose_loader"]


def __getattr__(name: str):
    if name == "make_loader":
        from fastroar.loaders.masked import make_loader
        return make_loader
    if name in ("ResidentLoader", "choose_loader"):
        from fastroar.loaders import resident
        return getattr(resident, name)
    raise AttributeError(f"module 'fastroar.loaders' has no attribute {name!r}")
