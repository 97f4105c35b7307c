"""The benchmark tools' arithmetic and baselines: study FLOPs against closed forms, the real-data section's
skip, and the plain PyTorch pipeline reading the same config as `fastroar run`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import bench_realdata  # noqa: E402
from plain_pipeline import load_study  # noqa: E402
from study_flops import per_sample_flops, study_flops  # noqa: E402

D, W, C = 128, 256, 10
P = D * W + W * W + W * C   # mlp2 width 256 on 16x8 inputs: its weights (biases add no products)


def test_per_sample_flops_of_the_mlp_are_the_closed_form_counts():
    per = per_sample_flops("mlp2", {"width": W}, (1, 16, 8), C)
    # forward 2P; backward 2P of weight gradients and the input gradients of layers 2 and 3
    assert per == {"train": 6 * P - 2 * D * W, "input_grad": 4 * P, "eval": 2 * P}


def test_study_flops_of_the_default_config_count_random_once_and_pgd_per_step():
    cfg = yaml.safe_load((ROOT / "configs" / "blockdigits.yaml").read_text())
    n_train, n_test = 1438, 359
    f = study_flops(cfg, (1, 16, 8), C, n_train, n_test)
    cells = 5 * 2 * 5                      # levels x directions x seeds
    assert f["distinct_retrainings"] == cells * (2 + 1)   # gradient per model, random once
    train, grad, ev = 6 * P - 2 * D * W, 4 * P, 2 * P
    assert f["base"] == 30 * n_train * (2 * train + 5 * grad) + 2 * n_test * ev
    assert f["retrain"] == 150 * (15 * n_train * train + n_test * ev)
    assert f["attribution"] == 2 * (n_train + n_test) * grad
    assert f["total"] == f["base"] + f["retrain"] + f["attribution"]


def test_realdata_section_says_skipped_without_data(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTROAR_BENCH_DATA_ROOT", str(tmp_path))    # no MNIST/raw there
    (row,) = bench_realdata.rows(quick=True)
    assert row.name == "skipped: no data" and "--data-root" in row.extra


def test_plain_pipeline_applies_overrides_and_refuses_what_it_does_not_write_out(tmp_path):
    cfg = load_study(str(ROOT / "configs" / "blockmnist-cpu.yaml"), str(tmp_path),
                     ["train.epochs=1", "models=[{name: standard}]", "model.params={width: 8}"])
    assert cfg["train"]["epochs"] == 1 and cfg["models"] == [{"name": "standard"}]
    assert cfg["dataset"]["params"]["root"] == str(tmp_path) and cfg["model"]["params"] == {"width": 8}
    with pytest.raises(SystemExit, match="fill zero"):
        load_study(str(ROOT / "configs" / "blockdigits.yaml"), None, ["retrain.fill=road"])


def test_plain_pipeline_runs_the_default_study_shrunk():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "plain_pipeline.py"), "--set", "train.epochs=1",
                          "--set", "retrain.epochs=1", "--set", "retrain.seeds=1", "--set", "levels=[0.1]"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if "diffroar" in line]
    assert len(rows) == 4                                 # 2 models x 2 attributions at one level
    for row in rows:                                      # diffroar = top - bottom as printed
        top, bottom, diff = float(row[4]), float(row[6]), float(row[8])
        assert abs((top - bottom) - diff) <= 0.0011
    assert "8 retrainings" in out.stdout
