"""`fastroar report` on a finished workdir reads files and draws a plot: it imports none of the compute stack
(torch, numba, ffcv, ray, captum) and writes what `fastroar run` wrote, byte for byte. The stages that do
run torch still pin it to one thread (bit-exact records depend on it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numba", "ffcv", "ray", "captum")

# The CLI as `fastroar ARGS`; at exit, the heavy packages this process imported, as one JSON line.
PROBE = (
    "import atexit, json, sys\n"
    f"atexit.register(lambda: print('IMPORTED ' + json.dumps(sorted(m for m in sys.modules "
    f"if m.split('.')[0] in {HEAVY!r}))))\n"
    "from fastroar.cli import main\n"
    "sys.argv = ['fastroar', *sys.argv[1:]]\n"
    "main()\n"
)


def cli_probe(*args: str) -> tuple[str, list[str]]:
    """(stdout without the probe's line, the heavy modules imported) of `fastroar ARGS` in a fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out, _, probe = proc.stdout.rpartition("IMPORTED ")
    return out, json.loads(probe)


def test_report_on_a_finished_workdir_imports_no_compute_stack_and_rewrites_the_same_files(run_workdir, copy):
    wd, run = run_workdir
    assert run.exit_code == 0, run.output
    before = {p.name: p.read_bytes() for p in sorted((wd / "report").iterdir())}
    assert {"diffroar.csv", "diffroar.png", "localization.csv", "aq.csv"} <= set(before)
    for p in (copy / "report").iterdir():
        p.unlink()                                   # the copy's report is rewritten from scratch
    out, heavy = cli_probe("report", "--workdir", str(copy), "--no-progress")
    assert heavy == []
    after = {p.name: p.read_bytes() for p in sorted((copy / "report").iterdir())}
    assert after == before                           # CSVs and the PNG, byte for byte
    tables = out[:out.index("\nreport: ")]           # everything printed before the file paths
    assert "DiffROAR" in tables and "Base models" in tables
    assert tables in run.output                      # the tables `run` printed


def test_help_imports_no_compute_stack():
    out, heavy = cli_probe("--help")
    assert "report" in out and heavy == []


def test_model_hash_is_read_without_the_weights_and_falls_back_to_them(copy):
    """The hash that keys a model's jobs comes from model.json; where model.json is missing, or older than
    the checkpoint, from the checkpoint itself: the same hash either way."""
    from fastroar.engine.workspace import Workdir
    from fastroar.stages.artifacts import load_model, load_prepared, model_hash
    from fastroar.stages.contract import resolve_config

    cfg = resolve_config(copy)
    wd = Workdir(copy)
    prepared = load_prepared(cfg, wd)
    for name in ("standard", "robust"):
        want = load_model(wd, name, prepared)[1]["hash"]
        assert model_hash(wd, name, prepared) == want
        info = wd.model_dir(name) / "model.json"
        summary = json.loads(info.read_text())
        info.write_text(json.dumps({**summary, "hash": "stale"}))
        pt = wd.model_dir(name) / "model.pt"
        os.utime(info, ns=(pt.stat().st_mtime_ns - 10**9,) * 2)   # written before the checkpoint: not trusted
        assert model_hash(wd, name, prepared) == want
        info.unlink()
        assert model_hash(wd, name, prepared) == want


def test_stages_pin_torch_to_one_thread_unless_they_run_none(tmp_path):
    import torch

    from fastroar.engine.workspace import Workdir
    from fastroar.stages import estimate, precompute, prepare, replicate, report, retrain, run, train
    from fastroar.stages.contract import Context, stage

    pinned = {m.__name__.rsplit(".", 1)[1]: getattr(m, m.__name__.rsplit(".", 1)[1]).pins_torch
              for m in (prepare, train, precompute, retrain, estimate, replicate, run, report)}
    assert pinned == {**dict.fromkeys(pinned, True), "report": False}

    @stage("probe")
    def probe(ctx: Context) -> int:
        return torch.get_num_threads()

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert probe(Context({}, Workdir(tmp_path / "wd", create=True))) == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", ["linear", "mlp2", "airbench"])
def test_config_checks_of_built_in_names_import_no_torch(arch):
    """Every command checks its config first: built-in datasets, architectures, attributions, recipes and
    adversaries are checked by name, without importing torch."""
    code = ("import sys\n"
            "from fastroar.stages.contract import resolve_config\n"
            f"resolve_config(overrides=['model.arch={arch}', 'model.params={{}}', "
            "'attributions=[gradient, random, edge, gradient:loss]', 'retrain.recipe=fast', "
            "'models=[{name: r, adversary: {norm: l2, eps: 0.5}}]'])\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_report_warns_of_a_diverged_retraining_and_names_its_cell(copy):
    """A retraining whose training loss ended NaN (seen on real BlockMNIST: a conv net at lr 0.1 on 5 % of the
    pixels) has a broken model's accuracy; the report must say so, naming the cell, not print the row plainly."""
    from click.testing import CliRunner

    from fastroar.cli import cli
    from fastroar.engine.results import CHECKSUM_FIELD, checksum
    from fastroar.stages.report import diverged_note

    path = copy / "results" / "results.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    target = next(r for r in lines if r["attribution"] == "gradient" and r["direction"] == "bottom")
    target["loss"] = float("nan")
    target[CHECKSUM_FIELD] = checksum(target)   # a record written so, not a damaged line
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = CliRunner().invoke(cli, ["report", "--workdir", str(copy), "--no-progress"])
    assert result.exit_code == 0, result.output
    cell = f"{target['model']}/gradient k={target['k']:g} bottom seed {target['seed']}"
    assert "WARNING: 1 retraining(s) diverged (training loss not finite)" in result.output
    assert cell in result.output and "retrain.lr" in result.output
    # finite, absent or infinite losses; a model-independent record served to two models counts once
    base = {"attribution": "random", "k": 0.1, "direction": "top", "seed": 0, "model": "a", "key": "r"}
    assert diverged_note([base | {"loss": 0.5}, {**base, "key": "s"}]) is None
    note = diverged_note([base | {"loss": float("inf")}, base | {"loss": float("inf"), "model": "b"}])
    assert "1 retraining(s)" in note and "any model/random k=0.1 top seed 0" in note
