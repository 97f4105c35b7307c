"""ROAD estimate: the imputation against a dense solve of the same equations written out by hand,
closed-form fixed points, the estimate's arithmetic on a stub model, and `fastroar estimate` on a run."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fastroar.metrics.road import impute, impute_ranked, road_levels
from fastroar.engine.kernels.reference import keep_mask_reference, rank_reference


def dense_reference(plane: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """One plane imputed by a dense solve: each removed pixel = weighted mean of its in-image 8 neighbours
    (1/6 direct, 1/12 diagonal, renormalised over the neighbours that exist), written pixel by pixel."""
    H, W = plane.shape
    unknown = [(i, j) for i in range(H) for j in range(W) if not keep[i, j]]
    pos = {p: n for n, p in enumerate(unknown)}
    A = np.zeros((len(unknown), len(unknown)))
    b = np.zeros(len(unknown))
    for n, (i, j) in enumerate(unknown):
        total = 0.0
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if (di, dj) == (0, 0) or not (0 <= i + di < H and 0 <= j + dj < W):
                    continue
                w = 1 / 12 if di and dj else 1 / 6
                total += w
                q = (i + di, j + dj)
                if q in pos:
                    A[n, pos[q]] -= w
                else:
                    b[n] += w * plane[q]
        A[n, n] += total
    out = plane.astype(np.float64).copy()
    if unknown:
        sol = np.linalg.solve(A, b)
        for n, p in enumerate(unknown):
            out[p] = sol[n]
    return out


@pytest.mark.parametrize("shape,p_keep", [((3, 2, 5, 4), 0.3), ((2, 1, 6, 6), 0.7), ((4, 3, 3, 7), 0.1),
                                          ((2, 1, 10, 1), 0.4)])
def test_imputation_equals_dense_solve(shape, p_keep):
    rng = np.random.default_rng(sum(shape))
    x = rng.random(shape)
    keep = rng.random(shape) < p_keep
    planes_keep = keep.reshape(-1, *shape[-2:])
    planes_keep[:, 0, 0] |= ~planes_keep.any(axis=(1, 2))  # every plane anchored by >= 1 kept pixel
    out = impute(x, keep)
    want = np.stack([dense_reference(p, k) for p, k in zip(x.reshape(-1, *shape[-2:]), planes_keep)])
    np.testing.assert_allclose(out.reshape(want.shape), want, rtol=0, atol=1e-10)
    assert np.array_equal(out[keep], x[keep])  # known pixels untouched, bit for bit


def test_noise_is_seeded_and_only_on_imputed_pixels():
    rng = np.random.default_rng(1)
    x = rng.random((5, 3, 8, 8)).astype(np.float32)
    keep = rng.random(x.shape) < 0.5
    clean = impute(x, keep, 0.0)
    noisy = impute(x, keep, 0.05, seed=7)
    assert noisy.dtype == np.float32
    assert np.array_equal(noisy[keep], x[keep])
    eps = np.random.default_rng(7).standard_normal(x.shape)
    np.testing.assert_allclose(noisy[~keep], (clean.astype(np.float64)[~keep] + 0.05 * eps[~keep]),
                               atol=1e-6)
    assert np.array_equal(noisy, impute(x, keep, 0.05, seed=7))
    assert not np.array_equal(noisy, impute(x, keep, 0.05, seed=8))


def test_linear_ramp_is_reproduced_when_the_border_is_kept():
    # A linear function equals the (symmetric) weighted mean of its 8 neighbours wherever all 8 exist:
    # with every border pixel kept, the ramp solves the system, which has a unique solution.
    # (At a removed border pixel the renormalised one-sided mean of a ramp differs from the ramp,
    # so removed border pixels would not be reproduced; constants are, see below.)
    H, W = 9, 7
    i, j = np.mgrid[0:H, 0:W]
    ramp = (0.3 * i - 0.2 * j + 0.5)[None, None]
    rng = np.random.default_rng(0)
    keep = np.ones((1, 1, H, W), bool)
    keep[0, 0, 1:-1, 1:-1] = rng.random((H - 2, W - 2)) < 0.2
    out = impute(ramp, keep)
    np.testing.assert_allclose(out, ramp, atol=1e-12)
    assert (~keep).sum() > 20


def test_constant_is_reproduced_everywhere_and_empty_planes_are_zero():
    x = np.full((1, 2, 5, 5), 0.7)
    keep = np.zeros(x.shape, bool)
    keep[0, 0, 2, 3] = True  # plane 0: one kept pixel (border pixels removed too); plane 1: none kept
    out = impute(x, keep)
    np.testing.assert_allclose(out[0, 0], 0.7, atol=1e-12)
    assert np.array_equal(out[0, 1], np.zeros((5, 5)))


class LinearStub(torch.nn.Module):
    """logits = x_flat @ w: a stub whose predictions NumPy recomputes independently."""

    def __init__(self, w: np.ndarray) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w, dtype=torch.float32))

    def forward(self, x):
        return x.flatten(1) @ self.w


def test_estimate_arithmetic_on_a_stub_model():
    rng = np.random.default_rng(3)
    n, shape = 64, (1, 4, 4)
    x = rng.random((n, *shape)).astype(np.float32)
    w = rng.standard_normal((16, 3)).astype(np.float32)
    labels = (x.reshape(n, -1) @ w).argmax(1)
    labels[:10] = (labels[:10] + 1) % 3  # not all correct on clean data
    ranks = rank_reference(rng.random((n, 16)).astype(np.float32))
    levels, sigma, seed = [0.25, 0.5], 0.02, 5
    got = road_levels(LinearStub(w), x, labels, ranks, levels, sigma, seed=seed)
    for row, k in zip(got, levels):
        acc = {}
        for code, direction in enumerate(("top", "bottom")):
            keep = keep_mask_reference(ranks, k, direction).reshape(x.shape)
            assert keep.reshape(n, -1).sum(1).tolist() == [int(np.floor(k * 16 + 0.5))] * n
            xi = impute(x, keep, sigma, seed=[seed, int(round(k * 1e6)), code])
            np.testing.assert_array_equal(xi, impute_ranked(x, ranks, k, direction, sigma,
                                                            seed=[seed, int(round(k * 1e6)), code]))
            acc[direction] = float(np.mean((xi.reshape(n, -1).astype(np.float64) @ w).argmax(1) == labels))
        assert row["k"] == k
        assert row["acc_top"] == pytest.approx(acc["top"])
        assert row["acc_bottom"] == pytest.approx(acc["bottom"])
        assert row["road"] == pytest.approx(acc["top"] - acc["bottom"])


def test_estimate_cli_on_a_run(run_workdir, tmp_path):
    from click.testing import CliRunner

    from fastroar.cli import cli
    from fastroar.method import to_model_input
    from fastroar.stages.artifacts import load_prepared
    from fastroar.config import load_config
    from fastroar.engine.store import RankStore, SplitArrays
    from fastroar.stages.artifacts import load_model
    from fastroar.engine.workspace import Workdir

    src, result = run_workdir
    assert result.exit_code == 0, result.output
    wd = tmp_path / "wd"
    shutil.copytree(src, wd)
    runner = CliRunner()
    res = runner.invoke(cli, ["estimate", "--workdir", str(wd), "--no-progress"])
    assert res.exit_code == 0, res.output
    lines = (wd / "results" / "road.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    cfg = load_config(path=wd / "config.yaml")
    assert len(records) == len(cfg["models"]) * len(cfg["attributions"]) * len(cfg["levels"])
    assert len({r["key"] for r in records}) == len(records)

    # one record recomputed from the saved model, the stored ranks and the documented seeding
    rec = next(r for r in records if r["model"] == "robust" and r["attribution"] == "gradient")
    workdir = Workdir(wd)
    prepared = load_prepared(cfg, workdir)
    model, ckpt = load_model(workdir, "robust", prepared)
    assert rec["model_hash"] == ckpt["hash"] and rec["sigma"] == pytest.approx(0.01)
    store = RankStore(str(workdir.store_path), mode="r")
    ranks = SplitArrays(store.root["robust/gradient/test"]).read("ranks")
    images, labels = prepared.arrays("test")
    x = to_model_input(images).numpy()
    accs = []
    for code, direction in enumerate(("top", "bottom")):
        xi = impute_ranked(x, ranks, rec["k"], direction, 0.01, seed=[0, int(round(rec["k"] * 1e6)), code])
        with torch.no_grad():
            accs.append(float((model(torch.from_numpy(xi)).argmax(1).numpy() == labels).mean()))
    assert rec["acc_top"] == pytest.approx(accs[0]) and rec["acc_bottom"] == pytest.approx(accs[1])
    assert rec["road"] == pytest.approx(accs[0] - accs[1])

    # existing estimates are skipped; a new noise level adds records
    res = runner.invoke(cli, ["estimate", "--workdir", str(wd), "--no-progress"])
    assert res.exit_code == 0 and len((wd / "results" / "road.jsonl").read_text().splitlines()) == len(lines)
    res = runner.invoke(cli, ["estimate", "--workdir", str(wd), "--no-progress", "--noise", "0.1", "--k", "0.5",
                              "--model", "standard", "--attribution", "gradient"])
    assert res.exit_code == 0, res.output
    assert len((wd / "results" / "road.jsonl").read_text().splitlines()) == len(lines) + 1

    # the report shows ROAD (default noise) beside DiffROAR
    res = runner.invoke(cli, ["report", "--workdir", str(wd)])
    assert res.exit_code == 0, res.output
    import csv

    rows = list(csv.DictReader(open(wd / "report" / "diffroar.csv")))
    assert rows and "road" in rows[0]
    by_key = {(r["model"], r["attribution"], float(r["k"])): r["road"] for r in records}
    for row in rows:
        assert float(row["road"]) == pytest.approx(by_key[(row["model"], row["attribution"], float(row["k"]))])


def test_estimate_needs_a_rank_store(tmp_path):
    from click.testing import CliRunner

    from fastroar.cli import cli

    res = CliRunner().invoke(cli, ["estimate", "--workdir", str(tmp_path)])
    assert res.exit_code == 2 and "Error:" in res.output
