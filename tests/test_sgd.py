"""fastroar.training.sgd.SGD against torch.optim.SGD: bitwise-equal parameters, step after step."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from fastroar.training.sgd import SGD


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3))


@pytest.mark.parametrize("momentum, weight_decay, nesterov", [
    (0.0, 0.0, False), (0.9, 0.0, False), (0.9, 5e-4, False), (0.9, 5e-4, True), (0.85, 0.0, True),
    (0.0, 1e-3, False)])
def test_sgd_equals_torch_optim_sgd_bitwise(momentum, weight_decay, nesterov):
    ours, ref = _model(0), _model(0)
    opt = SGD(ours.parameters(), momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay,
                              nesterov=nesterov)
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        x, y = torch.randn(16, 12, generator=g), torch.randint(0, 3, (16,), generator=g)
        lr = 0.1 * (1 - step / 12) + 1e-3 * step      # a schedule, set as LambdaLR would
        for group in ref_opt.param_groups:
            group["lr"] = lr
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
        opt.step(lr)
        ref_opt.step()
        for a, b in zip(ours.parameters(), ref.parameters()):
            assert torch.equal(a, b), f"step {step}: parameters differ"
    assert not torch.equal(next(ours.parameters()), next(_model(0).parameters()))  # it did train


def test_sgd_rejects_nesterov_without_momentum():
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(_model(0).parameters(), momentum=0.0, nesterov=True)


def test_training_does_not_import_the_compiler():
    """Constructing a torch.optim optimizer imports torch._dynamo (~2 s); a default training loop must not pay it."""
    code = ("import sys, torch\n"
            "from fastroar.training.loop import Recipe, train_model\n"
            "m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))\n"
            "data = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))] * 3\n"
            "train_model(m, data, Recipe(epochs=2, batch_size=8), progress=False)\n"
            "print(sorted(k for k in sys.modules if k.startswith('torch._dynamo')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
