"""Feature attributions: a score per input coordinate (larger = more important), same shape as x.

- ``gradient``: |d logit_yhat / dx|, yhat the model's predicted label (the paper's input gradients);
- ``gradient:margin``: |d (z_yhat - max_{c != yhat} z_c) / dx|, the gradient of the margin: with two classes
  it is the single-logit gradient of the paper's theory (Sec. 4), free of the component that adding one
  function to every logit puts into d z_yhat / dx (softmax, and so training, never sees it);
- ``gradient:loss``: |d CE(z, y) / dx| with the TRUE label y (the reference notebook's attribution); it
  needs the labels (``attribute(..., labels=y)``);
- ``gradient:signed``: d logit_yhat / dx without the absolute value, ranked as given (largest first);
- ``random``: input-agnostic baseline, i.i.d. uniform scores seeded by (seed, sample index), so a sample's
  scores do not depend on how the data are batched or split across workers;
- ``edge``: model-agnostic baseline, the Sobel edge magnitude of the input (kornia.filters.sobel, on the
  input's device), per channel;
- ``captum:<Method>`` and ``captum:NoiseTunnel(<Method>)``: any attribution class of captum.attr with the
  predicted label as target, scored by absolute value; its keyword parameters come from the config's
  ``attribution_params[<name>]`` and are recorded in the rank store;
- ``module:function``: the user's own function ``fn(model, x, target, **params)`` (fastroar.attribution.user).

torch is imported by the functions that compute scores: the registry (METHODS) and check_attribution import
none, so config checks of built-in names cost no torch import.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fastroar.attribution.user import import_reference, is_reference, user_scores
from fastroar.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn


def input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """|d logit_yhat(x) / dx| per coordinate, yhat = argmax of the logits, computed in eval mode."""
    import torch

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


def _grad_of(model: nn.Module, x: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """d objective(logits).sum() / dx in eval mode (samples do not interact, so each row is its own)."""
    import torch

    was_training = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(objective(model(x)).sum(), x)
    model.train(was_training)
    return grad


def margin_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """|d (z_yhat - max_{c != yhat} z_c) / dx|, yhat = argmax of the logits."""
    def margin(z: torch.Tensor) -> torch.Tensor:
        top2 = z.topk(2, dim=1).values
        return top2[:, 0] - top2[:, 1]

    return _grad_of(model, x, margin).abs()


def loss_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """|d CE(logits, y) / dx| per sample, y the true labels."""
    if labels is None:
        raise ConfigError("attribution 'gradient:loss' needs the true labels (attribute(..., labels=y))")
    import torch
    from torch import nn

    y = torch.as_tensor(labels, device=x.device).long()
    def loss(z: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, y,
                                           reduction="none")

    return _grad_of(model, x, loss).abs()


def signed_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """d logit_yhat / dx, signed."""
    return _grad_of(model, x, lambda z: z.gather(1, z.argmax(dim=1, keepdim=True)))


def random_scores(model: nn.Module | None, x: torch.Tensor, *, seed: int = 0,
                  indices: Sequence[int] | None = None) -> torch.Tensor:
    """Uniform scores, sample i's drawn from a generator seeded with (seed, indices[i])."""
    import torch

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
    import torch

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
    "gradient:margin": lambda model, x, **kw: margin_gradient(model, x),
    "gradient:loss": lambda model, x, labels=None, **kw: loss_gradient(model, x, labels),
    "gradient:signed": lambda model, x, **kw: signed_gradient(model, x),
}
NEEDS_LABELS = frozenset({"gradient:loss"})  # attributions that are handed the true labels


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

    params: ``seed`` and ``indices`` for ``random``; ``labels`` (the true labels of x) for ``gradient:loss``
    (other methods ignore them); keyword arguments of ``attribute`` for captum methods.
    """
    check_attribution(method)
    labels = params.pop("labels", None)
    if method.startswith("captum:"):
        params.pop("indices", None)
        return captum_scores(method, model, x, **params)
    if method not in METHODS:  # module:function
        return user_scores(method, model, x, **params)
    if method in NEEDS_LABELS:
        params["labels"] = labels
    return METHODS[method](model, x, **params)


__all__ = ["attribute", "check_attribution", "input_gradient", "margin_gradient", "loss_gradient", "signed_gradient",
           "random_scores", "edge_scores", "METHODS", "NEEDS_LABELS"]
