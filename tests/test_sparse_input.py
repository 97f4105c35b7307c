"""The sparse first layer of the stacked MLP retrain (csrc/sparse_input.cpp, retrain.sparse_input) against
plain dense references.

Exact equality where the summation order cannot matter: integer-valued inputs, fills, weights and output
gradients small enough that every float32 partial sum is an exact integer; random masks from rank maps with
ties (broken by index), all-zero rows, n = 0 and n = d, several levels and both directions in one stack.
Elsewhere the sparse and dense layers agree to float rounding, the compiled step equals the op-by-op Python
step bit for bit, and a short stacked retrain gives the dense accuracies within a small tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastroar.engine.kernels.dispatch import extension_op
from fastroar.engine.kernels.reference import keep_mask_reference, rank_reference
from fastroar.method import n_kept
from fastroar.training.batched import SparseRows, Spec, keep_bounds, train_stacked, uses_sparse_input
from fastroar.training.jobs import SPARSE_MAX_SHARE, SPARSE_MIN_D, Job

HAS_SPARSE = extension_op("sparse_stacked_step_") is not None
pytestmark = pytest.mark.skipif(not HAS_SPARSE, reason="fastroar._C is not built (the layer stays dense)")
ops = torch.ops.fastroar

LEVELS = [(0.2 / 37, "top"), (0.3, "top"), (0.3, "bottom"), (0.5, "top"), (1 - 0.1 / 37, "bottom"), (0.05, "bottom")]


def _case(d: int = 37, n: int = 9, b: int = 6, h: int = 150, fill: float = 0.0, seed: int = 0):
    """Integer data: pixels in 0..3 (row 0 all zero; row 1 all equal to the fill), ranks from integer scores
    (many ties), integer weights in -3..3; a stack of every level of LEVELS (n = 0 and n = d included)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, (n, d)).astype(np.float32)
    x[0] = 0.0
    x[1] = fill
    ranks = rank_reference(rng.integers(0, 3, (n, d)).astype(np.float32))
    specs = [Spec(k, direction, i, fill=fill) for i, (k, direction) in enumerate(LEVELS)]
    m = len(specs)
    lo, hi = keep_bounds(specs, d, 0, torch.int64)
    idx = torch.from_numpy(rng.integers(0, n, (m, b)))
    idx[:, 0] = 0          # every model sees the all-zero row and the all-fill row
    idx[:, 1] = 1
    w = torch.from_numpy(rng.integers(-3, 4, (m, d, h)).astype(np.float32))
    bias = torch.from_numpy(rng.integers(-3, 4, (m, h)).astype(np.float32))
    g = torch.from_numpy(rng.integers(-3, 4, (m, b, h)).astype(np.float32))
    fills = torch.full((m,), fill)
    return torch.from_numpy(x), torch.from_numpy(ranks), specs, lo, hi, idx, fills, w, bias, g


def _dense_batch(x, ranks, specs, idx):
    """(M, B, d): each model's rows masked by NumPy's keep masks, removed coordinates = the fill."""
    out = []
    for i, spec in enumerate(specs):
        rows = idx[i].numpy()
        keep = keep_mask_reference(ranks.numpy()[rows].astype(np.int64), spec.k, spec.direction)
        out.append(np.where(keep, x.numpy()[rows], np.float32(spec.fill)))
    return torch.from_numpy(np.stack(out))


def _rows(x, ranks, lo, hi, idx, fills):
    order = ops.invert_ranks(ranks)
    return SparseRows(*ops.sparse_rows(x, order, idx, lo, hi, fills), fills)


def test_invert_ranks_is_argsort_and_refuses_a_non_permutation():
    rng = np.random.default_rng(1)
    for d, dtype, want_dtype in ((50, np.uint16, torch.uint16), (70000, np.int32, torch.int32)):
        ranks = rank_reference(rng.integers(0, 5, (3, d)).astype(np.float32)).astype(dtype)
        order = ops.invert_ranks(torch.from_numpy(ranks))
        assert order.dtype == want_dtype
        np.testing.assert_array_equal(order.numpy().astype(np.int64), np.argsort(ranks, axis=1, kind="stable"))
    bad = torch.from_numpy(np.array([[0, 1, 1]], dtype=np.int64))
    with pytest.raises(RuntimeError, match="not a permutation"):
        ops.invert_ranks(bad)


