"""Rank+mask kernel throughput: fastroar._C and Numba against argsort baselines timed in the same run.

Each measured call turns a (B, d) float32 batch of scores into the rank map plus the bit-packed top and
bottom masks of levels 0.1..0.9. Baselines do the same work with a comparison sort: NumPy's per-row
``np.argsort(-row, kind="stable")`` and ``torch.argsort(stable=True)``, then the rank scatter and masks.
Scores are |N(0, 1)| (input-gradient-like: continuous, non-negative). CPU rows use at most 2 threads.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Row, best_time  # noqa: E402

LEVELS = [round(0.1 * i, 1) for i in range(1, 10)]
THREADS = 2


def _scores(B: int, d: int) -> np.ndarray:
    return np.abs(np.random.default_rng(0).standard_normal((B, d), dtype=np.float32))


def _numpy_argsort(x: np.ndarray, levels: list[float]):
    from fastroar.engine.kernels.reference import n_kept, rank_dtype

    B, d = x.shape
    ranks = np.empty((B, d), rank_dtype(d))
    pos = np.arange(d)
    for b in range(B):
        ranks[b, np.argsort(-x[b], kind="stable")] = pos
    r = ranks.astype(np.int32)
    top = np.stack([np.packbits(r < n_kept(k, d), axis=-1, bitorder="little") for k in levels], 1)
    bottom = np.stack([np.packbits(r >= d - n_kept(k, d), axis=-1, bitorder="little") for k in levels], 1)
    return ranks, top, bottom


def _torch_argsort(x: torch.Tensor, levels: list[float]):
    from fastroar.engine.kernels.reference import n_kept

    B, d = x.shape
    order = torch.argsort(x, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(d, device=x.device).expand(B, d))
    weights = (2 ** torch.arange(8, device=x.device, dtype=torch.int32)).to(torch.uint8)

    def pack(m: torch.Tensor) -> torch.Tensor:  # little bit order along d (d % 8 == 0 here)
        return (m.view(B, d // 8, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)

    top = torch.stack([pack(ranks < n_kept(k, d)) for k in levels], 1)
    bottom = torch.stack([pack(ranks >= d - n_kept(k, d)) for k in levels], 1)
    return ranks.to(torch.int32), top, bottom


def _check(got, want, what: str) -> None:
    """The baselines must produce the same bits as fastroar (same definition), or the comparison is void."""
    for g, w in zip(got, want):
        g = g.cpu().numpy() if isinstance(g, torch.Tensor) else g
        w = w.cpu().numpy() if isinstance(w, torch.Tensor) else w
        if not np.array_equal(g.astype(np.int64), w.astype(np.int64)):
            raise AssertionError(f"bench_kernels: {what} disagrees with the reference output")


def _section_rows(section: str, x: np.ndarray, primary: str, repeat: int) -> list[Row]:
    from fastroar.engine.kernels import numba_rank
    from fastroar.engine.kernels.dispatch import _load_ext

    B, d = x.shape
    gb = x.nbytes / 1e9
    xt = torch.from_numpy(x)
    ref = _numpy_argsort(x, LEVELS)
    t_np = best_time(lambda: _numpy_argsort(x, LEVELS), repeat=repeat)
    _check(_torch_argsort(xt, LEVELS), ref, "torch.argsort")
    t_torch = best_time(lambda: _torch_argsort(xt, LEVELS), repeat=repeat)
    base = {"numpy argsort": t_np, "torch.argsort": t_torch}
    other = "torch.argsort" if primary == "numpy argsort" else "numpy argsort"

    def row(name: str, t: float, note: str = "") -> Row:
        extra = f"{base[other] / t:.2f}x {other}; {gb / t:.2f} GB/s scores read" + (f"; {note}" if note else "")
        return Row(section, name, B / t, "img/s", primary, base[primary] / t, extra)

    rows = [row("numpy argsort (per row, 1 thread)", t_np), row(f"torch.argsort stable ({THREADS} threads)", t_torch)]
    ok, _, why = _load_ext()
    if ok:
        _check(torch.ops.fastroar.rank_and_mask(xt, LEVELS), ref, "fastroar._C cpu")
        t = best_time(lambda: torch.ops.fastroar.rank_and_mask(xt, LEVELS), repeat=repeat)
        rows.append(row(f"fastroar._C cpu ({THREADS} threads)", t))
    else:
        print(f"[bench_kernels] fastroar._C not built: {why}", file=sys.stderr)
    _check(numba_rank.rank_and_mask(x, LEVELS), ref, "numba")
    t = best_time(lambda: numba_rank.rank_and_mask(x, LEVELS), repeat=repeat)
    rows.append(row(f"numba ({THREADS} threads)", t))
    return rows


def _cuda_rows(section: str, x: np.ndarray, repeat: int) -> list[Row]:
    from fastroar.engine.kernels.dispatch import _load_ext

    ok, has_cuda, _ = _load_ext()
    B, d = x.shape
    xc = torch.from_numpy(x).cuda()
    gb = x.nbytes / 1e9

    def timed(fn):
        def run():
            fn()
            torch.cuda.synchronize()
        return best_time(run, repeat=repeat)

    dst = torch.empty_like(xc)
    t_copy = timed(lambda: dst.copy_(xc))
    copy_bw = 2 * gb / t_copy  # read + write
    t_torch = timed(lambda: _torch_argsort(xc, LEVELS))
    rows = [Row(section, "torch.argsort stable (cuda)", B / t_torch, "img/s", "torch.argsort stable (cuda)", 1.0,
                f"{gb / t_torch:.1f} GB/s scores read; d2d copy {copy_bw:.0f} GB/s")]
    if ok and has_cuda:
        _check(torch.ops.fastroar.rank_and_mask(xc, LEVELS), _torch_argsort(xc, LEVELS), "fastroar._C cuda")
        t = timed(lambda: torch.ops.fastroar.rank_and_mask(xc, LEVELS))
        rows.append(Row(section, "fastroar._C cuda", B / t, "img/s", "torch.argsort stable (cuda)", t_torch / t,
                        f"{gb / t:.1f} GB/s scores read = {gb / t / copy_bw:.1%} of d2d copy bandwidth"))
    return rows


def rows(quick: bool) -> list[Row]:
    """Rank+mask throughput rows at d = 3,072 (CIFAR-10) and d = 150,528 (ImageNet), batch 256."""
    torch_threads, numba_threads = torch.get_num_threads(), None
    torch.set_num_threads(min(THREADS, torch_threads))
    try:
        import numba

        numba_threads = numba.get_num_threads()
        numba.set_num_threads(min(THREADS, numba_threads))
    except ImportError:
        pass
    out: list[Row] = []
    try:
        repeat = 1 if quick else 3
        big_b = 32 if quick else 256
        x_small = _scores(256, 3072)
        x_big = _scores(big_b, 150528)
        s_small = "rank+mask d=3072 B=256"
        s_big = f"rank+mask d=150528 B={big_b}" + (" (quick)" if quick else "")
        out += _section_rows(s_small, x_small, "torch.argsort", repeat)
        out += _section_rows(s_big, x_big, "numpy argsort", repeat)
        if torch.cuda.is_available():
            out += _cuda_rows(s_small + " cuda", x_small, repeat)
            out += _cuda_rows("rank+mask d=150528 B=256 cuda", _scores(256, 150528) if quick else x_big, repeat)
    finally:
        torch.set_num_threads(torch_threads)
        if numba_threads is not None:
            numba.set_num_threads(numba_threads)
    return out


if __name__ == "__main__":
    from bench import print_table

    print_table(rows("--quick" in sys.argv))
