"""The base models' compiled MLP steps (csrc/mlp_train.cpp via fastroar.training.mlp_steps) against
autograd, bit for bit: the PGD attack (l2 and linf, random start or not, clipped or not) and whole trainings
(standard and adversarial, weight decay and Nesterov momentum, a tail batch). And the rule that picks them:
only Flatten/Linear/ReLU stacks in float32 on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fastroar.training.loop as loop
import fastroar.training.pgd as pgd
from fastroar.engine.kernels.dispatch import extension_op
from fastroar.models import build_seeded
from fastroar.training.mlp_steps import mlp_params
from fastroar.training.settings import Adversary, Recipe

pytestmark = pytest.mark.skipif(extension_op("mlp_grads") is None, reason="fastroar._C is not built")


def _without_compiled(monkeypatch):
    for module in (loop, pgd):
        monkeypatch.setattr(module, "mlp_params", lambda model, x: None)


def _data(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 6, 4, generator=g), torch.randint(0, 4, (n,), generator=g)


# l2 radii that are not powers of two: eps / norm (Python's Tensor.__rtruediv__: reciprocal, then product)
# and a plain division round differently only then
@pytest.mark.parametrize("arch", ["mlp2", "mlp1", "linear"])
@pytest.mark.parametrize("norm, eps, random_start, bounds", [
    ("l2", 1.7, True, (0.0, 1.0)), ("linf", 0.1, True, None),
    ("l2", 0.3, False, None), ("linf", 0.2, False, (0.0, 1.0))])
def test_compiled_pgd_equals_autograd(monkeypatch, arch, norm, eps, random_start, bounds):
    x, y = _data()
    model = build_seeded(0, arch, (1, 6, 4), 4, **({"width": 16} if arch != "linear" else {}))
    adv = Adversary(norm=norm, eps=eps, steps=4, random_start=random_start)
    assert mlp_params(model, x) is not None
    got = pgd.pgd_attack(model, x, y, adv, bounds, torch.Generator().manual_seed(1))
    _without_compiled(monkeypatch)
    want = pgd.pgd_attack(model, x, y, adv, bounds, torch.Generator().manual_seed(1))
    assert torch.equal(got, want)
    assert not torch.equal(got, x)                       # it did move the input


@pytest.mark.parametrize("adversary", [None, Adversary(norm="l2", eps=0.7, steps=3),
                                       Adversary(norm="linf", eps=0.1, steps=2)])
@pytest.mark.parametrize("momentum, wd", [(0.9, 5e-4), (0.0, 0.0)])
def test_compiled_training_equals_autograd(monkeypatch, adversary, momentum, wd):
    """Three epochs of batches of 32 over 100 samples (a tail of 4): every parameter and the final-epoch
    loss and accuracy equal autograd's."""
    x, y = _data()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
    recipe = Recipe(epochs=3, batch_size=32, lr=0.1, momentum=momentum, weight_decay=wd)

    def train():
        model = build_seeded(0, "mlp2", (1, 6, 4), 4, width=16)
        stats = loop.train_model(model, batches, recipe, adversary=adversary, bounds=(0.0, 1.0), progress=False,
                                 generator=torch.Generator().manual_seed(2))
        return model, stats

    got_model, got = train()
    _without_compiled(monkeypatch)
    want_model, want = train()
    assert got == want
    for (name, a), b in zip(got_model.state_dict().items(), want_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(got_model[1].weight, build_seeded(0, "mlp2", (1, 6, 4), 4, width=16)[1].weight)


def test_compiled_steps_take_only_plain_float32_cpu_mlps():
    x = torch.zeros(2, 1, 6, 4)
    mlp = build_seeded(0, "mlp2", (1, 6, 4), 4, width=8)
    assert [t.shape for t in mlp_params(mlp, x)] == [(8, 24), (8,), (8, 8), (8,), (4, 8), (4,)]
    assert mlp_params(mlp, x.double()) is None                                          # not float32
    assert mlp_params(nn.Sequential(nn.Flatten(), nn.Linear(24, 4, bias=False)), x) is None   # no bias
    assert mlp_params(nn.Sequential(nn.Flatten(), nn.Linear(24, 8), nn.Tanh(), nn.Linear(8, 4)), x) is None
    assert mlp_params(nn.Sequential(nn.Flatten(), nn.Linear(24, 8), nn.ReLU()), x) is None   # ends in a ReLU
    assert mlp_params(build_seeded(0, "resnet18", (3, 8, 8), 4), torch.zeros(2, 3, 8, 8)) is None
    hooked = build_seeded(0, "mlp1", (1, 6, 4), 4, width=8)
    hooked[1].register_forward_hook(lambda *a: None)
    assert mlp_params(hooked, x) is None                                                # a hook must run


def test_compiled_ops_reject_bad_input_with_a_message():
    params = [torch.zeros(4, 24), torch.zeros(4)]
    x, y = torch.zeros(2, 24), torch.zeros(2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="norm must be l2 or linf"):
        torch.ops.fastroar.mlp_pgd(x, x, y, params, "l1", 1.0, 0.1, 1, None, None)
    with pytest.raises(RuntimeError, match=r"\(B,\) int64"):
        torch.ops.fastroar.mlp_grads(x, y.int(), params)
    with pytest.raises(RuntimeError, match="a weight and a bias per layer"):
        torch.ops.fastroar.mlp_grads(x, y, params[:1])
    assert np.isfinite(torch.ops.fastroar.mlp_grads(x, y, params)[0].item())
