"""The CLI tried as a careless user would: typos, wrong types, odd YAML, odd paths, damaged files, two
processes at once, signals. Every bad invocation must end in exactly one `Error:` line naming the fix,
exit code 2, no traceback, and leave every file it could have touched byte-identical.

The table runs in-process (click's runner) against one finished tiny workdir; the concurrency and
signal cases run real `python -m fastroar.cli` processes.
"""
from __future__ import annotations

import csv
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
from fastroar.training.jobs import MODEL_INDEPENDENT
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
        "duplicate": base / "duplicate.yaml", "foreign": base / "mine", "dangling": base / "dangling",
    }
    files["dangling"].symlink_to(base / "gone")
    files["file"].write_text("not a directory\n")
    files["yaml_list"].write_text("- dataset\n- model\n")
    files["binary"].write_bytes(bytes(range(256)) * 4)
    files["dir"].mkdir()
    files["empty"].write_text("# nothing here\n")
    files["bad_yaml"].write_text("dataset: {name: blockdigits\nmodel: [\n")
    files["no_dataset"].write_text("model: {arch: mlp2}\n")
    (files["foreign"] / "report").mkdir(parents=True)         # the user's own files, not a workdir
    (files["foreign"] / "config.yaml").write_text("my: own settings\n")
    (files["foreign"] / "report" / "diffroar.csv").write_text("my,own,numbers\n")
    files["duplicate"].write_text("dataset: {name: blockdigits}\nmodel: {arch: mlp2}\nretrain:\n  seeds: 3\n"
                                  "retrain:\n  epochs: 2\n")
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
    ("seeds-set-bool", ["retrain", "--set", "retrain.seeds=true"], "retrain.seeds must be an integer or auto"),
    ("autocast-int", ["retrain", "--set", "train.autocast=1"], "train.autocast must be true or false"),
    ("level-one", ["run", "--set", "levels=[0.2, 1.0]"], "k must lie strictly between 0 and 1"),
    ("level-text", ["retrain", "--set", "levels=[abc]"], "levels[0] must be a number"),
    ("levels-empty", ["retrain", "--set", "levels=[]"], "levels must be at least 1 long"),
    ("fill-word", ["retrain", "--set", "retrain.fill=median"], "retrain.fill must be zero, mean, road or a number"),
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
    # issue 26, silently wrong before: numbers that are not finite or out of range, duplicate YAML keys
    ("lr-inf", ["train", "--set", "train.lr=.inf"], "train.lr must be a finite number"),
    ("weight-decay-inf", ["train", "--set", "train.weight_decay=.inf"], "train.weight_decay must be a finite number"),
    ("fill-nan", ["retrain", "--set", "retrain.fill=.nan"], "retrain.fill must be a finite number"),
    ("fill-minus-inf", ["retrain", "--set", "retrain.fill=-.inf"], "retrain.fill must be a finite number"),
    ("momentum-inf", ["retrain", "--set", "retrain.momentum=.inf"], "retrain.momentum must be a finite number"),
    ("momentum-one", ["train", "--set", "train.momentum=1.5"], "train.momentum must be < 1"),
    ("warmup-inf", ["retrain", "--set", "retrain.warmup_epochs=.inf"], "retrain.warmup_epochs must be a finite"),
    ("eps-inf", ["train", "--set", "models=[{name: a, adversary: {norm: l2, eps: .inf}}]"],
     "adversary.eps must be a finite number"),
    ("level-nan", ["run", "--set", "levels=[.nan]"], "levels[0] must be a finite number"),
    ("model-seed-negative", ["train", "--set", "models=[{name: a, seed: -1}]"], "models[0].seed must be >= 0"),
    ("width-zero", ["run", "--set", "model.params.width=0"], "model.params.width must be an integer between 1"),
    ("width-negative", ["run", "--set", "model.params.width=-3"], "model.params.width must be an integer"),
    ("width-string", ["run", "--set", "model.params.width='32'"], "model.params.width must be an integer"),
    ("width-float", ["run", "--set", "model.params.width=32.5"], "model.params.width must be an integer"),
    ("noise-inf", ["estimate", "--noise", "inf"], "must be a finite number > 0, got inf"),
    ("noise-nan", ["estimate", "--noise", "nan"], "must be a finite number > 0"),
    ("noise-zero", ["estimate", "--noise", "0"], "must be a finite number > 0"),
    ("estimate-seed-negative", ["estimate", "--seed", "-3"], "x>=0"),
    ("config-duplicate-key", ["run", "--config", "@duplicate"], "key 'retrain' appears twice (lines 3 and 5)"),
    ("set-duplicate-key", ["train", "--set", "train={epochs: 2, epochs: 3}"], "key 'epochs' appears twice"),
    # a config the base models were not trained with: refused by every stage that reads them, as by train
    ("trained-otherwise-precompute", ["precompute", "--set", "train.epochs=2"],
     "base model 'standard' in"),
    ("trained-otherwise-retrain", ["retrain", "--set", "train.epochs=2"], "was trained with another config"),
    ("trained-otherwise-report", ["report", "--set", "train.epochs=2"],
     "was trained with another config (recipe.epochs: 3 -> 2)"),
    ("trained-otherwise-estimate", ["estimate", "--set", "train.epochs=2"], "was trained with another config"),
    ("report-other-adversary", ["report", "--set", "models=[{name: standard}, {name: robust, adversary: "
                                "{norm: l2, eps: 1.0, steps: 2}}]"],
     "(adversary.eps: 0.1 -> 1.0, adversary.norm: 'linf' -> 'l2')"),
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
    ("noise-negative", ["estimate", "--noise", "-1"], "must be a finite number > 0"),
    ("workers-with-ray", ["retrain", "--executor", "ray", "--workers", "2"], "--workers applies to --executor local"),
    ("address-without-ray", ["retrain", "--address", "127.0.0.1:1"],
     "--address and --ray-auth-token-file only apply to --executor ray"),
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
    # issue 26 case 9: a directory of the user's own files is not a workdir: nothing read, nothing overwritten
    ("foreign-run", ["run", "-w", "@foreign"], "holds files fastroar did not write (config.yaml, report/)"),
    ("foreign-run-dataset", ["run", "-w", "@foreign", "--dataset", "blockdigits"], "`touch "),
    ("foreign-prepare", ["prepare", "-w", "@foreign", "-d", "blockdigits"], "choose a new or empty --workdir"),
    ("foreign-report", ["report", "-w", "@foreign"], "holds files fastroar did not write"),
    # issue 26, misleading messages before (cases 23, 24, 27)
    ("precompute-other-dataset", ["precompute", "-d", "leakage"],
     "(its config.yaml is for 'blockdigits'); run `fastroar prepare --workdir"),
    ("k-keeps-nothing", ["retrain", "--k", "1e-9"], "k=1e-09 keeps 0 of the 128 coordinates"),
    ("k-keeps-everything", ["retrain", "--k", "0.999"], "keeps 128 of the 128 coordinates"),
    ("dangling-workdir", ["run", "-w", "@dangling"], "is a link to"),
    ("levels-thousand", ["report", "--set", "levels=[" + ", ".join(f"{0.01 + i * 0.00098:.5f}" for i in range(1000))
                         + "]"], "(1000 values)"),
]


