"""Many conv models, one data pass: M models of any architecture (resnet18, airbench, torchvision, ...)
trained together as one stack with ``torch.func`` (``stack_module_state`` + ``vmap`` over
``functional_call``).

The M models of a retrain group differ only in their mask (k, direction, fill) and seed. They are
stacked along a new leading dimension and one vmapped forward runs all of them on their own batches
(M, B, C, H, W); convolutions of a vmapped model become grouped convolutions, so the device sees a few
large kernels instead of M small ones. Each model sees exactly what it would see alone:

- its initialisation: ``torch.manual_seed(seed)`` then ``build_model`` (as ``run_job`` does);
- its batches: the permutation ``epoch_order(n, seed, epoch)`` the resident loader draws, same batch
  size, same tail batch;
- its mask: keep rank < n (top) or rank >= d - n (bottom), n = floor(k d + 1/2), removed coordinates
  set to the job's fill (``fastroar.method.keep_range``);
- its optimisation: the recipe's SGD (Nesterov momentum, weight decay) and per-step learning rate,
  label smoothing, and bf16 autocast where the recipe asks for it on CUDA.

Gradients: the loss of the stack is the sum of the M per-model mean losses; the models share no
parameter, so one backward pass gives every model the gradient of its own loss, and
SGD on the stacked tensors (fastroar.training.sgd, torch.optim.SGD's update) is the element-wise update each model
would get alone.

BatchNorm: running statistics stay per model. The buffers are stacked like the parameters and passed
to the vmapped ``functional_call`` with the model in training mode; BatchNorm's in-place running-stat
update then writes each model's slice of the stacked buffers (vmap batches the in-place op over the
model dimension), and batch statistics are computed over each model's own batch. (Not
``torch.func.replace_all_batch_norm_modules_``, which would drop the running statistics.) Evaluation
runs the stack in eval mode on those per-model running statistics.

Against M models trained alone with ``fastroar.training.loop.train_model`` the results agree within float
rounding (grouped convolutions sum in another order), not bit for bit: tests/test_stacked_conv.py checks
parameters and buffers to atol 1e-4 and equal test accuracies on the CPU. Stochastic layers (dropout)
draw different randomness per model (vmap randomness="different"), which no single-model run reproduces.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from fastroar.engine import cancel, ticks
from fastroar.engine.loaders.resident import epoch_order, resident_ranks
from fastroar.method import keep_range, model_input_array
from fastroar.models import build_seeded
from fastroar.training.batched import stack_records
from fastroar.training.settings import Recipe
from fastroar.training.sgd import SGD


class _Data:
    """One split held whole on the device: images (N, d) as model input, labels, ranks, and each model's
    inclusive keep bounds in the stored rank space (kept iff lo <= rank <= hi)."""

    def __init__(self, split: tuple[np.ndarray, np.ndarray, np.ndarray], specs: Sequence[Any],
                 shape: Sequence[int], device: torch.device) -> None:
        images, labels, ranks = split
        images = np.asarray(images)
        self.shape = tuple(int(s) for s in shape)
        self.n = int(images.shape[0])
        self.d = int(math.prod(self.shape))
        x = model_input_array(images).reshape(self.n, -1)
        if x.shape[1] != self.d:
            raise ValueError(f"images have {x.shape[1]} coordinates, the model's shape {self.shape} wants {self.d}")
        self.x = torch.from_numpy(x).to(device)
        self.y = torch.from_numpy(np.asarray(labels).astype(np.int64)).to(device)
        self.ranks, off = resident_ranks(np.ascontiguousarray(ranks), device)
        info = torch.iinfo(self.ranks.dtype)
        lo, hi = [], []
        for s in specs:
            start, stop = keep_range(s.k, s.direction, self.d)
            a, b = (info.max, info.min) if stop == start else (start - off, stop - 1 - off)  # n = 0 keeps nothing
            lo.append(min(max(a, info.min), info.max))
            hi.append(min(max(b, info.min), info.max))
        m = len(specs)
        self.lo = torch.tensor(lo, dtype=self.ranks.dtype, device=device).view(m, 1, 1)
        self.hi = torch.tensor(hi, dtype=self.ranks.dtype, device=device).view(m, 1, 1)
        self.fill = torch.tensor([float(np.float32(s.fill)) for s in specs], device=device).view(m, 1, 1)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows idx (M, B), each masked by its model's bounds: x (M, B, *shape), y (M, B)."""
        m, b = idx.shape
        flat = idx.reshape(-1)
        xb = self.x.index_select(0, flat).view(m, b, -1)
        r = self.ranks.index_select(0, flat).view(m, b, -1)
        xb = torch.where((r >= self.lo) & (r <= self.hi), xb, self.fill)
        return xb.view(m, b, *self.shape), self.y.index_select(0, flat).view(m, b)


