"""The base models' compiled steps: PGD attack and training step of an MLP on the CPU, in C++.

csrc/mlp_train.cpp calls the ATen ops autograd runs for ``train_model`` and ``pgd_attack`` on such a model,
in the same order, so the results are the same bits (tests/test_mlp_train.py; tests/test_format_compat.py
holds frozen model hashes). Why: at small batches a PGD-trained MLP's time goes mostly to the interpreter
and the autograd engine between small ops; the compiled step skips both, and leaves the interpreter lock
to the work beside it on other threads.

``mlp_params`` says when they apply: an ``nn.Sequential`` of Flatten, [Linear, ReLU]*, Linear (with
biases: what ``fastroar.models`` builds for linear, mlp1 and mlp2) in float32 on the CPU, with the
extension built. Everything else runs through autograd.
"""
from __future__ import annotations

import torch
from torch import nn


def mlp_params(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor] | None:
    """[W1, b1, W2, b2, ...] of `model` when the compiled steps take it and its input x, else None."""
    if not isinstance(model, nn.Sequential) or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    layers = list(model)
    if len(layers) < 2 or type(layers[0]) is not nn.Flatten or (layers[0].start_dim, layers[0].end_dim) != (1, -1):
        return None
    body = layers[1:]
    pattern = [nn.Linear if i % 2 == 0 else nn.ReLU for i in range(len(body))]
    if len(body) % 2 == 0 or [type(m) for m in body] != pattern:
        return None
    linears = body[::2]
    params = [t for m in linears for t in (m.weight, m.bias)]
    if any(t is None or t.device.type != "cpu" or t.dtype != torch.float32 for t in params):
        return None
    if any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in layers) or model._forward_hooks:
        return None
    from fastroar.engine.kernels.dispatch import extension_op

    return params if extension_op("mlp_grads") is not None else None


def pgd(x: torch.Tensor, delta: torch.Tensor, y: torch.Tensor, params: list[torch.Tensor], norm: str, eps: float,
        alpha: float, steps: int, bounds: tuple[float, float] | None) -> torch.Tensor:
    """pgd_attack's steps from the start `delta`: x + delta after `steps` ascents, projections and clips."""
    lo, hi = bounds if bounds is not None else (None, None)
    return torch.ops.fastroar.mlp_pgd(x, delta, y, params, norm, float(eps), float(alpha), int(steps),
                                      None if lo is None else float(lo), None if hi is None else float(hi))


def grads(x: torch.Tensor, y: torch.Tensor, params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step's forward and backward: sets each parameter's .grad; returns (mean loss, correct
    predictions), as loss.backward() after F.cross_entropy (no label smoothing) would leave them."""
    loss, correct, gs = torch.ops.fastroar.mlp_grads(x, y, params)
    for p, g in zip(params, gs):
        p.grad = g
    return loss, correct
