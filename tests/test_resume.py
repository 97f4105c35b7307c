"""Resume after SIGKILL: a real `fastroar` subprocess is killed at the dangerous points of precompute
and retrain (fault points, see fastroar/faults.py) and run again; the outcome must equal an
uninterrupted run: the same store array by array, every job's result exactly once."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from fastroar.engine.results import append_result, read_results
from tests.conftest import tiny_args

SUBSET = ["--model", "standard", "--attribution", "gradient"]


def fastroar(workdir: Path, *args: str, kill_at: str | None = None,
             settings: list[str] | None = None) -> subprocess.CompletedProcess:
    """`fastroar ARGS` in a subprocess on the tiny settings (or `settings`, --set options), killed at kill_at."""
    env = dict(os.environ, TQDM_DISABLE="1")
    env.pop("FASTROAR_KILL_AT", None)
    if kill_at:
        env["FASTROAR_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "fastroar.cli", *args, "--workdir", str(workdir), "--no-progress",
           *(tiny_args() if settings is None else settings)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def fresh_copy(src: Path, dst: Path) -> Path:
    """A workdir with the prepared data and trained models of `src`, but no ranks or results."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("masks.zarr", "results", "report"))
    return dst


def store_arrays(workdir: Path, entry: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(workdir / "masks.zarr"), mode="r")[entry]
    return {f"{split}/{name}": group[split][name][:] for split in ("train", "test")
            for name in ("ranks", "top", "bottom", "done")}


# blockdigits with chunk_size 512: train has 3 chunks, test 1; one entry (standard/gradient) = 4 chunks
PRECOMPUTE_KILLS = ["store.before_record:1", "store.before_record:3", "store.after_record:2", "store.after_record:4"]


@pytest.mark.parametrize("kill_at", PRECOMPUTE_KILLS)
def test_precompute_killed_then_rerun_equals_uninterrupted(run_workdir, tmp_path, kill_at):
    ref, _ = run_workdir
    wd = fresh_copy(ref, tmp_path / "w")
    killed = fastroar(wd, "precompute", *SUBSET, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = fastroar(wd, "precompute", *SUBSET)
    assert resumed.returncode == 0, resumed.stderr
    n_before = int(kill_at.split(":")[1]) - (1 if "before" in kill_at else 0)
    assert f"{4 - n_before} chunks to compute" in resumed.stdout  # finished chunks were not redone
    got, want = store_arrays(wd, "standard/gradient"), store_arrays(ref, "standard/gradient")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


RETRAIN_KILLS = ["results.before_append:1", "retrain.after_append:3", "results.before_append:6"]


@pytest.mark.parametrize("kill_at", RETRAIN_KILLS)
def test_retrain_killed_then_rerun_has_every_result_once(run_workdir, tmp_path, kill_at):
    ref, _ = run_workdir
    wd = tmp_path / "w"
    shutil.copytree(ref, wd, ignore=shutil.ignore_patterns("results", "report"))
    killed = fastroar(wd, "retrain", *SUBSET, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = fastroar(wd, "retrain", *SUBSET)
    assert resumed.returncode == 0, resumed.stderr
    lines = (wd / "results" / "results.jsonl").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)) == 8  # 2 levels x 2 directions x 2 seeds, each exactly once
    reference = read_results(ref / "results" / "results.jsonl")
    for line in lines:  # same seeds, same data: the same accuracies as the uninterrupted run
        rec = json.loads(line)
        assert rec["accuracy"] == reference[rec["key"]]["accuracy"]


def test_a_torn_last_line_is_ignored_and_not_glued_to_the_next_record(tmp_path):
    path = tmp_path / "results.jsonl"
    append_result(path, {"key": "a", "accuracy": 0.5})
    with open(path, "a") as f:
        f.write('{"key": "b", "accur')  # a kill in the middle of a write
    assert set(read_results(path)) == {"a"}
    append_result(path, {"key": "c", "accuracy": 0.7})
    assert set(read_results(path)) == {"a", "c"}
    assert read_results(path)["c"]["accuracy"] == 0.7
