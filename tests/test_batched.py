"""Many models, one data pass: a stack of MLPs trained together equals each model trained alone.

The reference is the single-model path (ResidentLoader + build_model + train_model + evaluate, seeded
as run_job seeds it); the stack must reproduce every model's parameters (atol 1e-5), loss and test
accuracy, for top and bottom masks at different k and different seeds. A model's result must not depend
on the rest of its stack (bitwise on the CPU), which is what lets a killed group rerun only its
missing jobs. The retrain stage's groups must give the records the one-job-per-task path gives.
"""
from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch

from fastroar.engine.kernels.reference import keep_mask_reference, rank_reference
from fastroar.engine.loaders.resident import ResidentLoader
from fastroar.models import build_model
from fastroar.training.batched import Spec, _masked_batch, _Split, keep_bounds, resident_ranks, train_stacked
from fastroar.training.loop import evaluate, train_model
from fastroar.training.settings import Recipe, fast_recipe, lr_factor

SHAPE = (2, 4, 4)       # d = 32
CLASSES = 3
ATOL = 1e-5


def _split(n: int, rng: np.random.Generator, dtype=np.uint8):
    """Learnable data: the label is the brightest of 3 pixel groups; ranks from noisy class evidence."""
    d = math.prod(SHAPE)
    if dtype == np.uint8:
        x = rng.integers(0, 200, (n, *SHAPE), dtype=np.uint8)
    else:
        x = rng.standard_normal((n, *SHAPE)).astype(np.float32)
    flat = x.reshape(n, d).astype(np.float64)
    y = np.stack([flat[:, g::3].mean(1) for g in range(CLASSES)], 1).argmax(1).astype(np.int64)
    scores = (np.abs(flat) + rng.random((n, d)) * 50).astype(np.float32)
    return x, y, rank_reference(scores)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return _split(256, rng), _split(96, rng)


SPECS = [Spec(0.25, "top", 0), Spec(0.25, "bottom", 0), Spec(0.5, "top", 1), Spec(0.7, "bottom", 2),
         Spec(0.5, "bottom", 3)]
RECIPE = Recipe(epochs=3, batch_size=48, lr=0.1, momentum=0.9, weight_decay=5e-4, warmup_epochs=0.5,
                label_smoothing=0.1)   # 256 / 48: a short last batch every epoch


def train_alone(arch, params, train, test, spec: Spec, recipe: Recipe):
    """The single-model path, seeded as run_job seeds it."""
    loader = ResidentLoader(train[0], train[1], batch_size=recipe.batch_size, seed=spec.seed, ranks=train[2],
                            k=spec.k, direction=spec.direction)
    test_loader = ResidentLoader(test[0], test[1], batch_size=512, shuffle=False, ranks=test[2], k=spec.k,
                                 direction=spec.direction)
    torch.manual_seed(spec.seed)
    model = build_model(arch, SHAPE, CLASSES, **params)
    stats = train_model(model, loader, recipe, progress=False)
    return model, stats, evaluate(model, test_loader)


@pytest.mark.parametrize("arch,params,recipe", [
    ("mlp2", {"width": 24}, RECIPE),
    ("mlp1", {"width": 40}, fast_recipe(RECIPE, epochs=2)),   # one-cycle schedule, label smoothing 0.2
    ("linear", {}, RECIPE),
])
def test_stack_equals_each_model_trained_alone(data, arch, params, recipe):
    train, test = data
    got = train_stacked(arch, params, SHAPE, CLASSES, train, test, SPECS, recipe, return_models=True)
    accuracies = set()
    for spec, res in zip(SPECS, got):
        model, stats, acc = train_alone(arch, params, train, test, spec, recipe)
        want = model.state_dict()
        assert set(res["state_dict"]) == set(want)
        for name, value in want.items():
            torch.testing.assert_close(res["state_dict"][name], value, atol=ATOL, rtol=0, msg=f"{spec} {name}")
        assert res["accuracy"] == acc, spec
        assert res["train_acc"] == stats["train_acc"], spec
        assert res["loss"] == pytest.approx(stats["loss"], abs=ATOL)
        accuracies.add(acc)
    assert len(accuracies) > 1  # the masks matter: models that all learn the same thing would prove little


