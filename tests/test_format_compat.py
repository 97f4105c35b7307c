"""A workdir written by fastroar 0.1.0 (before the package was restructured into layers) resumes under
this version without recomputing: same dataset key, model hashes, store identity and job keys.

tests/data/workdir-0.1.0.tar.gz is `fastroar run` of 0.1.0 on the tiny blockdigits settings of
tests/conftest.py (TINY), packed as it was left.
"""
from __future__ import annotations

import csv
import hashlib
import io
import tarfile
from pathlib import Path

from click.testing import CliRunner

from fastroar.cli import cli
from tests.conftest import tiny_args

ARCHIVE = Path(__file__).parent / "data" / "workdir-0.1.0.tar.gz"


def digest_tree(root: Path, parts: tuple[str, ...]) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for part in parts for p in sorted((root / part).rglob("*")) if p.is_file()}


def test_workdir_of_0_1_0_resumes_without_recomputing(tmp_path):
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp_path, filter="data")
    wd = tmp_path / "oldwd"
    kept = ("data", "models", "masks.zarr", "results")
    before = digest_tree(wd, kept)
    old_csv = (wd / "report" / "diffroar.csv").read_text()
    result = CliRunner().invoke(cli, ["run", "--workdir", str(wd), "--no-progress", *tiny_args()])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "already in" in out
    assert "standard: checkpoint exists" in out and "robust: checkpoint exists" in out
    assert "0 chunks to compute" in out
    assert "32 jobs: 32 already done, 0 to run" in out
    assert digest_tree(wd, kept) == before   # nothing rewritten
    old, new = (list(csv.DictReader(io.StringIO(t))) for t in (old_csv, (wd / "report" / "diffroar.csv").read_text()))
    assert [{c: r[c] for c in old[0]} for r in new] == old   # same cells; later columns (mask_top, ...) appended


def test_models_and_records_of_0_1_0_are_reproduced_exactly(tmp_path):
    """Retraining the base models and some jobs of the 0.1.0 workdir gives the same weights (model hash) and
    the same accuracies, bit for bit: nothing in the restructure changed the numbers."""
    import json
    import shutil

    from fastroar.engine.results import read_results

    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp_path, filter="data")
    wd = tmp_path / "oldwd"
    models = ("standard", "robust")
    old_hash = {m: json.loads((wd / "models" / m / "model.json").read_text())["hash"] for m in models}
    old = read_results(wd / "results" / "results.jsonl")
    for m in models:
        shutil.rmtree(wd / "models" / m)
    (wd / "results" / "results.jsonl").unlink()
    runner = CliRunner()
    # both models at once: on a machine with 2+ cores they train side by side, each as it would alone
    trained = runner.invoke(cli, ["train", "--workdir", str(wd), "--no-progress", *tiny_args()])
    assert trained.exit_code == 0, trained.output
    for m in models:
        assert json.loads((wd / "models" / m / "model.json").read_text())["hash"] == old_hash[m], m
    result = runner.invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", "--model", "standard",
                                 "--k", "0.25", *tiny_args()])
    assert result.exit_code == 0, result.output
    new = read_results(wd / "results" / "results.jsonl")
    # by slot: a model-independent job (random) is keyed once for all models now, per model in 0.1.0
    def slot(r: dict) -> tuple:
        return r["model"], r["attribution"], r["k"], r["direction"], r["seed"]

    old_by_slot = {slot(r): r for r in old.values()}
    assert len(new) == 8 and all(r["accuracy"] == old_by_slot[slot(r)]["accuracy"] for r in new.values())