@pytest.mark.parametrize("fill", [0.0, 2.0])
def test_sparse_rows_are_the_kept_coordinates_off_the_fill_in_rank_order(fill):
    x, ranks, specs, lo, hi, idx, fills, *_ = _case(fill=fill)
    rows = _rows(x, ranks, lo, hi, idx, fills)
    assert rows.cols.shape[2] == max(n_kept(s.k, x.shape[1]) for s in specs)
    for i, spec in enumerate(specs):
        for j, row in enumerate(idx[i].tolist()):
            r = ranks[row].numpy().astype(np.int64)
            keep = keep_mask_reference(r[None], spec.k, spec.direction)[0]
            coords = [c for c in np.argsort(r) if keep[c] and x[row, c] != fill]   # rank order
            count = int(rows.count[i, j])
            assert rows.cols[i, j, :count].tolist() == coords, (spec, row)
            np.testing.assert_array_equal(rows.vals[i, j, :count].numpy(), x[row, coords].numpy() - np.float32(fill))
        assert int(rows.count[i, 1]) == 0                        # the all-fill row: nothing to multiply
        assert int(rows.count[i, 0]) == (0 if fill == 0.0 else n_kept(spec.k, x.shape[1]))  # the all-zero row


@pytest.mark.parametrize("fill", [0.0, 1.0])
@pytest.mark.parametrize("h", [150, 128, 5])   # a partial tile, whole tiles, less than a vector
def test_forward_and_weight_gradient_equal_the_dense_layer_exactly(fill, h):
    """Integer operands: the sparse and dense sums are the same exact integers, whatever their order."""
    x, ranks, specs, lo, hi, idx, fills, w, bias, g = _case(h=h, fill=fill)
    w, bias, g = w.contiguous(), bias.contiguous(), g.contiguous()
    w, bias, g = w[..., :h].contiguous(), bias[..., :h].contiguous(), g[..., :h].contiguous()
    rows = _rows(x, ranks, lo, hi, idx, fills)
    xb = _dense_batch(x, ranks, specs, idx)
    want = torch.baddbmm(bias.unsqueeze(1), xb, w)
    got = ops.sparse_first_forward(*rows, w, bias)
    assert torch.equal(got, want)
    assert torch.equal(got[:, 0], bias) or fill != 0.0   # an all-zero row under a zero fill: the bias alone
    wgrad, bgrad = torch.full_like(w, float("nan")), torch.full_like(bias, float("nan"))
    ops.sparse_first_grads(*rows, g, wgrad, bgrad)
    assert torch.equal(wgrad, torch.bmm(xb.transpose(1, 2), g))
    assert torch.equal(bgrad, g.sum(1))


def test_a_stack_that_keeps_nothing_gives_the_bias_and_the_fills_share():
    """n = 0 in every model (rows of width 0): h = b1 + fill * sum of W1, dW1 = fill * sum of g on every row."""
    x, ranks, _, _, _, idx, _, w, bias, g = _case()
    specs = [Spec(0.2 / 37, "top", 0, fill=2.0), Spec(0.1 / 37, "bottom", 1, fill=2.0)]
    lo, hi = keep_bounds(specs, x.shape[1], 0, torch.int64)
    idx, w, bias, g = idx[:2].contiguous(), w[:2].contiguous(), bias[:2].contiguous(), g[:2].contiguous()
    rows = _rows(x, ranks, lo, hi, idx, torch.full((2,), 2.0))
    assert rows.cols.shape[2] == 0
    xb = _dense_batch(x, ranks, specs, idx)
    assert torch.equal(xb, torch.full_like(xb, 2.0))
    assert torch.equal(ops.sparse_first_forward(*rows, w, bias), torch.baddbmm(bias.unsqueeze(1), xb, w))
    wgrad, bgrad = torch.empty_like(w), torch.empty_like(bias)
    ops.sparse_first_grads(*rows, g, wgrad, bgrad)
    assert torch.equal(wgrad, torch.bmm(xb.transpose(1, 2), g))


