"""Many models, one data pass: M MLPs of one retrain sweep trained together on the device.

The jobs of a sweep differ only in their mask (k, direction) and seed. ``train_stacked`` stacks M
models of one MLP architecture (``torch.func.stack_module_state``) and trains them with batched
matmuls: each step gathers one batch of base images per model (its own seeded shuffle order), masks
it by that model's level and direction with one comparison against the resident rank maps, and
updates all M models with one optimizer step. Each model sees exactly what it would see alone:

- its initialisation: ``torch.manual_seed(seed)`` then ``build_model`` (as ``run_job`` does);
- its batches: the permutation ``ResidentLoader`` draws for (seed, epoch), same batch size, same tail;
- its mask: keep rank < n (top) or rank >= d - n (bottom), n = floor(k d + 1/2);
- its schedule: the recipe's SGD (Nesterov momentum, weight decay, per-step learning rate).

The optimizer update is written out with plain element-wise ops (no fused multiply-add), and stacks of
one model are padded to two (batched matmul of batch 1 takes another kernel): a model's result is then
bitwise the same whatever else is in its stack, so a resumed sweep that trains the leftover jobs of a
group reproduces the uninterrupted run exactly (on the CPU; on CUDA within float tolerance).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from fastroar.kernels.reference import n_kept
from fastroar.models import build_model
from fastroar.training.loop import Recipe

BATCHABLE_ARCHS = ("linear", "mlp1", "mlp2")


@dataclass(frozen=True)
class Spec:
    """What distinguishes one model of a stack: its mask and its seed."""

    k: float
    direction: str
    seed: int


def batchable(arch: str) -> bool:
    return arch in BATCHABLE_ARCHS


def model_input(images: np.ndarray) -> np.ndarray:
    """(N, ...) uint8 or float32 images -> (N, d) float32 model input (x / 255 for uint8, as the loaders do)."""
    images = np.asarray(images)
    n = images.shape[0]
    if images.dtype == np.uint8:
        return np.divide(images, np.float32(255.0), dtype=np.float32).reshape(n, -1)
    return np.array(images, dtype=np.float32, copy=True).reshape(n, -1)


def resident_ranks(ranks: np.ndarray) -> tuple[torch.Tensor, int]:
    """(N, d) ranks -> (tensor, offset): uint16 as int16 of rank - 32768 (order kept), others as int32."""
    ranks = np.asarray(ranks)
    if ranks.dtype == np.uint16:
        return torch.from_numpy((ranks ^ np.uint16(0x8000)).view(np.int16)), 32768
    return torch.from_numpy(ranks.astype(np.int32, copy=False)), 0


def keep_bounds(specs: Sequence[Spec], d: int, offset: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per model inclusive bounds (lo, hi) in the stored rank space: coordinate kept iff lo <= r <= hi."""
    info = torch.iinfo(dtype)
    lo, hi = [], []
    for s in specs:
        n = n_kept(s.k, d)
        a, b = (0, n - 1) if s.direction == "top" else (d - n, d - 1)
        a, b = (info.max, info.min) if n == 0 else (a - offset, b - offset)   # n = 0: an empty range
        lo.append(min(max(a, info.min), info.max))
        hi.append(min(max(b, info.min), info.max))
    return torch.tensor(lo, dtype=dtype), torch.tensor(hi, dtype=dtype)


