"""Rank-and-mask kernels: every fast path equals the NumPy reference bit for bit, ties included.

Paths: the compiled extension (torch.ops.fastroar, CPU; CUDA when a GPU is present), the Numba
fallback, and the dispatch layer (fastroar.engine.kernels) with torch and NumPy inputs under each backend.
"""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

import fastroar.engine.kernels.dispatch as K
from fastroar.engine.kernels import numba_rank
from fastroar.engine.kernels.reference import (
    keep_mask_reference,
    n_kept,
    packed_masks_reference,
    rank_dtype,
    rank_reference,
)

# signalling-NaN payloads in the inputs make NumPy's float32 -> float64 casts warn; that is expected here
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")

LEVELS = [0.1, 0.2, 0.25, 0.5, 0.75, 0.9]
# includes levels keeping nothing / everything at small d (n = 0, n = d)
EDGE_LEVELS = [0.01, 0.3, 0.5, 0.99]

ext_ok, ext_cuda, ext_why = K._load_ext()
needs_ext = pytest.mark.skipif(not ext_ok, reason=f"fastroar._C not built ({ext_why})")


# ---------------------------------------------------------------- inputs with many ties

def tie_heavy(rng: np.random.Generator, B: int, d: int, kind: str) -> np.ndarray:
    """(B, d) float32 scores of one of several tie-heavy families."""
    if kind == "few":  # a handful of distinct values, both zero signs, specials
        vals = np.array([0.0, -0.0, 1.0, 2.0, -1.0, 0.5, np.inf, -np.inf, np.nan], np.float32)
        return rng.choice(vals, size=(B, d))
    if kind == "rounded":  # gradients rounded to 2 decimals: many ties among continuous values
        return np.round(np.abs(rng.standard_normal((B, d))), 2).astype(np.float32)
    if kind == "zeros":  # blocks of zeros (+ and -) inside continuous values, some NaNs with other payloads
        s = np.abs(rng.standard_normal((B, d))).astype(np.float32)
        for b in range(B):
            lo = rng.integers(0, d)
            s[b, lo:lo + rng.integers(0, d // 2 + 2)] = 0.0
        s[rng.random((B, d)) < 0.1] = -0.0
        bits = s.view(np.uint32)
        nan_at = rng.random((B, d)) < 0.02
        bits[nan_at] = rng.choice(np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF], np.uint32),
                                  size=int(nan_at.sum()))
        return s
    if kind == "signed":  # continuous signed values with denormals and infinities
        s = rng.standard_normal((B, d)).astype(np.float32)
        s[rng.random((B, d)) < 0.05] = np.float32(1e-45)
        s[rng.random((B, d)) < 0.05] = np.float32(-1e-45)
        s[rng.random((B, d)) < 0.02] = np.inf
        s[rng.random((B, d)) < 0.02] = -np.inf
        return s
    if kind == "const":  # whole rows equal: row 0 zeros, row 1 NaN, row 2 -0.0, rest 3.0
        s = np.full((B, d), 3.0, np.float32)
        s[0:1] = 0.0
        s[1:2] = np.nan
        s[2:3] = -0.0
        return s
    if kind == "sorted":  # ascending then descending rows (worst cases for some sorts)
        s = np.tile(np.arange(d, dtype=np.float32), (B, 1))
        s[1::2] = s[1::2, ::-1]
        return s
    raise ValueError(kind)


KINDS = ["few", "rounded", "zeros", "signed", "const", "sorted"]
SIZES = [(3, 1), (4, 7), (4, 8), (5, 9), (3, 64), (4, 2048), (4, 2049), (6, 3072), (5, 3077), (3, 16385), (2, 70001)]


def cases():
    rng = np.random.default_rng(20211206)
    for B, d in SIZES:
        for kind in KINDS:
            yield f"{kind}-B{B}-d{d}", tie_heavy(rng, B, d, kind)


CASES = list(cases())


def expected(scores_f32: np.ndarray, levels):
    r = rank_reference(scores_f32)
    t, b = packed_masks_reference(r, levels)
    return r, t, b


def assert_same(got, want, label=""):
    for name, g, w in zip(("ranks", "top", "bottom"), got, want):
        g = g.cpu().numpy() if isinstance(g, torch.Tensor) else np.asarray(g)
        assert g.dtype == w.dtype, f"{label} {name}: dtype {g.dtype} != {w.dtype}"
        assert g.shape == w.shape, f"{label} {name}: shape {g.shape} != {w.shape}"
        if not np.array_equal(g, w):
            bad = np.argwhere(g != w)[:5]
            pytest.fail(f"{label} {name}: {int((g != w).sum())} mismatches, first at {bad.tolist()}")