def test_real_valued_operands_agree_to_float_rounding_and_threads_do_not_change_bits():
    rng = np.random.default_rng(4)
    d, n, h = 300, 40, 96
    x = torch.from_numpy(rng.random((n, d), dtype=np.float32))
    x[:, ::3] = 0.0                                             # black pixels: skipped, change nothing
    ranks = torch.from_numpy(rank_reference(rng.random((n, d), dtype=np.float32)))
    specs = [Spec(k, dr, 0, fill=0.25) for k in (0.05, 0.3) for dr in ("top", "bottom")]
    lo, hi = keep_bounds(specs, d, 0, torch.int64)
    idx = torch.from_numpy(rng.integers(0, n, (len(specs), 32)))
    fills = torch.full((len(specs),), 0.25)
    w = torch.randn(len(specs), d, h, generator=torch.Generator().manual_seed(0))
    bias, g = torch.randn(len(specs), h), torch.randn(len(specs), 32, h)
    xb = _dense_batch(x, ranks, specs, idx)
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rows = _rows(x, ranks, lo, hi, idx, fills)
            wgrad, bgrad = torch.empty_like(w), torch.empty_like(bias)
            ops.sparse_first_grads(*rows, g, wgrad, bgrad)
            outs.append((ops.sparse_first_forward(*rows, w, bias), wgrad))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    torch.testing.assert_close(outs[0][0], torch.baddbmm(bias.unsqueeze(1), xb, w), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(outs[0][1], torch.bmm(xb.transpose(1, 2), g), rtol=1e-5, atol=1e-4)


def test_ops_reject_bad_input_with_a_message():
    x, ranks, specs, lo, hi, idx, fills, w, bias, g = _case()
    rows = _rows(x, ranks, lo, hi, idx, fills)
    bad = rows.cols.clone()
    assert int(rows.count[3, 2]) > 0
    bad[3, 2, 0] = x.shape[1]
    with pytest.raises(RuntimeError, match="cols out of range"):
        ops.sparse_linear(bad, rows.vals, rows.count, w, bias)
    with pytest.raises(RuntimeError, match="row index out of range"):
        ops.sparse_rows(x, ops.invert_ranks(ranks), idx + 100, lo, hi, fills)


# ---- whole training runs ------------------------------------------------------------------------------------

SHAPE = (1, 16, 8)   # blockdigits' shape (d = 128)
CLASSES = 10


PATTERNS = np.random.default_rng(5).integers(0, 2, (CLASSES, 8, 8)) * 255   # one 8x8 pattern per class


def _blocky(n: int, rng: np.random.Generator):
    """blockdigits-shaped learnable data: the class's pattern in the signal block (top or bottom 8x8, at
    random), sparse noise in the other, black elsewhere; ranks from |x - 128| plus noise (many ties)."""
    patterns = PATTERNS
    y = rng.integers(0, CLASSES, n)
    x = np.zeros((n, 1, 16, 8), np.uint8)
    top = rng.random(n) < 0.5
    noise = (rng.random((n, 8, 8)) < 0.2) * rng.integers(0, 256, (n, 8, 8))
    for i in range(n):
        sig, other = (slice(0, 8), slice(8, 16)) if top[i] else (slice(8, 16), slice(0, 8))
        x[i, 0, sig] = patterns[y[i]]
        x[i, 0, other] = noise[i]
    flat = x.reshape(n, -1).astype(np.float32)
    return x, y, rank_reference(np.abs(flat - 128) + rng.integers(0, 4, flat.shape).astype(np.float32))


@pytest.fixture(scope="module")
def blocky():
    rng = np.random.default_rng(11)
    return _blocky(600, rng), _blocky(400, rng)


def _recipe(**kw):
    from fastroar.training.settings import Recipe

    return Recipe(**{"epochs": 4, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, **kw})


def test_sparse_retrain_matches_dense_accuracies(blocky):
    train, test = blocky
    specs = [Spec(k, dr, s) for s, (k, dr) in enumerate([(0.05, "top"), (0.1, "bottom"), (0.3, "top"),
                                                         (0.5, "bottom"), (0.2, "top")])]
    recipe = _recipe(epochs=10, lr=0.2, batch_size=32)
    dense = train_stacked("mlp2", {"width": 64}, SHAPE, CLASSES, train, test, specs, recipe)
    sparse = train_stacked("mlp2", {"width": 64}, SHAPE, CLASSES, train, test, specs, recipe, sparse_input=True)
    accs = [r["accuracy"] for r in dense]
    assert max(accs) > 0.5 and len(set(accs)) > 1      # the models learn, and the masks matter
    for d, s, spec in zip(dense, sparse, specs):
        assert abs(d["accuracy"] - s["accuracy"]) <= 0.01, spec      # 4 of 400 test images
        assert s["loss"] == pytest.approx(d["loss"], rel=1e-3), spec


def _train(monkeypatch, compiled: bool, specs, train, test, recipe):
    import fastroar.training.batched as batched

    if not compiled:
        monkeypatch.setattr(batched, "_compiled_step", lambda device, dtype, sparse=False: None)
    out = train_stacked("mlp2", {"width": 40}, SHAPE, CLASSES, train, test, specs, recipe, return_models=True,
                        sparse_input=True)
    monkeypatch.undo()
    return out


@pytest.mark.parametrize("fill, momentum, wd", [(0.0, 0.9, 5e-4), (0.3, 0.9, 5e-4), (0.0, 0.0, 0.0), (0.3, 0.5, 0.0)])
def test_compiled_sparse_step_equals_the_python_step_bitwise(monkeypatch, blocky, fill, momentum, wd):
    """The C++ step (the first layer's SGD applied where its gradient is computed) against the op-by-op Python
    step (gradient stored, then torch.optim.SGD's update): every weight bit for bit."""
    train, test = blocky
    specs = [Spec(0.1, "top", 0, fill), Spec(0.5, "bottom", 1, fill), Spec(0.3, "top", 2, fill)]
    recipe = _recipe(epochs=2, label_smoothing=0.1, momentum=momentum, weight_decay=wd)
    got = _train(monkeypatch, True, specs, train, test, recipe)
    want = _train(monkeypatch, False, specs, train, test, recipe)
    for g, w in zip(got, want):
        assert (g["accuracy"], g["train_acc"], g["loss"]) == (w["accuracy"], w["train_acc"], w["loss"])
        for name, value in w["state_dict"].items():
            assert torch.equal(g["state_dict"][name], value), name


def test_a_sparse_models_result_does_not_depend_on_its_stack(blocky):
    """Bitwise, as the dense stack: a resumed group reproduces the uninterrupted run exactly."""
    train, test = blocky
    specs = [Spec(0.05, "top", 0), Spec(0.5, "bottom", 1), Spec(0.2, "top", 2)]
    args = ("mlp2", {"width": 40}, SHAPE, CLASSES, train, test)
    full = train_stacked(*args, specs, _recipe(epochs=2), return_models=True, sparse_input=True)
    part = train_stacked(*args, [specs[2]], _recipe(epochs=2), return_models=True, sparse_input=True)
    assert part[0]["loss"] == full[2]["loss"] and part[0]["accuracy"] == full[2]["accuracy"]
    for name, value in full[2]["state_dict"].items():
        assert torch.equal(part[0]["state_dict"][name], value), name


# ---- the rule and the job key -------------------------------------------------------------------------------

def test_the_rule_is_a_function_of_the_setting_and_the_jobs_shape():
    big = SPARSE_MIN_D + 100
    assert uses_sparse_input("auto", "mlp2", 0.05, big, "cpu", True)
    assert uses_sparse_input("auto", "mlp2", SPARSE_MAX_SHARE, big, "cpu", True)
    assert not uses_sparse_input("auto", "mlp2", 0.7, big, "cpu", True)           # keeps most coordinates
    assert not uses_sparse_input("auto", "mlp2", 0.05, SPARSE_MIN_D - 1, "cpu", True)  # a small first layer
    assert uses_sparse_input(True, "mlp2", 0.9, 128, "cpu", True)
    assert not uses_sparse_input(False, "mlp2", 0.05, big, "cpu", True)
    assert not uses_sparse_input(True, "resnet18", 0.05, big, "cpu", True)       # MLPs only
    assert not uses_sparse_input(True, "mlp2", 0.05, big, "cpu", False)          # streamed: dense
    assert not uses_sparse_input(True, "mlp2", 0.05, big, "cuda", True)          # CUDA: dense


def test_sparse_jobs_get_their_own_key_and_dense_keys_are_unchanged():
    base = dict(model="standard", attribution="gradient", k=0.1, direction="top", seed=0, model_hash="h",
                dataset_key="d", arch="mlp2", arch_params={"width": 256}, recipe={"epochs": 3})
    dense, sparse = Job(**base), Job(**base, sparse_input=True)
    from fastroar.keys import digest

    assert dense.key == digest(base, 16)            # the key records were written under before sparse_input
    assert sparse.key != dense.key
    assert "sparse_input" not in dense.to_dict() and sparse.to_dict()["sparse_input"] is True


# ---- the stage ----------------------------------------------------------------------------------------------

def test_retrain_stage_keys_sparse_jobs_apart_and_the_report_finds_them(run_workdir, tmp_path):
    """retrain.sparse_input=true on the tiny blockdigits run: the jobs run again under their own keys (the
    dense records stay, unchanged), their accuracies are the dense ones within a few test images, and the
    report shows the sparse records under that setting, the dense ones under the default (auto = dense at
    d = 128)."""
    import csv
    import json
    import shutil

    from click.testing import CliRunner

    from fastroar.cli import cli
    from fastroar.engine.results import read_results
    from tests.conftest import tiny_args

    ref, _ = run_workdir
    wd = tmp_path / "w"
    shutil.copytree(ref, wd, ignore=shutil.ignore_patterns("report"))
    dense = read_results(wd / "results" / "results.jsonl")
    subset = ["--model", "standard", "--attribution", "gradient"]
    for setting in ("auto", "false"):   # dense here: nothing to run, the keys are the ones recorded
        result = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", *subset,
                                          *tiny_args(f"retrain.sparse_input={setting}")])
        assert result.exit_code == 0 and "0 to run" in result.output, result.output
    # data streamed through FFCV: the layer stays dense there, so even `true` resolves to the recorded keys
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", *subset,
                                      *tiny_args("retrain.sparse_input=true", "loader=ffcv")])
    assert result.exit_code == 0 and "0 to run" in result.output, result.output
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", *subset,
                                      *tiny_args("retrain.sparse_input=true")])
    assert result.exit_code == 0, result.output
    assert "8 to run" in result.output
    records = read_results(wd / "results" / "results.jsonl")
    sparse = {key: r for key, r in records.items() if r.get("sparse_input")}
    assert len(sparse) == 8 and not set(sparse) & set(dense)
    assert {key: records[key] for key in dense} == dense
    twin = {(r["k"], r["direction"], r["seed"]): r for r in dense.values()
            if (r["model"], r["attribution"]) == ("standard", "gradient")}
    for r in sparse.values():
        assert abs(r["accuracy"] - twin[r["k"], r["direction"], r["seed"]]["accuracy"]) <= 0.03, r
    # mark the sparse records (accuracy halved) so that the report's choice of records shows in its numbers
    path = wd / "results" / "results.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for r in lines:
        if r.get("sparse_input"):
            r["accuracy"] /= 2
            r.pop("crc", None)   # edited on purpose: read as a record without a checksum (an older version's)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    marked = [r for r in lines if r.get("sparse_input")]
    result = CliRunner().invoke(cli, ["report", "--workdir", str(wd), *tiny_args("retrain.sparse_input=false")])
    assert result.exit_code == 0 and "retrain.sparse_input: a sparse first layer (8)" in result.output, result.output
    for setting, used in (("true", marked), ("auto", list(twin.values()))):
        result = CliRunner().invoke(cli, ["report", "--workdir", str(wd),
                                          *tiny_args(f"retrain.sparse_input={setting}")])
        assert result.exit_code == 0, result.output
        rows = {r["k"]: float(r["diffroar"]) for r in csv.DictReader(open(wd / "report" / "diffroar.csv"))
                if (r["model"], r["attribution"]) == ("standard", "gradient")}
        for k, value in rows.items():   # DiffROAR(k) = mean top-k accuracy - mean bottom-k accuracy, these records
            acc = {d: np.mean([r["accuracy"] for r in used if r["k"] == float(k) and r["direction"] == d])
                   for d in ("top", "bottom")}
            assert value == pytest.approx(acc["top"] - acc["bottom"]), (setting, k)


