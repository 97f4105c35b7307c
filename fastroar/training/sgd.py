"""SGD with momentum, Nesterov and weight decay: torch.optim.SGD's update without torch.optim.

Why not torch.optim.SGD itself: constructing any torch.optim optimizer imports torch._dynamo (its
param-group methods are wrapped to keep the compiler out): the largest single import of a small run,
paid by every process that trains (docs/benchmarks.md has the figures). The update below is the op
sequence of torch.optim.SGD's multi-tensor path (torch.optim.sgd._multi_tensor_sgd, dampening 0, no
maximize), built from the same ``torch._foreach_*`` ops; on CPU tensors those run the per-tensor kernels
torch.optim.SGD's single-tensor path runs, so parameters come out bitwise equal to torch.optim.SGD's
on either path (tests/test_sgd.py checks so against torch.optim.SGD).

The learning rate is passed per step (the recipe's schedule, fastroar.training.settings.Recipe.lr_at), in
place of torch.optim.lr_scheduler.LambdaLR, whose lr is the same product ``base_lr * factor(step)``.
"""
from __future__ import annotations

from typing import Iterable

import torch


class SGD:
    """In-place SGD over `params` (tensors with .grad): weight decay, then momentum, then Nesterov."""

    def __init__(self, params: Iterable[torch.Tensor], momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        self.params = [p for p in params if p.requires_grad]
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        self.bufs: list[torch.Tensor] | None = None   # created from the first step's gradients, as torch's

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        live = [p for p in self.params if p.grad is not None]
        if not live:
            return
        if len(live) != len(self.params):   # torch skips such parameters; this loop never has any
            raise RuntimeError("SGD.step: some parameters have no gradient")
        params = live
        grads = [p.grad for p in params]
        if self.weight_decay != 0:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        if self.momentum != 0:
            if self.bufs is None:
                self.bufs = [torch.clone(g).detach() for g in grads]
            else:
                torch._foreach_mul_(self.bufs, self.momentum)
                torch._foreach_add_(self.bufs, grads, alpha=1)
            if self.nesterov:
                if self.weight_decay == 0:   # grads are the .grad tensors themselves: do not write into them
                    grads = [g.clone() for g in grads]
                torch._foreach_add_(grads, self.bufs, alpha=self.momentum)
            else:
                grads = self.bufs
        torch._foreach_add_(params, grads, alpha=-lr)
