"""Many conv models, one data pass: a torch.func stack of conv models (BatchNorm included) equals each
model trained alone.

The reference is the single-model path (ResidentLoader + build_model + train_model + evaluate, seeded as
run_job seeds it). The stack must reproduce every model's parameters and BatchNorm running statistics
(atol 1e-4: vmapped convolutions are grouped convolutions, which sum in another order) and its test
accuracy exactly, for top and bottom masks at different k, seeds and fills.

resnet18 and airbench are checked on one step (each model's gradients against the model alone's, 1e-5 relative to the
largest): trained further at 8x8 px with batches of 12, their last BatchNorms (1x1 maps) amplifies
float rounding (1e-7 after step 1, 1e-3 after a few steps) whatever path computes it.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastroar.engine.kernels.reference import rank_reference
from fastroar.engine.loaders.resident import ResidentLoader
from fastroar.models import build_model, builders
from fastroar.training.batched import Spec
from fastroar.training.loop import evaluate, train_model
from fastroar.training.settings import Recipe
from fastroar.training.stacked_conv import train_stacked_conv

SHAPE = (3, 8, 8)
CLASSES = 3
ATOL = 1e-4


def _split(n: int, rng: np.random.Generator):
    """Learnable data: the label is the brightest channel; ranks from noisy class evidence."""
    x = rng.integers(0, 160, (n, *SHAPE), dtype=np.uint8)
    y = rng.integers(0, CLASSES, n)
    x[np.arange(n), y] += 90
    d = math.prod(SHAPE)
    scores = (x.reshape(n, d).astype(np.float32) + rng.random((n, d)).astype(np.float32) * 50)
    return x, y.astype(np.int64), rank_reference(scores)


def _alone(arch, params, train, test, spec: Spec, recipe: Recipe):
    loader = ResidentLoader(train[0], train[1], batch_size=recipe.batch_size, seed=spec.seed, ranks=train[2],
                            k=spec.k, direction=spec.direction, engine="torch", fill=spec.fill)
    test_loader = ResidentLoader(test[0], test[1], batch_size=512, shuffle=False, ranks=test[2], k=spec.k,
                                 direction=spec.direction, engine="torch", fill=spec.fill)
    torch.manual_seed(spec.seed)
    model = build_model(arch, SHAPE, CLASSES, **params)
    stats = train_model(model, loader, recipe, progress=False)
    return model, stats, evaluate(model, test_loader, recipe)


SPECS = [Spec(0.25, "top", 0), Spec(0.5, "bottom", 1), Spec(0.7, "top", 2, fill=0.5)]
RECIPE = Recipe(epochs=2, batch_size=12, lr=0.05, momentum=0.9, weight_decay=5e-4, warmup_epochs=0.5,
                label_smoothing=0.1, schedule="onecycle")   # 40 / 12: a short last batch every epoch


def tiny_cnn(shape, num_classes):
    """Two conv + BatchNorm layers and a linear head: every layer kind resnet18 has, at test size."""
    return nn.Sequential(nn.Conv2d(shape[0], 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def test_stack_of_three_conv_models_equals_three_trained_alone(monkeypatch):
    arch, params = "tiny_cnn", {}
    monkeypatch.setitem(builders.BUILDERS, "tiny_cnn", tiny_cnn)
    rng = np.random.default_rng(3)
    train, test = _split(40, rng), _split(30, rng)
    torch.set_num_threads(2)
    stacked = train_stacked_conv(arch, params, SHAPE, CLASSES, train, test, SPECS, RECIPE, "cpu", return_models=True)
    for spec, rec in zip(SPECS, stacked):
        model, stats, acc = _alone(arch, params, train, test, spec, RECIPE)
        ref = model.state_dict()
        assert set(ref) == set(rec["state_dict"])
        for name, t in ref.items():
            got = rec["state_dict"][name]
            if t.dtype.is_floating_point:
                torch.testing.assert_close(got, t, atol=ATOL, rtol=0, msg=f"{arch} {spec} {name}")
            else:   # num_batches_tracked: per model, one per training step
                assert torch.equal(got, t), name
        assert rec["accuracy"] == acc
        assert rec["loss"] == pytest.approx(stats["loss"], abs=1e-4)
        assert rec["train_acc"] == stats["train_acc"]
    # the models really differ (own seed, mask, shuffle)
    first = [r["state_dict"] for r in stacked]
    name = next(k for k, v in first[0].items() if v.dtype.is_floating_point)
    assert not torch.allclose(first[0][name], first[1][name])


@pytest.mark.parametrize("arch,params", [("resnet18", {}), ("airbench", {"widths": [16, 32, 32]})])
def test_stack_step_gradients_equal_each_model_alone(arch, params):
    from fastroar.training.stacked_conv import ConvStack

    torch.set_num_threads(2)
    stack = ConvStack.build(arch, params, SHAPE, CLASSES, [0, 1], torch.device("cpu"))
    x = torch.rand(2, 12, *SHAPE)
    y = torch.randint(0, CLASSES, (2, 12))
    logits = stack.forward(x, train=True)
    F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(2, 12).mean(1).sum().backward()
    for i, seed in enumerate((0, 1)):
        torch.manual_seed(seed)
        model = build_model(arch, SHAPE, CLASSES, **params)
        model.train()
        F.cross_entropy(model(x[i]), y[i]).backward()
        for name, p in model.named_parameters():
            if not p.requires_grad:   # airbench's fixed BatchNorm scales
                assert stack.params[name].grad is None, name
                continue
            g = stack.params[name].grad[i]
            assert (g - p.grad).abs().max() <= 1e-5 * max(1.0, float(p.grad.abs().max())), name
        for name, b in model.named_buffers():   # running stats updated per model
            torch.testing.assert_close(stack.buffers[name][i], b, atol=1e-6, rtol=0)
