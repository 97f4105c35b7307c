"""The CLI tried as a careless user would: typos, wrong types, odd YAML, odd paths, damaged files, two
processes at once, signals. Every bad invocation must end in exactly one `Error:` line naming the fix,
exit code 2, no traceback, and leave every file it could have touched byte-identical.

The table runs in-process (click's runner) against one finished tiny workdir; the concurrency and
signal cases run real `python -m fastroar.cli` processes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastroar.cli import cli
from tests.conftest import tiny_args

ROOT = Path(__file__).resolve().parent.parent


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root, but the stages' empty lock files (.<stage>.lock: bookkeeping that
    must stay in place, since removing a lock file another process may hold opens a race)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture(scope="module")
def paths(run_workdir, tmp_path_factory):
    """A copy of the finished tiny workdir plus the odd files the table points at."""
    base = tmp_path_factory.mktemp("fuzz")
    wd = base / "wd"
    shutil.copytree(run_workdir[0], wd)
    files = {
        "wd": wd, "missing": base / "no-such-dir", "fresh": base / "fresh",
        "file": base / "a-file.txt", "yaml_list": base / "list.yaml", "binary": base / "binary.yaml",
        "dir": base / "a-dir", "empty": base / "empty.yaml", "bad_yaml": base / "bad.yaml",
        "no_dataset": base / "no-dataset.yaml", "nowhere": base / "nowhere.yaml",
    }
    files["file"].write_text("not a directory\n")
    files["yaml_list"].write_text("- dataset\n- model\n")
    files["binary"].write_bytes(bytes(range(256)) * 4)
    files["dir"].mkdir()
    files["empty"].write_text("# nothing here\n")
    files["bad_yaml"].write_text("dataset: {name: blockdigits\nmodel: [\n")
    files["no_dataset"].write_text("model: {arch: mlp2}\n")
    return files


# (id, argv with @placeholders from `paths`, text the one Error: line must contain).
# Every case runs on --workdir @wd unless its argv names another.
CASES = [
    # --set: unknown keys (closest one suggested), wrong types, bounds
    ("typo-top-level", ["run", "--set", "levles=[0.1]"], "did you mean levels?"),
    ("typo-retrain-key", ["retrain", "--set", "retrain.epocs=3"], "did you mean retrain.epochs?"),
    ("typo-run-seeds", ["run", "--set", "retrain.sedes=3"], "did you mean retrain.seeds?"),
    ("typo-train-key", ["train", "--set", "train.epocs=3"], "did you mean train.epochs?"),
    ("no-key", ["retrain", "--set", "=5"], "names no key"),
    ("no-equals", ["retrain", "--set", "retrain.seeds"], "must look like key.sub=value"),
    ("section-as-number", ["train", "--set", "train=5"], "config key train must be a mapping"),
    ("subkey-of-number", ["train", "--set", "train=5", "--set", "train.epochs=3"], "'train' is not a section"),
    ("lr-not-number", ["train", "--set", "train.lr=abc"], "train.lr must be a number, got 'abc'"),
    ("lr-negative", ["train", "--set", "train.lr=-0.1"], "train.lr must be > 0"),
    ("batch-zero", ["precompute", "--set", "precompute.batch_size=0"], "precompute.batch_size must be >= 1"),
    ("batch-negative", ["precompute", "--set", "precompute.batch_size=-5"], "precompute.batch_size must be >= 1"),
    ("batch-huge", ["precompute", "--set", "precompute.batch_size=100000000"], "precompute.batch_size must be <="),
    ("train-batch-zero", ["run", "--set", "train.batch_size=0"], "train.batch_size must be >= 1"),
    ("models-string", ["retrain", "--set", "models=abc"], "config key models must be a list"),
    ("models-empty", ["retrain", "--set", "models=[]"], "models must be at least 1 long"),
    ("models-twice", ["train", "--set", "models=[{name: a}, {name: a}]"], "appears twice"),
    ("models-no-name", ["train", "--set", "models=[{adversary: {norm: l2, eps: 1}}]"], "models[0].name"),
    ("adversary-norm", ["train", "--set", "models=[{name: a, adversary: {norm: l3, eps: 1}}]"],
     "adversary.norm must be one of 'l2' or 'linf'"),
    ("adversary-eps", ["train", "--set", "models=[{name: a, adversary: {norm: l2, eps: -1}}]"],
     "adversary.eps must be > 0"),
    ("adversary-typo", ["train", "--set", "models=[{name: a, adversary: {norm: l2, esp: 1}}]"],
     "did you mean models[0].adversary.eps?"),
    ("seeds-set-huge", ["retrain", "--set", "retrain.seeds=1000000"], "retrain.seeds must be <= 1000"),
    ("seeds-set-bool", ["retrain", "--set", "retrain.seeds=true"], "retrain.seeds must be an integer"),
    ("autocast-int", ["retrain", "--set", "train.autocast=1"], "train.autocast must be true or false"),
    ("level-one", ["run", "--set", "levels=[0.2, 1.0]"], "k must lie strictly between 0 and 1"),
    ("level-text", ["retrain", "--set", "levels=[abc]"], "levels[0] must be a number"),
    ("levels-empty", ["retrain", "--set", "levels=[]"], "levels must be at least 1 long"),
    ("fill-word", ["retrain", "--set", "retrain.fill=median"], "retrain.fill must be zero, mean or a number"),
    ("direction-set", ["run", "--set", "retrain.directions=[sideways]"], "must be one of 'top' or 'bottom'"),
    ("loader-set", ["run", "--set", "loader=fast"], "loader must be one of 'auto', 'ffcv' or 'resident'"),
    ("device-set", ["run", "--set", "device=tpu"], "device must be one of 'auto', 'cpu' or 'cuda'"),
    ("recipe-set", ["retrain", "--set", "retrain.recipe=turbo"], "retrain.recipe must be one of"),
    ("batch-models-zero", ["retrain", "--set", "retrain.batch_models=0"], "retrain.batch_models must be >= 1"),
    ("attributions-empty", ["run", "--set", "attributions=[]"], "attributions must be at least 1 long"),
    ("attribution-unknown", ["run", "--set", "attributions=[saliency]"], "unknown attribution 'saliency'"),
    ("dataset-name-int", ["retrain", "--set", "dataset.name=5"], "dataset.name must be a string"),
    ("arch-unknown", ["run", "--set", "model.arch=mlp3"], "unknown model architecture 'mlp3'"),
    ("arch-param-typo", ["run", "--set", "model.params.widht=3"], "did you mean model.params.width?"),
    ("dataset-param-typo", ["run", "--set", "dataset.params.sed=1"], "did you mean dataset.params.seed?"),
    ("image-size-blockdigits", ["run", "--image-size", "64"], "takes no parameter 'image_size' (--image-size"),
    ("yaml-unclosed", ["run", "--set", "train.lr=[1"], "value is not valid YAML"),
    ("dataset-unknown", ["run", "-d", "nosuch"], "unknown dataset 'nosuch'"),
    ("store-protocol", ["retrain", "--set", "store=foo://bar"], "unknown protocol 'foo'"),
    ("store-s3-no-s3fs", ["retrain", "--store", "s3://bucket/study.zarr"], "pip install s3fs"),
    ("store-is-file", ["retrain", "--store", "@file"], "is a file; --store takes a directory"),
    # --config files
    ("config-list", ["run", "--config", "@yaml_list"], "must be a mapping of keys"),
    ("config-binary", ["run", "--config", "@binary"], "is not a text file"),
    ("config-dir", ["run", "--config", "@dir"], "is a directory; pass a YAML file"),
    ("config-missing", ["run", "--config", "@nowhere"], "does not exist"),
    ("config-empty", ["run", "--config", "@empty"], "is empty"),
    ("config-bad-yaml", ["run", "--config", "@bad_yaml"], "is not valid YAML"),
    ("config-no-dataset", ["run", "--config", "@no_dataset"], "lacks dataset"),
    # options
    ("k-zero", ["retrain", "--k", "0"], "k must lie strictly between 0 and 1"),
    ("k-big", ["retrain", "--k", "1.5"], "k must lie strictly between 0 and 1"),
    ("k-text", ["retrain", "--k", "abc"], "k must be a number in (0, 1)"),
    ("k-list-bad", ["retrain", "--k", "0.1,,2"], "k must lie strictly between 0 and 1"),
    ("seeds-huge", ["retrain", "--seeds", "1000000"], "1<=x<=1000"),
    ("seeds-zero", ["retrain", "--seeds", "0"], "1<=x<=1000"),
    ("direction-option", ["retrain", "--direction", "sideways"], "'sideways' is not one of"),
    ("model-typo-retrain", ["retrain", "--model", "robst"], "unknown model 'robst': the config's models are"),
    ("model-typo-precompute", ["precompute", "--model", "robst"], "unknown model 'robst'"),
    ("model-typo-estimate", ["estimate", "--model", "robst"], "unknown model 'robst'"),
    ("attribution-not-in-config", ["retrain", "--attribution", "edge"], "unknown attribution 'edge'"),
    ("noise-negative", ["estimate", "--noise", "-1"], "x>=0"),
    ("workers-with-ray", ["retrain", "--executor", "ray", "--workers", "2"], "--workers applies to --executor local"),
    ("address-without-ray", ["retrain", "--address", "127.0.0.1:1"], "--address and --ray-auth-token-file only apply to --executor ray"),
    ("cpus-zero", ["precompute", "--cpus-per-task", "0"], "x>0"),
    ("recipe-option", ["report", "--recipe", "turbo"], "'turbo' is not one of"),
    ("unknown-option", ["run", "--executor", "ray"], "No such option"),
    ("image-size-huge", ["prepare", "-d", "folder", "--image-size", "20000"], "8<=x<=1024"),
    ("data-root-missing", ["prepare", "-d", "cifar10", "-w", "@fresh", "--data-root", "@missing"],
     "does not exist"),
    # workdirs
    ("workdir-is-file", ["report", "-w", "@file"], "is a file, not a directory"),
    ("workdir-missing", ["report", "-w", "@missing"], "does not exist; run `fastroar prepare"),
    ("workdir-unwritable", ["prepare", "-w", "/proc/fastroar-cannot-be-here"], "cannot write to workdir"),
    ("train-before-prepare", ["train", "-w", "@dir", "-d", "blockdigits"], "run `fastroar prepare"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_line_exit_2_and_changes_nothing(paths, argv, message):
    args = [str(paths[a[1:]]) if a.startswith("@") else a for a in argv]
    if "-w" not in args and "--workdir" not in args:
        args += ["--workdir", str(paths["wd"])]
    watched = [paths["wd"], paths["fresh"], paths["missing"], paths["dir"]]
    before = [tree(p) for p in watched]
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out and not isinstance(result.exception, (TypeError, KeyError, AttributeError))
    errors = [line for line in out.splitlines() if "Error" in line]
    assert len(errors) == 1 and message in errors[0], out
    assert [tree(p) for p in watched] == before            # nothing written, nothing removed
    assert not paths["fresh"].exists() and not paths["missing"].exists()


def test_the_table_is_large_enough():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- odd but valid: a message, exit 0

def same_data(a: Path, b: Path) -> None:
    """Two prepared data dirs hold the same dataset: metadata, signal blocks, and every split's decoded
    images and labels (FFCV's writer processes may order pages differently, so not the same bytes)."""
    from fastroar.engine.beton import read_beton, verify_beton

    assert (a / "meta.json").read_text() == (b / "meta.json").read_text()
    for split in ("train", "test"):
        verify_beton(str(a / f"{split}.beton"))
        for x, y in zip(read_beton(str(a / f"{split}.beton")), read_beton(str(b / f"{split}.beton"))):
            assert (x == y).all()
        assert (a / f"signal_{split}.npy").read_bytes() == (b / f"signal_{split}.npy").read_bytes()


def _copy(run_workdir, tmp_path) -> Path:
    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd)
    return wd


