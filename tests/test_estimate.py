"""ROAD estimate: the imputation against a dense solve of the same equations written out by hand,
closed-form fixed points, the estimate's arithmetic on a stub model, and `fastroar estimate` on a run."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fastroar.engine.kernels.reference import keep_mask_reference, rank_reference
from fastroar.metrics.road import impute, impute_ranked, road_levels


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
    from fastroar.config import load_config
    from fastroar.engine.store import RankStore, SplitArrays
    from fastroar.engine.workspace import Workdir
    from fastroar.method import to_model_input
    from fastroar.stages.artifacts import load_model, load_prepared

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
    assert len(records) == len(cfg.models) * len(cfg.attributions) * len(cfg.levels)
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


# ---- the ROAD reference's own rule: pixels by channel sum, truncated counts ----

ROAD_WEIGHTS = [((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12), ((0, -1), 1 / 6),
                ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6)]


def road_reference_image(img: np.ndarray, explanation: np.ndarray, th_p: float, remove: bool,
                         random_v: np.ndarray) -> np.ndarray:
    """One image as ROAD's reference code imputes it (tleemann/road_evaluation: ImputedDataset.__getitem__
    with NoisyLinearImputer(noise=0)), written from its documented algorithm: the (H, W, C) explanation
    summed over channels, min-max normalised (eps 1e-5), plus a fixed 1e-4-scale jitter; pixels sorted
    most important first; remove=True (MoRF) drops the first int(W*H*th_p), remove=False (LeRF) all after
    them; every channel of a dropped pixel is solved from -sum_valid(w) x_p + sum_{q dropped} w x_q =
    -sum_{q kept} w x_q, one system for all channels."""
    C, H, W = img.shape
    s = explanation.sum(axis=-1)
    s = (s - s.min()) / (s.max() - s.min() + 1e-5) + random_v
    order = torch.argsort(torch.tensor(s.reshape(-1, 1)), dim=0, descending=True)[:, 0].numpy()
    cut = int(W * H * th_p)
    bitmask = np.ones(H * W, np.uint8)
    bitmask[order[:cut] if remove else order[cut:]] = 0
    missing = np.flatnonzero(bitmask == 0)
    var = {int(p): n for n, p in enumerate(missing)}
    A = np.zeros((len(missing), len(missing)))
    b = np.zeros((len(missing), C))
    flat = img.reshape(C, -1)
    for n, p in enumerate(missing):
        i, j = divmod(int(p), W)
        total = 0.0
        for (di, dj), w in ROAD_WEIGHTS:
            if 0 <= i + di < H and 0 <= j + dj < W:
                total += w
                q = (i + di) * W + j + dj
                if q in var:
                    A[n, var[q]] = w
                else:
                    b[n] -= w * flat[:, q]
        A[n, n] = -total
    out = flat.astype(np.float64).copy()
    if len(missing):
        out[:, missing] = np.linalg.solve(A, b).T
    return out.reshape(C, H, W)


@pytest.mark.parametrize("k", [0.1, 0.3, 0.5, 0.9])
def test_reference_rule_equals_road_reference_imputed_images(k):
    """Same inputs through fastroar's reference rule and ROAD's algorithm: equal images. Channel sums are
    distinct by >= 1/63 of their range (the reference's 1e-4 jitter cannot reorder them), the channel
    split varies (per-coordinate ranking would keep other pixels), and int(63 k) differs from
    floor(63 k + 1/2) at k = 0.3 (top) and k = 0.1 (bottom), so DiffROAR's counts would differ."""
    from fastroar.metrics.road import impute_pixels, impute_ranked, pixel_ranks

    rng = np.random.default_rng(5)
    N, C, H, W = 3, 3, 9, 7
    x = rng.random((N, C, H, W))
    sums = np.stack([rng.permutation(H * W) for _ in range(N)]).reshape(N, H, W).astype(np.float64)
    split = rng.dirichlet(np.ones(C), size=(N, H, W)).transpose(0, 3, 1, 2)
    scores = sums[:, None] * split   # (N, C, H, W), channel sums = `sums` (up to rounding)
    jitter = 1e-4 * rng.standard_normal((H, W))
    ranks = pixel_ranks(scores)
    differs = False
    for direction, th_p, remove in (("top", k, False), ("bottom", 1 - k, True)):
        got = impute_pixels(x, ranks, k, direction)
        for n in range(N):
            want = road_reference_image(x[n], scores[n].transpose(1, 2, 0), th_p, remove, jitter)
            np.testing.assert_allclose(got[n], want, rtol=0, atol=1e-9)
        coord = impute_ranked(x, rank_reference(scores.reshape(N, -1)), k, direction)
        differs |= not np.allclose(coord, got)
    assert differs  # the coordinate rule is another rule on these inputs


def test_estimate_reference_rule_is_keyed_apart(copy):
    """`estimate --rule reference` on a one-channel run: pixel ranks are the stored ranks, counts are
    truncated; its records carry rule=reference and leave the default rule's records and keys alone."""
    from click.testing import CliRunner

    from fastroar.cli import cli
    from fastroar.config import load_config
    from fastroar.engine.store import RankStore, SplitArrays
    from fastroar.engine.workspace import Workdir
    from fastroar.method import to_model_input
    from fastroar.metrics.road import reference_keep
    from fastroar.stages.artifacts import load_model, load_prepared

    args = ["estimate", "--workdir", str(copy), "--no-progress", "--k", "0.3", "--model", "standard",
            "--attribution", "gradient"]
    runner = CliRunner()
    assert runner.invoke(cli, args).exit_code == 0
    default = [json.loads(line) for line in (copy / "results" / "road.jsonl").read_text().splitlines()]
    res = runner.invoke(cli, args + ["--rule", "reference"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (copy / "results" / "road.jsonl").read_text().splitlines()]
    assert records[:len(default)] == default and len(records) == len(default) + 1
    (rec,) = records[len(default):]
    assert rec["rule"] == "reference" and "rule" not in default[0] and rec["key"] != default[0]["key"]

    cfg = load_config(path=copy / "config.yaml")
    workdir = Workdir(copy)
    prepared = load_prepared(cfg, workdir)
    model, _ = load_model(workdir, "standard", prepared)
    ranks = SplitArrays(RankStore(str(workdir.store_path), mode="r").root["standard/gradient/test"]).read("ranks")
    images, labels = prepared.arrays("test")
    x = to_model_input(images).numpy()
    N, C, H, W = x.shape
    accs = []
    for code, direction in enumerate(("top", "bottom")):
        keep = reference_keep(ranks, 0.3, direction)
        assert keep.sum(1).tolist() == [int(H * W * 0.3) if direction == "top" else H * W - int(H * W * 0.7)] * N
        xi = impute(x, keep.reshape(x.shape), rec["sigma"], seed=[0, 300000, code])
        with torch.no_grad():
            accs.append(float((model(torch.from_numpy(xi)).argmax(1).numpy() == labels).mean()))
    assert (rec["acc_top"], rec["acc_bottom"]) == pytest.approx(tuple(accs))
    # the report keeps showing the default rule beside DiffROAR
    from fastroar.stages.report import road_estimates

    shown = road_estimates(workdir, prepared.meta["key"], [{"model": "standard", "model_hash": rec["model_hash"]}])
    assert shown[("standard", "gradient", 0.3)] == pytest.approx(default[0]["road"])


def test_reference_rule_pixel_ranks_of_a_three_channel_split():
    """On 3 channels the estimate recomputes the scores: for a linear model the input gradient of the
    predicted logit is that class's weight row, so pixel order = |W[yhat]| summed over channels, most
    important first, ties by lower index (numpy's stable argsort, written here)."""
    from fastroar.config import validate
    from fastroar.stages.estimate import split_pixel_ranks

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 3, 4, 5), dtype=np.uint8)
    labels = rng.integers(0, 3, 7)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(60, 3))
    cfg = validate({"dataset": {"name": "blockdigits"}, "model": {"arch": "mlp1"}, "precompute": {"batch_size": 3}})
    got = split_pixel_ranks(cfg, model, "gradient", images, labels, torch.device("cpu"), stored_ranks=None)
    W = model[1].weight.detach().numpy().astype(np.float64)
    with torch.no_grad():
        pred = model(torch.from_numpy(images.astype(np.float32) / 255)).argmax(1).numpy()
    for n in range(7):
        pixel = np.abs(W[pred[n]]).reshape(3, 20).sum(0)
        order = np.argsort(-pixel, kind="stable")
        want = np.empty(20, np.int64)
        want[order] = np.arange(20)
        assert got[n].tolist() == want.tolist()