@pytest.mark.parametrize("argv, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_invocation_is_one_line_exit_2_and_changes_nothing(paths, argv, message):
    args = [str(paths[a[1:]]) if a.startswith("@") else a for a in argv]
    if "-w" not in args and "--workdir" not in args:
        args += ["--workdir", str(paths["wd"])]
    watched = [paths["wd"], paths["fresh"], paths["missing"], paths["dir"], paths["foreign"]]
    before = [tree(p) for p in watched]
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out and not isinstance(result.exception, (TypeError, KeyError, AttributeError))
    errors = [line for line in out.splitlines() if "Error" in line]
    assert len(errors) == 1 and message in errors[0], out
    assert len(errors[0]) < 600                            # a line, not a dump of the config
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
    # a line holding a key and nothing else is not a record (no model, seed, accuracy, ...): unreadable
    assert "2 unreadable line(s)" in result.output and "(line 4, 5)" in result.output
    assert "other settings" not in result.output and "checksum" not in result.output
    table = lambda text: text.split("DiffROAR (")[1].split("report:")[0]  # noqa: E731
    assert table(result.output) == table(clean)           # the same numbers as without the garbage


def _table(text: str) -> str:
    return text.split("DiffROAR (")[1].split("report:")[0]


@pytest.mark.parametrize("damage", ["digit", "null", "text", "no-seed", "bool"])
def test_a_damaged_record_is_counted_and_excluded(run_workdir, tmp_path, damage, capsys):
    """Issue 26 cases 7 and 17: one changed digit of an accuracy fails the record's checksum; accuracy null or
    "0.5x", or no seed, is not a usable record. report names the line and uses the record nowhere (the row
    shows the runs left, not the damaged number); load_results says the same; retrain runs that job again
    and the report is then the clean one."""
    from fastroar.api import load_results

    wd = _copy(run_workdir, tmp_path)
    log = wd / "results" / "results.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    rec = json.loads(lines[2])
    assert "crc" in rec                                   # every record carries its checksum
    if damage == "digit":
        text = json.dumps(rec, sort_keys=True)
        acc = json.dumps(rec["accuracy"])
        changed = acc[:3] + str((int(acc[3]) + 7) % 10) + acc[4:]
        lines[2] = text.replace(f'"accuracy": {acc}', f'"accuracy": {changed}') + "\n"
        assert lines[2] != text + "\n"
    else:
        bad = {k: v for k, v in rec.items() if k != "crc"}
        if damage == "no-seed":
            del bad["seed"]
        else:
            bad["accuracy"] = {"null": None, "text": "0.5x", "bool": True}[damage]
        lines[2] = json.dumps(bad, sort_keys=True) + "\n"   # no checksum: read as a record of an old version
    log.write_text("".join(lines))
    clean = CliRunner().invoke(cli, ["report", "--workdir", str(run_workdir[0])]).output
    result = CliRunner().invoke(cli, ["report", "--workdir", str(wd)])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "1 unreadable line(s)" in result.output and "(line 3)" in result.output
    assert ("fail their checksum" in result.output) == (damage == "digit")
    with open(wd / "report" / "diffroar.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f)
                   if (r["model"], r["attribution"], float(r["k"])) == (rec["model"], rec["attribution"], rec["k"]))
    assert row["runs"] == "1"                             # one of 2 seeds left: the damaged one is not used
    capsys.readouterr()
    runs = load_results(wd).runs
    assert "1 unreadable line(s)" in capsys.readouterr().out
    # one record fewer; a model-independent job's record serves every model's run (fastroar.training.jobs)
    lost = 2 if rec["attribution"] in MODEL_INDEPENDENT else 1
    assert len(runs) == len(load_results(run_workdir[0]).runs) - lost
    again = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress"])
    assert again.exit_code == 0 and "1 to run" in again.output
    assert "a job without a usable record runs again" in again.output
    assert _table(CliRunner().invoke(cli, ["report", "--workdir", str(wd)]).output) == _table(clean)


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
    diffroar_table = new.split("Signal-block")[0].split("Paired comparisons")[0]
    rows = [line.split() for line in diffroar_table.splitlines() if " 0.500 " in line]
    assert rows and all("missing" in r for r in rows)


def test_single_run_std_is_blank_not_zero(run_workdir, tmp_path):
    wd = _copy(run_workdir, tmp_path)
    log = wd / "results" / "results.jsonl"   # one run per row: the records of seed 0 only (report shows every
    log.write_text("".join(line for line in log.read_text().splitlines(keepends=True)   # seed recorded)
                           if json.loads(line)["seed"] == 0))
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


# ---------------------------------------------------------------- issue 26: more odd but valid cases

def test_a_base_model_at_chance_is_failed_and_its_rows_marked(run_workdir, tmp_path):
    """Case 8: a base model whose clean accuracy is below chance (0.078; chance is the test split's
    majority rate) is FAILED, not only "not robust", and its rows are marked in the table and the CSV."""
    import csv

    wd = _copy(run_workdir, tmp_path)
    info = wd / "models" / "robust" / "model.json"
    summary = json.loads(info.read_text())
    summary["test_acc"] = 0.078
    info.write_text(json.dumps(summary, indent=2))
    result = CliRunner().invoke(cli, ["report", "--workdir", str(wd)])
    assert result.exit_code == 0, result.output
    assert "FAILED: base model 'robust' learned nothing: clean test accuracy 0.078" in result.output
    assert "'robust' is not robust" not in result.output
    rows = list(csv.DictReader((wd / "report" / "diffroar.csv").open()))
    assert rows and {r["model"]: r["base_model"] for r in rows} == {"robust": "FAILED", "standard": ""}
    clean = CliRunner().invoke(cli, ["report", "--workdir", str(run_workdir[0])]).output
    assert "FAILED" not in clean and "base_model" not in clean


def test_a_second_model_on_a_workdir_is_refused_before_anything_is_written(tmp_path):
    """Case 10: evaluate(netA, workdir=W), then evaluate(netB, workdir=W): the second is refused, and
    W/inputs/mine.pt is still A (before, B overwrote it and W no longer ran)."""
    import fastroar
    from fastroar.errors import StoreMismatchError
    from fastroar.models import build_model

    settings = dict(attributions=["random"], levels=[0.5], seeds=1, progress=False, log=lambda s: None,
                    overrides=["model.params.width=8", "retrain.epochs=1", "retrain.directions=[top, bottom]"])
    wd = tmp_path / "W"
    net_a = build_model("mlp2", (1, 16, 8), 10, width=8)
    fastroar.evaluate(net_a, "blockdigits", workdir=wd, **settings)
    assert (wd / ".fastroar").is_file()
    before = tree(wd)
    torch_manual = __import__("torch").manual_seed(1)  # noqa: F841 (another initialisation: another model)
    net_b = build_model("mlp2", (1, 16, 8), 10, width=8)
    with pytest.raises(StoreMismatchError, match="already holds base model 'mine', registered from another"):
        fastroar.evaluate(net_b, "blockdigits", workdir=wd, **settings)
    assert tree(wd) == before
    rerun = CliRunner().invoke(cli, ["run", "--workdir", str(wd), "--no-progress"])
    assert rerun.exit_code == 0, rerun.output


def _one_error(result) -> str:
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out and not isinstance(result.exception, (TypeError, KeyError, ValueError))
    errors = [line for line in out.splitlines() if "Error" in line]
    assert len(errors) == 1, out
    return errors[0]


@pytest.mark.parametrize("damage, argv", [
    ("root-truncated", ["report"]), ("root-truncated", ["retrain"]), ("root-truncated", ["precompute"]),
    ("ranks-deleted", ["report"]), ("ranks-deleted", ["retrain", "--seeds", "3"]),
])
def test_damaged_store_metadata_is_one_line(run_workdir, tmp_path, damage, argv):
    """Case 16: a truncated masks.zarr/zarr.json (JSONDecodeError before) or a deleted
    .../test/ranks/zarr.json (KeyError: 'ranks') is one line naming what to delete."""
    wd = _copy(run_workdir, tmp_path)
    if damage == "root-truncated":
        meta = wd / "masks.zarr" / "zarr.json"
        meta.write_bytes(meta.read_bytes()[:30])
        where = wd / "masks.zarr"
    else:
        (wd / "masks.zarr" / "standard" / "gradient" / "test" / "ranks" / "zarr.json").unlink()
        where = wd / "masks.zarr" / "standard" / "gradient"
    line = _one_error(CliRunner().invoke(cli, [argv[0], "--workdir", str(wd), "--no-progress", *argv[1:]]))
    assert "metadata (zarr.json) is damaged or missing" in line and f"delete {where} and rerun" in line, line


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
@pytest.mark.parametrize("stage", ["report", "retrain", "precompute", "train"])
def test_a_damaged_checkpoint_is_one_line_in_every_stage(run_workdir, tmp_path, stage, damage):
    """Case 18: a truncated model.pt ('PytorchStreamReader failed reading zip archive' before) or one with a
    flipped byte (train said 'checkpoint exists, skipped') is one line naming the model's folder."""
    wd = _copy(run_workdir, tmp_path)
    path = wd / "models" / "standard" / "model.pt"
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        i = len(data) // 2
        data[i] ^= 0x10
    path.write_bytes(bytes(data))
    line = _one_error(CliRunner().invoke(cli, [stage, "--workdir", str(wd), "--no-progress", *tiny_args()]))
    assert f"delete {path.parent}" in line and "fastroar train" in line, line


def test_a_full_disk_during_torch_save_is_one_line(run_workdir, tmp_path, monkeypatch):
    """Case 15: torch.save's zip writer reports a failed write as 'enforce fail at inline_container.cc ...
    unexpected pos'; it is one line saying the disk refused the write, and no temporary file is left."""
    import torch

    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd, ignore=shutil.ignore_patterns("models", "masks.zarr", "results", "report"))

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    line = _one_error(CliRunner().invoke(cli, ["train", "--workdir", str(wd), "--no-progress", *tiny_args()]))
    assert "torch.save could not write model.pt (the disk is full" in line and "has space" in line, line
    assert not [p for p in (wd / "models").rglob("*") if p.is_file()]