def test_garbage_in_the_results_log_is_named_not_fatal(run_workdir, tmp_path):
    wd = _copy(run_workdir, tmp_path)
    log = wd / "results" / "results.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:3]) + "{not json\n" + json.dumps({"key": "zzz"}) + "\n" + "".join(lines[3:]))
    clean = CliRunner().invoke(cli, ["report", "--workdir", str(run_workdir[0])]).output
    result = CliRunner().invoke(cli, ["report", "--workdir", str(wd)])
    assert result.exit_code == 0, result.output
    assert "1 unreadable line(s)" in result.output and "(line 4)" in result.output
    assert "1 record(s) from other settings ignored: not retraining records (1)" in result.output
    table = lambda text: text.split("DiffROAR (")[1].split("report:")[0]  # noqa: E731
    assert table(result.output) == table(clean)           # the same numbers as without the garbage


def test_results_of_other_settings_are_named_never_mixed(run_workdir, tmp_path):
    """retrain.epochs changed for one level: report (old settings) shows only its own records and names
    the others; with the new settings the other levels are missing, not filled from the old run."""
    wd = _copy(run_workdir, tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", "--k", "0.25",
                               "--set", "retrain.epochs=1"]).exit_code == 0
    old = runner.invoke(cli, ["report", "--workdir", str(wd)]).output
    # one level: 8 gradient records (2 models) + 4 random ones serving both models
    assert "12 record(s) from other settings ignored: retrain.epochs 1 vs 2 (12)" in old
    assert "missing" not in old
    new = runner.invoke(cli, ["report", "--workdir", str(wd), "--set", "retrain.epochs=1"]).output
    assert "record(s) from other settings ignored: retrain.epochs 2 vs 1 (24)" in new
    rows = [line.split() for line in new.split("Signal-block")[0].splitlines() if " 0.500 " in line]
    assert rows and all("missing" in r for r in rows)


