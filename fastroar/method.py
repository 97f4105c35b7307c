"""The method's conventions (DiffROAR, Shah, Jain & Netrapalli 2021), each written once; every fast path calls these
or is tested against them.

- A level k lies strictly in (0, 1); a scheme keeps n = floor(k*d + 1/2) of the d coordinates.
- Ranks: 0 is the most important coordinate. ``top`` keeps the coordinates of rank < n, ``bottom`` those
  of rank >= d - n: the kept ranks are the half-open range ``keep_range(k, direction, d)``.
- Model input: stored uint8 pixels become float32 x/255 (IEEE division, as the loaders compute it);
  float32 features are used as stored.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastroar.errors import ConfigError

DIRECTIONS = ("top", "bottom")
RECIPES = ("paper", "fast", "airbench")
# the step schedule's defaults (recipe keys decay_every, decay_factor, decay_floor), here once for the config
# schema and the training Recipe (which may not import each other): the reference notebook's synthetic check
STEP_DECAY = {"decay_every": 50, "decay_factor": 0.75, "decay_floor": 0.01}
UINT16_MAX_D = 65536
PIXEL_SCALE = 255.0  # uint8 pixel -> model input: x / PIXEL_SCALE


def check_level(k: Any) -> float:
    """k as a float strictly inside (0, 1); ConfigError (a ValueError) otherwise."""
    if isinstance(k, bool):
        raise ConfigError(f"k must be a number in (0, 1), got {k!r}")
    try:
        kf = float(k)
    except (TypeError, ValueError):
        raise ConfigError(f"k must be a number in (0, 1), got {k!r}") from None
    if not 0.0 < kf < 1.0:  # also refuses NaN
        raise ConfigError(f"k must lie strictly between 0 and 1, i.e. in (0, 1), got {k}")
    return kf


def check_direction(direction: Any) -> str:
    """direction if it is 'top' or 'bottom'; ConfigError (a ValueError) otherwise."""
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be 'top' or 'bottom', got {direction!r}")
    return direction


def n_kept(k: float, d: int) -> int:
    """Number of coordinates a level-k scheme keeps: floor(k*d + 1/2)."""
    return int(math.floor(check_level(k) * d + 0.5))


def keep_range(k: float, direction: str, d: int) -> tuple[int, int]:
    """[lo, hi): the ranks a top-k / bottom-k scheme keeps (rank < n, or rank >= d - n)."""
    n = n_kept(k, d)
    return (0, n) if check_direction(direction) == "top" else (d - n, d)


def rank_dtype(d: int) -> np.dtype:
    """uint16 ranks while every rank fits (d <= 65,536), else int32."""
    return np.dtype(np.uint16) if d <= UINT16_MAX_D else np.dtype(np.int32)


def to_model_input(images: Any) -> Any:
    """Stored images -> float32 model input (x/255 for uint8 pixels, float features as they are).

    NumPy in, a fresh float32 torch tensor out (inputs may be read-only views of cached arrays);
    a torch tensor in, a float32 tensor out."""
    if type(images).__module__.startswith("torch"):
        return images.float().div_(PIXEL_SCALE) if str(images.dtype) == "torch.uint8" else images.float()
    import torch

    return torch.from_numpy(model_input_array(images))


def model_input_array(images: Any) -> np.ndarray:
    """Stored images (NumPy) -> a fresh float32 NumPy array of the same shape: x/255 for uint8."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return np.divide(images, np.float32(PIXEL_SCALE), dtype=np.float32)
    return np.array(images, dtype=np.float32, copy=True)


def pixel_scale(dtype: Any) -> float:
    """What stored values of `dtype` are divided by to become model input (255 for uint8, else 1)."""
    return PIXEL_SCALE if np.dtype(dtype) == np.uint8 else 1.0
