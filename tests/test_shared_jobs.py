"""Retrainings whose inputs do not depend on the base model (random, edge) run once and serve every model:
the job-key rule (fastroar.training.jobs), old per-model records still found, the report's rows and curve."""
from __future__ import annotations

import csv
import json
from dataclasses import asdict

from click.testing import CliRunner

from fastroar.cli import cli
from fastroar.keys import digest
from fastroar.training.jobs import SHARED_MODEL, Job, for_job, recorded, unique


def job(model: str, model_hash: str, attribution: str, **kw) -> Job:
    return Job(model=model, attribution=attribution, k=0.5, direction="top", seed=0, model_hash=model_hash,
               dataset_key="d-1", arch="mlp2", arch_params={"width": 8}, recipe={"epochs": 1}, **kw)


def old_key(j: Job) -> str:
    """The key every job had before sharing: all fields, fill only when not 0 (sparse_input and impute only
    when set: a dense job without imputation has the fields it always had)."""
    fields = {k: v for k, v in asdict(j).items() if not (k == "sparse_input" and not v or k == "impute" and v is None)}
    if fields["fill"] == 0.0:
        del fields["fill"]
    return digest(fields, 16)


def test_model_independent_jobs_have_one_key_and_keep_their_old_keys():
    for a in ("random", "edge"):
        s, r = job("standard", "h1", a), job("robust", "h2", a)
        shared = {k: v for k, v in asdict(s).items() if k not in ("fill", "sparse_input", "impute")} | {
            "model": SHARED_MODEL, "model_hash": SHARED_MODEL}
        assert s.key == r.key == digest(shared, 16)
        assert (s.legacy_key, r.legacy_key) == (old_key(s), old_key(r)) and s.legacy_key != r.legacy_key
        assert job("standard", "h1", a, fill=0.5).key != s.key   # everything else still enters the key
    g1, g2 = job("standard", "h1", "gradient"), job("robust", "h2", "gradient")
    assert g1.key == old_key(g1) and g2.key == old_key(g2) and g1.key != g2.key and g1.legacy_key is None
    assert unique([g1, g2, job("standard", "h1", "random"), job("robust", "h2", "random")]) == \
        [g1, g2, job("standard", "h1", "random")]


def test_an_old_record_serves_the_shared_key_for_every_model():
    s, r = job("standard", "h1", "random"), job("robust", "h2", "random")
    old = {"model": "standard", "model_hash": "h1", "accuracy": 0.7}
    found = recorded({s.legacy_key: old}, [s, r])
    assert found == {s.key: old}
    assert for_job(found[r.key], r) == {"model": "robust", "model_hash": "h2", "accuracy": 0.7}
    assert for_job(found[s.key], s) is old
    assert recorded({r.legacy_key: old | {"model": "robust"}}, [s, r])[s.key]["model"] == "robust"


def rows(wd) -> list[dict]:
    return list(csv.DictReader(open(wd / "report" / "diffroar.csv")))


def test_a_run_retrains_random_once_and_reports_it_for_each_model(copy):
    """The tiny run (2 models, gradient + random, 2 levels x 2 directions x 2 seeds): 16 gradient records
    and 8 random ones (not 16); the report shows random under both models with the same numbers."""
    records = [json.loads(line) for line in (copy / "results" / "results.jsonl").read_text().splitlines()]
    by = {a: [r for r in records if r["attribution"] == a] for a in ("gradient", "random")}
    assert len(by["gradient"]) == 16 and len(by["random"]) == 8
    assert len({r["key"] for r in records}) == 24
    res = CliRunner().invoke(cli, ["report", "--workdir", str(copy)])
    assert res.exit_code == 0, res.output
    assert "random: the ranks do not depend on the base model" in res.output
    table = rows(copy)
    rand = {m: [(r["k"], r["diffroar"], r["runs"]) for r in table if r["model"] == m and r["attribution"] == "random"]
            for m in ("standard", "robust")}
    assert rand["standard"] == rand["robust"] and len(rand["standard"]) == 2
    assert all(r["runs"] == "2" for r in table)


def test_records_keyed_the_old_way_still_count(copy):
    """A workdir whose random records were written per model, under the old keys: retrain runs nothing,
    the report reads them."""
    from fastroar.config import load_config
    from fastroar.engine.workspace import Workdir
    from fastroar.stages.artifacts import load_prepared, sweep_jobs

    cfg = load_config(path=copy / "config.yaml")
    workdir = Workdir(copy)
    jobs = sweep_jobs(cfg, workdir, load_prepared(cfg, workdir))
    path = copy / "results" / "results.jsonl"
    records = {json.loads(line)["key"]: json.loads(line) for line in path.read_text().splitlines()}
    before = rows(copy) if (copy / "report" / "diffroar.csv").exists() else None
    lines = []
    for j in jobs:  # as the old code wrote them: one record per model, keyed per model
        rec = records[j.key]
        if j.shared:   # rewritten as the old code wrote it: keyed per model, and without a checksum
            rec = {k: v for k, v in rec.items() if k != "crc"} | {"model": j.model, "model_hash": j.model_hash,
                                                                  "key": j.legacy_key}
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(cli, ["retrain", "--workdir", str(copy), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "0 to run" in res.output and len(path.read_text().splitlines()) == 32
    res = CliRunner().invoke(cli, ["report", "--workdir", str(copy)])
    assert res.exit_code == 0, res.output
    table = rows(copy)
    assert len(table) == 8 and all(r["runs"] == "2" for r in table)
    if before is not None:
        assert table == before


def test_the_plot_draws_a_model_independent_curve_once():
    from fastroar.stages.report import curves_of

    rows = [{"model": m, "attribution": a, "k": k, "diffroar": d, "std": 0.0}
            for m, d in (("standard", 0.1), ("robust", 0.3)) for a in ("gradient", "random", "edge")
            for k in (0.2, 0.5)]
    curves = curves_of(rows)
    assert sorted(curves) == [("any model", "edge"), ("any model", "random"), ("robust", "gradient"),
                              ("standard", "gradient")]
    assert [p["diffroar"] for p in curves[("any model", "random")]] == [0.1, 0.1]  # once, the first model's
    assert [p["k"] for p in curves[("robust", "gradient")]] == [0.2, 0.5]