def test_single_run_std_is_blank_not_zero(run_workdir, tmp_path):
    wd = _copy(run_workdir, tmp_path)
    result = CliRunner().invoke(cli, ["report", "--workdir", str(wd), "--set", "retrain.seeds=1"])
    assert result.exit_code == 0
    csv = (wd / "report" / "diffroar.csv").read_text().splitlines()
    std = csv[0].split(",").index("std")
    assert all(line.split(",")[std] == "" for line in csv[1:]) and "0.000  1" not in result.output


def test_damaged_chunk_leaves_the_old_report_in_place(run_workdir, tmp_path):
    import numpy as np
    import zarr

    wd = _copy(run_workdir, tmp_path)
    ranks = zarr.open_array(str(wd / "masks.zarr" / "standard" / "gradient" / "test" / "ranks"), mode="r+")
    ranks[0] = np.roll(ranks[0], 1)
    before = tree(wd / "report")
    result = CliRunner().invoke(cli, ["report", "--workdir", str(wd)])
    assert result.exit_code == 2 and "does not match its checksum" in result.output
    assert tree(wd / "report") == before


def test_deleted_beton_is_rebuilt_as_the_message_says(run_workdir, tmp_path):
    wd = _copy(run_workdir, tmp_path)
    (data,) = (wd / "data").iterdir()
    (data / "train.beton").write_bytes((data / "train.beton").read_bytes()[:-10])
    bad = CliRunner().invoke(cli, ["train", "--workdir", str(wd)])
    assert bad.exit_code == 2 and "delete it (and" in bad.output
    (data / "train.beton").unlink()
    (data / "train.beton.json").unlink()
    result = CliRunner().invoke(cli, ["prepare", "--workdir", str(wd), "--no-progress"])
    assert result.exit_code == 0 and "writing the dataset again" in result.output, result.output
    same_data(data, next((run_workdir[0] / "data").iterdir()))