def test_float_images_and_a_stack_of_one(data):
    rng = np.random.default_rng(3)
    train, test = _split(200, rng, np.float32), _split(50, rng, np.float32)
    spec = Spec(0.4, "bottom", 5)
    (res,) = train_stacked("mlp1", {"width": 16}, SHAPE, CLASSES, train, test, [spec], RECIPE, return_models=True)
    model, stats, acc = train_alone("mlp1", {"width": 16}, train, test, spec, RECIPE)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(res["state_dict"][name], value, atol=ATOL, rtol=0)
    assert res["accuracy"] == acc


def test_a_models_result_does_not_depend_on_its_stack(data):
    """Bitwise: so a resumed group (fewer models) reproduces the uninterrupted run exactly."""
    train, test = data
    full = train_stacked("mlp2", {"width": 24}, SHAPE, CLASSES, train, test, SPECS, RECIPE, return_models=True)
    for subset in ([SPECS[2]], [SPECS[4], SPECS[2]], SPECS[1:4]):
        part = train_stacked("mlp2", {"width": 24}, SHAPE, CLASSES, train, test, subset, RECIPE, return_models=True)
        for spec, res in zip(subset, part):
            ref = full[SPECS.index(spec)]
            assert res["accuracy"] == ref["accuracy"] and res["loss"] == ref["loss"]
            for name, value in ref["state_dict"].items():
                assert torch.equal(res["state_dict"][name], value), (spec, name)


@pytest.mark.parametrize("d", [37, 70000])
def test_masked_batch_equals_reference_masks(d):
    """Every level from n = 0 to n = d, both directions, uint16 and uint32 rank maps."""
    rng = np.random.default_rng(d)
    n = 6
    ranks = rank_reference(rng.random((n, d)).astype(np.float32))
    x = torch.from_numpy(rng.random((n, d)).astype(np.float32) + 0.5)
    r, off = resident_ranks(ranks)
    # every other model fills removed coordinates with its own value (retrain.fill), the rest with 0
    specs = [Spec(k, direction, 0, fill=(0.0 if i % 2 else 0.25 + i / 64))
             for i, (k, direction) in enumerate((k, direction)
                                                for k in (0.2 / d, 1.0 / d, 0.3, 0.5, 1 - 0.6 / d, 1 - 0.1 / d)
                                                for direction in ("top", "bottom"))]
    lo, hi = keep_bounds(specs, d, off, r.dtype)
    idx = torch.tensor([[(i + j) % n for j in range(4)] for i in range(len(specs))])
    fills = torch.tensor([s.fill for s in specs], dtype=torch.float32)
    torch_path = _masked_batch(x, r, idx, lo, hi, fills)                                # CUDA's way
    numba_path = _Split((x.numpy(), np.zeros(n, np.int64), ranks), specs, torch.device("cpu")).batch(idx)
    for i, spec in enumerate(specs):
        keep = keep_mask_reference(ranks[idx[i].numpy()], spec.k, spec.direction)
        want = np.where(keep, x[idx[i]].numpy(), np.float32(spec.fill))
        np.testing.assert_array_equal(torch_path[i].numpy(), want, err_msg=str(spec))
        np.testing.assert_array_equal(numba_path[i].numpy(), want, err_msg=str(spec))


def test_onecycle_schedule():
    total, warm = 20, 5
    got = [lr_factor(s, total, warm, "onecycle") for s in range(total)]
    want = [(s + 1) / warm for s in range(warm)] + [1 - (s - warm) / (total - warm) for s in range(warm, total)]
    assert got == pytest.approx(want)
    fast = fast_recipe(Recipe(epochs=12, lr=0.05, batch_size=64), n_train=2000)
    assert (fast.name, fast.epochs, fast.schedule, fast.warmup_epochs, fast.lr, fast.batch_size) == \
        ("fast", 4, "onecycle", 1.0, 0.05, 64)
    fast = fast_recipe(Recipe(epochs=150, lr=0.1, batch_size=128), n_train=50000)  # cifar10's config
    assert (fast.epochs, fast.batch_size, fast.lr) == (8, 512, pytest.approx(0.4))
    # the paper recipe's dict (and so every job key made before recipes existed) is unchanged
    assert "name" not in Recipe().to_dict() and fast.to_dict()["name"] == "fast"


