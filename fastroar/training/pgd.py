"""Projected gradient descent (Madry et al. 2018) adversaries in l-inf and l2 balls (the threat model,
Adversary, is in settings.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastroar.training import mlp_steps
from fastroar.training.mlp_steps import mlp_params
from fastroar.training.settings import Adversary


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, adv: Adversary) -> torch.Tensor:
    """delta projected onto the adversary's eps-ball (per sample)."""
    if adv.norm == "linf":
        return delta.clamp(-adv.eps, adv.eps)
    return delta * (adv.eps / _per_sample_norm(delta)).clamp(max=1.0)


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: Adversary,
               bounds: tuple[float, float] | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial examples x + delta, ||delta|| <= eps, ascending the cross-entropy loss.

    The model runs in eval mode during the attack (batch-norm statistics untouched) and is restored after.
    The random start draws from `generator` (default: torch's global one), with the ops of
    torch.randn_like / uniform_: the same numbers for the same generator state.
    """
    was_training = model.training
    model.eval()
    x = x.detach()
    if adv.random_start:
        # drawn in NCHW order whatever x's memory format: a channels_last batch gets the same start
        start = torch.empty_like(x, memory_format=torch.contiguous_format)
        if adv.norm == "linf":
            delta = start.uniform_(-adv.eps, adv.eps, generator=generator)
        else:
            delta = project(start.normal_(generator=generator) * adv.eps, adv)
    else:
        delta = torch.zeros_like(x)
    if bounds is not None:
        delta = (x + delta).clamp(*bounds) - x
    params = mlp_params(model, x)
    if params is not None:  # the loop below in C++, same ops (fastroar.training.mlp_steps)
        model.train(was_training)
        return mlp_steps.pgd(x, delta, y, params, adv.norm, adv.eps, adv.alpha, adv.steps, bounds)
    for _ in range(adv.steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            if adv.norm == "linf":
                step = adv.alpha * grad.sign()
            else:
                step = adv.alpha * grad / _per_sample_norm(grad)
            delta = project(delta + step, adv)
            if bounds is not None:
                delta = (x + delta).clamp(*bounds) - x
    model.train(was_training)
    return (x + delta).detach()
