"""Rank-and-mask kernels: per-coordinate rank maps and bit-packed top-k / bottom-k masks.

Definition (``fastroar.engine.kernels.reference`` is the executable one): rank 0 is the largest score,
equal scores go by lower flat index, -0.0 equals 0.0, NaN ranks after every number; a level-k mask
keeps n = floor(k*d + 1/2) coordinates (top: rank < n, bottom: rank >= d - n); masks are packed
along d, little bit order, shaped (B, L, ceil(d/8)) uint8. Ranks are uint16 while d <= 65,536,
else int32.

Backends, all exact and interchangeable: the compiled extension ``fastroar._C`` (C++ radix sort on
CPU, cub on CUDA), a Numba fallback where the extension is not built, and the NumPy reference.
``FASTROAR_BACKEND=ext|numba|numpy`` forces one.
"""
from __future__ import annotations

import importlib.util
import math
import os
import threading
import warnings
from typing import Any, Sequence, Union

import numpy as np

from fastroar.method import check_direction, check_level, keep_range, n_kept, rank_dtype

__all__ = ["backend", "extension_op", "rank_and_mask", "rank", "unmask", "n_kept", "rank_dtype"]

ArrayLike = Union["torch.Tensor", np.ndarray]  # noqa: F821 (torch imported lazily)

_BACKENDS = ("ext", "numba", "numpy")
# (loaded, has CUDA kernels, why not loaded), set once as a whole tuple so that a reader never sees half of it.
_ext_state: tuple[bool, bool, str] | None = None
# Two threads (models trained side by side) may ask at once; without the lock the second saw the module
# half-imported ("fastroar._C.__spec__ is None") and the run crashed.
_ext_lock = threading.Lock()


def _load_ext() -> tuple[bool, bool, str]:
    """(extension loaded, extension has CUDA kernels, why not loaded). Loads it once, thread-safely."""
    global _ext_state
    if _ext_state is None:
        with _ext_lock:
            if _ext_state is None:
                _ext_state = _import_ext()
    return _ext_state


def _import_ext() -> tuple[bool, bool, str]:
    if importlib.util.find_spec("fastroar._C") is None:
        return False, False, "fastroar._C is not built"
    try:
        import torch

        from fastroar import _C  # noqa: F401  (loading the library registers torch.ops.fastroar)

        return True, bool(torch.ops.fastroar.has_cuda()), ""
    except (ImportError, OSError, AttributeError, RuntimeError) as e:
        # built but unusable (e.g. compiled against another torch): say so once, fall back to Numba
        why = f"{type(e).__name__}: {e}"
        warnings.warn(f"fastroar._C is present but does not load ({why}); using the Numba kernels. Rebuild it: "
                      "python -m pip install --no-build-isolation -e .", RuntimeWarning, stacklevel=4)
        return False, False, why


def _active() -> str:
    """The backend a call uses now: 'ext', 'numba' or 'numpy'."""
    forced = os.environ.get("FASTROAR_BACKEND", "").strip().lower()
    if forced and forced not in _BACKENDS:
        raise ValueError(f"FASTROAR_BACKEND must be one of {', '.join(_BACKENDS)}, got {forced!r}")
    if forced in ("numba", "numpy"):
        return forced
    ok, _, why = _load_ext()
    if ok:
        return "ext"
    if forced == "ext":
        raise RuntimeError("FASTROAR_BACKEND=ext but the compiled extension fastroar._C does not load "
                           f"({why}); build it with `python -m pip install --no-build-isolation -e .` "
                           "or unset FASTROAR_BACKEND")
    return "numba"


def extension_op(name: str) -> Any:
    """torch.ops.fastroar.<name> when the compiled extension serves the kernels now and has that op (an
    extension built before the op existed has not: rebuild it), else None: the caller's Numba kernel."""
    if _active() != "ext":
        return None
    import torch

    return getattr(torch.ops.fastroar, name, None)


def backend() -> str:
    """Which implementation serves the kernels: "C++ (fastroar._C, cuda)", "C++ (fastroar._C, cpu)",
    "numba" or "numpy" (the reference, only when forced by FASTROAR_BACKEND)."""
    name = _active()
    if name != "ext":
        return name
    import torch

    cuda = _load_ext()[1] and torch.cuda.is_available()
    return f"C++ (fastroar._C, {'cuda' if cuda else 'cpu'})"


def _check_levels(levels: Sequence[float] | float) -> list[float]:
    if isinstance(levels, (int, float)):
        levels = [levels]
    return [check_level(k) for k in np.asarray(levels, dtype=np.float64).reshape(-1)]


