"""The CLI end to end on a tiny config, and every bad input a user can cause: one clear message,
exit code != 0, no traceback, and nothing already written removed or changed."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastroar.cli import cli
from tests.conftest import tiny_args


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root: outputs must be byte-identical after a failed command."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_run_end_to_end_prints_table_and_writes_plot(run_workdir):
    wd, result = run_workdir
    assert result.exit_code == 0, result.output
    out = result.output
    assert "DiffROAR" in out and "Signal-block localization" in out
    png = wd / "report" / "diffroar.png"
    assert f"plot: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (wd / "results" / "results.jsonl").read_text().splitlines()]
    # 2 models x 2 attributions x 2 levels x 2 directions x 2 seeds, each exactly once: random's 8 serve both
    # models (one key per pair, fastroar.training.jobs), so 24 records
    assert len(records) == 24 and len({r["key"] for r in records}) == 24
    csv_rows = (wd / "report" / "diffroar.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 2 * 2 * 2
    # the printed DiffROAR of each row is mean(top) - mean(bottom) of the recorded accuracies
    from fastroar.stages.report import diffroar_rows

    for row in diffroar_rows(records):
        accs = {d: [r["accuracy"] for r in records if r["direction"] == d and r["model"] == row["model"]
                    and r["attribution"] == row["attribution"] and r["k"] == row["k"]] for d in ("top", "bottom")}
        assert row["diffroar"] == pytest.approx(np.mean(accs["top"]) - np.mean(accs["bottom"]))


def test_run_again_skips_every_stage(run_workdir):
    wd, _ = run_workdir
    before = tree_digest(wd / "models") | tree_digest(wd / "results")
    result = invoke("run", "--workdir", str(wd), "--no-progress", *tiny_args())
    assert result.exit_code == 0
    assert "checkpoint exists" in result.output and "32 already done, 0 to run" in result.output
    assert tree_digest(wd / "models") | tree_digest(wd / "results") == before


def test_store_ranks_match_reference_of_recomputed_gradients(run_workdir):
    """The stored rank maps are the reference ranking of |d logit_yhat / dx| of the saved model."""
    from fastroar.attribution import input_gradient
    from fastroar.config import load_config
    from fastroar.engine.kernels.reference import packed_masks_reference, rank_reference
    from fastroar.engine.store import RankStore
    from fastroar.engine.workspace import Workdir
    from fastroar.method import to_model_input
    from fastroar.stages.artifacts import load_model, load_prepared

    wd, _ = run_workdir
    cfg = load_config(path=wd / "config.yaml")
    work = Workdir(wd)
    prepared = load_prepared(cfg, work)
    model, ckpt = load_model(work, "robust", prepared)
    images, _ = prepared.arrays("test")
    scores = input_gradient(model, to_model_input(images)).reshape(len(images), -1).numpy()
    group = RankStore(str(work.store_path), mode="r").root["robust/gradient/test"]
    np.testing.assert_array_equal(group["ranks"][:], rank_reference(scores))
    top, bottom = packed_masks_reference(group["ranks"][:], cfg.levels)
    np.testing.assert_array_equal(group["top"][:], top)
    np.testing.assert_array_equal(group["bottom"][:], bottom)
    assert dict(RankStore(str(work.store_path), mode="r").root["robust/gradient"].attrs)["model_hash"] == ckpt["hash"]


BAD_INPUTS = [
    (["prepare", "--dataset", "imagenet-21k"], "unknown dataset 'imagenet-21k'"),
    (["retrain", "--k", "0"], "k must lie strictly between 0 and 1"),
    (["retrain", "--k", "1.5"], "k must lie strictly between 0 and 1"),
    (["retrain", "--k", "abc"], "k must be a number"),
    (["retrain", "--seeds", "0"], "1<=x<=1000"),
    (["train", "--set", "models=[{name: r, adversary: {norm: linf, eps: -0.1}}]"], "eps must be > 0"),
    (["precompute", "--attribution", "saliency"], "unknown attribution 'saliency'"),
    (["run", "--set", "levels=[0.2, 1.0]"], "k must lie strictly between 0 and 1"),
    (["train", "--set", "loader=magic"], "loader must be one of"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_message_and_changes_nothing(run_workdir, args, message):
    wd, _ = run_workdir
    before = tree_digest(wd)
    result = CliRunner().invoke(cli, [*args, "--workdir", str(wd), "--no-progress"])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert tree_digest(wd) == before


def test_missing_workdir_names_the_stage_to_run(tmp_path):
    for stage in ("train", "precompute", "retrain", "report"):
        result = CliRunner().invoke(cli, [stage, "--workdir", str(tmp_path / "nope")])
        assert result.exit_code == 2 and "does not exist; run `fastroar prepare" in result.output
        assert not (tmp_path / "nope").exists()


def test_missing_stage_inputs_name_the_stage_to_run(tmp_path):
    wd = str(tmp_path / "w")
    assert invoke("prepare", "--workdir", wd, "--no-progress").exit_code == 0
    result = CliRunner().invoke(cli, ["precompute", "--workdir", wd])
    assert result.exit_code == 2 and "run `fastroar train" in result.output
    result = CliRunner().invoke(cli, ["report", "--workdir", wd])
    assert result.exit_code == 2 and "run `fastroar train" in result.output


def test_store_from_another_model_is_refused_and_kept(run_workdir, tmp_path):
    """A workdir whose robust model was retrained under another config: its old ranks are not reused."""
    import shutil

    wd, _ = run_workdir
    copy = tmp_path / "copy"
    shutil.copytree(wd, copy)
    # retrain both models for another number of epochs: same names, other weights and hashes
    shutil.rmtree(copy / "models")
    other = tiny_args("train.epochs=1")
    assert invoke("train", "--workdir", str(copy), "--no-progress", *other).exit_code == 0
    before = tree_digest(copy / "masks.zarr")
    result = CliRunner().invoke(cli, ["precompute", "--workdir", str(copy), "--no-progress", *other])
    assert result.exit_code == 2
    assert "was made with model_hash=" in result.output and "Delete" in result.output
    assert "Traceback" not in result.output
    assert tree_digest(copy / "masks.zarr") == before


def test_console_script_runs_help():
    exe = Path(sys.executable).with_name("fastroar")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for stage in ("prepare", "train", "precompute", "retrain", "report", "run"):
        assert stage in out