def test_levels_and_seeds_retrain_adds_are_reported(run_workdir, tmp_path, capsys):
    """Case 20, the README's example: `retrain --k 0.2 --direction both --seeds 3` then a bare `report`
    shows k = 0.2 with its 3 runs, and says so (before: 'k=0.2 not in the config's levels', ignored);
    load_results returns them too. Records of other settings are still never mixed in."""
    from fastroar.api import load_results

    wd = _copy(run_workdir, tmp_path)
    runner = CliRunner()
    trained = runner.invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", "--k", "0.2", "--direction",
                                  "both", "--seeds", "3", "--model", "standard", "--attribution", "gradient"])
    assert trained.exit_code == 0 and "6 to run" in trained.output, trained.output
    result = runner.invoke(cli, ["report", "--workdir", str(wd)])
    assert result.exit_code == 0, result.output
    assert "also reported, as recorded by retrain with these settings: k = 0.2 beyond the config's levels; " \
           "seeds up to 3 beyond retrain.seeds = 2" in result.output
    with open(wd / "report" / "diffroar.csv", newline="") as f:
        rows = {(r["model"], r["attribution"], r["k"]): r for r in csv.DictReader(f)}
    assert rows[("standard", "gradient", "0.2")]["runs"] == "3"
    assert ("standard", "random", "0.2") not in rows   # not trained: not shown as missing either
    assert "other settings" not in result.output and "missing" not in result.output
    summary = load_results(wd).summary
    row = summary[(summary.model == "standard") & (summary.attribution == "gradient") & (summary.k == 0.2)]
    assert list(row.runs) == [3]
    # the same level under another recipe is another setting: named, not mixed
    other = runner.invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", "--k", "0.3", "--model", "standard",
                                "--attribution", "gradient", "--set", "retrain.epochs=1"])
    assert other.exit_code == 0
    again = runner.invoke(cli, ["report", "--workdir", str(wd)]).output
    assert "record(s) from other settings ignored: retrain.epochs 1 vs 2" in again and "0.300" not in _table(again)