def _is_torch(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach")


def _flat_rows(shape: tuple[int, ...], what: str) -> tuple[int, int]:
    if len(shape) < 2:
        raise ValueError(f"{what} must be (B, d) or (B, *shape) with a batch dimension, got shape {tuple(shape)}")
    return int(shape[0]), int(math.prod(shape[1:]))


def _torch_low_bits(dtype: Any) -> int:
    import torch

    return {torch.float16: 13, torch.bfloat16: 16}.get(dtype, 0)


def _rank_and_mask_torch(scores: "torch.Tensor", levels: list[float]):  # noqa: F821 (torch imported lazily)
    import torch

    B, d = _flat_rows(tuple(scores.shape), "scores")
    x = scores.detach().reshape(B, d)
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    device = x.device
    name = _active()
    if name == "ext":
        _, has_cuda, _ = _load_ext()
        if device.type == "cpu" or (device.type == "cuda" and has_cuda):
            return tuple(torch.ops.fastroar.rank_and_mask(x, levels))
        out = torch.ops.fastroar.rank_and_mask(x.cpu(), levels)
        return tuple(t.to(device) for t in out)
    low = _torch_low_bits(x.dtype)
    xs = x.cpu()
    arr = xs.numpy() if xs.dtype != torch.bfloat16 else xs.to(torch.float32).numpy()
    out = _rank_and_mask_numpy(arr, levels, name, low)
    return tuple(torch.from_numpy(o).to(device) for o in out)


def _rank_and_mask_numpy(scores: np.ndarray, levels: list[float], name: str, low_bits: int = 0):
    B, d = _flat_rows(scores.shape, "scores")
    x = scores.reshape(B, d)
    if x.dtype not in (np.float32, np.float16):
        x = x.astype(np.float32)
    if name == "ext":
        import torch

        out = torch.ops.fastroar.rank_and_mask(torch.from_numpy(np.ascontiguousarray(x)), levels)
        return tuple(o.numpy() for o in out)
    if name == "numba":
        from fastroar.engine.kernels.numba_rank import rank_and_mask as numba_rank_and_mask

        return numba_rank_and_mask(x, levels, low_bits=low_bits)
    from fastroar.engine.kernels.reference import packed_masks_reference, rank_reference

    ranks = rank_reference(x)
    top, bottom = packed_masks_reference(ranks, levels)
    return ranks, top, bottom


def rank_and_mask(scores: ArrayLike, levels: Sequence[float] = ()) -> tuple[ArrayLike, ArrayLike, ArrayLike]:
    """Rank map and packed masks of a batch of scores.

    scores: (B, d) or (B, *shape) (flattened to (B, d)), a torch tensor on any device or a NumPy array;
    float32/float16/bfloat16 are read exactly, other dtypes are converted to float32 first.
    levels: the k of each mask, each in (0, 1).
    Returns (ranks (B, d) uint16|int32, top (B, L, ceil(d/8)) uint8, bottom (B, L, ceil(d/8)) uint8),
    as torch tensors on the scores' device, or as NumPy arrays for a NumPy input.
    """
    lv = _check_levels(levels)
    if _is_torch(scores):
        return _rank_and_mask_torch(scores, lv)
    return _rank_and_mask_numpy(np.asarray(scores), lv, _active())


def rank(scores: ArrayLike) -> ArrayLike:
    """(B, d) or (B, *shape) scores -> (B, d) ranks (0 = most important, ties by lower index), same kind as given."""
    return rank_and_mask(scores, ())[0]


def unmask(x: ArrayLike, ranks: ArrayLike, k: float, direction: str = "top", fill: Any = 0.0) -> ArrayLike:
    """x with the coordinates outside a top-k / bottom-k scheme's kept set replaced by `fill`.

    x: (B, ...) with d = prod(shape[1:]) coordinates; ranks: (B, d) (or x's shape) rank maps of x's rows.
    k in (0, 1): the scheme keeps n = floor(k*d + 1/2) coordinates, the most important ones
    (direction="top") or the least important ones ("bottom"). fill: a scalar, or anything broadcastable
    to x. Returns the same kind (torch tensor on x's device / NumPy array) and dtype as x.
    """
    check_direction(direction)
    kf = check_level(k)
    B, d = _flat_rows(tuple(x.shape), "x")
    rshape = tuple(ranks.shape)
    if len(rshape) < 1 or rshape[0] != B or math.prod(rshape[1:]) != d or len(rshape) < 2:
        raise ValueError(f"ranks must be (B, d) = ({B}, {d}) for x of shape {tuple(x.shape)}, got shape {rshape}")
    lo, hi = keep_range(kf, direction, d)
    if _is_torch(x):
        import torch

        r = ranks if _is_torch(ranks) else torch.from_numpy(np.ascontiguousarray(ranks))
        r = r.to(x.device).reshape(B, d)
        if r.dtype in (torch.uint16, torch.uint32, torch.uint64):  # no comparison ops for these on CPU
            r = r.to(torch.int64)
        keep = (r >= lo) & (r < hi)
        f = fill if _is_torch(fill) else torch.as_tensor(fill)
        f = f.to(device=x.device, dtype=x.dtype)
        return torch.where(keep.reshape(x.shape), x, f)
    xa = np.asarray(x)
    r = (ranks.detach().cpu().numpy() if _is_torch(ranks) else np.asarray(ranks)).reshape(B, d)
    r = r.astype(np.int64, copy=False)
    keep = (r >= lo) & (r < hi)
    f = np.asarray(fill.detach().cpu().numpy() if _is_torch(fill) else fill).astype(xa.dtype, copy=False)
    return np.where(keep.reshape(xa.shape), xa, f)
