"""Plain NumPy reference for ranks and masks: the definition every fast path must match bit for bit.

Conventions (the rules themselves are written once, in fastroar.method):
- rank 0 is the most important coordinate (largest score);
- equal scores are ordered by lower flat index first (-0.0 equals 0.0);
- NaN scores rank after every number (least important), among themselves by index;
- top-k keeps the n = floor(k*d + 1/2) coordinates of rank < n, bottom-k those of rank >= d - n;
- masks are bit-packed along d, little bit order (bit j%8 of byte j//8 is coordinate j).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fastroar.method import UINT16_MAX_D, keep_range, n_kept, rank_dtype  # noqa: F401  (the rules, re-exported)


def importance_order(scores: np.ndarray) -> np.ndarray:
    """(B, d) scores -> (B, d) flat indices, most important first (lexsort: NaN last, value desc, index asc)."""
    s = np.asarray(scores, dtype=np.float32)
    if s.ndim != 2:
        raise ValueError(f"scores must be (B, d), got shape {s.shape}")
    B, d = s.shape
    out = np.empty((B, d), dtype=np.int64)
    idx = np.arange(d)
    for b in range(B):
        row = s[b]
        nan = np.isnan(row)
        neg = np.where(nan, 0.0, -row.astype(np.float64))
        out[b] = np.lexsort((idx, neg, nan))
    return out


def rank_reference(scores: np.ndarray) -> np.ndarray:
    """(B, d) scores -> (B, d) ranks in rank_dtype(d); ranks[b, j] is coordinate j's position in the order."""
    order = importance_order(scores)
    B, d = order.shape
    ranks = np.empty((B, d), dtype=rank_dtype(d))
    rows = np.arange(B)[:, None]
    ranks[rows, order] = np.arange(d, dtype=np.int64)[None, :]
    return ranks


def keep_mask_reference(ranks: np.ndarray, k: float, direction: str) -> np.ndarray:
    """(B, d) ranks -> (B, d) bool: the coordinates a top-k or bottom-k scheme keeps."""
    r = np.asarray(ranks).astype(np.int64)
    lo, hi = keep_range(k, direction, r.shape[-1])
    return (r >= lo) & (r < hi)


def packed_masks_reference(ranks: np.ndarray, levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(B, d) ranks -> (top, bottom), each (B, L, ceil(d/8)) uint8, bit-packed little-endian along d."""
    tops = [np.packbits(keep_mask_reference(ranks, k, "top"), axis=-1, bitorder="little") for k in levels]
    bottoms = [np.packbits(keep_mask_reference(ranks, k, "bottom"), axis=-1, bitorder="little") for k in levels]
    B = np.asarray(ranks).shape[0]
    nbytes = (np.asarray(ranks).shape[-1] + 7) // 8
    if not levels:
        empty = np.zeros((B, 0, nbytes), np.uint8)
        return empty, empty.copy()
    return np.stack(tops, axis=1), np.stack(bottoms, axis=1)