def test_a_bad_sparse_input_value_names_the_key_and_the_choices():
    from fastroar.config.schema import check
    from fastroar.errors import ConfigError

    cfg = {"dataset": {"name": "blockdigits"}, "model": {"arch": "mlp2"}, "retrain": {"sparse_input": "maybe"}}
    with pytest.raises(ConfigError, match="retrain.sparse_input must be auto, true or false, got 'maybe'"):
        check(cfg)
    for value in ("auto", True, False):
        check({**cfg, "retrain": {"sparse_input": value}})


def _weights_digest() -> str:
    """SHA-256 of the weights of a short sparse retrain (width 150: whole vector tiles and a scalar tail)."""
    import hashlib

    rng = np.random.default_rng(2)
    train, test = _blocky(200, rng), _blocky(50, rng)
    specs = [Spec(0.1, "top", 0, 0.2), Spec(0.5, "bottom", 1, 0.2)]
    out = train_stacked("mlp2", {"width": 150}, SHAPE, CLASSES, train, test, specs, _recipe(epochs=1),
                        return_models=True, sparse_input=True)
    h = hashlib.sha256()
    for r in out:
        for _, v in sorted(r["state_dict"].items()):
            h.update(v.numpy().tobytes())
    return h.hexdigest()


def test_every_kernel_build_gives_the_same_bits():
    """The AVX-512, AVX2 and portable builds of the products (FASTROAR_SPARSE_KERNELS, read once per process;
    this process runs the widest the CPU has) sum in the same order with single-rounding multiply-adds: a short
    sparse retrain's weights are identical under each, tile boundaries differing."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import torch\nfrom tests.test_sparse_input import _weights_digest\n"
            "print(_weights_digest(), torch.ops.fastroar.sparse_kernels())")
    want = _weights_digest()
    for build in ("avx2", "portable"):
        env = {**os.environ, "FASTROAR_SPARSE_KERNELS": build,
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == [want, build]