# ---------------------------------------------------------------- every path vs the reference

def run_path(path: str, x: np.ndarray, levels, monkeypatch):
    """Calls one implementation on float32/float16 NumPy scores and returns NumPy arrays."""
    if path == "ext":
        if not ext_ok:
            pytest.skip(f"fastroar._C not built ({ext_why})")
        return [t.numpy() for t in torch.ops.fastroar.rank_and_mask(torch.from_numpy(x), levels)]
    if path == "numba":
        return numba_rank.rank_and_mask(x, levels)
    dispatch, be = path.split(":")  # e.g. "torch:numba"
    if be == "ext" and not ext_ok:
        pytest.skip(f"fastroar._C not built ({ext_why})")
    monkeypatch.setenv("FASTROAR_BACKEND", be)
    if dispatch == "torch":
        return [t.numpy() for t in K.rank_and_mask(torch.from_numpy(x), levels)]
    return K.rank_and_mask(x, levels)


PATHS = ["ext", "numba", "torch:ext", "numpy:ext", "torch:numba", "numpy:numba", "numpy:numpy"]


@pytest.mark.parametrize("path", PATHS)
def test_equals_reference(path, monkeypatch):
    for label, x in CASES:
        levels = EDGE_LEVELS if x.shape[1] < 16 else LEVELS
        assert_same(run_path(path, x, levels, monkeypatch), expected(x, levels), f"{path} {label}")


@pytest.mark.parametrize("path", ["ext", "numba", "torch:numba", "numpy:ext"])
def test_float16_inputs(path, monkeypatch):
    rng = np.random.default_rng(1)
    for B, d in [(4, 9), (3, 3072), (2, 70001)]:
        for kind in ["few", "zeros", "signed", "rounded"]:
            x16 = tie_heavy(rng, B, d, kind).astype(np.float16)  # many new ties after rounding to fp16
            assert_same(run_path(path, x16, LEVELS, monkeypatch), expected(x16.astype(np.float32), LEVELS),
                        f"{path} fp16 {kind} d={d}")


@pytest.mark.parametrize("path", ["ext", "dispatch-ext", "dispatch-numba"])
def test_bfloat16_inputs(path, monkeypatch):
    if "ext" in path and not ext_ok:
        pytest.skip(f"fastroar._C not built ({ext_why})")
    rng = np.random.default_rng(2)
    for B, d in [(4, 9), (3, 3077), (2, 70001)]:
        for kind in ["few", "zeros", "signed", "rounded"]:
            xb = torch.from_numpy(tie_heavy(rng, B, d, kind)).to(torch.bfloat16)
            want = expected(xb.to(torch.float32).numpy(), LEVELS)
            if path == "ext":
                got = torch.ops.fastroar.rank_and_mask(xb, LEVELS)
            else:
                monkeypatch.setenv("FASTROAR_BACKEND", path.split("-")[1])
                got = K.rank_and_mask(xb, LEVELS)
            assert_same(got, want, f"{path} bf16 {kind} d={d}")


@pytest.mark.parametrize("path", PATHS)
def test_empty_and_single_batch(path, monkeypatch):
    rng = np.random.default_rng(3)
    for B in (0, 1):
        for d in (1, 8, 3077, 70001):
            x = tie_heavy(rng, max(B, 1), d, "zeros")[:B]
            assert_same(run_path(path, x, LEVELS, monkeypatch), expected(x, LEVELS), f"{path} B={B} d={d}")


@pytest.mark.parametrize("path", ["ext", "numba"])
def test_kept_counts_match_python_rounding(path, monkeypatch):
    """popcount of every mask = floor(k*d + 1/2) as Python computes it, for awkward k*d (x.5 boundaries)."""
    levels = [float(k) for k in np.round(np.linspace(0.01, 0.99, 99), 2)] + [0.35, 0.45, 0.15, 1 / 3, 2 / 3]
    rng = np.random.default_rng(4)
    for d in (2, 10, 20, 30, 100, 1000, 3072):
        x = rng.random((1, d), dtype=np.float32)
        _, top, bottom = run_path(path, x, levels, monkeypatch)
        want = np.array([n_kept(k, d) for k in levels])
        for m in (top, bottom):
            bits = np.unpackbits(np.asarray(m)[0], axis=-1, bitorder="little")[:, :d].sum(-1)
            np.testing.assert_array_equal(bits, want, err_msg=f"{path} d={d}")


