"""retrain.fill road: removed coordinates imputed by ROAD's noisy linear imputation before retraining. The
stored inputs equal a dense solve of ROAD's equations written out by hand plus the documented noise; the
jobs are keyed apart from zero fill (whose keys and records stay as they were); the stacked trainer reads
exactly those inputs; a rerun reuses them, a damaged file is recomputed; the streamed path refuses."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from fastroar.cli import cli
from fastroar.engine.kernels.reference import keep_mask_reference
from fastroar.engine.results import read_results
from fastroar.metrics.road import impute
from tests.conftest import tiny_args
from tests.test_estimate import dense_reference

SUBSET = ["--model", "robust", "--attribution", "gradient", "--k", "0.25"]


def invoke(*args):
    return CliRunner().invoke(cli, [*args, "--no-progress", *tiny_args()])


@pytest.mark.parametrize("shape,p_keep", [((3, 2, 5, 4), 0.3), ((2, 1, 6, 6), 0.7), ((4, 3, 3, 7), 0.1),
                                          ((2, 1, 10, 1), 0.4), ((5, 1, 16, 8), 0.05)])
def test_banded_solve_equals_the_dense_solve(shape, p_keep):
    rng = np.random.default_rng(sum(shape))
    x = rng.random(shape)
    keep = rng.random(shape) < p_keep
    planes_keep = keep.reshape(-1, *shape[-2:])
    planes_keep[:, 0, 0] |= ~planes_keep.any(axis=(1, 2))
    out = impute(x, keep, solver="banded")
    want = np.stack([dense_reference(p, k) for p, k in zip(x.reshape(-1, *shape[-2:]), planes_keep)])
    np.testing.assert_allclose(out.reshape(want.shape), want, rtol=0, atol=1e-10)
    assert np.array_equal(out[keep], x[keep])


@pytest.fixture(scope="module")
def road_run(run_workdir, tmp_path_factory):
    """A copy of the tiny run with the SUBSET retrained under retrain.fill road, and the CLI result."""
    wd = tmp_path_factory.mktemp("road") / "wd"
    shutil.copytree(run_workdir[0], wd)
    result = invoke("retrain", "--workdir", str(wd), "--fill", "road", *SUBSET)
    return wd, result


def stored_inputs(wd, split: str, direction: str, k: float = 0.25):
    from fastroar.engine.store import RankStore
    from fastroar.stages.artifacts import identity, imputation, load_prepared, model_hash
    from fastroar.stages.contract import open_context
    from fastroar.stages.imputed import imputed_inputs

    ctx = open_context(wd)   # the run's saved config: the tiny settings
    prepared = load_prepared(ctx.cfg, ctx.wd)
    store = RankStore(str(ctx.wd.store_path), mode="r")
    entry = store.open_entry("robust", "gradient", identity(ctx.cfg, prepared, model_hash(ctx.wd, "robust", prepared),
                                                            "gradient"))
    ranks = entry.split(split).read("ranks")
    impute_cfg = imputation("road")
    return prepared, ranks, imputed_inputs(ctx.wd, prepared, split, ranks, k, direction, impute_cfg), ctx.wd


def test_road_jobs_are_keyed_apart_and_zero_fill_records_are_unchanged(road_run, run_workdir):
    wd, result = road_run
    assert result.exit_code == 0, result.output
    zero = read_results(run_workdir[0] / "results" / "results.jsonl")
    records = read_results(wd / "results" / "results.jsonl")
    new = [r for key, r in records.items() if key not in zero]
    assert len(new) == 4 and all(r["impute"] == {"method": "road-noisy-linear-v1", "noise": 0.01, "seed": 0}
                                 and r["fill"] == 0.0 for r in new)
    assert all("impute" not in r for r in zero.values())   # records of the default carry no new field
    for r in new:   # the zero-filled twin (same mask, seed, recipe) has its old key and record
        twin = next(z for z in zero.values() if all(z[f] == r[f] for f in ("model", "attribution", "k", "direction",
                                                                             "seed")))
        assert twin["key"] != r["key"] and records[twin["key"]] == twin
    out = invoke("report", "--workdir", str(wd), "--fill", "road").output
    assert "retrain.fill zero vs road (24)" in out


def test_stored_inputs_equal_the_road_reference(road_run):
    from fastroar.method import model_input_array
    from fastroar.stages.imputed import sigma_of

    wd, _ = road_run
    for split, direction, code in (("train", "top", (0, 0)), ("test", "bottom", (1, 1))):
        prepared, ranks, got, _ = stored_inputs(wd, split, direction)
        x = model_input_array(prepared.arrays(split)[0]).astype(np.float64)   # (N, 1, 16, 8)
        keep = keep_mask_reference(ranks, 0.25, direction).reshape(x.shape)
        rows = np.arange(0, len(x), 7)   # a sample of images: the dense reference solves pixel by pixel
        want = np.stack([dense_reference(x[i, 0], keep[i, 0]) for i in rows])
        # the documented noise: N(0, sigma^2) on removed coordinates, seeded [0, round(k 1e6), direction, split]
        noise = np.random.default_rng([0, 250000, code[0], code[1]]).standard_normal(x.shape)[rows, 0]
        sigma = sigma_of(prepared, 0.01)
        assert sigma == pytest.approx(0.01)   # blockdigits' bounds are [0, 1]
        want = np.where(keep[rows, 0], want, want + sigma * noise)
        np.testing.assert_allclose(got[rows].reshape(want.shape), want, rtol=0, atol=2e-6)
        assert np.array_equal(got.reshape(x.shape)[keep], x[keep].astype(np.float32))   # kept pixels as they are


def test_the_stack_trains_on_exactly_the_stored_inputs(road_run):
    from fastroar.training.batched import Spec, train_stacked
    from fastroar.training.settings import Recipe

    wd, _ = road_run
    parts = {(s, d): stored_inputs(wd, s, d) for s in ("train", "test") for d in ("top", "bottom")}
    prepared = parts[("train", "top")][0]
    labels = {s: prepared.arrays(s)[1] for s in ("train", "test")}
    records = {r["key"]: r for r in read_results(wd / "results" / "results.jsonl").values() if "impute" in r}
    for direction in ("top", "bottom"):
        for seed in (0, 1):
            # reference: the imputed images as plain inputs (all-zero ranks, a top spec keeps every coordinate)
            split = {s: (parts[(s, direction)][2].reshape(-1, *prepared.shape), labels[s],
                         np.zeros_like(parts[(s, direction)][1])) for s in ("train", "test")}
            (rec,) = [r for r in records.values() if r["direction"] == direction and r["seed"] == seed]
            (ref,) = train_stacked(rec["arch"], rec["arch_params"], prepared.shape, prepared.num_classes,
                                   split["train"], split["test"], [Spec(0.5, "top", seed)], Recipe(**rec["recipe"]))
            assert rec["accuracy"] == ref["accuracy"] and rec["loss"] == ref["loss"]


def test_a_rerun_reuses_the_inputs_and_a_damaged_file_is_recomputed(road_run):
    wd, _ = road_run
    files = sorted((wd / "imputed").glob("*.npz"))
    assert len(files) == 4   # (top, bottom) x (train, test) of k = 0.25, each computed once for both seeds
    stamps = {f: f.stat().st_mtime_ns for f in files}
    again = invoke("retrain", "--workdir", str(wd), "--fill", "road", *SUBSET)
    assert again.exit_code == 0 and "0 to run" in again.output
    _, _, before, _ = stored_inputs(wd, "test", "bottom")
    assert {f: f.stat().st_mtime_ns for f in files} == stamps   # read back, not recomputed
    victim = max(files, key=lambda f: f.stat().st_size)
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    for split in ("train", "test"):
        for direction in ("top", "bottom"):
            stored_inputs(wd, split, direction)
    _, _, after, _ = stored_inputs(wd, "test", "bottom")
    assert np.array_equal(before, after)
    assert victim.read_bytes() != bytes(raw)   # rewritten whole


def test_road_fill_refuses_the_streamed_path(run_workdir, tmp_path):
    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd)
    before = (wd / "results" / "results.jsonl").read_bytes()
    result = invoke("retrain", "--workdir", str(wd), "--fill", "road", "--set", "loader=ffcv", *SUBSET)
    assert result.exit_code == 2 and result.output.startswith("Error: retrain.fill road") \
        and "loader: resident" in result.output and "Traceback" not in result.output
    assert (wd / "results" / "results.jsonl").read_bytes() == before and not (wd / "imputed").exists()


def test_conv_jobs_train_one_per_task_on_the_stored_inputs(tmp_path):
    """A conv architecture (stacks mask in place, so imputed jobs run one model per task even with
    stack_conv on) trains on the same stored inputs: its records are those of training on them directly."""
    import torch

    from fastroar.engine.loaders import ResidentLoader
    from fastroar.models import build_seeded
    from fastroar.training.loop import evaluate, train_model
    from fastroar.training.settings import Recipe

    sets = ["model.arch=tests.test_stacked_conv:tiny_cnn", "model.params={}", "models=[{name: standard}]",
            "attributions=[gradient]", "levels=[0.5]", "train.epochs=1", "retrain.epochs=2", "retrain.seeds=1",
            "retrain.stack_conv=true", "retrain.fill=road"]
    wd = tmp_path / "conv"
    result = CliRunner().invoke(cli, ["run", "--workdir", str(wd), "--no-progress",
                                      *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert "2 to run in 2 tasks" in result.output
    (top,) = [r for r in read_results(wd / "results" / "results.jsonl").values() if r["direction"] == "top"]
    assert top["impute"]["method"] == "road-noisy-linear-v1" and top["loader"] == "resident"

    from fastroar.engine.store import RankStore
    from fastroar.stages.artifacts import identity, imputation, load_prepared
    from fastroar.stages.contract import open_context
    from fastroar.stages.imputed import imputed_inputs

    ctx = open_context(wd)
    prepared = load_prepared(ctx.cfg, ctx.wd)
    entry = RankStore(str(ctx.wd.store_path), mode="r").open_entry(
        "standard", "gradient", identity(ctx.cfg, prepared, top["model_hash"], "gradient"))
    impute = imputation(ctx.cfg.retrain.fill)
    x = {s: imputed_inputs(ctx.wd, prepared, s, entry.split(s).read("ranks"), 0.5, "top", impute)
         for s in ("train", "test")}
    recipe = Recipe(**top["recipe"])
    torch.set_num_threads(1)   # as the stage's tasks run
    model = build_seeded(0, top["arch"], prepared.shape, prepared.num_classes, **top["arch_params"])
    loader = ResidentLoader(x["train"].reshape(-1, *prepared.shape), prepared.arrays("train")[1],
                            batch_size=recipe.batch_size, seed=0)
    train_model(model, loader, recipe, progress=False)
    test = ResidentLoader(x["test"].reshape(-1, *prepared.shape), prepared.arrays("test")[1], batch_size=512,
                          shuffle=False)
    assert evaluate(model, test, recipe) == top["accuracy"]


def test_replicate_leakage_control_numbers(run_workdir, tmp_path):
    """replicate's section 5: DiffROAR of input gradients under zero fill and imputation per k (mean over
    seeds of acc(top) - acc(bottom), recomputed here from the records), the mask-only accuracies, and whether
    robust > standard holds under each; the workdir's saved config keeps its fill."""
    from fastroar.stages import leakage_claim
    from fastroar.stages.contract import open_context
    from fastroar.stages.mask_control import mask_probe_path

    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd)
    saved = (wd / "config.yaml").read_text()
    ctx = open_context(wd, log=lambda *a: None, progress=False)
    lc = leakage_claim.leakage_control(ctx, fill_missing=True)
    assert (wd / "config.yaml").read_text() == saved and lc["available"]
    records = list(read_results(wd / "results" / "results.jsonl").values())
    masks = {(r["model"], r["k"], r["direction"]): r["mask_acc"] for r in read_results(mask_probe_path(ctx.wd)).values()
             if r["attribution"] == "gradient"}

    def diffroar(model, k, imputed):
        acc = {d: np.mean([r["accuracy"] for r in records if (r["model"], r["attribution"], r["k"], r["direction"])
                           == (model, "gradient", k, d) and bool(r.get("impute")) == imputed])
              for d in ("top", "bottom")}
        return acc["top"] - acc["bottom"]

    assert [r["k"] for r in lc["rows"]] == [0.25, 0.5]
    for row in lc["rows"]:
        for kind in ("standard", "robust"):
            assert row[f"{kind}_zero"] == pytest.approx(diffroar(kind, row["k"], False), abs=1e-12)
            assert row[f"{kind}_road"] == pytest.approx(diffroar(kind, row["k"], True), abs=1e-12)
            assert row[f"{kind}_mask_top"] == masks[(kind, row["k"], "top")]
        assert row["robust_higher_road"] == (row["robust_road"] > row["standard_road"])
    assert lc["robust_higher_at_every_k"]["road"] == all(r["robust_higher_road"] for r in lc["rows"])
    claim = leakage_claim.claim_row({"leakage_control": lc})
    assert claim["agrees"] == ("yes" if lc["robust_higher_at_every_k"]["road"] else "no")
    table = leakage_claim.markdown({"leakage_control": lc})
    assert sum(line.startswith("| 0.") for line in table) == 2


@pytest.mark.parametrize("kill_at", ["imputed.before_write:2", "imputed.after_write:3"])
def test_killed_while_imputing_then_rerun_equals_uninterrupted(road_run, run_workdir, tmp_path, kill_at):
    import signal

    from tests.test_resume import fastroar

    ref, _ = road_run
    wd = tmp_path / "w"
    shutil.copytree(run_workdir[0], wd)
    killed = fastroar(wd, "retrain", "--fill", "road", *SUBSET, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = fastroar(wd, "retrain", "--fill", "road", *SUBSET)
    assert resumed.returncode == 0, resumed.stderr
    got = {k: r for k, r in read_results(wd / "results" / "results.jsonl").items() if r.get("impute")}
    want = {k: r for k, r in read_results(ref / "results" / "results.jsonl").items() if r.get("impute")}
    assert sorted(got) == sorted(want)
    for key in want:
        assert (got[key]["accuracy"], got[key]["loss"]) == (want[key]["accuracy"], want[key]["loss"])
    files = {f.name: f.read_bytes() for f in (wd / "imputed").iterdir()}
    assert files == {f.name: f.read_bytes() for f in (ref / "imputed").iterdir()}   # no partial or stray file
