"""model.arch airbench (airbench94's network) and --recipe airbench (its hyperparameters)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastroar.config import load_config
from fastroar.models import build_model
from fastroar.stages.artifacts import retrain_recipe
from fastroar.training.settings import Recipe, airbench_recipe, fast_recipe


def test_airbench_shapes_and_parameter_count():
    torch.manual_seed(0)
    net = build_model("airbench", (3, 32, 32), 10)
    assert net(torch.rand(5, 3, 32, 32)).shape == (5, 10)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 1_971_640
    assert sum(p.numel() for p in net.parameters()) == 1_972_792       # + the fixed BatchNorm scales
    assert net[0].in_channels == 3 and net[0].out_channels == 24        # 2x2 whitening conv, 2 * 3 * 4 filters
    small = build_model("airbench", (1, 16, 8), 3, widths=[8, 16, 16])
    assert small[0].in_channels == 1
    assert small(torch.rand(4, 1, 16, 8)).shape == (4, 3)
    with pytest.raises(Exception, match="widths"):
        build_model("airbench", (3, 32, 32), 10, widths=[8, 16])


def test_airbench_bn_eps_reaches_every_batchnorm_and_bounds_the_normalisation():
    import numpy as np
    from torch import nn

    def norms(net):
        return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]

    assert {m.eps for m in norms(build_model("airbench", (1, 16, 8), 3, widths=[8, 16, 16]))} == {1e-12}
    net = build_model("airbench", (1, 16, 8), 3, widths=[8, 16, 16], bn_eps=1e-5)
    assert len(norms(net)) == 6 and {m.eps for m in norms(net)} == {1e-5}
    # a channel that is constant up to 1e-5 (as zero-filled masked inputs make them): BatchNorm's output is
    # (x - mean) / sqrt(var + eps), about 1 with airbench's eps and about 3e-3 with 1e-5 (closed form, NumPy)
    x = (torch.full((4, 8, 3, 3), 0.5, dtype=torch.float64)
         + 1e-5 * torch.randn(4, 8, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    xn = x.numpy()
    mean, var = xn.mean(axis=(0, 2, 3), keepdims=True), xn.var(axis=(0, 2, 3), keepdims=True)
    for eps in (1e-12, 1e-5):
        bn = build_model("airbench", (1, 16, 8), 3, widths=[8, 16, 16], bn_eps=eps)[2].norm1.double().train()
        out = bn(x).detach().numpy()
        np.testing.assert_allclose(out, (xn - mean) / np.sqrt(var + eps), rtol=1e-6, atol=1e-9)
        assert (np.abs(out).max() > 0.5) == (eps == 1e-12)
    with pytest.raises(Exception, match="bn_eps"):
        build_model("airbench", (1, 16, 8), 3, bn_eps=0)


def test_airbench_one_training_step_lowers_the_loss():
    torch.manual_seed(0)
    net = build_model("airbench", (3, 32, 32), 10, widths=[16, 32, 32])
    x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    recipe = airbench_recipe(Recipe(), n_train=64 * 64)
    opt = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay, nesterov=True)
    net.train()
    before = F.cross_entropy(net(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    after = F.cross_entropy(net(x), y)
    assert float(after.detach()) < float(before.detach())
    for m in net.modules():   # BatchNorm scales stay fixed at 1
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))


def test_airbench_recipe_values_and_existing_recipes_unchanged():
    paper = Recipe(epochs=30, batch_size=128, lr=0.1)
    r = airbench_recipe(paper)
    assert (r.name, r.epochs, r.batch_size, r.momentum, r.schedule, r.label_smoothing) == \
        ("airbench", 10, 1024, 0.85, "onecycle", 0.2)
    assert r.lr == pytest.approx(1.5)                      # 11.5 / (1 + 1/0.15) at batch 1024
    assert r.weight_decay * r.lr == pytest.approx(0.0153 * 1024 / (1024 * (1 + 1 / 0.15)))  # airbench's decay/step
    assert r.warmup_epochs == pytest.approx(2.0)
    small = airbench_recipe(paper, epochs=3, n_train=5000)
    assert (small.epochs, small.batch_size) == (3, 64) and small.lr == pytest.approx(1.5 * 64 / 1024)
    # the other recipes (and so every existing job key) are untouched
    assert fast_recipe(paper, n_train=50000).to_dict() == {
        "epochs": 8, "batch_size": 512, "lr": pytest.approx(0.4), "momentum": 0.9, "weight_decay": 5e-4,
        "warmup_epochs": 2.0, "label_smoothing": 0.2, "name": "fast", "schedule": "onecycle", "autocast": True,
        "channels_last": True}
    assert set(paper.to_dict()) == {"epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs",
                                    "label_smoothing"}


def test_recipe_airbench_is_a_config_value(tmp_path):
    cfg = load_config("cifar10", overrides=["retrain.recipe=airbench", "model.arch=airbench"])
    r = retrain_recipe(cfg, n_train=50000)
    assert r.name == "airbench" and r.batch_size == 512   # 50000 // 64 = 781 -> 512
