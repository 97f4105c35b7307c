"""The device-resident data path: a small split held whole on the device, masked by one comparison per batch.

``ResidentLoader`` keeps the images as float32 model input and the rank maps as integer tensors on the
device. Each batch is a gather of images and rank rows by a seeded permutation, one comparison of the
ranks with the level's threshold and a masked fill (engine "torch"): no host work, no transfers.
uint16 rank maps are stored as int16 offset by -32768 (u -> u - 32768), which preserves their order, so
the comparison needs no widening and the ranks take 2 bytes per coordinate on the device.

On the CPU those torch ops make several passes per batch (about 160k 32x32x3 img/s on 2 cores, below
the FFCV path), so there the default engine "numba" packs the level's keep mask once (1 bit per
coordinate, from the ranks, at set_mask) and gathers and masks each batch in one parallel Numba pass
(the kernels of fastroar.engine.loaders.masked); see tools/bench_loaders.py.

``choose_loader`` takes this path when the images and ranks fit the budget (by default half the free
memory of a CUDA device, 2 GiB on the CPU) and FFCV's streaming path (fastroar.engine.loaders.masked) otherwise.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from fastroar.engine.loaders.masked import check_mask, check_ranks, gather_bits, pack_keep_bits, validate_mask_args
from fastroar.method import keep_range, model_input_array


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of epoch `epoch` for a job seeded `seed` (also what the stacked trainer draws per model)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def resident_ranks(ranks: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """(N, d) ranks -> (device tensor, offset): uint16 as int16 of (rank - 32768), so order is kept and the
    comparison needs no widening; the rest as int32. Shared by the resident loader and the stacked trainer."""
    if ranks.dtype == np.uint16:
        shifted = (ranks ^ np.uint16(0x8000)).view(np.int16)  # u - 32768, exactly, as int16
        return torch.from_numpy(shifted).to(device), 32768
    if ranks.size and (int(ranks.min()) < 0 or int(ranks.max()) >= 2 ** 31):
        raise ValueError("ranks must lie in [0, d)")
    return torch.from_numpy(ranks.astype(np.int32, copy=False)).to(device), 0


class ResidentLoader:
    """Iterates (x float32 (B, C, H, W) model input with the mask applied, y int64 (B,)) from device memory.

    images (N, C, H, W) uint8 (scaled by 1/255) or float32 (as is); labels (N,); ranks (N, d) rank maps.
    shuffle=True draws a new seeded permutation each epoch (seed, epoch); otherwise samples come in order.
    engine: "torch" (one comparison per batch on the device) or "numba" (CPU only: packed keep bits and
    one fused gather-and-mask pass); None picks numba on the CPU and torch elsewhere.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int = 0,
                 ranks: np.ndarray | None = None, k: float | None = None, direction: str | None = None,
                 device: str | torch.device = "cpu", shuffle: bool = True, drop_last: bool = False,
                 engine: str | None = None, fill: float = 0.0) -> None:
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim < 2 or images.dtype not in (np.uint8, np.float32):
            raise ValueError(f"images must be (N, C, H, W) uint8 or float32, got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        masked = validate_mask_args(ranks, k, direction)
        self.device = torch.device(device)
        if engine is None:
            engine = "numba" if self.device.type == "cpu" else "torch"
        if engine not in ("torch", "numba") or (engine == "numba" and self.device.type != "cpu"):
            raise ValueError(f"engine must be 'torch', or 'numba' on the CPU; got {engine!r} on {self.device}")
        self.engine = engine
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.fill = float(np.float32(fill))  # value of removed coordinates (model-input units)
        self.n = int(images.shape[0])
        self.shape = tuple(int(s) for s in images.shape[1:])
        self.d = int(math.prod(self.shape))
        # A fresh float32 copy: never alias the caller's array.
        self.x = torch.from_numpy(model_input_array(images)).to(self.device)
        self.y = torch.from_numpy(labels.astype(np.int64)).to(self.device)
        self._ranks_np: np.ndarray | None = None    # numba engine: the caller's rank map (not copied)
        self._bits: np.ndarray | None = None        # numba engine: packed keep mask of the current level
        self.ranks: torch.Tensor | None = None      # torch engine: ranks on the device
        self._offset = 0
        self._drop: tuple[str, int] | None = None   # torch engine: ("ge" | "lt", threshold) or None
        if masked:
            arr = check_ranks(ranks, self.n, self.d, "the images")
            if engine == "numba":
                self._ranks_np = arr
            else:
                self.ranks, self._offset = resident_ranks(arr, self.device)
            self.set_mask(float(k), direction)  # type: ignore[arg-type]

    @property
    def masked(self) -> bool:
        return self._ranks_np is not None or self.ranks is not None

    def set_mask(self, k: float, direction: str) -> None:
        """Switches the level and direction for the next epoch."""
        if not self.masked:
            raise ValueError("this loader was made without ranks; pass ranks= to mask")
        check_mask(k, direction)
        if self.engine == "numba":
            self._bits = pack_keep_bits(self._ranks_np, float(k), direction)
            return
        lo, hi = keep_range(k, direction, self.d)
        # Dropped coordinates: rank outside [lo, hi). One end of the range is always open (top: lo = 0,
        # bottom: hi = d), so one comparison in the stored (offset) space drops them; None drops nothing.
        # Thresholds stay inside the stored dtype's range (torch wraps them).
        off = self._offset
        self._drop = ("ge", hi - off) if hi < self.d else ("lt", lo - off) if lo > 0 else None

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _order(self) -> torch.Tensor:
        return epoch_order(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        self.epoch += 1
        stop = min(len(self) * self.batch_size, self.n)
        if self.engine == "numba":
            flat = self.x.view(self.n, self.d).numpy()
            for start in range(0, stop, self.batch_size):
                idx = order[start:start + self.batch_size]
                if self._bits is None:
                    xb = self.x.index_select(0, idx)
                else:
                    out = np.empty((len(idx), self.d), dtype=np.float32)
                    gather_bits(flat, idx.numpy(), self._bits, np.float32(self.fill), out)
                    xb = torch.from_numpy(out).view(len(idx), *self.shape)
                yield xb, self.y.index_select(0, idx)
            return
        order = order.to(self.device)
        for start in range(0, stop, self.batch_size):
            idx = order[start:start + self.batch_size]
            xb = self.x.index_select(0, idx)
            if self.ranks is not None and self._drop is not None:
                r = self.ranks.index_select(0, idx)
                op, t = self._drop
                drop = r >= t if op == "ge" else r < t  # the one comparison
                xb.view(xb.shape[0], -1).masked_fill_(drop, self.fill)
            yield xb, self.y.index_select(0, idx)
