"""PGD: perturbations stay in the eps-ball (and the data range) and raise the loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastroar.errors import ConfigError
from fastroar.training import Adversary, pgd_attack


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.rand(64, 1, 8, 8)
    y = torch.randint(0, 4, (64,))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(50):  # fit a little so the loss is not flat
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.5)])
def test_pgd_stays_in_ball_and_bounds_and_raises_loss(model_and_data, norm, eps):
    model, x, y = model_and_data
    torch.manual_seed(1)
    adv = Adversary(norm=norm, eps=eps, steps=10)
    x_adv = pgd_attack(model, x, y, adv, bounds=(0.0, 1.0))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        attacked = F.cross_entropy(model(x_adv), y, reduction="none")
    assert float(attacked.mean()) > float(clean.mean()) + 1e-3
    assert float((attacked >= clean - 1e-6).float().mean()) > 0.9


def test_linf_pgd_on_a_linear_model_reaches_the_closed_form_optimum():
    # For logits Wx and 2 classes the loss grows along sign(w_other - w_y): the optimum is a ball corner.
    torch.manual_seed(2)
    model = nn.Linear(6, 2, bias=False)
    x = torch.zeros(5, 6)
    y = torch.zeros(5, dtype=torch.long)
    x_adv = pgd_attack(model, x, y, Adversary(norm="linf", eps=0.1, steps=20, random_start=False))
    w = model.weight.detach()
    expected = 0.1 * torch.sign(w[1] - w[0]).expand(5, 6)
    torch.testing.assert_close(x_adv, expected)


@pytest.mark.parametrize("kwargs", [dict(norm="l3", eps=1.0), dict(norm="l2", eps=-1.0),
                                    dict(norm="linf", eps=0.1, steps=0)])
def test_bad_adversaries_are_rejected(kwargs):
    with pytest.raises(ConfigError):
        Adversary(**kwargs)
