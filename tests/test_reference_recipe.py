"""What configs/leakage-reference.yaml needs to train as the reference notebook does: the step learning-rate
schedule (against torch's LambdaLR), recipe fields that leave existing keys unchanged, the leakage data's
bounds, and collapse_duplicates (the same update as the full batch, within float rounding)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fastroar.config import load_config
from fastroar.datasets.leakage import build
from fastroar.errors import ConfigError
from fastroar.keys import digest
from fastroar.models import build_seeded
from fastroar.stages.artifacts import model_config, retrain_recipe
from fastroar.training.loop import check_collapsible, collapsed, train_model
from fastroar.training.settings import Adversary, Recipe


@pytest.mark.parametrize("every, factor, floor", [(50, 0.75, 0.01), (2, 0.5, 0.1)])
def test_step_schedule_is_lambdalr_stepped_per_epoch(every, factor, floor):
    """The notebook's schedule: torch.optim.lr_scheduler.LambdaLR with max(floor, factor ** (epoch // every)),
    stepped once per epoch; (2, 0.5, 0.1) makes the floor bind."""
    recipe = Recipe(epochs=12 if every == 2 else 500, lr=0.1, momentum=0.0, schedule="step", decay_every=every,
                    decay_factor=factor, decay_floor=floor)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: max(floor, factor ** (e // every)))
    per_epoch = 3
    for epoch in range(recipe.epochs):
        for i in range(per_epoch):
            assert recipe.lr_at(epoch * per_epoch + i, per_epoch) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    if every == 2:
        assert recipe.lr_at(11 * per_epoch, per_epoch) == pytest.approx(0.1 * 0.1)   # floor reached


# Keys of configs/leakage-all.yaml and configs/blockdigits.yaml computed before the step schedule and
# collapse_duplicates existed: a base model's checkpoint and a retrain job's recipe keep their keys.
FROZEN_KEYS = {"leakage-all": ("84ef734d92e0d60f", "15286e527ff09d00"),
               "blockdigits": ("3233490daf3dc9f8", "6ec8fe92fc9c27c4")}


@pytest.mark.parametrize("name", sorted(FROZEN_KEYS))
def test_new_recipe_fields_leave_existing_keys_unchanged(name):
    cfg = load_config(dataset=name)
    model_key = digest(model_config(cfg, cfg.models[-1]), 16)
    assert (model_key, digest(retrain_recipe(cfg, 2000).to_dict(), 16)) == FROZEN_KEYS[name]
    for field in ("decay_every", "decay_factor", "decay_floor", "collapse_duplicates"):
        assert field not in Recipe().to_dict()
    changed = load_config(dataset=name, overrides=["train.collapse_duplicates=true"])
    assert digest(model_config(changed, changed.models[-1]), 16) != model_key   # set, it enters the key


def test_reference_config_is_the_notebooks_recipe():
    cfg = load_config(dataset="leakage-reference")
    recipe = Recipe(**cfg.train.recipe_overrides())
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.momentum, recipe.weight_decay) == (500, 250, 0.1, 0, 0)
    assert [recipe.lr_at(e * 40, 40) for e in (0, 50, 299, 300, 499)] == pytest.approx(
        [0.1, 0.075, 0.1 * 0.75 ** 5, 0.1 * 0.75 ** 6, 0.1 * 0.75 ** 9])   # the notebook's printed lrs
    robust = [m.adversary for m in cfg.models if m.adversary]
    assert robust and all((a.eps, a.steps, a.alpha, a.random_start) == (0.45, 8, 0.25 * 0.45, False) for a in robust)
    p = cfg.dataset.params
    assert (p["n_train"], p["n_test"], cfg.model.params["width"]) == (10_000, 1_000, 25_000)


@pytest.mark.parametrize("key, value, words", [("schedule", "steps", "cosine"), ("decay_factor", 0, "> 0"),
                                               ("decay_every", 0, ">= 1"), ("collapse_duplicates", "maybe", "true")])
def test_bad_step_settings_name_the_key(key, value, words):
    with pytest.raises(ConfigError, match=f"train.{key}.*{words}"):
        load_config(dataset="leakage-all", overrides=[f"train.{key}={value}"])


def test_leakage_clip_gives_the_train_range_as_bounds():
    plain, clipped = build(d=4, n_train=50, n_test=20), build(d=4, n_train=50, n_test=20, clip=True)
    assert plain.bounds is None and "clip" not in plain.params   # the default keeps params and keys
    assert clipped.bounds == (-1.0, 1.0) and clipped.params["clip"] is True
    np.testing.assert_array_equal(plain.train.images, clipped.train.images)


def test_collapsed_rows_and_counts_are_numpys_unique():
    ds = build(d=4, n_train=64, signal_blocks="all")   # eta = 0: 2d = 8 distinct points (some with -0.0)
    x, y = torch.from_numpy(ds.train.images), torch.from_numpy(ds.train.labels)
    xu, yu, counts = collapsed(x, y)
    rows = np.concatenate([ds.train.images.reshape(64, -1) + 0.0, ds.train.labels[:, None]], 1)
    ref, ref_counts = np.unique(rows, axis=0, return_counts=True)
    got = np.concatenate([xu.reshape(len(xu), -1).numpy(), yu[:, None].numpy()], 1)
    order = np.lexsort(got.T[::-1])
    np.testing.assert_array_equal(got[order], ref)
    np.testing.assert_array_equal(counts.numpy()[order], ref_counts)
    assert len(xu) <= 8 and int(counts.sum()) == 64


def _train(collapse: bool, adversary: Adversary | None, steps: int = 6) -> nn.Module:
    ds = build(d=4, n_train=16 * steps, signal_blocks="all")
    x, y = torch.from_numpy(ds.train.images), torch.from_numpy(ds.train.labels)
    model = build_seeded(0, "mlp1", (1, 4, 1), 2, width=32)
    recipe = Recipe(epochs=2, batch_size=16, lr=0.5, momentum=0.9, weight_decay=1e-3, schedule="step",
                    decay_every=1, decay_factor=0.5, collapse_duplicates=collapse)
    train_model(model, [(x[i:i + 16], y[i:i + 16]) for i in range(0, len(y), 16)], recipe, adversary=adversary,
                progress=False)
    return model


PGD3 = Adversary(norm="linf", eps=0.45, steps=3, step_size=0.2, random_start=False)


@pytest.mark.parametrize("adversary", [None, PGD3], ids=["standard", "pgd"])
def test_collapse_duplicates_gives_the_full_batch_update(adversary):
    """12 SGD steps (momentum, weight decay) on batches of 16 rows with at most 8 distinct: the parameters with
    and without collapse_duplicates agree within float32 rounding (rtol 1e-4, atol 1e-6), and training moved
    them far more than that."""
    full, short = _train(False, adversary), _train(True, adversary)
    start = build_seeded(0, "mlp1", (1, 4, 1), 2, width=32)
    for a, b, s in zip(full.parameters(), short.parameters(), start.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
        assert (a - s).abs().max() > 1e-2


def test_collapse_refuses_models_whose_rows_interact():
    bn = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match="BatchNorm1d.*collapse_duplicates: false"):
        check_collapsible(bn, None)
    with pytest.raises(ConfigError, match="Dropout"):
        check_collapsible(nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(4, 2)), None)
    mlp = build_seeded(0, "mlp1", (1, 4, 1), 2, width=8)
    with pytest.raises(ConfigError, match="random_start: false"):
        check_collapsible(mlp, Adversary(norm="linf", eps=0.1, steps=2))
    # an MLP without random start: fine
    check_collapsible(mlp, Adversary(norm="linf", eps=0.1, steps=2, random_start=False))
    recipe = Recipe(epochs=1, batch_size=4, collapse_duplicates=True)
    with pytest.raises(ConfigError, match="BatchNorm1d"):   # train_model checks before its first step
        train_model(bn, [(torch.zeros(4, 1, 4, 1), torch.zeros(4, dtype=torch.long))], recipe, progress=False)
