"""`fastroar run`'s overlapped train, precompute and retrain (fastroar.stages.overlap) gives exactly what the
stages give run one after another: the same model files, rank store and records. Tried as a user: a run
killed or interrupted anywhere resumes to the same results, and holds every stage's lock while it works."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from torch import nn

from fastroar.engine.executors import usable_cores
from fastroar.engine.results import read_results
from fastroar.models import builders
from tests.conftest import tiny_args

ROOT = Path(__file__).resolve().parents[1]
OVERLAPPED = "[run] train, precompute and retrain overlapped"

pytestmark = pytest.mark.skipif(usable_cores() < 2, reason="the run overlaps its stages on two or more cores")


def cli(workdir: Path, *args: str, env: dict[str, str] | None = None, sets: tuple[str, ...] = ()) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", **(env or {})}
    for name in ("FASTROAR_KILL_AT", "FASTROAR_PAUSE_AT"):
        if name not in (env or {}):
            full.pop(name, None)
    return subprocess.Popen([sys.executable, "-m", "fastroar.cli", *args, "--workdir", str(workdir), "--no-progress",
                             *tiny_args(*sets)], cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def store_arrays(workdir: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(workdir / "masks.zarr"), mode="r")
    return {f"{m}/{a}/{s}/{n}": root[m][a][s][n][:] for m in ("standard", "robust") for a in ("gradient",)
            for s in ("train", "test") for n in ("ranks", "top", "bottom", "done")}


def model_hashes(workdir: Path) -> dict[str, str]:
    return {m: json.loads((workdir / "models" / m / "model.json").read_text())["hash"] for m in ("standard", "robust")}


def outcomes(workdir: Path) -> dict[str, tuple]:
    return {key: (r["accuracy"], r["train_acc"], r["loss"])
            for key, r in read_results(workdir / "results" / "results.jsonl").items()}


def same_results(got: Path, want: Path) -> None:
    assert model_hashes(got) == model_hashes(want)
    a, b = store_arrays(got), store_arrays(want)
    for name in b:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    lines = (got / "results" / "results.jsonl").read_text().splitlines()
    # every job exactly once: 16 gradient jobs, 8 random ones serving both models (one key per pair)
    assert len(lines) == len({json.loads(line)["key"] for line in lines}) == 24
    assert outcomes(got) == outcomes(want)
    assert (got / "report" / "diffroar.csv").read_bytes() == (want / "report" / "diffroar.csv").read_bytes()


@pytest.fixture(scope="module")
def stage_by_stage(tmp_path_factory) -> Path:
    """The tiny study with each stage its own command, one after another."""
    wd = tmp_path_factory.mktemp("stages")
    for stage in ("prepare", "train", "precompute", "retrain", "report"):
        code, out = finish(cli(wd, stage))
        assert code == 0, out
        assert OVERLAPPED not in out
    return wd


def test_overlapped_run_equals_the_stages_one_after_another(run_workdir, stage_by_stage):
    wd, result = run_workdir
    assert OVERLAPPED in result.output, result.output
    # each model's retraining was planned once it was trained, and every job was recorded
    assert "[retrain] standard: 16 jobs: 0 already done, 16 to run" in result.output
    assert "[retrain] 32/32 jobs recorded" in result.output
    same_results(wd, stage_by_stage)


CONV = ("model={arch: airbench, params: {widths: [4, 8, 8], bn_eps: 1.0e-5}}", "train.cpu_channels_last=true")


def test_overlapped_conv_run_equals_the_stages_with_worker_processes(tmp_path):
    """The BlockMNIST profile's shape of study, tiny: a conv net in channels_last. Overlapped, its retrain
    jobs run on this process's threads while the PGD model still trains; stage by stage, the retrain stage
    runs them in one worker process per core. Same models, ranks, records and report, bit for bit."""
    stages, run = tmp_path / "stages", tmp_path / "run"
    outputs = {}
    for stage in ("prepare", "train", "precompute", "retrain", "report"):
        code, outputs[stage] = finish(cli(stages, stage, sets=CONV))
        assert code == 0 and OVERLAPPED not in outputs[stage], outputs[stage]
    assert "in 2 worker processes" in outputs["retrain"], outputs["retrain"]
    code, out = finish(cli(run, "run", sets=CONV))
    assert code == 0 and OVERLAPPED in out, out
    assert "[retrain] standard: 16 jobs: 0 already done, 16 to run" in out
    same_results(run, stages)


@pytest.mark.parametrize("kill_at", ["store.after_record:3", "retrain.after_append:5"])
def test_overlapped_run_killed_then_rerun_equals_uninterrupted(run_workdir, tmp_path, kill_at):
    """SIGKILL while ranks are written (a model may still be training) or while records are written; the
    rerun (stage by stage now: the models exist) ends with the uninterrupted run's results."""
    wd = tmp_path / "w"
    code, out = finish(cli(wd, "run", env={"FASTROAR_KILL_AT": kill_at}))
    assert code == -signal.SIGKILL, out
    assert OVERLAPPED in out
    code, out = finish(cli(wd, "run"))
    assert code == 0, out
    same_results(wd, run_workdir[0])


