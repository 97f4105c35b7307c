"""The leakage control (README "Leakage control"): on generated data where the answer is known, a keep-mask
chosen from the label is read by the mask-only probe (accuracy near 1, flagged under the report's table),
a random attribution's masks give chance, and the report, its CSV and the API carry the control."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from click.testing import CliRunner

from fastroar.cli import cli
from fastroar.engine.kernels.reference import keep_mask_reference, rank_reference
from fastroar.metrics.mask_probe import keep_mask, leaks, mask_only_accuracy
from tests.conftest import tiny_args

CLASSES, D = 8, 64


def label_scores(labels: np.ndarray, d: int, n_signal: int, seed: int) -> np.ndarray:
    """Scores whose top n_signal coordinates are a fixed set per class (seeded by the class), the rest noise:
    the top-k mask at k = n_signal/d names the label by construction."""
    rng = np.random.default_rng(seed)
    scores = rng.random((len(labels), d)).astype(np.float32)
    for c in np.unique(labels):
        chosen = np.random.default_rng(1000 + int(c)).choice(d, n_signal, replace=False)
        rows = np.flatnonzero(labels == c)
        scores[np.ix_(rows, chosen)] += 2.0
    return scores


def binomial_band(p: float, n: int) -> float:
    return 3.0 * math.sqrt(p * (1 - p) / n)


def test_keep_mask_is_the_methods_keep_rule():
    ranks = rank_reference(np.random.default_rng(0).random((50, 37)).astype(np.float32))
    for k in (0.01, 0.1, 0.5, 0.99):
        for direction in ("top", "bottom"):
            assert np.array_equal(keep_mask(ranks, k, direction), keep_mask_reference(ranks, k, direction))


def test_a_mask_chosen_from_the_label_is_read_by_the_probe_and_flagged():
    rng = np.random.default_rng(1)
    ytr, yte = rng.integers(0, CLASSES, 800), rng.integers(0, CLASSES, 400)
    rtr = rank_reference(label_scores(ytr, D, 8, 2))
    rte = rank_reference(label_scores(yte, D, 8, 3))
    acc = mask_only_accuracy(rtr, ytr, rte, yte, 8 / D, "top")
    assert acc == 1.0   # the top-8 mask is the label's own coordinate set: a linear probe separates them
    chance = np.bincount(yte).max() / len(yte)
    assert leaks(acc, 0.9, chance, len(yte)) and leaks(acc, 1.0, chance, len(yte))
    assert not leaks(acc - 0.2, 1.0, chance, len(yte))   # far below the retrained accuracy: not flagged


def test_random_masks_give_chance_and_are_not_flagged():
    rng = np.random.default_rng(4)
    ytr, yte = rng.integers(0, CLASSES, 1500), rng.integers(0, CLASSES, 1500)
    rtr = rank_reference(rng.random((1500, D)).astype(np.float32))
    rte = rank_reference(rng.random((1500, D)).astype(np.float32))
    chance = np.bincount(yte).max() / len(yte)
    for k, direction in ((0.1, "top"), (0.5, "bottom")):
        acc = mask_only_accuracy(rtr, ytr, rte, yte, k, direction)
        assert abs(acc - 1 / CLASSES) < binomial_band(1 / CLASSES, len(yte)) + 0.02, (k, direction, acc)
        assert not leaks(acc, acc, chance, len(yte))   # both at chance: nothing learnt from either


def test_a_constant_mask_predicts_the_majority_class():
    y = np.array([0, 1, 1, 2, 1])
    ranks = np.tile(np.arange(10, dtype=np.uint16), (5, 1))  # every image ranks alike: one mask for all
    assert mask_only_accuracy(ranks, y, ranks[:3], np.array([1, 1, 0]), 0.3, "top") == pytest.approx(2 / 3)


def invoke(args, wd):
    result = CliRunner().invoke(cli, [*args, "--workdir", str(wd), "--no-progress"])
    assert result.exit_code == 0, result.output
    return result.output


def table(out: str) -> dict[tuple[str, str, str], list[str]]:
    rows = {}
    for line in out.split("Signal-block")[0].splitlines():
        cells = line.split()
        if cells and cells[0] in ("standard", "robust"):
            rows[tuple(cells[:3])] = cells
    return rows


def test_report_csv_and_api_carry_the_control_and_flag_a_leaking_attribution(copy, tmp_path):
    from fastroar.api import load_results
    from fastroar.stages.artifacts import load_prepared
    from fastroar.stages.contract import open_context
    from fastroar.stages.mask_control import mask_probe_path

    ctx = open_context(copy)
    prepared = load_prepared(ctx.cfg, ctx.wd)
    root = tmp_path / "leak-scores"
    root.mkdir()
    for seed, split in enumerate(("train", "test")):   # the 32 top coordinates = the label's set
        np.save(root / f"{split}.npy", label_scores(prepared.arrays(split)[1], prepared.d, 32, seed))
    sets = tiny_args()
    invoke(["precompute", *sets, "--model", "standard", "--scores", f"leak={root}"], copy)
    invoke(["retrain", *sets, "--model", "standard", "--attribution", "leak"], copy)
    out = invoke(["report", *sets], copy)
    rows = table(out)
    header = next(line.split() for line in out.splitlines() if line.split()[:2] == ["model", "attribution"])
    assert header[-2:] == ["mask_top", "mask_bottom"]
    top = header.index("mask_top")
    assert float(rows[("standard", "leak", "0.250")][top]) >= 0.99   # k = 0.25 keeps exactly the label's 32
    chance = np.bincount(prepared.arrays("test")[1]).max() / prepared.size("test")
    for (model, attribution, k), cells in rows.items():
        if attribution == "random":   # input-agnostic masks: chance, whatever the model
            for c in cells[top:top + 2]:
                assert float(c) < chance + binomial_band(chance, prepared.size("test")), (model, k, c)
    flag = next(line for line in out.splitlines() if line.startswith(("LEAKAGE", "mask_top")))
    assert flag.startswith("LEAKAGE") and "standard/leak top 0.25" in flag
    assert "random" not in flag

    with open(copy / "report" / "diffroar.csv") as f:
        written = list(csv.DictReader(f))
    leak = next(r for r in written if (r["model"], r["attribution"], r["k"]) == ("standard", "leak", "0.25"))
    assert float(leak["mask_top"]) == pytest.approx(float(rows[("standard", "leak", "0.250")][top]), abs=5e-4)

    cached = mask_probe_path(ctx.wd).read_text()
    summary = load_results(copy).summary   # the API reads the same cache: nothing recomputed, same values
    assert mask_probe_path(ctx.wd).read_text() == cached
    s = summary.set_index(["model", "attribution", "k"])
    assert s.loc[("standard", "leak", 0.25), "mask_top"] == pytest.approx(float(leak["mask_top"]))
    assert invoke(["report", *sets], copy) == out and mask_probe_path(ctx.wd).read_text() == cached


def test_a_large_train_split_is_subsampled_as_documented(monkeypatch):
    from fastroar.metrics import mask_probe

    monkeypatch.setitem(mask_probe.PROBE, "max_train", 300)
    monkeypatch.setitem(mask_probe.PROBE, "min_train", 100)
    assert mask_probe.train_cap(D) == 300 and mask_probe.train_cap(10 ** 6) == 100   # max_elements / d = 50
    rng = np.random.default_rng(5)
    ytr, yte = rng.integers(0, CLASSES, 1000), rng.integers(0, CLASSES, 300)
    rtr = rank_reference(rng.random((1000, D)).astype(np.float32))
    rte = rank_reference(rng.random((300, D)).astype(np.float32))
    rows = np.sort(np.random.default_rng(0).choice(1000, 300, replace=False))
    want = mask_probe.probe_accuracy(keep_mask(rtr[rows], 0.2, "top"), ytr[rows], keep_mask(rte, 0.2, "top"), yte)
    assert mask_only_accuracy(rtr, ytr, rte, yte, 0.2, "top") == want
