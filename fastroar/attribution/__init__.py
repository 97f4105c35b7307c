"""Feature attributions: a score per input coordinate (larger = more important), same shape as x.

- ``gradient``: |d logit_yhat / dx|, yhat the model's predicted label (the paper's input gradients);
- ``random``: input-agnostic baseline, i.i.d. uniform scores seeded by (seed, sample index), so a sample's
  scores do not depend on how the data are batched or split across workers.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from fastroar.errors import ConfigError


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """|d logit_yhat(x) / dx| per coordinate, yhat = argmax of the logits, computed in eval mode."""
    was_training = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        predicted = logits.argmax(dim=1, keepdim=True)
        # Samples do not interact in eval mode, so the gradient of the sum is each sample's own gradient.
        (grad,) = torch.autograd.grad(logits.gather(1, predicted).sum(), x)
    model.train(was_training)
    return grad.abs()


def random_scores(model: nn.Module | None, x: torch.Tensor, *, seed: int = 0,
                  indices: Sequence[int] | None = None) -> torch.Tensor:
    """Uniform scores, sample i's drawn from a generator seeded with (seed, indices[i])."""
    idx = range(len(x)) if indices is None else indices
    d = int(np.prod(x.shape[1:]))
    rows = [np.random.default_rng([int(seed), int(i)]).random(d, dtype=np.float32) for i in idx]
    scores = np.stack(rows) if rows else np.zeros((0, d), np.float32)
    return torch.from_numpy(scores).reshape(x.shape).to(x.device)


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "gradient": lambda model, x, **kw: input_gradient(model, x),
    "random": random_scores,
}


def attribute(model: nn.Module, x: torch.Tensor, method: str = "gradient", **params: Any) -> torch.Tensor:
    """Scores of `method` for the batch x, same shape and device as x (see the module doc for the methods)."""
    if method not in METHODS:
        raise ConfigError(f"unknown attribution {method!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[method](model, x, **params)


__all__ = ["attribute", "input_gradient", "random_scores", "METHODS"]
