"""The Numba kernels of the masked loaders (fastroar.engine.loaders.masked, .resident): bit-packed keep
masks from rank maps, and masked model input from stored pixels or resident rows. Parallel over rows.

Imported on first use only: importing Numba takes about 0.3 s and its first kernel call about 0.6 s more,
which the paths that never mask through these kernels (a resident CPU run's stacked retrain, reports)
should not pay.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, nogil=True, cache=True)
def pack_keep(ranks, lo, hi, out):  # pragma: no cover - compiled
    """out[i] = bit-packed (little bit order) keep mask lo <= ranks[i, j] < hi of every row i."""
    d = ranks.shape[1]
    full = d >> 3
    for i in prange(ranks.shape[0]):
        r = ranks[i]
        o = out[i]
        for q in range(full):
            w = 0
            for t in range(8):
                v = np.int64(r[q * 8 + t])
                if v >= lo and v < hi:
                    w |= 1 << t
            o[q] = w
        if full < o.shape[0]:
            w = 0
            for j in range(full * 8, d):
                v = np.int64(r[j])
                if v >= lo and v < hi:
                    w |= 1 << (j - full * 8)
            o[full] = w


@njit(parallel=True, nogil=True, cache=True)
def apply_bits(src, indices, bits, scale, fill, out):  # pragma: no cover - compiled
    """out[b, j] = src[b, j] / scale where bit j of bits[indices[b]] is set, else fill (float32)."""
    d = src.shape[1]
    full = d >> 3
    for b in prange(src.shape[0]):
        m = bits[indices[b]]
        s = src[b]
        o = out[b]
        for q in range(full):
            w = m[q]
            for t in range(8):
                j = q * 8 + t
                x = np.float32(s[j]) / scale
                o[j] = x if (w >> t) & 1 else fill
        for j in range(full * 8, d):
            x = np.float32(s[j]) / scale
            o[j] = x if (m[full] >> (j - full * 8)) & 1 else fill


@njit(parallel=True, nogil=True, cache=True)
def scale_rows(src, scale, out):  # pragma: no cover - compiled
    for b in prange(src.shape[0]):
        s = src[b]
        o = out[b]
        for j in range(src.shape[1]):
            o[j] = np.float32(s[j]) / scale


@njit(parallel=True, nogil=True, cache=True)
def gather_bits(x, indices, bits, fill, out):  # pragma: no cover - compiled
    """out[b, j] = x[indices[b], j] where bit j of bits[indices[b]] is set, else fill (float32 rows)."""
    d = x.shape[1]
    full = d >> 3
    for b in prange(indices.shape[0]):
        i = indices[b]
        m = bits[i]
        s = x[i]
        o = out[b]
        for q in range(full):
            w = m[q]
            for t in range(8):
                j = q * 8 + t
                o[j] = s[j] if (w >> t) & 1 else fill
        for j in range(full * 8, d):
            o[j] = s[j] if (m[full] >> (j - full * 8)) & 1 else fill
