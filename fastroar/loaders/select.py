"""Picks the data path for a config: FFCV streaming, or the whole split resident on the device.

``loader: auto`` holds small datasets on the device (masking is then one comparison per batch) and
streams the rest through FFCV with the mask applied while decoding; ``ffcv`` / ``resident`` force one.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def split_loader(prepared, split: str, cfg: dict[str, Any], *, batch_size: int, seed: int, train: bool,
                 device: torch.device, ranks: np.ndarray | None = None, k: float | None = None,
                 direction: str | None = None, fill: float = 0.0):
    """(loader, path_name) over one split; train=True shuffles (seeded) and drops no sample; removed
    coordinates are set to `fill`."""
    from fastroar.loaders.masked import make_loader
    from fastroar.loaders.resident import ResidentLoader, choose_loader

    beton = str(prepared.beton(split))
    mode = cfg.get("loader", "auto")
    common = dict(batch_size=batch_size, seed=seed, ranks=ranks, k=k, direction=direction, device=str(device),
                  fill=fill)
    if mode == "ffcv":
        order = "random" if train else "sequential"
        return make_loader(beton, order=order, **common), "ffcv"
    if mode == "resident":
        images, labels = prepared.arrays(split)
        return ResidentLoader(images, labels, shuffle=train, **common), "resident"
    return choose_loader(beton, shuffle=train, **common)
