"""Numba CPU rank-and-mask: the fallback where the compiled extension ``fastroar._C`` is not built.

Same definition as ``fastroar.engine.kernels.reference`` (ranks by score descending, ties by lower index,
-0.0 == 0.0, NaN last; n = floor(k*d + 1/2); masks bit-packed little-endian along d) and the same
method as the C++ kernel: an LSD radix sort of order-preserving uint32 keys carrying the index,
rows in parallel (``prange``), scratch reused across a thread's rows.

``keep_from_ranks`` is an njit function other Numba code (e.g. loader operations) may call.
"""
from __future__ import annotations

from typing import Sequence

import numba
import numpy as np
from numba import njit, prange

from fastroar.method import n_kept, rank_dtype

__all__ = ["rank_and_mask", "keep_from_ranks", "SMALL_D"]

# Rows up to this length sort with 4 passes of 8-bit digits, longer ones with 3 passes of 11 bits.
SMALL_D = 2048


@njit(inline="always")
def _key(u: np.uint32, low: np.int64) -> np.int64:
    """Order-preserving descending key of float32 bits u: larger float -> smaller key, -0.0 -> +0.0,
    NaN -> 0xffffffff; `low` is ANDed in (clears bits every equal score shares, e.g. fp16 sources)."""
    v = np.int64(u)
    if (v & 0x7FFFFFFF) > 0x7F800000:
        return np.int64(0xFFFFFFFF) & low
    if v == 0x80000000:
        v = 0
    if v & 0x80000000:
        return v & low
    return (0x7FFFFFFF - v) & low


@njit(inline="always")
def _rank_row(u, rank, a, b, hist, low, bits, npass):
    d = u.shape[0]
    if d == 0:
        return
    nbk = 1 << bits
    mask = nbk - 1
    hist[:] = 0
    for i in range(d):
        k = _key(u[i], low)
        for p in range(npass):
            hist[p * nbk + ((k >> (p * bits)) & mask)] += 1
    act = np.empty(npass, np.int64)
    na = 0
    k0 = _key(u[0], low)
    for p in range(npass):
        base = p * nbk
        if hist[base + ((k0 >> (p * bits)) & mask)] == d:
            continue
        act[na] = p
        na += 1
        s = 0
        for q in range(nbk):
            c = hist[base + q]
            hist[base + q] = s
            s += c
    if na == 0:
        for i in range(d):
            rank[i] = i
        return
    if na == 1:
        sh = act[0] * bits
        base = act[0] * nbk
        for i in range(d):
            k = _key(u[i], low)
            slot = base + ((k >> sh) & mask)
            rank[i] = hist[slot]
            hist[slot] += 1
        return
    src, dst = a, b
    sh = act[0] * bits
    base = act[0] * nbk
    for i in range(d):
        k = _key(u[i], low)
        slot = base + ((k >> sh) & mask)
        src[hist[slot]] = np.uint64((k << 32) | i)
        hist[slot] += 1
    for t in range(1, na - 1):
        sh = np.uint64(32 + act[t] * bits)
        base = act[t] * nbk
        for i in range(d):
            v = src[i]
            slot = base + np.int64((v >> sh) & np.uint64(mask))
            dst[hist[slot]] = v
            hist[slot] += 1
        src, dst = dst, src
    sh = np.uint64(32 + act[na - 1] * bits)
    base = act[na - 1] * nbk
    for i in range(d):
        v = src[i]
        slot = base + np.int64((v >> sh) & np.uint64(mask))
        rank[np.int64(v & np.uint64(0xFFFFFFFF))] = hist[slot]
        hist[slot] += 1


@njit(inline="always")
def _masks_row(rank, n, top, bottom):
    d = rank.shape[0]
    nb = (d + 7) // 8
    for lv in range(n.shape[0]):
        nt = n[lv]
        tb = d - nt
        for j in range(nb):
            bt = 0
            bb = 0
            e = min(8, d - 8 * j)
            for i in range(e):
                r = np.int64(rank[8 * j + i])
                bt |= np.int64(r < nt) << i
                bb |= np.int64(r >= tb) << i
            top[lv, j] = bt
            bottom[lv, j] = bb


@njit(parallel=True, cache=True)
def _rank_and_mask_rows(u, ranks, top, bottom, n, low, nchunks):
    B, d = u.shape
    bits, npass = (8, 4) if d <= SMALL_D else (11, 3)
    for c in prange(nchunks):
        b0 = c * B // nchunks
        b1 = (c + 1) * B // nchunks
        a = np.empty(d, np.uint64)
        b = np.empty(d, np.uint64)
        hist = np.empty(npass << bits, np.int64)
        for r in range(b0, b1):
            _rank_row(u[r], ranks[r], a, b, hist, low, bits, npass)
            _masks_row(ranks[r], n, top[r], bottom[r])


@njit(cache=True)
def keep_from_ranks(rank_row, n, top, out):
    """Writes the keep mask of one rank row into `out` (same length): 1 where kept, 0 elsewhere.

    top=True keeps rank < n (the n most important coordinates), top=False keeps rank >= d - n.
    `n` is n_kept(k, d) (compute it outside: floor(k*d + 1/2)). Callable from other njit code.
    """
    d = rank_row.shape[0]
    if top:
        for j in range(d):
            out[j] = np.int64(rank_row[j]) < n
    else:
        t = d - n
        for j in range(d):
            out[j] = np.int64(rank_row[j]) >= t


_LOW_BITS = {np.dtype(np.float16): 13}


def rank_and_mask(scores: np.ndarray, levels: Sequence[float] = (), low_bits: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, d) scores -> (ranks (B, d) uint16|int32, top, bottom (B, L, ceil(d/8)) uint8), as NumPy arrays.

    Scores are read as float32 (float16 converts exactly). `low_bits` may name low key bits that all
    equal scores share (13 for float16 sources, 16 for bfloat16): they are ignored, which only saves work.
    """
    s = np.asarray(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be (B, d), got shape {s.shape}")
    low_bits = max(low_bits, _LOW_BITS.get(s.dtype, 0))
    s = np.ascontiguousarray(s, dtype=np.float32)
    B, d = s.shape
    n = np.array([n_kept(float(k), d) for k in levels], dtype=np.int64)
    ranks = np.empty((B, d), dtype=rank_dtype(d))
    nb = (d + 7) // 8
    top = np.empty((B, len(n), nb), np.uint8)
    bottom = np.empty((B, len(n), nb), np.uint8)
    if B and d:
        low = np.int64(~((1 << low_bits) - 1) & 0xFFFFFFFF)
        _rank_and_mask_rows(s.view(np.uint32), ranks, top, bottom, n, low, min(B, numba.get_num_threads()))
    return ranks, top, bottom