def test_mask_properties_independent_of_reference():
    """Bits unpack (little order) to rank < n / rank >= d - n; n kept per row; top, bottom disjoint for k <= .5;
    ranks are a permutation ordered by score (NaN last, ties by index) -- checked without the reference."""
    assert n_kept(0.5, 9) == 5 and n_kept(0.5, 8) == 4 and n_kept(0.25, 10) == 3
    rng = np.random.default_rng(5)
    for B, d in [(5, 9), (4, 3077), (2, 70001)]:
        x = tie_heavy(rng, B, d, "zeros")
        ranks, top, bottom = K.rank_and_mask(x, LEVELS)
        r = ranks.astype(np.int64)
        assert ranks.dtype == (np.uint16 if d <= 65536 else np.int32)
        for b in range(B):
            order = np.empty(d, np.int64)
            order[r[b]] = np.arange(d)
            assert np.array_equal(np.sort(r[b]), np.arange(d))
            v = x[b, order].astype(np.float64)
            nan = np.isnan(v)
            n_num = d - int(nan.sum())
            assert not nan[:n_num].any()
            assert np.all(np.diff(v[:n_num]) <= 0)
            ties = np.diff(v[:n_num]) == 0
            assert np.all(np.diff(order[:n_num])[ties] > 0)
            assert np.all(np.diff(order[n_num:]) > 0)
        for li, k in enumerate(LEVELS):
            n = n_kept(k, d)
            t = np.unpackbits(top[:, li], axis=-1, bitorder="little")[:, :d].astype(bool)
            bo = np.unpackbits(bottom[:, li], axis=-1, bitorder="little")[:, :d].astype(bool)
            assert np.array_equal(t, r < n) and np.array_equal(bo, r >= d - n)
            assert np.all(t.sum(1) == n) and np.all(bo.sum(1) == n)
            if 2 * n <= d:  # k <= 0.5, except where rounding makes n = (d+1)/2 (odd d, k = 0.5)
                assert not (t & bo).any()
            else:
                assert (t & bo).sum(1).tolist() == [2 * n - d] * B
            # padding bits of the last byte stay zero
            assert np.all(np.unpackbits(top[:, li], axis=-1, bitorder="little")[:, d:] == 0)


# ---------------------------------------------------------------- dispatch layer

def test_dispatch_shapes_kinds_and_backend(monkeypatch):
    rng = np.random.default_rng(6)
    x = rng.random((3, 4, 5, 2), dtype=np.float32)
    want = expected(x.reshape(3, -1), [0.2])
    for be in ("ext", "numba", "numpy"):
        if be == "ext" and not ext_ok:
            continue
        monkeypatch.setenv("FASTROAR_BACKEND", be)
        got = K.rank_and_mask(x, [0.2])
        assert all(isinstance(g, np.ndarray) for g in got)
        assert_same(got, want, be)
        got_t = K.rank_and_mask(torch.from_numpy(x), [0.2])
        assert all(isinstance(g, torch.Tensor) and g.device.type == "cpu" for g in got_t)
        assert got_t[0].dtype == torch.uint16
        assert_same(got_t, want, be)
        assert np.array_equal(np.asarray(K.rank(x)), want[0])
        # float64 and integer inputs are read as float32, like the reference
        assert np.array_equal(K.rank(x.astype(np.float64)), want[0])
        assert np.array_equal(K.rank(torch.from_numpy(x.astype(np.float64))).numpy(), want[0])
        xi = rng.integers(0, 5, size=(2, 33))
        assert np.array_equal(K.rank(xi), rank_reference(xi.astype(np.float32)))
        ext_name = f"C++ (fastroar._C, {'cuda' if ext_cuda and torch.cuda.is_available() else 'cpu'})"
        assert K.backend() == {"numba": "numba", "numpy": "numpy"}.get(be, ext_name)
    monkeypatch.setenv("FASTROAR_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FASTROAR_BACKEND"):
        K.rank(x)
    monkeypatch.delenv("FASTROAR_BACKEND")
    assert K.backend() == (ext_name if ext_ok else "numba")