def test_retrain_groups_equal_one_job_per_task(run_workdir, tmp_path):
    """The stage's groups (batch_models 16, the fixture's run) vs one job per task: the same records;
    --recipe fast is recorded in every record, and `report --recipe` shows one recipe's results only."""
    from click.testing import CliRunner

    from fastroar.cli import cli
    from fastroar.engine.results import read_results
    from tests.conftest import tiny_args

    ref, _ = run_workdir
    wd = tmp_path / "w"
    shutil.copytree(ref, wd, ignore=shutil.ignore_patterns("results", "report"))
    subset = ["--model", "standard", "--attribution", "random", "--k", "0.5"]
    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", *subset,
                                      *tiny_args("retrain.batch_models=1")])
    assert result.exit_code == 0, result.output
    assert "4 to run in 4 tasks" in result.output
    got = read_results(wd / "results" / "results.jsonl")
    want = read_results(ref / "results" / "results.jsonl")
    assert len(got) == 4
    for key, rec in got.items():
        assert want[key]["group_size"] == 8 and rec["group_size"] == 1
        assert (rec["accuracy"], rec["loss"], rec["train_acc"]) == \
            (want[key]["accuracy"], want[key]["loss"], want[key]["train_acc"])
        assert rec["recipe_name"] == "paper"

    result = CliRunner().invoke(cli, ["retrain", "--workdir", str(wd), "--no-progress", "--recipe", "fast",
                                      *subset, *tiny_args()])
    assert result.exit_code == 0, result.output
    assert "4 to run in 1 tasks" in result.output and "recipe fast" in result.output
    lines = [json.loads(line) for line in (wd / "results" / "results.jsonl").read_text().splitlines()]
    fast = [r for r in lines if r["recipe_name"] == "fast"]
    assert len(fast) == 4 and all(r["recipe"]["schedule"] == "onecycle" and r["recipe"]["epochs"] == 1 for r in fast)
    assert {r["key"] for r in fast}.isdisjoint(got)  # another recipe: other jobs

    # the report shows one recipe's results at a time, never a mix of both
    shown = {}
    for recipe, records in (("fast", fast), ("paper", list(got.values()))):
        result = CliRunner().invoke(cli, ["report", "--workdir", str(wd), "--recipe", recipe, *tiny_args()])
        assert result.exit_code == 0, result.output
        every = list(csv.DictReader(open(wd / "report" / "diffroar.csv")))
        rows = [r for r in every if r["diffroar"]]  # the sweep's other cells were not run: shown empty
        # random is model-independent: standard's jobs serve robust's too (one key), the same numbers
        assert [(r["model"], r["attribution"]) for r in rows] == [("robust", "random"), ("standard", "random")] \
            or [(r["model"], r["attribution"]) for r in rows] == [("standard", "random"), ("robust", "random")]
        assert {k: v for k, v in rows[0].items() if k != "model"} == {k: v for k, v in rows[1].items() if k != "model"}
        rows = [r for r in rows if r["model"] == "standard"]
        assert len(every) == 8 and all(r["runs"] == "0" for r in every if not r["diffroar"])
        acc = {d: np.mean([r["accuracy"] for r in records if r["direction"] == d]) for d in ("top", "bottom")}
        assert float(rows[0]["diffroar"]) == pytest.approx(acc["top"] - acc["bottom"])
        shown[recipe] = float(rows[0]["diffroar"])
    assert shown["fast"] != shown["paper"]  # the two recipes' results differ here, so a mix would show
