"""The local executor with worker processes (one per GPU on a multi-GPU machine; --workers N here):
the same store and the same result records as in-process execution."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from fastroar.cli import cli
from fastroar.engine.results import read_results
from tests.conftest import tiny_args
from tests.test_resume import fresh_copy, store_arrays


def invoke(*args):
    return CliRunner().invoke(cli, [*args, "--no-progress", *tiny_args()])


def runs_like_in_process(ref, wd, executor_args: list[str], model: str, attribution: str, k: str):
    """precompute then retrain (one entry, level k) on a fresh copy of ref with `executor_args`; asserts the
    store equals ref's array by array and every record's accuracy equals ref's for the same job key.
    Returns the two commands' outputs."""
    subset = ["--model", model, "--attribution", attribution]
    pre = invoke("precompute", "--workdir", str(wd), *executor_args, *subset)
    assert pre.exit_code == 0, pre.output
    entry = f"{model}/{attribution}"
    got, want = store_arrays(wd, entry), store_arrays(ref, entry)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    post = invoke("retrain", "--workdir", str(wd), *executor_args, "--k", k, *subset)
    assert post.exit_code == 0, post.output
    records = read_results(wd / "results" / "results.jsonl")
    reference = read_results(ref / "results" / "results.jsonl")
    assert len(records) == 4  # one level x 2 directions x 2 seeds, each once
    for key, rec in records.items():
        assert rec["accuracy"] == reference[key]["accuracy"]  # same job key, same result
    return pre.output, post.output


def test_worker_processes_equal_in_process(run_workdir, tmp_path):
    ref, _ = run_workdir
    runs_like_in_process(ref, fresh_copy(ref, tmp_path / "w"), ["--workers", "2"], "standard", "gradient", "0.5")


def test_workers_only_with_the_local_executor(run_workdir):
    ref, _ = run_workdir
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(ref), "--executor", "ray", "--workers", "2"])
    assert result.exit_code == 2 and "--workers applies to --executor local" in result.output