def test_overlapped_run_holds_every_stage_lock_and_ctrl_c_keeps_finished_work(run_workdir, tmp_path):
    """While the run pauses after its first record, a `retrain` on the same workdir is refused; Ctrl-C then
    stops the run (exit 130) with its records kept: that first one, and the 8 of the group that was running
    beside it, if one was (it finishes before the run exits). The rerun runs only the others and completes
    the sweep."""
    wd = tmp_path / "w"
    first = cli(wd, "run", env={"FASTROAR_PAUSE_AT": "retrain.after_append:40"})  # 3 CLI starts fit in it
    results = wd / "results" / "results.jsonl"
    t0 = time.time()
    while not (results.exists() and results.read_text().count("\n") >= 1):
        assert first.poll() is None and time.time() - t0 < 240, "the run never recorded a job"
        time.sleep(0.2)
    for stage in ("retrain", "precompute", "train"):
        code, out = finish(cli(wd, stage), timeout=120)
        assert code == 2 and f"another `fastroar {stage}` is running" in out, out
    first.send_signal(signal.SIGINT)
    code, out = finish(first, timeout=120)
    assert code == 130 and "Interrupted: finished work is kept" in out and "Traceback" not in out, out
    kept = outcomes(wd)
    assert len(kept) in (1, 9)     # groups of 8 jobs (a model and an attribution each); 7 of the first lost
    # a random record serves both models' jobs (model-independent: one key for the pair)
    done_jobs = sum(2 if r["attribution"] == "random" else 1 for r in read_results(results).values())
    code, out = finish(cli(wd, "run"))
    assert code == 0 and f"32 jobs: {done_jobs} already done, {24 - len(kept)} to run" in out, out
    same_results(wd, run_workdir[0])


def test_run_overlaps_only_where_every_task_may_share_the_process(run_workdir, tmp_path, monkeypatch):
    """Two models to train on the CPU with built-in attributions and MLP stacks, or a built-in conv net
    retrained one job per task: overlapped. A model already trained (one left to train), an attribution from
    captum (it may draw from torch's global generator), a conv stack, a model from outside fastroar's
    registry or one with dropout: the stages in turn."""
    from fastroar.stages.contract import open_context
    from fastroar.stages.overlap import overlaps

    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd, ignore=shutil.ignore_patterns("models", "masks.zarr", "results", "report"))
    overrides = tiny_args()[1::2]   # the --set values

    def decision(*extra: str) -> bool:
        return overlaps(open_context(wd, overrides=[*overrides, *extra], progress=False))

    assert decision()
    assert not decision("attributions=[gradient, captum:Saliency]")
    assert decision("model={arch: resnet18}")                              # a built-in conv, one job per task
    assert not decision("model={arch: resnet18}", "retrain.stack_conv=true")   # a vmap stack draws per model
    assert not decision("model={arch: 'torchvision:squeezenet1_0'}")       # not fastroar's: may draw anywhere
    monkeypatch.setitem(builders.BUILDERS, "dropnet", lambda shape, num_classes: nn.Sequential(
        nn.Conv2d(shape[0], 2, 3), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(num_classes)))
    assert not decision("model={arch: dropnet}")                            # dropout draws in training
    (wd / "models" / "standard").mkdir(parents=True)
    shutil.copy(run_workdir[0] / "models" / "standard" / "model.pt", wd / "models" / "standard" / "model.pt")
    assert not decision()                                   # one model left to train: nothing to overlap


def test_ctrl_c_stops_running_retrain_groups_at_their_next_step(tmp_path):
    """Ctrl-C while long retrain groups run (2,000 epochs each, tens of seconds): the run exits within a few
    seconds (each group stops at its next step) instead of waiting for them, with exit 130, one message,
    and its trained models and ranks kept."""
    import threading

    wd = tmp_path / "w"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "fastroar.cli", "run", "--workdir", str(wd), "--no-progress",
                             *tiny_args("retrain.epochs=2000")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    t0 = time.time()
    while not any(line.startswith("[retrain] robust:") for line in list(lines)):
        assert proc.poll() is None and time.time() - t0 < 240, "".join(lines)
        time.sleep(0.1)
    time.sleep(1.0)                      # both threads inside retrain groups now
    t_int = time.time()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    waited = time.time() - t_int
    reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 130 and "Interrupted: finished work is kept" in out and "Traceback" not in out, out
    assert waited < 5, f"the run took {waited:.1f}s to stop"
    assert set(model_hashes(wd)) == {"standard", "robust"}
    assert not (wd / "results" / "results.jsonl").exists() or outcomes(wd) == {}
