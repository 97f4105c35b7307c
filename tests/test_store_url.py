"""The rank store on an fsspec URL (--store file://...: zarr's fsspec store, the path a cluster's shared
object store takes): precompute writes it, retrain and report read it, with the same arrays and records as
the default <workdir>/masks.zarr."""
from __future__ import annotations

import numpy as np
import zarr
from click.testing import CliRunner

from fastroar.cli import cli
from fastroar.engine.results import read_results
from tests.conftest import tiny_args
from tests.test_resume import fresh_copy, store_arrays


def test_precompute_and_retrain_through_an_fsspec_url(run_workdir, tmp_path):
    ref, _ = run_workdir
    wd = fresh_copy(ref, tmp_path / "w")
    url = f"file://{tmp_path}/bucket/study.zarr"
    subset = ["--model", "robust", "--attribution", "gradient"]
    for stage, extra in (("precompute", []), ("retrain", ["--k", "0.25"])):
        result = CliRunner().invoke(cli, [stage, "--workdir", str(wd), "--store", url, "--no-progress",
                                          *extra, *subset, *tiny_args()])
        assert result.exit_code == 0, result.output
    assert not (wd / "masks.zarr").exists() and (tmp_path / "bucket" / "study.zarr" / "zarr.json").exists()
    group = zarr.open_group(url, mode="r", storage_options={"auto_mkdir": True})
    assert "FsspecStore" in type(group.store).__name__
    want = store_arrays(ref, "robust/gradient")
    for name in want:
        np.testing.assert_array_equal(group[f"robust/gradient/{name}"][:], want[name], err_msg=name)
    records = read_results(wd / "results" / "results.jsonl")
    reference = read_results(ref / "results" / "results.jsonl")
    assert len(records) == 4
    for key, rec in records.items():
        assert rec["accuracy"] == reference[key]["accuracy"]


def test_bad_store_value_is_a_config_error(run_workdir):
    ref, _ = run_workdir
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(ref), "--set", "store=[1, 2]"])
    assert result.exit_code == 2 and "config key store must be a string, got [1, 2]" in result.output