def test_requires_grad_and_noncontiguous_inputs():
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.random((6, 50), dtype=np.float32))
    xt = x.t().contiguous().t()  # non-contiguous view, same values
    assert not xt.is_contiguous()
    want = expected(x.numpy(), LEVELS)
    assert_same(K.rank_and_mask(xt, LEVELS), want, "non-contiguous")
    assert_same(K.rank_and_mask(x.clone().requires_grad_(True), LEVELS), want, "requires_grad")
    assert_same(K.rank_and_mask(x.numpy()[:, ::1], LEVELS), want, "numpy view")


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_levels_validated(bad):
    x = np.ones((2, 10), np.float32)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        K.rank_and_mask(x, [0.5, bad])
    if ext_ok:
        with pytest.raises(RuntimeError, match=r"\(0, 1\)"):
            torch.ops.fastroar.rank_and_mask(torch.from_numpy(x), [0.5, bad])


def test_scores_validated():
    with pytest.raises(ValueError, match="batch dimension"):
        K.rank(np.ones(5, np.float32))
    with pytest.raises(ValueError, match="batch dimension"):
        K.rank(torch.ones(5))
    if ext_ok:
        with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
            torch.ops.fastroar.rank_and_mask(torch.ones(2, 3, dtype=torch.float64), [0.5])
        with pytest.raises(RuntimeError, match=r"\(B, d\)"):
            torch.ops.fastroar.rank_and_mask(torch.ones(2, 3, 4), [0.5])


# ---------------------------------------------------------------- unmask

@pytest.mark.parametrize("direction", ["top", "bottom"])
@pytest.mark.parametrize("k", [0.1, 0.5, 0.93])
def test_unmask_matches_reference(direction, k):
    rng = np.random.default_rng(8)
    for shape in [(4, 3, 5, 5), (3, 7), (2, 3, 160, 147)]:
        x = rng.standard_normal(shape).astype(np.float32)
        scores = tie_heavy(rng, shape[0], math.prod(shape[1:]), "rounded")
        ranks = K.rank(scores)
        keep = keep_mask_reference(ranks, k, direction).reshape(shape)
        want = np.where(keep, x, np.float32(-7.5))
        got = K.unmask(x, ranks, k, direction, fill=-7.5)
        assert isinstance(got, np.ndarray) and got.dtype == x.dtype
        np.testing.assert_array_equal(got, want)
        got_t = K.unmask(torch.from_numpy(x), torch.from_numpy(ranks), k, direction, fill=-7.5)
        assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float32
        np.testing.assert_array_equal(got_t.numpy(), want)
        # mixed kinds: numpy ranks with a torch x, ranks shaped like x, integer images keep their dtype
        np.testing.assert_array_equal(K.unmask(torch.from_numpy(x), ranks.reshape(shape), k, direction,
                                               fill=-7.5).numpy(), want)
        xi = rng.integers(0, 256, size=shape, dtype=np.uint8)
        gi = K.unmask(torch.from_numpy(xi), torch.from_numpy(ranks), k, direction)
        assert gi.dtype == torch.uint8
        np.testing.assert_array_equal(gi.numpy(), np.where(keep, xi, 0))
        # kept count per image
        assert np.all((K.unmask(np.ones(shape, np.float32), ranks, k, direction) != 0)
                      .reshape(shape[0], -1).sum(1) == n_kept(k, math.prod(shape[1:])))


def test_unmask_validates():
    x = np.ones((2, 3, 4), np.float32)
    ranks = K.rank(np.random.default_rng(9).random((2, 12), dtype=np.float32))
    for k in (0, 1, -0.5, 2, float("nan"), "a"):
        with pytest.raises(ValueError, match=r"\(0, 1\)"):
            K.unmask(x, ranks, k)
    with pytest.raises(ValueError, match="direction"):
        K.unmask(x, ranks, 0.5, direction="middle")
    with pytest.raises(ValueError, match="ranks must be"):
        K.unmask(x, ranks[:, :11], 0.5)
    with pytest.raises(ValueError, match="ranks must be"):
        K.unmask(x, ranks[:1], 0.5)
    with pytest.raises(ValueError, match="batch dimension"):
        K.unmask(np.ones(5, np.float32), ranks, 0.5)