class StackedMLP:
    """M independent MLPs (Flatten, [Linear, ReLU]*, Linear) as stacked weights, trained with batched matmuls.

    Weights are held transposed, (M, in, out), so every matmul of a step is one batched GEMM; forward and
    backward are written out (no autograd graph) into preallocated gradient buffers.
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        params, _ = torch.func.stack_module_state(list(modules))
        linears = [name for name, m in modules[0].named_modules() if isinstance(m, nn.Linear)]
        for name, m in modules[0].named_modules():
            if name and not isinstance(m, (nn.Linear, nn.ReLU, nn.Flatten)):
                raise ValueError(f"StackedMLP takes Linear/ReLU/Flatten stacks only, found {type(m).__name__}")
        self.names = [f"{n}.{p}" for n in linears for p in ("weight", "bias")]
        self.params = []
        for n in self.names:
            t = params[n].detach()
            self.params.append((t.transpose(1, 2) if n.endswith("weight") else t).contiguous())
        self.m = len(modules)
        self.layers = len(linears)

    @classmethod
    def build(cls, arch: str, arch_params: dict[str, Any], shape: Sequence[int], num_classes: int,
              seeds: Sequence[int], device: torch.device) -> "StackedMLP":
        """Each model initialised exactly as the single-model path does: manual_seed(seed), build_model."""
        modules = []
        for seed in seeds:
            torch.manual_seed(int(seed))
            modules.append(build_model(arch, tuple(shape), num_classes, **arch_params))
        stack = cls(modules)
        stack.params = [p.to(device) for p in stack.params]
        return stack

    def forward(self, x: torch.Tensor, compute_dtype: torch.dtype = torch.float32,
                acts: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x (M, B, d) -> logits (M, B, classes) in float32; each layer's input appended to `acts`."""
        h = x
        for i in range(self.layers):
            wt, b = self.params[2 * i], self.params[2 * i + 1]
            if acts is not None:
                acts.append(h)
            if compute_dtype == torch.float32:
                h = torch.baddbmm(b.unsqueeze(1), h, wt)
            else:  # bf16 matmuls (autocast's choice on CUDA), float32 results
                h = torch.bmm(h.to(compute_dtype), wt.to(compute_dtype)).float().add_(b.unsqueeze(1))
            if i < self.layers - 1:
                h = h.clamp_min_(0.0)
        return h

    def backward(self, g: torch.Tensor, acts: list[torch.Tensor], grads: list[torch.Tensor],
                 compute_dtype: torch.dtype = torch.float32) -> None:
        """Gradients of the parameters into `grads`, from g = d loss / d logits (M, B, classes)."""
        cd = compute_dtype
        for i in reversed(range(self.layers)):
            h = acts[i]
            if cd == torch.float32:
                torch.bmm(h.transpose(1, 2), g, out=grads[2 * i])
            else:
                grads[2 * i].copy_(torch.bmm(h.transpose(1, 2).to(cd), g.to(cd)))
            torch.sum(g, 1, out=grads[2 * i + 1])
            if i:
                g = torch.bmm(g.to(cd), self.params[2 * i].transpose(1, 2).to(cd)).float()
                g = torch.ops.aten.threshold_backward(g, h, 0.0)   # ReLU: h is the previous layer's output

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Model i's parameters under the single model's names (loadable into build_model's module)."""
        return {n: (p[i].t() if n.endswith("weight") else p[i]).detach().cpu().contiguous()
                for n, p in zip(self.names, self.params)}


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model mean cross-entropy with label smoothing (as F.cross_entropy) and its gradient wrt logits."""
    m, b, c = logits.shape
    logp = torch.log_softmax(logits, -1)
    rows = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).neg_()
    if smoothing:
        rows = rows.mul_(1.0 - smoothing).add_(logp.mean(-1).neg_().mul_(smoothing))
    g = logp.exp_()
    if smoothing:
        g.sub_(smoothing / c)
    g.scatter_add_(-1, y.unsqueeze(-1), torch.full((m, b, 1), -(1.0 - smoothing), device=g.device))
    return rows.mean(1), g.div_(b)


def _sgd_step(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor],
              scratch: list[torch.Tensor], recipe: Recipe, lr: float, first: bool) -> None:
    """torch.optim.SGD's update (weight decay, Nesterov momentum) in place; one rounding per element op, so
    no element's result depends on where it lies in the stacked tensor (vector body or tail)."""
    for p, g, buf, tmp in zip(params, grads, bufs, scratch):
        if recipe.weight_decay:
            g.add_(torch.mul(p, recipe.weight_decay, out=tmp))
        if recipe.momentum:
            if first:
                buf.copy_(g)
            else:
                buf.mul_(recipe.momentum).add_(g)
            g.add_(torch.mul(buf, recipe.momentum, out=tmp))   # nesterov
        p.sub_(torch.mul(g, lr, out=tmp))


def _order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation ResidentLoader draws for (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _masked_batch(x: torch.Tensor, ranks: torch.Tensor, idx: torch.Tensor, lo: torch.Tensor,
                  hi: torch.Tensor) -> torch.Tensor:
    """Images idx (M, B) of x (N, d), each row masked by its model's rank bounds: (M, B, d)."""
    m, b = idx.shape
    flat = idx.reshape(-1)
    xb = x.index_select(0, flat).view(m, b, -1)
    r = ranks.index_select(0, flat).view(m, b, -1)
    keep = (r >= lo.view(m, 1, 1)) & (r <= hi.view(m, 1, 1))  # the comparison, M ways
    return torch.where(keep, xb, 0.0)


def train_stacked(arch: str, arch_params: dict[str, Any], shape: Sequence[int], num_classes: int,
                  train: tuple[np.ndarray, np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray, np.ndarray],
                  specs: Sequence[Spec], recipe: Recipe, device: torch.device | str = "cpu",
                  test_batch_size: int = 512, return_models: bool = False) -> list[dict[str, Any]]:
    """Trains one model per spec on (images, labels, ranks) of train, evaluates on test's; per spec a dict
    {accuracy, train_acc, loss} (plus "state_dict" when return_models), in the order of `specs`."""
    if not batchable(arch):
        raise ValueError(f"train_stacked handles {', '.join(BATCHABLE_ARCHS)}, not {arch!r}")
    if not specs:
        return []
    device = torch.device(device)
    real = len(specs)
    specs = list(specs) + ([specs[0]] if real == 1 else [])  # a stack of 1 takes another matmul kernel
    d = int(math.prod(shape))
    x_train = torch.from_numpy(model_input(train[0])).to(device)
    y_train = torch.from_numpy(np.asarray(train[1]).astype(np.int64)).to(device)
    r_train, off = resident_ranks(train[2])
    r_train = r_train.to(device)
    lo, hi = (t.to(device) for t in keep_bounds(specs, d, off, r_train.dtype))
    n = x_train.shape[0]
    bs = recipe.batch_size
    steps_per_epoch = -(-n // bs)
    stack = StackedMLP.build(arch, arch_params, shape, num_classes, [s.seed for s in specs], device)
    params = stack.params
    grads = [torch.empty_like(p) for p in params]
    bufs = [torch.empty_like(p) for p in params]
    scratch = [torch.empty_like(p) for p in params]
    cd = torch.bfloat16 if recipe.uses_autocast(device) else torch.float32
    step = 0
    loss_sum = torch.zeros(len(specs), device=device)
    correct = torch.zeros(len(specs), dtype=torch.long, device=device)
    for epoch in range(recipe.epochs):
        orders = torch.stack([_order(n, s.seed, epoch) for s in specs]).to(device)
        loss_sum.zero_()
        correct.zero_()
        for start in range(0, n, bs):
            idx = orders[:, start:start + bs]
            xb = _masked_batch(x_train, r_train, idx, lo, hi)
            yb = y_train.index_select(0, idx.reshape(-1)).view(idx.shape)
            acts: list[torch.Tensor] = []
            logits = stack.forward(xb, cd, acts)
            losses, g = _cross_entropy(logits, yb, recipe.label_smoothing)
            correct += (logits.argmax(2) == yb).sum(1)
            stack.backward(g, acts, grads, cd)
            _sgd_step(params, grads, bufs, scratch, recipe, recipe.lr_at(step, steps_per_epoch), step == 0)
            loss_sum += losses * idx.shape[1]
            step += 1
    train_loss = [v / n for v in loss_sum.tolist()]
    train_acc = [c / n for c in correct.tolist()]
    accuracy = evaluate_stacked(stack, test, specs, device, test_batch_size, cd)
    out = []
    for i in range(real):
        rec = {"accuracy": accuracy[i], "train_acc": train_acc[i], "loss": train_loss[i]}
        if return_models:
            rec["state_dict"] = stack.state_dict(i)
        out.append(rec)
    return out


@torch.no_grad()
def evaluate_stacked(stack: StackedMLP, test: tuple[np.ndarray, np.ndarray, np.ndarray], specs: Sequence[Spec],
                     device: torch.device, batch_size: int = 512,
                     compute_dtype: torch.dtype = torch.float32) -> list[float]:
    """Top-1 accuracy of each stacked model on the test split masked by its own spec (in order)."""
    x = torch.from_numpy(model_input(test[0])).to(device)
    y = torch.from_numpy(np.asarray(test[1]).astype(np.int64)).to(device)
    r, off = resident_ranks(test[2])
    r = r.to(device)
    lo, hi = (t.to(device) for t in keep_bounds(specs, x.shape[1], off, r.dtype))
    m = len(specs)
    correct = torch.zeros(m, dtype=torch.long, device=device)
    for start in range(0, x.shape[0], batch_size):
        idx = torch.arange(start, min(start + batch_size, x.shape[0]), device=device).expand(m, -1)
        xb = _masked_batch(x, r, idx, lo, hi)
        logits = stack.forward(xb, compute_dtype)
        correct += (logits.argmax(2) == y[idx[0]]).sum(1)
    return [int(c) / max(1, x.shape[0]) for c in correct.tolist()]
