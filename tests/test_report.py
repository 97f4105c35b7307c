"""DiffROAR arithmetic and the localization score on fixed inputs with hand-computed answers."""
from __future__ import annotations

import numpy as np
import pytest

from fastroar.stages.report import diffroar_rows, localization


def rec(direction, seed, acc, k=0.2, model="standard", attribution="gradient"):
    return {"model": model, "attribution": attribution, "k": k, "direction": direction, "seed": seed,
            "accuracy": acc}


def test_diffroar_means_and_paired_std():
    records = [rec("top", 0, 0.90), rec("top", 1, 0.80), rec("top", 2, 0.85),
               rec("bottom", 0, 0.50), rec("bottom", 1, 0.60), rec("bottom", 2, 0.40),
               rec("top", 0, 0.7, k=0.5), rec("bottom", 0, 0.9, k=0.5)]
    rows = {r["k"]: r for r in diffroar_rows(records)}
    assert rows[0.2]["acc_top"] == pytest.approx(0.85)
    assert rows[0.2]["acc_bottom"] == pytest.approx(0.50)
    assert rows[0.2]["diffroar"] == pytest.approx(0.35)
    # per-seed differences 0.40, 0.20, 0.45: sample std
    assert rows[0.2]["std"] == pytest.approx(np.std([0.40, 0.20, 0.45], ddof=1))
    assert rows[0.2]["runs"] == 3
    assert rows[0.5]["diffroar"] == pytest.approx(-0.2) and np.isnan(rows[0.5]["std"])  # one run: no spread


def test_diffroar_skips_unpaired_seeds_and_separates_curves():
    records = [rec("top", 0, 1.0), rec("top", 1, 0.0), rec("bottom", 0, 0.5),
               rec("top", 0, 0.3, attribution="random"), rec("bottom", 0, 0.3, attribution="random")]
    rows = {(r["attribution"]): r for r in diffroar_rows(records)}
    assert rows["gradient"]["diffroar"] == pytest.approx(0.5) and rows["gradient"]["runs"] == 1
    assert rows["random"]["diffroar"] == pytest.approx(0.0)


def test_localization_counts_top_ranked_coordinates_in_the_signal_block():
    # d = 8; sample 0 ranks the signal block {0..3} first, sample 1 ranks it last.
    ranks = np.array([[0, 1, 2, 3, 4, 5, 6, 7], [4, 5, 6, 7, 0, 1, 2, 3]], np.uint16)
    signal = np.array([[1, 1, 1, 1, 0, 0, 0, 0]] * 2, bool)
    share_quarter, share_half, share_75 = localization(ranks, signal, [0.25, 0.5, 0.75])
    assert share_quarter == pytest.approx(0.5)  # (2/2 + 0/2) / 2
    assert share_half == pytest.approx(0.5)     # (4/4 + 0/4) / 2
    assert share_75 == pytest.approx((4 / 6 + 2 / 6) / 2)


def test_model_warnings_name_an_undertrained_and_a_non_robust_model():
    from fastroar.stages.artifacts import model_warnings

    adv = {"norm": "linf", "eps": 0.45, "steps": 10}
    under = {"config": {"name": "robust", "adversary": adv}, "summary": {"test_acc": 0.898, "robust_test_acc": 0.51}}
    w = model_warnings(1.0, under, chance=0.514, n_test=500)
    assert len(w) == 2
    assert "'robust' is undertrained" in w[0] and "0.898 < train.min_test_acc 1" in w[0] and "chance 0.514" in w[0]
    assert "not robust" in w[1] and "0.510 is at chance 0.514" in w[1]
    fine = {"config": {"name": "robust", "adversary": adv}, "summary": {"test_acc": 1.0, "robust_test_acc": 0.97}}
    assert model_warnings(1.0, fine, chance=0.5, n_test=500) == []
    assert model_warnings(None, {**under, "summary": {"test_acc": 0.6}}, 0.5, 500) == []  # no floor set
    # at or below chance (0.5 + one binomial standard error, 0.022, on 500 images): FAILED, floor or not
    (failed,) = model_warnings(None, {**under, "summary": {"test_acc": 0.52}}, 0.5, 500)
    assert failed.startswith("FAILED: base model 'robust' learned nothing: clean test accuracy 0.520")


def test_report_prints_chance_aq_and_the_undertrained_warning(run_workdir, tmp_path):
    import shutil

    from click.testing import CliRunner

    from fastroar.cli import cli

    src, result = run_workdir
    assert result.exit_code == 0, result.output
    wd = tmp_path / "wd"
    shutil.copytree(src, wd)
    res = CliRunner().invoke(cli, ["report", "--workdir", str(wd), "--set", "train.min_test_acc=0.9999"])
    assert res.exit_code == 0, res.output
    assert "Attribution quality AQ" in res.output and (wd / "report" / "aq.csv").exists()
    assert "chance" in res.output
    assert "WARNING: base model 'standard' is undertrained" in res.output
    plain = CliRunner().invoke(cli, ["report", "--workdir", str(wd)])
    assert plain.exit_code == 0 and "undertrained" not in plain.output  # no floor set: no such warning
