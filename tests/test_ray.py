"""The Ray executor on a real local Ray instance: same records and the same store as --executor local."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from fastroar.cli import cli
from fastroar.roar.results import read_results
from tests.conftest import tiny_args
from tests.test_resume import fresh_copy, store_arrays

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             configure_logging=False)
    yield
    ray.shutdown()


def invoke(*args):
    return CliRunner().invoke(cli, [*args, "--no-progress", *tiny_args()])


def test_precompute_and_retrain_on_ray_equal_local(run_workdir, tmp_path, ray_cluster):
    ref, _ = run_workdir
    wd = fresh_copy(ref, tmp_path / "w")
    subset = ["--model", "robust", "--attribution", "gradient"]
    result = invoke("precompute", "--workdir", str(wd), "--executor", "ray", *subset)
    assert result.exit_code == 0, result.output
    assert "4 chunks to compute in 4 tasks (ray executor)" in result.output
    got, want = store_arrays(wd, "robust/gradient"), store_arrays(ref, "robust/gradient")
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)

    result = invoke("retrain", "--workdir", str(wd), "--executor", "ray", "--k", "0.25", *subset)
    assert result.exit_code == 0, result.output
    records = read_results(wd / "results" / "results.jsonl")
    reference = read_results(ref / "results" / "results.jsonl")
    assert len(records) == 4  # k=0.25 x 2 directions x 2 seeds
    for key, rec in records.items():
        assert rec["accuracy"] == reference[key]["accuracy"]  # same job key, same result as local

    again = invoke("retrain", "--workdir", str(wd), "--executor", "ray", "--k", "0.25", *subset)
    assert "0 to run" in again.output  # idempotent: finished jobs are not submitted again


def test_unreachable_ray_address_is_a_clear_error(run_workdir, tmp_path):
    ref, _ = run_workdir
    wd = tmp_path / "w"
    shutil.copytree(ref, wd)
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--executor", "ray",
                                      "--address", "127.0.0.1:1", "--no-progress", *tiny_args()])
    assert result.exit_code == 2
    assert "no Ray cluster answers at 127.0.0.1:1" in result.output and "Traceback" not in result.output
