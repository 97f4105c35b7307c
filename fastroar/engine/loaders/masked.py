"""The retraining data path: FFCV streams the base images and applies a top-k / bottom-k mask as it loads.

Design (measured here, see tools/bench_loaders.py). FFCV operations see one field, and the rank maps are
not in the base ``.beton`` (one file of images serves every model and attribution; rank maps live in the
Zarr store, one array per model and attribution). The choices were:

- ranks as a second field of a per-(model, attribution) ``.beton``, with an operation turning them into a
  keep mask: fast, but it copies the images once per model and attribution;
- masking in torch after the loader: several extra passes over each batch on the main thread;
- an operation that reads the rank maps by sample index from a side array (used here).

The side-array operation, ``MaskRanks``, follows FFCV's ``NDArrayDecoder`` in the pipeline of the image
field. It asks FFCV for the batch's sample indices (``with_indices``) and runs one fused, parallel Numba
kernel per batch that reads the stored pixels and the rows of the rank map those indices select, and
writes the float32 model input with the mask applied (``x/255`` for uint8 images, ``x`` for float32 data,
0 outside the kept set). The kernel gets the rank map as an argument: a jitted FFCV stage would have
to capture it as a compile-time constant (copied into the compiled code, for every loader), so the
operation runs in FFCV's non-jitted stage, which costs one Python call per batch. The kernel works
on contiguous rows and vectorizes (float division and the rank comparison in SIMD); it runs well over a
million 32x32x3 images per second on one core, so the loader's cost is FFCV's per-sample decode, and
the masked loader runs at the speed of the unmasked one (which uses the same operation without ranks).
Measurements that led here (10,000 32x32x3 images, 2 cores, batch 256): a rank->keep-mask field op
multiplied after the loader 161-167k img/s but needs ranks inside the images' file; masking in torch
after the loader 44-58k; this fused side-array op: see ``python tools/bench.py --only bench_loaders``.

Any level k and either direction is a runtime argument of the kernel: ``MaskedLoader.set_mask`` changes
them between epochs without recompiling the pipeline, and no masked copy of the data is ever made.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import torch

from fastroar.engine.beton import beton_layout, stored_bytes_decoder
from fastroar.method import check_direction, check_level, keep_range, pixel_scale

ORDERS = ("random", "quasi_random", "sequential")


# ---------------------------------------------------------------- kernels (Numba, imported on first use)

def _kernels():
    """fastroar.engine.loaders.mask_kernels, imported (with Numba) when a kernel is first needed."""
    from fastroar.engine.loaders import mask_kernels

    return mask_kernels


def gather_bits(x: np.ndarray, indices: np.ndarray, bits: np.ndarray, fill: np.float32, out: np.ndarray) -> None:
    """out[b, j] = x[indices[b], j] where bit j of bits[indices[b]] is set, else fill (float32 rows)."""
    _kernels().gather_bits(x, indices, bits, fill, out)


def pack_keep_bits(ranks: Any, k: float, direction: str) -> np.ndarray:
    """(N, d) ranks -> (N, ceil(d/8)) uint8: the top-k / bottom-k keep mask, bit-packed (little bit order).

    ranks may be a NumPy array or a chunked on-disk array (Zarr): the latter is read one chunk of rows at
    a time, so the packed mask (d/8 bytes per image) is all that stays in memory."""
    N, d = ranks.shape
    lo, hi = keep_range(k, direction, d)
    out = np.empty((N, (d + 7) // 8), dtype=np.uint8)
    if isinstance(ranks, np.ndarray):
        if N:
            _kernels().pack_keep(ranks, lo, hi, out)
        return out
    step = int(getattr(ranks, "chunks", (4096,))[0]) or 4096
    for start in range(0, N, step):
        _kernels().pack_keep(np.ascontiguousarray(ranks[start:start + step]), lo, hi, out[start:start + step])
    return out


def masked_model_input(src: np.ndarray, indices: np.ndarray, bits: np.ndarray | None, out: np.ndarray,
                       fill: float = 0.0) -> np.ndarray:
    """(B, d) stored values -> (B, d) float32 model input in `out` (x/255 for uint8, x for float32), `fill`
    (0 by default) where the bit of row bits[indices[b]] is clear; no mask when bits is None."""
    scale = np.float32(pixel_scale(src.dtype))
    if bits is None:
        _kernels().scale_rows(src, scale, out)
    else:
        _kernels().apply_bits(src, indices, bits, scale, np.float32(fill), out)
    return out


# ---------------------------------------------------------------- the FFCV operation

@dataclass
class MaskSpec:
    """What the operation applies; mutable between epochs (MaskedLoader.set_mask)."""

    ranks: np.ndarray | None = None   # (N, d) rank map of the beton's samples
    bits: np.ndarray | None = None    # (N, ceil(d/8)) packed keep mask for the current (k, direction)
    fill: float = 0.0                 # value of removed coordinates (model-input units)


@functools.lru_cache(maxsize=None)
def mask_operation() -> type:
    """MaskRanks, the FFCV operation of this module, defined on first use (importing ffcv takes seconds)."""
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.operation import Operation

    class MaskRanks(Operation):
        """Stored bytes (B, nbytes) -> float32 model input (B, C, H, W) with the rank mask applied.

        Runs in FFCV's non-jitted stage: it calls the Numba kernel with the rank map (side array) as an
        argument, and receives the batch's sample indices from FFCV (with_indices)."""

        def __init__(self, spec: MaskSpec, shape: tuple[int, ...], dtype: np.dtype) -> None:
            super().__init__()
            self.spec, self.shape, self.dtype = spec, tuple(shape), np.dtype(dtype)

        def declare_state_and_memory(self, previous_state):
            return (replace(previous_state, jit_mode=False, shape=self.shape, dtype=np.dtype(np.float32)),
                    AllocationQuery(self.shape, np.dtype(np.float32)))

        def generate_code(self):
            spec, dtype = self.spec, self.dtype

            def mask_ranks(stored, dst, indices):
                B = stored.shape[0]
                out = dst[:B]
                masked_model_input(stored.view(dtype), indices, spec.bits, out.reshape(B, -1), spec.fill)
                return out

            mask_ranks.with_indices = True
            return mask_ranks

    return MaskRanks


