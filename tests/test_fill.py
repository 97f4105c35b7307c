"""--fill mean (the reference code's early masking): removed coordinates take the train split's mean
model input. Its jobs are keyed apart from zero-filled ones, and report never mixes the two."""
from __future__ import annotations

import shutil

import numpy as np
from click.testing import CliRunner

from fastroar.cli import cli
from fastroar.engine.results import read_results
from tests.conftest import tiny_args


def invoke(*args):
    return CliRunner().invoke(cli, [*args, "--no-progress", *tiny_args()])


def test_mean_fill_jobs_records_and_report(run_workdir, tmp_path):
    ref, _ = run_workdir
    wd = tmp_path / "w"
    shutil.copytree(ref, wd)
    zero = read_results(wd / "results" / "results.jsonl")
    subset = ["--model", "robust", "--attribution", "gradient", "--k", "0.25"]
    result = invoke("retrain", "--workdir", str(wd), "--fill", "mean", *subset)
    assert result.exit_code == 0, result.output
    records = read_results(wd / "results" / "results.jsonl")
    new = [r for key, r in records.items() if key not in zero]
    assert len(new) == 4  # k=0.25 x 2 directions x 2 seeds, keyed apart from the zero-filled jobs

    # the fill is the mean pixel of the train split in model-input units, computed here independently
    (train,) = (wd / "data").glob("*/train.beton")
    from fastroar.engine.beton import read_beton

    images, _ = read_beton(str(train))
    want = float(np.float32(images.astype(np.float64).mean() / 255.0))
    assert all(r["fill"] == want for r in new) and 0.0 < want < 1.0
    # the same jobs with zero fill already had records: same masks, seeds and recipe, other inputs
    for r in new:
        twin = next(z for z in zero.values() if all(z[f] == r[f] for f in ("model", "attribution", "k",
                                                                             "direction", "seed")))
        assert twin["fill"] == 0.0 and twin["key"] != r["key"]

    out = invoke("report", "--workdir", str(wd), "--fill", "mean").output
    table = out.split("Signal-block")[0]
    # only the mean-filled cells have values; the zero-filled records are named, never mixed in
    assert f"retrain.fill 0 vs {want:g} (24)" in out   # 16 gradient records + 8 random ones serving both models
    rows = [line.split() for line in table.splitlines() if line.strip().startswith(("robust", "standard"))]
    filled = [r for r in rows if "missing" not in r]
    assert [r[:3] for r in filled] == [["robust", "gradient", "0.250"]] and len(rows) == 8
    plain = invoke("report", "--workdir", str(wd)).output
    assert "missing" not in plain and "0.500" in plain.split("Signal-block")[0]  # zero fill: the original sweep


def test_bad_fill_is_a_config_error(run_workdir):
    ref, _ = run_workdir
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(ref), "--set", "retrain.fill=median"])
    assert result.exit_code == 2 and "retrain.fill must be zero, mean, road or a number, got 'median'" in result.output