def test_keep_from_ranks_numba_helper():
    rng = np.random.default_rng(10)
    ranks = K.rank(tie_heavy(rng, 3, 101, "few"))
    for k in (0.2, 0.5, 0.8):
        n = n_kept(k, 101)
        for direction in ("top", "bottom"):
            want = keep_mask_reference(ranks, k, direction)
            for dtype in (np.bool_, np.uint8, np.float32):
                out = np.empty(101, dtype)
                for b in range(3):
                    numba_rank.keep_from_ranks(ranks[b], n, direction == "top", out)
                    np.testing.assert_array_equal(out.astype(bool), want[b])


def test_rank_dtype_boundary():
    x = np.random.default_rng(11).random((1, 65536), dtype=np.float32)
    r = K.rank(x)
    assert r.dtype == rank_dtype(65536) == np.uint16 and r.max() == 65535
    np.testing.assert_array_equal(r, rank_reference(x))
    _, top, bottom = K.rank_and_mask(x, [0.99999])  # n = 65535
    assert np.unpackbits(top, bitorder="little").sum() == n_kept(0.99999, 65536)


# ---------------------------------------------------------------- CUDA

@needs_ext
def test_build_info_consistent():
    info = torch.ops.fastroar.build_info()
    assert info.startswith("cuda: ")
    assert (info == "cuda: compiled") == torch.ops.fastroar.has_cuda() == ext_cuda


def _nvcc_usable() -> bool:
    return shutil.which("nvcc") is not None and torch.version.cuda is not None


@needs_ext
@pytest.mark.skipif(not _nvcc_usable(), reason="no nvcc on PATH or torch is not a CUDA build: CPU-only extension")
def test_cuda_kernels_compiled():
    """Where nvcc and a CUDA torch exist, the build compiles csrc/rank_mask_cuda.cu and registers its kernel."""
    info = torch.ops.fastroar.build_info()
    if "FASTROAR_NO_CUDA" in info:
        pytest.skip(f"CPU-only build requested ({info})")
    assert torch.ops.fastroar.has_cuda(), (f"fastroar._C was built without its CUDA kernels ({info}) although nvcc "
                                           "is here; rebuild: python -m pip install --no-build-isolation -e .")
    assert info == "cuda: compiled"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastroar::rank_and_mask", "CUDA")


needs_gpu = pytest.mark.skipif(not (ext_ok and ext_cuda and torch.cuda.is_available()),
                               reason="needs a GPU and fastroar._C built with CUDA")


@needs_gpu
def test_cuda_equals_reference():
    for label, x in CASES:
        levels = EDGE_LEVELS if x.shape[1] < 16 else LEVELS
        got = torch.ops.fastroar.rank_and_mask(torch.from_numpy(x).cuda(), levels)
        assert all(g.device.type == "cuda" for g in got)
        assert_same(got, expected(x, levels), f"cuda {label}")
        got = K.rank_and_mask(torch.from_numpy(x).cuda(), levels)
        assert all(g.device.type == "cuda" for g in got)
        assert_same(got, expected(x, levels), f"cuda dispatch {label}")


@needs_gpu
def test_cuda_half_types_batches_and_levels():
    rng = np.random.default_rng(12)
    many = [float(k) for k in np.linspace(0.01, 0.99, 40)]  # more levels than one launch packs
    for B, d in [(0, 10), (1, 150528), (257, 3072), (3, 70001)]:
        for kind in ["zeros", "few", "signed"]:
            x = tie_heavy(rng, max(B, 3), d, kind)[:B]
            for dt in (torch.float32, torch.float16, torch.bfloat16):
                xt = torch.from_numpy(x).to(dt)
                got = torch.ops.fastroar.rank_and_mask(xt.cuda(), many)
                assert_same(got, expected(xt.float().numpy(), many), f"cuda {dt} {kind} B={B} d={d}")
    x = torch.from_numpy(rng.random((3, 5, 7), dtype=np.float32)).cuda()
    r = K.rank(x)
    np.testing.assert_array_equal(K.unmask(x, r, 0.3).cpu().numpy(),
                                  K.unmask(x.cpu().numpy(), r.cpu().numpy(), 0.3))


@needs_ext
def test_ext_rows_beyond_compact_entries():
    """d > 2^21: the C++ kernel's last pass cannot use 32-bit (digit, index) entries; still exact."""
    rng = np.random.default_rng(13)
    d = (1 << 21) + 3
    x = np.round(np.abs(rng.standard_normal((1, d))), 3).astype(np.float32)  # ~4k distinct values
    x[0, ::7] = 0.0
    assert_same(torch.ops.fastroar.rank_and_mask(torch.from_numpy(x), [0.3]), expected(x, [0.3]), "d=2^21+3")
