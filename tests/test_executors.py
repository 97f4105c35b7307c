"""The local executor with worker processes (one per GPU on a multi-GPU machine; --workers N here):
the same store and the same result records as in-process execution."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from fastroar.cli import cli
from fastroar.roar.results import read_results
from tests.conftest import tiny_args
from tests.test_resume import fresh_copy, store_arrays


def invoke(*args):
    return CliRunner().invoke(cli, [*args, "--no-progress", *tiny_args()])


def test_worker_processes_equal_in_process(run_workdir, tmp_path):
    ref, _ = run_workdir
    wd = fresh_copy(ref, tmp_path / "w")
    subset = ["--model", "standard", "--attribution", "gradient"]
    result = invoke("precompute", "--workdir", str(wd), "--workers", "2", *subset)
    assert result.exit_code == 0, result.output
    got, want = store_arrays(wd, "standard/gradient"), store_arrays(ref, "standard/gradient")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    result = invoke("retrain", "--workdir", str(wd), "--workers", "2", "--k", "0.5", *subset)
    assert result.exit_code == 0, result.output
    records = read_results(wd / "results" / "results.jsonl")
    reference = read_results(ref / "results" / "results.jsonl")
    assert len(records) == 4  # k=0.5 x 2 directions x 2 seeds, each once
    for key, rec in records.items():
        assert rec["accuracy"] == reference[key]["accuracy"]


def test_workers_only_with_the_local_executor(run_workdir):
    ref, _ = run_workdir
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(ref), "--executor", "ray", "--workers", "2"])
    assert result.exit_code == 2 and "--workers applies to --executor local" in result.output