# ---------------------------------------------------------------- the loader

class MaskedLoader:
    """Iterates (x float32 (B, C, H, W) model input, mask applied, y int64 (B,)) over a .beton.

    Batches live in buffers the loader reuses: a batch is valid until the next one is requested.
    """

    def __init__(self, loader: Any, spec: MaskSpec, d: int, shape: tuple[int, ...]) -> None:
        self.loader = loader
        self._spec = spec
        self.d = d
        self.shape = shape

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader:
            yield x, y.view(-1)

    @property
    def batch_size(self) -> int:
        return self.loader.batch_size

    def set_mask(self, k: float, direction: str) -> None:
        """Switches the level and direction for the next epoch, without recompiling the pipeline."""
        if self._spec.ranks is None:
            raise ValueError("this loader was made without ranks; pass ranks= to make_loader to mask")
        check_mask(k, direction)
        self._spec.bits = pack_keep_bits(self._spec.ranks, float(k), direction)


def check_mask(k: float | None, direction: str | None) -> None:
    """ValueError (ConfigError) unless k is in (0, 1) and direction is top or bottom."""
    check_direction(direction)
    check_level(k)


def check_ranks(ranks: Any, n: int, d: int, what: str, lazy: bool = False) -> Any:
    """The (N, d) integer rank map as a NumPy array (array-likes such as Zarr arrays are read whole), or,
    with lazy=True, a chunked array-like (Zarr) as it is, checked by its shape and dtype only."""
    if lazy and not isinstance(ranks, np.ndarray) and hasattr(ranks, "shape") and hasattr(ranks, "dtype"):
        if tuple(ranks.shape) != (n, d):
            raise ValueError(f"ranks must have shape (N, d) = ({n}, {d}) to match {what}, got {tuple(ranks.shape)}")
        if not np.issubdtype(np.dtype(ranks.dtype), np.integer):
            raise ValueError(f"ranks must be integers (uint16 or int32 rank maps), got {ranks.dtype}")
        return ranks
    arr = ranks if isinstance(ranks, np.ndarray) else np.asarray(ranks[...] if hasattr(ranks, "shape") else ranks)
    if arr.shape != (n, d):
        raise ValueError(f"ranks must have shape (N, d) = ({n}, {d}) to match {what}, got {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ranks must be integers (uint16 or int32 rank maps), got {arr.dtype}")
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def validate_mask_args(ranks: Any, k: float | None, direction: str | None) -> bool:
    """True when a mask is requested; ValueError on an inconsistent or invalid combination."""
    if ranks is None:
        if k is not None or direction is not None:
            raise ValueError("k and direction need ranks: pass the rank maps of the split (ranks=)")
        return False
    check_mask(k, direction)
    return True


def _worker_count(num_workers: int) -> int:
    from numba import config

    return max(1, min(int(num_workers), config.NUMBA_NUM_THREADS))


def make_loader(beton_path: str, *, batch_size: int, order: str = "random", seed: int = 0,
                ranks: np.ndarray | None = None, k: float | None = None, direction: str | None = None,
                os_cache: bool = True, drop_last: bool = False, device: str | torch.device = "cpu",
                num_workers: int = 2, batches_ahead: int = 3, fill: float = 0.0) -> MaskedLoader:
    """An FFCV loader over a base .beton yielding (x, y): x float32 (B, C, H, W) model input with the
    top-k / bottom-k mask of `ranks` (N, d) applied (no mask when ranks is None; removed coordinates set
    to `fill`), y int64 (B,).
    """
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToDevice, ToTensor

    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    masked = validate_mask_args(ranks, k, direction)
    beton_path = os.fspath(beton_path)
    n, shape, dtype = beton_layout(beton_path)
    d = int(np.prod(shape))
    spec = MaskSpec(fill=float(np.float32(fill)))
    if masked:
        # lazy: a Zarr rank map stays on disk; set_mask streams it once per level into packed bits
        spec.ranks = check_ranks(ranks, n, d, f"the {n} images of shape {shape} in {beton_path}", lazy=True)
    device = torch.device(device)

    MaskRanks = mask_operation()
    StoredBytes = stored_bytes_decoder()
    pipelines = {"image": [StoredBytes(), MaskRanks(spec, shape, dtype), ToTensor()],
                 "label": [IntDecoder(), ToTensor()]}
    if device.type != "cpu":
        pipelines["image"].append(ToDevice(device, non_blocking=True))
        pipelines["label"].append(ToDevice(device, non_blocking=True))
    orders = {"random": OrderOption.RANDOM, "quasi_random": OrderOption.QUASI_RANDOM,
              "sequential": OrderOption.SEQUENTIAL}
    loader = Loader(beton_path, batch_size=int(batch_size), num_workers=_worker_count(num_workers),
                    os_cache=bool(os_cache), order=orders[order], seed=int(seed), drop_last=bool(drop_last),
                    pipelines=pipelines, batches_ahead=batches_ahead)
    out = MaskedLoader(loader, spec, d, shape)
    if masked:
        out.set_mask(float(k), direction)  # type: ignore[arg-type]
    return out
