"""The CPU kernels of the stacked MLP retrain (csrc/stacked_mlp.cpp, and the Numba fallback in
fastroar.training.batched) against plain references, bit for bit: the masked gather against NumPy's
keep masks, the SGD update against torch's element-wise ops (one rounding each, as torch.optim.SGD's
foreach update on the CPU gives); serial and multi-threaded runs alike. And a stacked retrain with the
extension built imports no Numba (its import and first call cost about 0.9 s a process)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from fastroar.engine.kernels.dispatch import extension_op
from fastroar.engine.kernels.reference import keep_mask_reference, rank_reference
from fastroar.training.batched import Spec, _gather_numba, _sgd_numba, keep_bounds

HAS_EXT = extension_op("sgd_update_") is not None
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="fastroar._C is not built (the Numba kernels serve)")


def _ext_gather(*args):
    torch.ops.fastroar.gather_masked(*args)


def _ext_sgd(*args):
    torch.ops.fastroar.sgd_update_(*args)


GATHERS = [pytest.param(_ext_gather, id="ext", marks=needs_ext), pytest.param(_gather_numba, id="numba")]
SGDS = [pytest.param(_ext_sgd, id="ext", marks=needs_ext), pytest.param(_sgd_numba, id="numba")]


def _gather_case(d: int, rank_dtype: np.dtype, seed: int = 0):
    """Random images (with ties in the scores behind the ranks), every level from n = 0 to n = d in both
    directions, per-model fills, repeated rows: (x, ranks, idx, lo, hi, fill, specs)."""
    rng = np.random.default_rng(seed)
    n = 7
    scores = rng.integers(0, 4, (n, d)).astype(np.float32)  # many equal scores: ties decided by index
    ranks = rank_reference(scores).astype(rank_dtype)
    x = rng.random((n, d)).astype(np.float32) + 0.5
    levels = (0.2 / d, 1.0 / d, 0.3, 0.5, 1 - 0.6 / d, 1 - 0.1 / d)  # n from 0 to d
    specs = [Spec(k, direction, 0, fill=(0.0 if i % 2 else 0.25 + i / 64))
             for i, (k, direction) in enumerate((k, direction) for k in levels for direction in ("top", "bottom"))]
    lo, hi = keep_bounds(specs, d, 0, torch.int64)
    idx = torch.from_numpy(rng.integers(0, n, (len(specs), 5)))
    fill = torch.tensor([s.fill for s in specs], dtype=torch.float32)
    return torch.from_numpy(x), torch.from_numpy(ranks), idx, lo, hi, fill, specs


@pytest.mark.parametrize("gather", GATHERS)
@pytest.mark.parametrize("d, rank_dtype", [(37, np.uint16), (37, np.int32), (70, np.int64), (70000, np.uint32)])
def test_gather_equals_numpy_keep_masks(gather, d, rank_dtype):
    x, ranks, idx, lo, hi, fill, specs = _gather_case(d, rank_dtype)
    out = torch.full((*idx.shape, d), float("nan"))
    gather(x, ranks, idx, lo, hi, fill, out)
    for i, spec in enumerate(specs):
        rows = idx[i].numpy()
        keep = keep_mask_reference(ranks.numpy()[rows].astype(np.int64), spec.k, spec.direction)
        want = np.where(keep, x.numpy()[rows], np.float32(spec.fill))
        np.testing.assert_array_equal(out[i].numpy(), want, err_msg=str(spec))


@needs_ext
def test_gather_on_several_threads_equals_one():
    """Large enough (>= 2^20 coordinates) for at::parallel_for to split the rows."""
    x, ranks, idx, lo, hi, fill, _ = _gather_case(70000, np.uint32, seed=3)
    idx = idx.repeat(1, 4)
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = torch.empty((*idx.shape, x.shape[1]))
            _ext_gather(x, ranks, idx, lo, hi, fill, out)
            outs.append(out)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0], outs[1])


def _sgd_reference(p, g, buf, lr, wd, momentum, first):
    """torch.optim.SGD's update (weight decay, Nesterov momentum) as torch's element-wise ops, one
    rounding per op (how the CUDA path of the stack writes it)."""
    g = g.clone()
    if wd:
        g.add_(torch.mul(p, wd))
    if momentum:
        if first:
            buf.copy_(g)
        else:
            buf.mul_(momentum).add_(g)
        g.add_(torch.mul(buf, momentum))
    p.sub_(torch.mul(g, lr))


@pytest.mark.parametrize("sgd", SGDS)
@pytest.mark.parametrize("momentum, wd", [(0.9, 5e-4), (0.9, 0.0), (0.0, 5e-4), (0.0, 0.0), (0.85, 1e-3)])
def test_sgd_update_equals_torch_ops_bitwise(sgd, momentum, wd):
    gen = torch.Generator().manual_seed(0)
    size = 1000 * 17 + 3            # a vector body and a tail
    p_ref = torch.randn(size, generator=gen)
    buf_ref = torch.zeros(size)
    p, buf = p_ref.clone(), buf_ref.clone()
    for step in range(5):
        g = torch.randn(size, generator=gen) * 10 ** (step - 2)
        lr = 0.05 * (1 - step / 5) + 1e-3
        _sgd_reference(p_ref, g, buf_ref, lr, wd, momentum, step == 0)
        sgd(p, g, buf, lr, wd, momentum, step == 0)
        assert torch.equal(p, p_ref), f"step {step}: parameters differ"
        assert torch.equal(buf, buf_ref) or not momentum, f"step {step}: momentum buffers differ"


@needs_ext
def test_sgd_update_on_several_threads_equals_one():
    gen = torch.Generator().manual_seed(1)
    size = (1 << 21) + 5
    p0, g, buf0 = torch.randn(size, generator=gen), torch.randn(size, generator=gen), torch.randn(size, generator=gen)
    got = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            p, buf = p0.clone(), buf0.clone()
            _ext_sgd(p, g, buf, 0.03, 5e-4, 0.9, False)
            got.append((p, buf))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])


@needs_ext
def test_ext_kernels_reject_bad_input_with_a_message():
    x, ranks, idx, lo, hi, fill, _ = _gather_case(37, np.uint16)
    with pytest.raises(RuntimeError, match="out must be"):
        _ext_gather(x, ranks, idx, lo, hi, fill, torch.empty(1, 1, 37))
    with pytest.raises(RuntimeError, match="row index out of range"):
        _ext_gather(x, ranks, idx + 100, lo, hi, fill, torch.empty((*idx.shape, 37)))
    with pytest.raises(RuntimeError, match="x has the wrong dtype"):
        _ext_gather(x.double(), ranks, idx, lo, hi, fill, torch.empty((*idx.shape, 37)))
    with pytest.raises(RuntimeError, match="one size"):
        _ext_sgd(torch.zeros(4), torch.zeros(5), torch.zeros(4), 0.1, 0.0, 0.9, True)


@needs_ext
def test_stacked_retrain_imports_no_numba():
    code = ("import sys, numpy as np\n"
            "from fastroar.training.batched import Spec, train_stacked\n"
            "from fastroar.training.settings import Recipe\n"
            "from fastroar.engine.kernels.reference import rank_reference\n"
            "rng = np.random.default_rng(0)\n"
            "def split(n):\n"
            "    x = rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)\n"
            "    return x, rng.integers(0, 3, n), rank_reference(rng.random((n, 16)).astype(np.float32))\n"
            "train_stacked('mlp1', {'width': 8}, (1, 4, 4), 3, split(40), split(10),\n"
            "              [Spec(0.5, 'top', 0), Spec(0.25, 'bottom', 1)], Recipe(epochs=2, batch_size=16))\n"
            "print(sorted(k for k in sys.modules if k == 'numba' or k.startswith('numba.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def _train(arch, params, recipe, monkeypatch, compiled: bool):
    import fastroar.training.batched as batched
    from fastroar.training.batched import train_stacked

    if not compiled:
        monkeypatch.setattr(batched, "_compiled_step", lambda device, dtype: None)
    else:
        assert batched._compiled_step(torch.device("cpu"), torch.float32) is not None
    rng = np.random.default_rng(3)
    n, d = 150, 48
    images = rng.integers(0, 256, (n, 1, 8, 6), dtype=np.uint8)
    labels = rng.integers(0, 5, n)
    ranks = np.stack([rng.permutation(d) for _ in range(n)]).astype(np.uint16)
    split = (images, labels, ranks)
    specs = [Spec(0.25, "top", 0), Spec(0.5, "bottom", 1), Spec(0.1, "top", 2, fill=0.3)]
    out = train_stacked(arch, params, (1, 8, 6), 5, split, split, specs, recipe, return_models=True)
    monkeypatch.undo()
    return out


@needs_ext
@pytest.mark.parametrize("arch, params", [("mlp2", {"width": 24}), ("mlp1", {"width": 16}), ("linear", {})])
@pytest.mark.parametrize("smoothing, momentum, wd", [(0.0, 0.9, 5e-4), (0.2, 0.0, 0.0), (0.1, 0.5, 0.0)])
def test_compiled_step_equals_the_python_step_bitwise(monkeypatch, arch, params, smoothing, momentum, wd):
    """The extension's whole step (C++) against the op-by-op Python step: every model's weights, loss,
    train and test accuracy, bit for bit, after 3 epochs of a cosine schedule (the tail batch included)."""
    from fastroar.training.settings import Recipe

    recipe = Recipe(epochs=3, batch_size=32, lr=0.1, momentum=momentum, weight_decay=wd, label_smoothing=smoothing)
    got = _train(arch, params, recipe, monkeypatch, compiled=True)
    want = _train(arch, params, recipe, monkeypatch, compiled=False)
    for g, w in zip(got, want):
        assert (g["accuracy"], g["train_acc"], g["loss"]) == (w["accuracy"], w["train_acc"], w["loss"])
        for name, value in w["state_dict"].items():
            assert torch.equal(g["state_dict"][name], value), name
    assert any(not torch.equal(got[0]["state_dict"][n], got[1]["state_dict"][n]) for n in got[0]["state_dict"])


@needs_ext
def test_compiled_step_rejects_bad_input_with_a_message():
    p = [torch.zeros(2, 4, 3), torch.zeros(2, 3)]
    with pytest.raises(RuntimeError, match="a weight and a bias per layer"):
        torch.ops.fastroar.stacked_step_(p, p[:1], p, torch.zeros(2, 5, 4), torch.zeros(2, 5, dtype=torch.long),
                                         0.0, 0.1, 0.0, 0.0, True)
    with pytest.raises(RuntimeError, match="int64"):
        torch.ops.fastroar.stacked_step_(p, p, p, torch.zeros(2, 5, 4), torch.zeros(2, 5, dtype=torch.int32),
                                         0.0, 0.1, 0.0, 0.0, True)