def test_a_repeated_model_or_level_runs_once(run_workdir, tmp_path):
    """Case 21: --model standard --model standard, --k 0.3 --k 0.3,0.30 plan each job once."""
    wd = _copy(run_workdir, tmp_path)
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", "--model", "standard",
                                      "--model", "standard", "--k", "0.3", "--k", "0.3,0.30", "--attribution",
                                      "gradient", "--attribution", "gradient"])
    assert result.exit_code == 0 and "[retrain] 4 jobs: 0 already done, 4 to run" in result.output, result.output
    lines = (wd / "results" / "results.jsonl").read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)) == 24 + 4   # the tiny run: 24 records (random shared by both models)


def test_one_direction_config_says_how_to_finish(run_workdir, tmp_path):
    """Case 24: with retrain.directions=[top] every row is missing; the note says what completes it."""
    wd = _copy(run_workdir, tmp_path)
    (wd / "results" / "results.jsonl").write_text("")
    runner = CliRunner()
    assert runner.invoke(cli, ["run", "--workdir", str(wd), "--no-progress", *tiny_args("retrain.directions=[top]")]
                         ).exit_code in (0, 2)
    result = runner.invoke(cli, ["report", "--workdir", str(wd), *tiny_args("retrain.directions=[top]")])
    assert "DiffROAR needs both directions and retrain.directions is [top]" in result.output, result.output