def test_failed_run_keeps_the_saved_config(run_workdir, tmp_path):
    """A run that fails after prepare (its levels differ from the store's) leaves config.yaml as it was."""
    wd = _copy(run_workdir, tmp_path)
    before = (wd / "config.yaml").read_bytes()
    result = CliRunner().invoke(cli, ["run", "--workdir", str(wd), "--no-progress", *tiny_args("levels=[0.2]")])
    assert result.exit_code == 2, result.output
    assert (wd / "config.yaml").read_bytes() == before
    again = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress"])
    assert again.exit_code == 0 and "0 to run" in again.output


def test_failed_prepare_leaves_no_workdir(tmp_path):
    wd = tmp_path / "new"
    result = CliRunner().invoke(cli, ["prepare", "-d", "cifar10", "--data-root", str(tmp_path / "none"),
                                      "--workdir", str(wd)])
    assert result.exit_code == 2 and not wd.exists()


def test_relative_store_is_saved_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["prepare", "--workdir", "w", "--store", "ranks.zarr", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"store: {tmp_path / 'ranks.zarr'}" in (tmp_path / "w" / "config.yaml").read_text()


# ---------------------------------------------------------------- real processes

def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full.pop("FASTROAR_KILL_AT", None) if not env or "FASTROAR_KILL_AT" not in env else None
    return subprocess.Popen([sys.executable, "-m", "fastroar.cli", *args], cwd=ROOT, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not path.exists():
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.parametrize("stage", ["prepare", "train"])
def test_two_processes_on_one_stage_second_is_refused_first_finishes(run_workdir, tmp_path, stage):
    """The first process holds the stage's lock (paused inside it); the second, started meanwhile, is
    refused with one line and exit 2, and writes nothing; the first completes and its outputs equal the
    reference workdir's."""
    wd = tmp_path / "w"
    if stage == "train":  # data prepared, no models yet
        shutil.copytree(run_workdir[0], wd, ignore=shutil.ignore_patterns("models", "masks.zarr", "results",
                                                                             "report", "*.lock"))
    args = [stage, "--workdir", str(wd), "--no-progress", *tiny_args()]
    first = _cli(*args, env={"FASTROAR_PAUSE_AT": f"stage.{stage}:8"})
    _wait_for(wd / f".{stage}.lock")
    time.sleep(1.0)
    second = _cli(*args)
    out2, _ = second.communicate(timeout=120)
    out1, _ = first.communicate(timeout=300)
    assert second.returncode == 2, out2
    assert f"another `fastroar {stage}` is running" in out2 and "Traceback" not in out2
    assert len([line for line in out2.splitlines() if "Error" in line]) == 1
    assert first.returncode == 0, out1
    part = "data" if stage == "prepare" else "models"
    if stage == "prepare":
        (mine,), (ref,) = (wd / part).iterdir(), (run_workdir[0] / part).iterdir()
        same_data(mine, ref)                                       # what an undisturbed run writes
    else:
        ref = json.loads((run_workdir[0] / "models" / "robust" / "model.json").read_text())
        got = json.loads((wd / "models" / "robust" / "model.json").read_text())
        assert got["hash"] == ref["hash"]                          # the same weights


def test_ctrl_c_is_one_line_and_resumes(run_workdir, tmp_path):
    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd, ignore=shutil.ignore_patterns("results", "report", "*.lock"))
    args = ["retrain", "--workdir", str(wd), "--no-progress", *tiny_args()]
    proc = _cli(*args, env={"FASTROAR_PAUSE_AT": "stage.retrain:30"})
    _wait_for(wd / ".retrain.lock")
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Interrupted: finished work is kept" in out and "Traceback" not in out
    again = _cli(*args)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "32/32 jobs recorded" in out, out


def test_killed_prepare_leaves_no_temporary_files_and_reruns_identically(run_workdir, tmp_path):
    wd = tmp_path / "w"
    args = ["prepare", "--workdir", str(wd), "--no-progress", *tiny_args()]
    killed = _cli(*args, env={"FASTROAR_KILL_AT": "beton.after_write:1"})
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL
    rerun = _cli(*args)
    out, _ = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out
    (mine,), (ref,) = (wd / "data").iterdir(), (run_workdir[0] / "data").iterdir()
    same_data(mine, ref)
    assert not [p for p in wd.rglob("*") if ".tmp" in p.name or ".errors" in p.name]
