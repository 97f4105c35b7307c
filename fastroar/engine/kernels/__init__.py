"""Rank-and-mask kernels: per-coordinate rank maps and bit-packed top-k / bottom-k masks.

``dispatch`` picks the backend (the compiled extension, Numba, or the NumPy ``reference``)."""
from fastroar.engine.kernels.dispatch import backend, rank, rank_and_mask, unmask
from fastroar.method import n_kept, rank_dtype

__all__ = ["backend", "rank_and_mask", "rank", "unmask", "n_kept", "rank_dtype"]
