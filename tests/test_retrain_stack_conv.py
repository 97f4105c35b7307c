"""retrain.stack_conv: the retrain stage trains conv jobs in stacks (fastroar.training.stacked_conv) when it
is on, and the records are the ones one model per task gives (accuracies equal; stacking is an execution
detail, not part of a job's key). auto stacks on CUDA only, so the CPU default is unchanged.

The study is blockdigits with a two-conv-layer BatchNorm net (tests/test_stacked_conv.py's tiny_cnn, named
as a module:callable architecture so that a `fastroar` subprocess builds it too), one base model, 8 jobs.
"""
from __future__ import annotations

import json
import shutil
import signal

import pytest
import torch
from click.testing import CliRunner

from fastroar.cli import cli
from fastroar.engine.results import read_results
from fastroar.stages.retrain import stack_trainer, stacks_conv
from fastroar.training.batched import train_stacked
from fastroar.training.stacked_conv import train_stacked_conv
from tests.test_bad_inputs import fails_cleanly
from tests.test_resume import fastroar

CONV = [
    "model.arch=tests.test_stacked_conv:tiny_cnn", "model.params={}", "models=[{name: standard}]",
    "attributions=[gradient]", "levels=[0.25,0.5]", "train.epochs=2", "retrain.epochs=3", "retrain.seeds=2",
    "retrain.batch_models=3",   # 8 jobs: stacks of 3, 3 and 2
]


def conv_args(*extra: str) -> list[str]:
    return [arg for item in CONV + list(extra) for arg in ("--set", item)]


def records(wd) -> dict[str, dict]:
    return read_results(wd / "results" / "results.jsonl")


def without_results(ref, dst):
    shutil.copytree(ref, dst, ignore=shutil.ignore_patterns("results", "report"))
    return dst


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory):
    """A workdir after `fastroar run` of the conv study with stack_conv=false: one model per task."""
    wd = tmp_path_factory.mktemp("conv")
    result = CliRunner().invoke(cli, ["run", "--workdir", str(wd), "--no-progress",
                                      *conv_args("retrain.stack_conv=false")])
    assert result.exit_code == 0, result.output
    assert "8 to run in 8 tasks" in result.output
    return wd


@pytest.mark.parametrize("value,on_cpu,on_cuda", [("auto", False, True), (True, True, True), (False, False, False)])
def test_stack_conv_auto_means_cuda_only(value, on_cpu, on_cuda):
    assert stacks_conv(value, torch.device("cpu")) is on_cpu
    assert stacks_conv(value, torch.device("cuda")) is on_cuda   # a device name only: no GPU needed


def test_one_routing_rule_picks_the_stack_trainer_by_architecture():
    assert stack_trainer("mlp2") is train_stacked and stack_trainer("linear") is train_stacked
    assert stack_trainer("resnet18") is train_stacked_conv and stack_trainer("airbench") is train_stacked_conv


def test_stacked_conv_retrain_equals_one_model_per_task(conv_run, tmp_path):
    wd = without_results(conv_run, tmp_path / "w")
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", "--verbose",
                                      *conv_args("retrain.stack_conv=true")])
    assert result.exit_code == 0, result.output
    assert "8 to run in 3 tasks" in result.output and "task 1/3: 3 jobs" in result.output
    want, got = records(conv_run), records(wd)
    assert set(got) == set(want) and len(got) == 8   # same job keys: stacking is not part of a job's identity
    for key, rec in got.items():
        assert want[key]["group_size"] == 1 and rec["group_size"] in (3, 2)
        assert rec["accuracy"] == want[key]["accuracy"], key
        assert rec["loader"] == "resident"
    assert sorted(r["group_size"] for r in got.values()) == [2, 2, 3, 3, 3, 3, 3, 3]
    assert len({r["accuracy"] for r in got.values()}) > 1   # the models differ: equality is not trivial


def test_bad_stack_conv_value_names_the_key_and_the_choices(conv_run):
    fails_cleanly(["retrain", "--set", "retrain.stack_conv=maybe"], conv_run,
                  "retrain.stack_conv must be auto, true or false, got 'maybe'")


def test_stacked_conv_retrain_killed_then_rerun_runs_only_the_missing_jobs(conv_run, tmp_path):
    wd = without_results(conv_run, tmp_path / "w")
    settings = conv_args("retrain.stack_conv=true")
    killed = fastroar(wd, "retrain", kill_at="retrain.after_append:4", settings=settings)  # 2nd stack, 1st record
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(records(wd)) == 4
    resumed = fastroar(wd, "retrain", settings=settings)
    assert resumed.returncode == 0, resumed.stderr
    assert "8 jobs: 4 already done, 4 to run in 2 tasks" in resumed.stdout
    lines = [json.loads(line) for line in (wd / "results" / "results.jsonl").read_text().splitlines()]
    keys = [r["key"] for r in lines]
    assert len(keys) == len(set(keys)) == 8   # every job exactly once
    want = records(conv_run)
    assert set(keys) == set(want)
    # the leftover jobs train in other stacks ([3 of them], [1]); a model's result does not depend on its
    # stack beyond float rounding, so its accuracy is the one it gets alone
    assert all(r["accuracy"] == want[r["key"]]["accuracy"] for r in lines)


def test_conv_jobs_on_the_cpu_retrain_in_one_process_per_core_with_the_records_of_one_at_a_time(conv_run, tmp_path):
    """Conv jobs may not share the process (shares_process): on the CPU they used to run one after another on
    one core. By default they now run in worker processes, one per usable core (memory permitting), each on
    one torch thread: the records must equal those of `--workers 1`, one job at a time in this process."""
    from fastroar.engine.executors import usable_cores

    wd = without_results(conv_run, tmp_path / "w")
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", "--workers", "1",
                                      *conv_args("retrain.stack_conv=false")])
    assert result.exit_code == 0, result.output
    assert "8 to run in 8 tasks (local executor, recipe" in result.output   # in this process
    want = records(conv_run)   # `fastroar run`'s default executor
    got = records(wd)
    assert set(got) == set(want) and len(got) == 8
    for key, rec in got.items():
        assert (rec["accuracy"], rec["loss"], rec["train_acc"], rec["hits"]) == (
            want[key]["accuracy"], want[key]["loss"], want[key]["train_acc"], want[key]["hits"]), key
    assert len({r["accuracy"] for r in got.values()}) > 1   # the models differ: equality is not trivial
    if usable_cores() > 1:
        default = CliRunner().invoke(cli, ["retrain", "--workdir", str(without_results(conv_run, tmp_path / "d")),
                                           "--no-progress", "--verbose", *conv_args("retrain.stack_conv=false")])
        assert default.exit_code == 0, default.output
        workers = min(usable_cores(), 8)
        assert f"8 to run in 8 tasks (local executor in {workers} worker processes" in default.output
        # single-job tasks report no compute breakdown: the summary gives the wall, not a 0 % compute share
        assert "[retrain] 8 jobs in " in default.output and "thread-seconds per job" in default.output
        assert "in compute" not in default.output
