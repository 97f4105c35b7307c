"""Which data path a split takes, decided in one place: held whole on the device (ResidentLoader), or
streamed from its .beton through FFCV with the mask applied while decoding (make_loader).

The resident path is taken when the split's float32 images, labels and rank maps fit a budget: half
the free memory of a CUDA device, 2 GiB on the CPU. Both paths yield the same (x, y) batches.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from fastroar.engine.beton import BetonError, beton_layout, beton_meta, read_beton_cached
from fastroar.engine.loaders.masked import make_loader, validate_mask_args
from fastroar.engine.loaders.resident import ResidentLoader

CPU_RESIDENT_BYTES = 2 << 30
CUDA_FREE_FRACTION = 0.5
LOADER_MODES = ("auto", "ffcv", "resident")


def resident_bytes(n: int, shape: tuple[int, ...], rank_itemsize: int | None) -> int:
    """Device bytes the resident path holds: float32 images, int64 labels and ranks (2 or 4 bytes each)."""
    d = int(math.prod(shape))
    return n * d * 4 + n * 8 + (n * d * min(rank_itemsize, 4) if rank_itemsize else 0)


def default_budget(device: torch.device) -> int:
    """Bytes the resident path may take: half the free memory of a CUDA device, 2 GiB on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FREE_FRACTION)
    return CPU_RESIDENT_BYTES


def _beton_shape(path: str) -> tuple[int, tuple[int, ...]]:
    """(N, (C, H, W)) of a .beton: from its sidecar, else from the file's header."""
    try:
        meta = beton_meta(path)
        return int(meta["n"]), tuple(int(s) for s in meta["shape"])
    except BetonError:
        if not os.path.exists(path):
            raise
    n, shape, _ = beton_layout(path)
    return n, shape


def choose_path(mode: str, n: int, shape: tuple[int, ...], rank_itemsize: int | None, device: torch.device,
                budget: int | None = None) -> str:
    """"resident" or "ffcv": the one rule. mode "ffcv" / "resident" forces a path; "auto" holds the split
    on the device when its images and ranks fit `budget` (default: default_budget(device))."""
    if mode not in LOADER_MODES:
        raise ValueError(f"loader mode must be one of {', '.join(LOADER_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    budget = default_budget(device) if budget is None else int(budget)
    return "resident" if resident_bytes(n, shape, rank_itemsize) <= budget else "ffcv"


def open_loader(beton_path: str, *, batch_size: int, seed: int = 0, ranks: Any = None,
                k: float | None = None, direction: str | None = None, device: str | torch.device = "cpu",
                shuffle: bool = True, drop_last: bool = False, mode: str = "auto",
                max_resident_bytes: int | None = None, os_cache: bool = True, num_workers: int = 2,
                fill: float = 0.0) -> tuple[Any, str]:
    """(loader, "resident" | "ffcv") over a .beton, by choose_path(mode, ...): the resident path holds the
    split in memory (read once per process through read_beton_cached); FFCV streams it (random order when
    shuffle, else sequential). Both yield the same (x, y) batches; removed coordinates are `fill`.
    """
    beton_path = os.fspath(beton_path)
    validate_mask_args(ranks, k, direction)
    device = torch.device(device)
    n, shape = _beton_shape(beton_path)
    rank_itemsize = None if ranks is None else int(np.dtype(ranks.dtype).itemsize)
    if choose_path(mode, n, shape, rank_itemsize, device, max_resident_bytes) == "resident":
        images, labels = read_beton_cached(beton_path)
        loader = ResidentLoader(images, labels, batch_size=batch_size, seed=seed, ranks=ranks, k=k,
                                direction=direction, device=device, shuffle=shuffle, drop_last=drop_last,
                                fill=fill)
        return loader, "resident"
    loader = make_loader(beton_path, batch_size=batch_size, order="random" if shuffle else "sequential",
                         seed=seed, ranks=ranks, k=k, direction=direction, os_cache=os_cache,
                         drop_last=drop_last, device=device, num_workers=num_workers, fill=fill)
    return loader, "ffcv"
