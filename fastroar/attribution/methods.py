"""Feature attributions: a score per input coordinate (larger = more important), same shape as x.

- ``gradient``: |d logit_yhat / dx|, yhat the model's predicted label (the paper's input gradients);
- ``random``: input-agnostic baseline, i.i.d. uniform scores seeded by (seed, sample index), so a sample's
  scores do not depend on how the data are batched or split across workers;
- ``edge``: model-agnostic baseline, the Sobel edge magnitude of the input (kornia.filters.sobel, on the
  input's device), per channel;
- ``captum:<Method>`` and ``captum:NoiseTunnel(<Method>)``: any attribution class of captum.attr with the
  predicted label as target, scored by absolute value; its keyword parameters come from the config's
  ``attribution_params[<name>]`` and are recorded in the rank store;
- ``module:function``: the user's own function ``fn(model, x, target, **params)`` (fastroar.attribution.user).
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from fastroar.attribution.user import import_reference, is_reference, user_scores
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


def edge_scores(model: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of each channel of x (B, C, H, W): kornia.filters.sobel, normalized."""
    from kornia.filters import sobel

    return sobel(x.detach().float())


CAPTUM = re.compile(r"^captum:(?:NoiseTunnel\((?P<inner>\w+)\)|(?P<method>\w+))$")


def _captum_class(name: str):
    import captum.attr

    cls = getattr(captum.attr, name, None)
    if not isinstance(cls, type) or not hasattr(cls, "attribute"):
        raise ConfigError(f"captum.attr has no attribution class {name!r} (e.g. IntegratedGradients, Saliency)")
    return cls


def captum_scores(name: str, model: nn.Module, x: torch.Tensor, **params: Any) -> torch.Tensor:
    """|attribution| of a captum method for the model's predicted label."""
    match = CAPTUM.match(name)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    if match["inner"]:
        from captum.attr import NoiseTunnel

        method = NoiseTunnel(_captum_class(match["inner"])(model))
    else:
        method = _captum_class(match["method"])(model)
    with torch.enable_grad():
        scores = method.attribute(x.detach().clone().requires_grad_(True), target=target, **params)
    model.train(was_training)
    return scores.detach().abs()


METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "gradient": lambda model, x, **kw: input_gradient(model, x),
    "random": random_scores,
    "edge": lambda model, x, **kw: edge_scores(model, x),
}


def check_attribution(name: str) -> str:
    """`name` if it is a known attribution (captum classes are looked up), else a ConfigError."""
    if name in METHODS:
        return name
    match = CAPTUM.match(name)
    if match:
        _captum_class(match["inner"] or match["method"])
        return name
    if is_reference(name):
        import_reference(name)
        return name
    raise ConfigError(f"unknown attribution {name!r}; choose one of: {', '.join(sorted(METHODS))}, "
                      "captum:<Method>, captum:NoiseTunnel(<Method>) or module:function")


def attribute(model: nn.Module, x: torch.Tensor, method: str = "gradient", **params: Any) -> torch.Tensor:
    """Scores of `method` for the batch x, same shape and device as x (see the module doc for the methods).

    params: ``seed`` and ``indices`` for ``random``; keyword arguments of ``attribute`` for captum methods.
    """
    check_attribution(method)
    if method.startswith("captum:"):
        params.pop("indices", None)
        return captum_scores(method, model, x, **params)
    if method not in METHODS:  # module:function
        return user_scores(method, model, x, **params)
    return METHODS[method](model, x, **params)


__all__ = ["attribute", "check_attribution", "input_gradient", "random_scores", "edge_scores", "METHODS"]