@pytest.mark.parametrize("kwargs, message", [
    ({"levels": "0.1"}, "levels must be a list, e.g. levels=[0.1, 0.3], got '0.1'"),
    ({"levels": ["a"]}, "levels must be numbers in (0, 1)"),
    ({"attributions": "gradient"}, "attributions must be a list, e.g. attributions=['gradient']"),
    ({"seeds": 2.7}, "seeds must be a whole number of runs (e.g. seeds=2), got 2.7"),
])
def test_api_arguments_a_notebook_gets_wrong(tmp_path, kwargs, message):
    """Case 25: a string where a list belongs, a fractional seeds count: one message, nothing written."""
    import fastroar
    from fastroar.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        fastroar.evaluate(None, workdir=tmp_path / "w", **kwargs)
    assert message in str(e.value) and not (tmp_path / "w").exists()


def test_load_results_of_nothing_says_so(run_workdir, tmp_path, capsys):
    """Case 25: load_results of a workdir without this config's results (another fill) says so."""
    from fastroar.api import load_results

    res = load_results(_copy(run_workdir, tmp_path), fill=0.5)
    assert res.runs.empty and "no retraining results of this config" in capsys.readouterr().out


def test_store_path_with_a_variable_is_expanded(tmp_path, monkeypatch):
    """Case 27: store=$HOME/ranks.zarr is saved as the path it names, not literally."""
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(cli, ["prepare", "--workdir", str(tmp_path / "w"), "--no-progress",
                                      "--set", "store=$HOME/ranks.zarr"])
    assert result.exit_code == 0, result.output
    assert f"store: {tmp_path / 'ranks.zarr'}" in (tmp_path / "w" / "config.yaml").read_text()


