"""tools/interval_coverage.py reads a results log written with per-image outcomes (engine/hits.py's pack_hits), pairs
the records by seed into rows, and counts coverage of the all-seed mean the way it says it does."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fastroar.engine.hits import pack_hits
from fastroar.metrics.intervals import diffroar_interval, simulate_outcomes

# Loaded by path: tools/ is not a package
_spec = importlib.util.spec_from_file_location("fastroar_tools_coverage",
                                               Path(__file__).resolve().parents[1] / "tools" / "interval_coverage.py")
coverage = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = coverage  # its dataclasses look their module up there
_spec.loader.exec_module(coverage)

SEEDS = 10
N = 60


def _record(model: str, attribution: str, k: float, direction: str, seed: int, correct, hits: bool = True) -> dict:
    rec = {"key": f"{model}-{attribution}-{k}-{direction}-{seed}", "model": model, "attribution": attribution,
           "k": k, "direction": direction, "seed": seed, "accuracy": float(np.mean(correct))}
    if hits:
        rec["hits"] = pack_hits(correct)
    return rec


@pytest.fixture
def study(tmp_path):
    rng = np.random.default_rng(0)
    sims = {("std", "gradient", 0.1): simulate_outcomes(rng, 0.8, 0.5, 1, SEEDS, N, 0.0, 0.3),
            ("std", "random", 0.1): simulate_outcomes(rng, 0.6, 0.6, 1, SEEDS, N, 0.0, 0.3)}
    records = []
    for (model, attribution, k), sim in sims.items():
        for s in reversed(range(SEEDS)):  # out of order: pairing is by seed, not by position
            records.append(_record(model, attribution, k, "top", s, sim.top[0, s]))
            records.append(_record(model, attribution, k, "bottom", s, sim.bottom[0, s]))
    old = rng.random((2, SEEDS, N)) < 0.5  # a row written before records had hits
    records += [_record("std", "gradient", 0.2, d, s, old[i, s], hits=False)
                for i, d in enumerate(("top", "bottom")) for s in range(SEEDS)]
    records.append({"key": "base-std", "model": "std", "accuracy": 0.9})          # not a retraining record
    records.append(_record("std", "gradient", 0.2, "top", 3, old[0, 3], hits=False) | {"key": "dup"})
    log = tmp_path / "results" / "results.jsonl"
    log.parent.mkdir()
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path, sims, old


def test_records_become_rows_paired_by_seed_with_their_per_image_outcomes(study):
    workdir, sims, old = study
    rows, notes = coverage.rows_from_records(coverage.read_results(workdir / "results" / "results.jsonl").values())
    by_key = {(r.model, r.attribution, r.k): r for r in rows}
    assert set(by_key) == {("std", "gradient", 0.1), ("std", "random", 0.1), ("std", "gradient", 0.2)}
    for key, sim in sims.items():
        row = by_key[key]
        assert row.seeds == list(range(SEEDS))
        assert np.array_equal(row.top, sim.top[0]) and np.array_equal(row.bottom, sim.bottom[0])
        np.testing.assert_allclose(row.diffs, sim.top[0].mean(1) - sim.bottom[0].mean(1))
    no_hits = by_key[("std", "gradient", 0.2)]
    assert no_hits.top is None
    np.testing.assert_allclose(no_hits.diffs, old[0].mean(1) - old[1].mean(1))
    assert any("repeat" in n for n in notes)


def test_coverage_counts_are_those_of_the_interval_on_each_disjoint_subset(study):
    workdir, sims, _ = study
    rows, _ = coverage.rows_from_records(coverage.read_results(workdir / "results" / "results.jsonl").values())
    table = {(t["method"], t["subsets"]): t for t in coverage.record_coverage(rows, subset=5)}
    expect_all, expect_first = 0, 0
    for sim in sims.values():
        target = (sim.top[0].mean(1) - sim.bottom[0].mean(1)).mean()
        for j, block in enumerate((slice(0, 5), slice(5, 10))):
            r = diffroar_interval(sim.top[:, block], sim.bottom[:, block])
            expect_all += r.lo <= target <= r.hi
            expect_first += j == 0 and r.lo <= target <= r.hi
    assert table[("interval, 5 seeds", "every disjoint")]["n"] == 4
    assert table[("interval, 5 seeds", "every disjoint")]["covered"] == expect_all
    assert table[("interval, 5 seeds", "first")]["covered"] == expect_first
    # seeds-only lines count the row without hits too: 3 rows x 5 disjoint pairs of seeds
    assert table[("mean ± std, 2 seeds", "every disjoint")]["n"] == 15
    assert table[("interval, 2 seeds", "every disjoint")]["n"] == 10


def test_cli_prints_the_table_and_the_simulation(study, capsys):
    workdir, _, _ = study
    assert coverage.main([str(workdir), "--simulate", "--studies", "50"]) == 0
    out = capsys.readouterr().out
    assert "interval, 5 seeds" in out and "B=3 S=5" in out and "3 rows, 3 with at least 10 seeds" in out
    assert coverage.main([str(workdir / "nowhere")]) == 2
