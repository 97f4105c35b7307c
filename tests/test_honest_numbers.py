"""Honest numbers, tried as a user: records keep per-image outcomes, every DiffROAR row's interval is the one
its records give (fastroar.metrics.intervals, tested for coverage in test_intervals.py), old records still
report, seeds: auto and replicated base models do what they say, and pinned CPU kernels give the same
records whatever kernels the machine would pick."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from fastroar.cli import cli
from fastroar.config.load import expand_replicates
from fastroar.engine.hits import unpack_hits
from fastroar.engine.results import read_results
from fastroar.metrics.intervals import diffroar_interval, more_seeds_useful
from tests.conftest import tiny_args

ROOT = Path(__file__).resolve().parents[1]


def records_of(workdir: Path) -> list[dict]:
    return list(read_results(workdir / "results" / "results.jsonl").values())


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(cli, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    return result.output


def by_row(records: list[dict]) -> dict[tuple, dict[str, dict[int, dict]]]:
    rows: dict[tuple, dict[str, dict[int, dict]]] = {}
    for r in records:
        rows.setdefault((r["model"], r["attribution"], float(r["k"])), {"top": {}, "bottom": {}})[r["direction"]][
            r["seed"]] = r
    return rows


def test_records_keep_per_image_outcomes_that_give_their_accuracy(run_workdir):
    wd, result = run_workdir
    assert result.exit_code == 0, result.output
    records = records_of(wd)
    assert records
    for r in records:
        hits = unpack_hits(r["hits"])
        assert hits is not None and hits.size == 359                   # blockdigits' test split, in order
        assert int(hits.sum()) / hits.size == r["accuracy"]            # exactly the recorded accuracy
        assert r["cpu_capability"] == "AVX2"
    for name in ("standard", "robust"):
        summary = json.loads((wd / "models" / name / "model.json").read_text())
        hits = unpack_hits(summary["test_hits"])
        assert int(hits.sum()) / hits.size == summary["test_acc"] and summary["cpu_capability"] == "AVX2"


def test_every_row_s_interval_is_recomputed_from_its_records(run_workdir):
    wd, _ = run_workdir
    rows = csv_rows(wd / "report" / "diffroar.csv")
    assert rows
    for (model, attribution, k), dirs in by_row(records_of(wd)).items():
        seeds = sorted(set(dirs["top"]) & set(dirs["bottom"]))
        top = np.stack([unpack_hits(dirs["top"][s]["hits"]) for s in seeds])[None]
        bottom = np.stack([unpack_hits(dirs["bottom"][s]["hits"]) for s in seeds])[None]
        want = diffroar_interval(top, bottom)
        got = next(r for r in rows if (r["model"], r["attribution"], float(r["k"])) == (model, attribution, k))
        assert float(got["ci_low"]) == pytest.approx(want.lo, abs=1e-12)
        assert float(got["ci_high"]) == pytest.approx(want.hi, abs=1e-12)
        assert float(got["p_positive"]) == pytest.approx(want.p_positive, abs=1e-12)
        assert float(got["ci_low"]) <= float(got["diffroar"]) <= float(got["ci_high"])
        assert float(got["diffroar"]) == pytest.approx((top.astype(int) - bottom).mean(), abs=1e-12)
        assert int(got["runs"]) == len(seeds) == 2


def test_old_records_without_outcomes_still_report_an_interval_from_seeds_alone(copy):
    path = copy / "results" / "results.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in lines:
        r.pop("hits", None)
        r.pop("crc", None)   # an old record has neither
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))
    out = run_cli("report", "--workdir", str(copy), *tiny_args())
    assert "seeds only" in out
    rows = csv_rows(copy / "report" / "diffroar.csv")
    for (model, attribution, k), dirs in by_row(lines).items():
        diffs = [dirs["top"][s]["accuracy"] - dirs["bottom"][s]["accuracy"] for s in sorted(dirs["top"])]
        row = next(r for r in rows if (r["model"], r["attribution"], float(r["k"])) == (model, attribution, k))
        lo, hi = stats.t.interval(0.95, len(diffs) - 1, loc=np.mean(diffs), scale=stats.sem(diffs))
        if np.isnan(lo):            # equal differences: t's scale is 0
            continue
        assert float(row["ci_low"]) == pytest.approx(lo) and float(row["ci_high"]) == pytest.approx(hi)


def test_paired_comparisons_are_reported_for_models_and_attributions(run_workdir):
    wd, result = run_workdir
    assert "Paired comparisons" in result.output
    rows = csv_rows(wd / "report" / "comparisons.csv")
    pairs = {(r["of"], r["a"], r["b"]) for r in rows}
    assert ("gradient", "robust", "standard") in pairs and ("standard", "gradient", "random") in pairs
    # the random attribution's ranks do not depend on the model: identical outcomes, a difference of exactly 0
    for r in rows:
        if (r["of"], r["a"], r["b"]) == ("random", "robust", "standard"):
            assert float(r["difference"]) == 0.0 and float(r["ci_low"]) <= 0.0 <= float(r["ci_high"])


def test_replicates_expand_into_seeded_base_models_of_one_family():
    models = [{"name": "standard"},
              {"name": "robust", "seed": 4, "replicates": 3, "adversary": {"norm": "l2", "eps": 1.0}}]
    out = expand_replicates(models)
    assert out[0] == {"name": "standard"}                      # untouched: the same keys as before
    assert [(m["name"], m["seed"], m["replicate_of"]) for m in out[1:]] == [
        ("robust", 4, "robust"), ("robust.1", 5, "robust"), ("robust.2", 6, "robust")]
    assert all("replicates" not in m and m["adversary"] == {"norm": "l2", "eps": 1.0} for m in out[1:])
    assert expand_replicates(out) == out                        # idempotent: a saved config loads the same


def test_a_replicated_model_s_rows_pool_its_base_models(tmp_path):
    wd = tmp_path / "rep"
    run_cli("run", "--workdir", str(wd), *tiny_args("models=[{name: standard, replicates: 2}]",
                                                    "attributions=[gradient]"))
    hashes = {json.loads((wd / "models" / m / "model.json").read_text())["hash"] for m in ("standard", "standard.1")}
    assert len(hashes) == 2                                      # two base models, two seeds
    rows = csv_rows(wd / "report" / "diffroar.csv")
    assert {r["model"] for r in rows} == {"standard"} and all(r["bases"] == "2" and r["runs"] == "4" for r in rows)
    rows_by_k = {float(r["k"]): r for r in rows}
    records = records_of(wd)
    for k, row in rows_by_k.items():
        arrays = {d: np.stack([np.stack([unpack_hits(next(r["hits"] for r in records if r["model"] == m and
                                                          r["k"] == k and r["direction"] == d and r["seed"] == s))
                                         for s in (0, 1)]) for m in ("standard", "standard.1")])
                  for d in ("top", "bottom")}
        want = diffroar_interval(arrays["top"], arrays["bottom"])
        assert want.n_base == 2 and float(row["ci_low"]) == pytest.approx(want.lo, abs=1e-12)


def test_seeds_auto_adds_seeds_until_the_rule_says_stop(tmp_path):
    wd = tmp_path / "auto"
    out = run_cli("run", "--workdir", str(wd), *tiny_args("retrain.seeds=auto", "retrain.max_seeds=5",
                                                          "attributions=[gradient]"))
    rows = by_row(records_of(wd))
    assert rows
    for key, dirs in rows.items():
        seeds = sorted(set(dirs["top"]) & set(dirs["bottom"]))
        assert seeds == list(range(len(seeds))) and 3 <= len(seeds) <= 5, (key, seeds)
        top = np.stack([unpack_hits(dirs["top"][s]["hits"]) for s in seeds])[None]
        bottom = np.stack([unpack_hits(dirs["bottom"][s]["hits"]) for s in seeds])[None]
        assert len(seeds) == 5 or not more_seeds_useful(top, bottom, min_seeds=3, max_seeds=5).more, key
    report = csv_rows(wd / "report" / "diffroar.csv")
    assert all(int(r["runs"]) >= 3 for r in report) and "fewer than retrain.seeds" not in out


def _tiny_run(workdir: Path, env: dict[str, str]) -> None:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", **env}
    for name in ("FASTROAR_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        if name not in env:
            full.pop(name, None)
    proc = subprocess.run([sys.executable, "-m", "fastroar.cli", "run", "--workdir", str(workdir), "--no-progress",
                           *tiny_args("levels=[0.25]", "attributions=[gradient]")],
                          cwd=ROOT, env=full, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _outcomes(workdir: Path) -> dict:
    hashes = {m: json.loads((workdir / "models" / m / "model.json").read_text())["hash"]
              for m in ("standard", "robust")}
    return {"models": hashes, "records": {k: (r["accuracy"], r["loss"], r["hits"]["bits"], r["cpu_capability"])
                                          for k, r in read_results(workdir / "results" / "results.jsonl").items()}}


def test_pinned_kernels_give_the_same_records_whatever_the_machine_would_pick(tmp_path):
    """torch's own choice is overridden: a study asked to run with AVX-512 kernels and one asked to run with
    the plain ones both run with AVX2, bit for bit alike. With the pin off (native), the record says so."""
    _tiny_run(tmp_path / "a", {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})
    _tiny_run(tmp_path / "b", {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"})
    a, b = _outcomes(tmp_path / "a"), _outcomes(tmp_path / "b")
    assert a == b and {v[3] for v in a["records"].values()} == {"AVX2"}
    _tiny_run(tmp_path / "c", {"FASTROAR_CPU_CAPABILITY": "native", "ATEN_CPU_CAPABILITY": "default"})
    c = _outcomes(tmp_path / "c")
    assert {v[3] for v in c["records"].values()} == {"DEFAULT+native"}
    assert c["models"] != a["models"]    # other kernels, other bits: what the pin is for