def test_sigterm_is_taken_as_an_interruption(run_workdir, tmp_path):
    """Case 27: SIGTERM during report ends it as Ctrl-C does: one line, exit 143, no temporary files."""
    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd)
    proc = _cli("report", "--workdir", str(wd), "--no-progress", env={"FASTROAR_PAUSE_AT": "stage.report:20"})
    time.sleep(4.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Terminated (SIGTERM): finished work is kept" in out and "Traceback" not in out
    assert not [p for p in wd.rglob(".*") if p.is_file() and not p.name.endswith(".lock") and p.name != ".fastroar"]


def test_a_closed_pipe_does_not_stop_the_run(tmp_path):
    """Case 27: `fastroar run ... | head -2` finishes the run (before: it stopped after train)."""
    wd = tmp_path / "w"
    proc = _cli("run", "--workdir", str(wd), "--no-progress", *tiny_args("models=[{name: standard}]",
                                                                        "attributions=[random]", "levels=[0.5]"))
    proc.stdout.readline()
    proc.stdout.close()                                 # the reader leaves after one line
    assert proc.wait(timeout=300) == 0
    assert (wd / "report" / "diffroar.csv").is_file()


def test_a_lock_file_of_another_user_is_named(run_workdir, tmp_path, monkeypatch):
    """Case 22: a stage's lock file that this user cannot open (left by another user's run) is named with
    its owner, not 'check that the path is writable'. (Tests run as root, who may open anything: the
    refusal is simulated.)"""
    import pwd

    wd = _copy(run_workdir, tmp_path)
    real_open = os.open

    def refuse(path, *args, **kwargs):
        if str(path).endswith(".retrain.lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    line = _one_error(CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress"]))
    owner = pwd.getpwuid(os.stat(wd / ".retrain.lock").st_uid).pw_name
    assert f"cannot open the lock file {wd / '.retrain.lock'} (Permission denied): it belongs to user {owner}" \
        in line, line


def test_a_plot_without_curves_warns_nothing(tmp_path):
    """Case 27: a report whose every cell is missing drew a legend of no curves (matplotlib's UserWarning
    'No artists with labels found to put in legend' leaked to the user)."""
    import warnings

    from fastroar.stages.report import plot_curves

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_curves([], tmp_path / "empty.png", "nothing recorded")
    assert (tmp_path / "empty.png").stat().st_size > 0