class ConvStack:
    """M models of one architecture as stacked parameters and buffers, run by one vmapped functional_call."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.m = len(modules)
        params, buffers = stack_module_state(list(modules))
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers = dict(buffers)
        self.base = copy.deepcopy(modules[0]).to("meta")   # the structure only; weights come from the stack

    @classmethod
    def build(cls, arch: str, arch_params: dict[str, Any], shape: Sequence[int], num_classes: int,
              seeds: Sequence[int], device: torch.device) -> "ConvStack":
        """Each model initialised as the single-model path does: manual_seed(seed), then build_model."""
        modules = [build_seeded(seed, arch, tuple(shape), num_classes, **arch_params) for seed in seeds]
        stack = cls(modules)
        trainable = {k for k, p in modules[0].named_parameters() if p.requires_grad}   # e.g. airbench's fixed BN scales
        stack.params = {k: v.to(device).requires_grad_(k in trainable) for k, v in stack.params.items()}
        stack.buffers = {k: v.to(device) for k, v in stack.buffers.items()}
        return stack

    def forward(self, x: torch.Tensor, train: bool) -> torch.Tensor:
        """x (M, B, ...) -> logits (M, B, classes); in train mode BatchNorm updates each model's buffers."""
        self.base.train(train)

        def one(p, b, xi):
            return functional_call(self.base, (p, b), (xi,))

        return vmap(one, randomness="different")(self.params, self.buffers, x)

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Model i's parameters and buffers under the single model's names (loadable into build_model's module)."""
        return {k: v[i].detach().cpu().clone() for k, v in {**self.params, **self.buffers}.items()}


def train_stacked_conv(arch: str, arch_params: dict[str, Any], shape: Sequence[int], num_classes: int,
                       train: tuple[np.ndarray, np.ndarray, np.ndarray],
                       test: tuple[np.ndarray, np.ndarray, np.ndarray], specs: Sequence[Any], recipe: Recipe,
                       device: torch.device | str = "cpu", test_batch_size: int = 512,
                       return_models: bool = False, timings: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Trains one model per spec (k, direction, seed, fill: fastroar.training.batched.Spec) on train's
    (images, labels, ranks), evaluates on test's; per spec {accuracy, train_acc, loss} (plus "state_dict"
    when return_models), in the order of `specs`. `timings`, when given, receives the seconds of "setup"
    (data, models), "train" and "eval". Same contract as batched.train_stacked, any architecture."""
    if not specs:
        return []
    t0 = time.perf_counter()
    device = torch.device(device)
    data = _Data(train, specs, shape, device)
    m, n, bs = len(specs), data.n, recipe.batch_size
    stack = ConvStack.build(arch, arch_params, shape, num_classes, [s.seed for s in specs], device)
    opt = SGD(stack.params.values(), momentum=recipe.momentum, weight_decay=recipe.weight_decay,
              nesterov=recipe.momentum > 0)
    steps_per_epoch = -(-n // bs)
    step = 0
    amp = recipe.uses_autocast(device)
    loss_sum = torch.zeros(m, device=device)
    correct = torch.zeros(m, dtype=torch.long, device=device)
    t1 = time.perf_counter()
    for epoch in range(recipe.epochs):
        orders = torch.stack([epoch_order(n, s.seed, epoch) for s in specs]).to(device)
        loss_sum.zero_()
        correct.zero_()
        for start in range(0, n, bs):
            cancel.check()   # between steps: an interrupted run stops here (fastroar.engine.cancel)
            xb, yb = data.batch(orders[:, start:start + bs])
            b = yb.shape[1]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = stack.forward(xb, train=True)
            per_sample = F.cross_entropy(logits.float().flatten(0, 1), yb.reshape(-1), reduction="none",
                                         label_smoothing=recipe.label_smoothing)
            losses = per_sample.view(m, b).mean(1)          # each model's mean loss, as F.cross_entropy's
            opt.zero_grad()
            losses.sum().backward()                          # independent models: each gets its own gradient
            opt.step(recipe.lr_at(step, steps_per_epoch))
            step += 1
            loss_sum += losses.detach() * b
            correct += (logits.detach().argmax(2) == yb).sum(1)
        ticks.tick(len(specs) / recipe.epochs)   # the caller's bar moves per epoch (fastroar.engine.ticks)
    train_loss = [v / max(1, n) for v in loss_sum.tolist()]
    train_acc = [c / max(1, n) for c in correct.tolist()]   # .tolist() waits for the device: t2 is honest
    t2 = time.perf_counter()
    hits = evaluate_conv_stack(stack, test, specs, shape, device, test_batch_size, amp)
    if timings is not None:
        timings.update(setup=t1 - t0, train=t2 - t1, eval=time.perf_counter() - t2)
    return stack_records(hits, train_acc, train_loss, stack.state_dict if return_models else None)


@torch.no_grad()
def evaluate_conv_stack(stack: ConvStack, test: tuple[np.ndarray, np.ndarray, np.ndarray], specs: Sequence[Any],
                        shape: Sequence[int], device: torch.device, batch_size: int = 512,
                        amp: bool = False) -> torch.Tensor:
    """Which test images each stacked model (eval mode) classifies correctly on the test split masked by its
    own spec: (M, N) bool on the CPU."""
    data = _Data(test, specs, shape, device)
    m = len(specs)
    hits = []
    for start in range(0, data.n, batch_size):
        rows = torch.arange(start, min(start + batch_size, data.n), device=device)
        xb, yb = data.batch(rows.expand(m, -1))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = stack.forward(xb, train=False)
        hits.append(logits.argmax(2) == yb)
    return torch.cat(hits, 1).cpu() if hits else torch.zeros((m, 0), dtype=torch.bool)


__all__ = ["ConvStack", "train_stacked_conv", "evaluate_conv_stack"]
