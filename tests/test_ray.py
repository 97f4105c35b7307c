"""The Ray executor on a real local Ray instance: same records and the same store as --executor local."""
from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from fastroar.cli import cli
from tests.conftest import tiny_args
from tests.test_executors import invoke, runs_like_in_process
from tests.test_resume import fresh_copy

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             configure_logging=False)
    yield
    ray.shutdown()


def test_precompute_and_retrain_on_ray_equal_local(run_workdir, tmp_path, ray_cluster):
    ref, _ = run_workdir
    wd = fresh_copy(ref, tmp_path / "w")
    pre, _ = runs_like_in_process(ref, wd, ["--executor", "ray"], "robust", "gradient", "0.25")
    assert "4 chunks to compute in 4 tasks (ray executor)" in pre
    again = invoke("retrain", "--workdir", str(wd), "--executor", "ray", "--k", "0.25", "--model", "robust",
                   "--attribution", "gradient")
    assert "0 to run" in again.output  # idempotent: finished jobs are not submitted again


def test_unreachable_ray_address_is_a_clear_error(run_workdir, tmp_path):
    ref, _ = run_workdir
    wd = tmp_path / "w"
    shutil.copytree(ref, wd)
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--executor", "ray",
                                      "--address", "127.0.0.1:1", "--no-progress", *tiny_args()])
    assert result.exit_code == 2
    assert "no Ray cluster answers at 127.0.0.1:1" in result.output and "Traceback" not in result.output
