"""Many models, one data pass: M MLPs of one retrain sweep trained together on the device.

The jobs of a sweep differ only in their mask (k, direction) and seed. ``train_stacked`` stacks M
models of one MLP architecture (``torch.func.stack_module_state``) and trains them with batched
matmuls: each step gathers one batch of base images per model (its own seeded shuffle order), masks
it by that model's level and direction against the resident rank maps (on the CPU one fused
gather-and-compare pass, on CUDA a gather and one comparison), runs forward and backward for all M
models as batched GEMMs and updates each layer right after its gradients are computed. Each model
sees exactly what it would see alone:

- its initialisation: ``torch.manual_seed(seed)`` then ``build_model`` (as ``run_job`` does);
- its batches: the permutation ``ResidentLoader`` draws for (seed, epoch), same batch size, same tail;
- its mask: keep rank < n (top) or rank >= d - n (bottom), n = floor(k d + 1/2);
- its schedule: the recipe's SGD (Nesterov momentum, weight decay, per-step learning rate), label
  smoothing, and on CUDA the recipe's bf16 matmuls.

The optimizer update is element-wise with one rounding per operation (no fused multiply-add), and
stacks of one model are padded to two (a batched matmul of batch 1 takes another kernel): a model's
result is then bitwise the same whatever else is in its stack, so a resumed sweep that trains the
leftover jobs of a group reproduces the uninterrupted run exactly (on the CPU, checked by
tests/test_batched.py; on CUDA within float tolerance). Against the single-model path (nn.Module,
autograd, torch.optim.SGD) results agree within float rounding, not bit for bit.

With ``sparse_input`` (retrain.sparse_input; CPU, compiled extension) the first layer runs on each row's kept
coordinates only (csrc/sparse_input.cpp): the split holds the inverse rank map, each step lists every row's
kept non-fill coordinates, the forward is a gathered GEMV per row and the weight gradient a GEMV per input
coordinate with the SGD update applied there. Exact in real arithmetic; in float32 it sums in another order,
so a sparse model agrees with the dense one within float rounding. It keeps the stack's other promises bit for
bit: a model's result does not depend on its stack, and the C++ step equals the Python one.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from fastroar.engine import cancel, ticks
from fastroar.engine.loaders.resident import epoch_order, resident_ranks
from fastroar.method import keep_range, model_input_array
from fastroar.models import build_seeded
from fastroar.training.jobs import BATCHABLE_ARCHS, sparse_input_wanted
from fastroar.training.settings import Recipe

PARALLEL_GATHER = 1 << 20     # coordinates per batch from which the CPU gather may run on all cores


@dataclass(frozen=True)
class Spec:
    """What distinguishes one model of a stack: its mask and its seed."""

    k: float
    direction: str
    seed: int
    fill: float = 0.0  # value of its removed coordinates (model-input units)


def batchable(arch: str) -> bool:
    return arch in BATCHABLE_ARCHS


class SparseRows(NamedTuple):
    """A masked batch as each row's kept coordinates (csrc/sparse_input.cpp's sparse_rows): cols (M, B, nmax)
    int32 and vals (M, B, nmax) = x - fill of the first count[m, b] entries, in rank order; fill (M,)."""

    cols: torch.Tensor
    vals: torch.Tensor
    count: torch.Tensor
    fill: torch.Tensor


def model_input(images: np.ndarray) -> np.ndarray:
    """(N, ...) uint8 or float32 images -> (N, d) float32 model input (fastroar.method's conversion)."""
    images = np.asarray(images)
    return model_input_array(images).reshape(images.shape[0], -1)


def keep_bounds(specs: Sequence[Spec], d: int, offset: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Per model inclusive bounds (lo, hi) in the stored rank space: coordinate kept iff lo <= r <= hi."""
    info = torch.iinfo(dtype)
    lo, hi = [], []
    for s in specs:
        start, stop = keep_range(s.k, s.direction, d)
        a, b = (info.max, info.min) if stop == start else (start - offset, stop - 1 - offset)  # n = 0: empty
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
        modules = [build_seeded(seed, arch, tuple(shape), num_classes, **arch_params) for seed in seeds]
        stack = cls(modules)
        stack.params = [p.to(device) for p in stack.params]
        return stack

    def forward(self, x: torch.Tensor | None, compute_dtype: torch.dtype = torch.float32,
                acts: list[torch.Tensor] | None = None, sparse: "SparseRows | None" = None) -> torch.Tensor:
        """x (M, B, d) -> logits (M, B, classes) in float32; each layer's input appended to `acts`. With
        `sparse` (the masked batch as kept coordinates, _Split.sparse_batch) the first layer runs on those
        only (csrc/sparse_input.cpp) and x is not used."""
        h = x
        for i in range(self.layers):
            wt, b = self.params[2 * i], self.params[2 * i + 1]
            if acts is not None:
                acts.append(h)
            if i == 0 and sparse is not None:
                h = torch.ops.fastroar.sparse_first_forward(*sparse, wt, b)
            elif compute_dtype == torch.float32:
                h = torch.baddbmm(b.unsqueeze(1), h, wt)
            else:  # bf16 matmuls (autocast's choice on CUDA), float32 results
                h = torch.bmm(h.to(compute_dtype), wt.to(compute_dtype)).float().add_(b.unsqueeze(1))
            if i < self.layers - 1:
                h = h.clamp_min_(0.0)
        return h

    def backward(self, g: torch.Tensor, acts: list[torch.Tensor], grads: list[torch.Tensor],
                 compute_dtype: torch.dtype = torch.float32, on_layer: Callable[[int], None] | None = None,
                 sparse: "SparseRows | None" = None) -> None:
        """Gradients of the parameters into `grads`, from g = d loss / d logits (M, B, classes).

        on_layer(i) runs once layer i's gradients are final and its weights are no longer needed (the
        optimizer updates the layer there, while its gradients are still in cache). `sparse`: as forward's."""
        cd = compute_dtype
        for i in reversed(range(self.layers)):
            h = acts[i]
            if i == 0 and sparse is not None:
                torch.ops.fastroar.sparse_first_grads(*sparse, g, grads[0], grads[1])
            elif cd == torch.float32:
                torch.bmm(h.transpose(1, 2), g, out=grads[2 * i])
            else:
                grads[2 * i].copy_(torch.bmm(h.transpose(1, 2).to(cd), g.to(cd)))
            if i or sparse is None:
                torch.sum(g, 1, out=grads[2 * i + 1])
            if i:
                g = torch.bmm(g.to(cd), self.params[2 * i].transpose(1, 2).to(cd)).float()
                g = torch.ops.aten.threshold_backward(g, h, 0.0)   # ReLU: h is the previous layer's output
            if on_layer is not None:
                on_layer(i)

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
              scratch: list[torch.Tensor], recipe: Recipe, lr: float, first: bool,
              cpu_sgd: Callable | None = None) -> None:
    """torch.optim.SGD's update (weight decay, Nesterov momentum) in place; one rounding per element op, so
    no element's result depends on where it lies in the stacked tensor (vector body or tail). On the CPU
    `cpu_sgd` is the fused kernel (_cpu_kernels, resolved once per stack by the caller)."""
    if cpu_sgd is not None:
        for p, g, buf in zip(params, grads, bufs):
            cpu_sgd(p, g, buf, lr, recipe.weight_decay, recipe.momentum, first)
        return
    for p, g, buf, tmp in zip(params, grads, bufs, scratch):  # CUDA: element-wise ops, one rounding each
        if recipe.weight_decay:
            g.add_(torch.mul(p, recipe.weight_decay, out=tmp))
        if recipe.momentum:
            if first:
                buf.copy_(g)
            else:
                buf.mul_(recipe.momentum).add_(g)
            g.add_(torch.mul(buf, recipe.momentum, out=tmp))   # nesterov
        p.sub_(torch.mul(g, lr, out=tmp))


def _masked_batch(x: torch.Tensor, ranks: torch.Tensor, idx: torch.Tensor, lo: torch.Tensor,
                  hi: torch.Tensor, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Images idx (M, B) of x (N, d), each row masked by its model's rank bounds: (M, B, d). Removed
    coordinates take `fill`: a scalar, or one value per model (M,)."""
    m, b = idx.shape
    flat = idx.reshape(-1)
    xb = x.index_select(0, flat).view(m, b, -1)
    r = ranks.index_select(0, flat).view(m, b, -1)
    keep = (r >= lo.view(m, 1, 1)) & (r <= hi.view(m, 1, 1))  # the comparison, M ways
    if isinstance(fill, torch.Tensor):
        fill = fill.view(m, 1, 1)
    return torch.where(keep, xb, fill)


def _cpu_kernels() -> tuple[Callable, Callable]:
    """(gather, sgd) of the CPU path: the compiled extension's (no JIT cost; csrc/stacked_mlp.cpp), else
    Numba's. Both are element-wise with one float32 rounding per operation: they give the same bits."""
    from fastroar.engine.kernels.dispatch import extension_op

    gather, sgd = extension_op("gather_masked"), extension_op("sgd_update_")
    if gather is None or sgd is None:
        return _gather_numba, _sgd_numba
    return gather, sgd


def _compiled_step(device: torch.device, compute_dtype: torch.dtype, sparse: bool = False) -> Callable | None:
    """The extension's whole training step (csrc/stacked_mlp.cpp: this module's forward, cross-entropy,
    backward and SGD ops, in the same order, in C++), for float32 stacks on the CPU; None elsewhere or where
    the extension is not built (the step then runs op by op from Python, with the same bits). `sparse`: the
    step whose first layer takes SparseRows."""
    if device.type != "cpu" or compute_dtype != torch.float32:
        return None
    from fastroar.engine.kernels.dispatch import extension_op

    return extension_op("sparse_stacked_step_" if sparse else "stacked_step_")


def sparse_available(device: torch.device | str) -> bool:
    """Whether the sparse first layer can run here: the CPU, with the compiled extension's ops."""
    from fastroar.engine.kernels.dispatch import extension_op

    return torch.device(device).type == "cpu" and extension_op("sparse_stacked_step_") is not None


def uses_sparse_input(setting: Any, arch: str, k: float, d: int, device: torch.device | str,
                      resident: bool) -> bool:
    """retrain.sparse_input resolved for one job: whether its stacked MLP retrain runs the first layer on the
    kept coordinates only. The config's rule on the job's shape (fastroar.training.jobs.sparse_input_wanted),
    and where it runs: only the stacked MLP path on the CPU has it (resident data, compiled extension);
    elsewhere (CUDA, data streamed through FFCV) the layer stays dense. Never a timing: the answer enters the
    job's key, so it is the same every run of a config on a machine."""
    return sparse_input_wanted(setting, arch, k, d) and resident and sparse_available(device)


def _gather_numba(x: torch.Tensor, ranks: torch.Tensor, idx: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                  fill: torch.Tensor, out: torch.Tensor) -> None:
    """out[m, i, j] = x[idx[m, i], j] if lo[m] <= ranks[idx[m, i], j] <= hi[m] else fill[m] (the ext op's)."""
    kernel = _numba_kernels()[0 if out.numel() >= PARALLEL_GATHER and _may_use_threads() else 1]
    kernel(x.numpy(), ranks.numpy(), idx.numpy(), lo.numpy(), hi.numpy(), fill.numpy(), out.numpy())


def _sgd_numba(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, lr: float, weight_decay: float,
               momentum: float, first: bool) -> None:
    """torch.optim.SGD's update of p (and its momentum buf) from g, in place (the ext op's)."""
    f32 = np.float32
    _numba_kernels()[2 if _may_use_threads() else 3](p.view(-1).numpy(), g.view(-1).numpy(), buf.view(-1).numpy(),
                                                     f32(lr), f32(weight_decay), f32(momentum), first)


@functools.lru_cache(maxsize=1)
def _numba_kernels():
    """Numba kernels of the CPU path where the extension is not built (compiled on first use)."""
    from numba import njit, prange

    def gather_masked(x, ranks, idx, lo, hi, fill, out):  # pragma: no cover - compiled
        """out[m, i, j] = x[idx[m, i], j] if lo[m] <= ranks[idx[m, i], j] <= hi[m] else fill[m]."""
        m_count, b_count = idx.shape
        d = x.shape[1]
        for t in prange(m_count * b_count):
            m = t // b_count
            i = t - m * b_count
            row = idx[m, i]
            a = lo[m]
            b = hi[m]
            f = fill[m]
            for j in range(d):
                r = ranks[row, j]
                out[m, i, j] = x[row, j] if (r >= a and r <= b) else f

    gather_parallel = njit(parallel=True, nogil=True, cache=True)(gather_masked)
    gather_serial = njit(nogil=True, cache=True)(gather_masked)

    def sgd(p, g, buf, lr, wd, mom, first):  # pragma: no cover - compiled
        """torch.optim.SGD (weight decay, Nesterov momentum) on flat float32 arrays, one pass, no FMA."""
        for i in prange(p.size):
            gi = g[i]
            if wd != 0:
                gi = gi + wd * p[i]
            if mom != 0:
                bi = gi if first else mom * buf[i] + gi
                buf[i] = bi
                gi = gi + mom * bi
            p[i] = p[i] - lr * gi

    return (gather_parallel, gather_serial, njit(parallel=True, nogil=True, cache=True)(sgd),
            njit(nogil=True, cache=True)(sgd))


def _may_use_threads() -> bool:
    """Whether the CPU kernels may spread over cores: as torch may (the stages pin torch to one thread per
    task, and the local executor runs tasks on several threads, each kernel then serial). Serial and
    parallel kernels give the same bits: they are element-wise."""
    return torch.get_num_threads() > 1


Inputs = Mapping[tuple[float, str], np.ndarray]   # (k, direction) -> (N, d) float32 model input, already masked


class _Split:
    """One split held whole on the device for a stack: images, labels, ranks and each model's keep bounds.

    batch(idx) gives the (M, B, d) masked images of rows idx (M, B): on the CPU one fused pass over the
    caller's rank map (the extension's kernel, or Numba's), elsewhere a gather and one comparison per model
    on the device. With `sparse` (CPU only) the split holds the inverse rank map instead (order[row, r] = the
    coordinate of rank r, as compact as the ranks) and sparse_batch(idx) gives each row's kept coordinates.
    With `inputs` (removed coordinates imputed beforehand, one array per (k, direction) of the specs) the
    split holds those arrays instead and batch() is one gather from them.
    """

    def __init__(self, split: tuple[np.ndarray, np.ndarray, np.ndarray], specs: Sequence[Spec],
                 device: torch.device, sparse: bool = False, inputs: Inputs | None = None) -> None:
        if sparse and inputs is not None:
            raise ValueError("imputed inputs have no constant fill: the sparse first layer does not apply")
        images, labels, ranks = split
        self.device = device
        self.y = torch.from_numpy(np.asarray(labels).astype(np.int64)).to(device)
        self.premasked = inputs is not None
        if self.premasked:
            masks = sorted({(s.k, s.direction) for s in specs})
            self.n, self.d = len(self.y), int(math.prod(images.shape[1:]))
            stacked = np.stack([np.asarray(inputs[m], dtype=np.float32).reshape(self.n, self.d) for m in masks])
            self.x = torch.from_numpy(stacked).to(device).view(len(masks) * self.n, self.d)
            # model m reads rows of its mask's block: block index * n + row
            self.base = torch.tensor([masks.index((s.k, s.direction)) * self.n for s in specs],
                                     dtype=torch.long, device=device).view(-1, 1)
            return
        self.x = torch.from_numpy(model_input(images)).to(device)
        self.n, self.d = self.x.shape
        self.fill = torch.tensor([s.fill for s in specs], dtype=torch.float32).to(device)
        if sparse:
            if device.type != "cpu":
                raise ValueError("the sparse first layer runs on the CPU only")
            self.order = torch.ops.fastroar.invert_ranks(torch.from_numpy(np.ascontiguousarray(ranks)))
            self.lo, self.hi = keep_bounds(specs, self.d, 0, torch.int64)
            self.width = torch.ops.fastroar.rows_width(self.lo, self.hi, self.d)
            self.rows: dict[tuple[int, ...], tuple[torch.Tensor, ...]] = {}
        elif device.type == "cpu":
            self.gather = _cpu_kernels()[0]
            self.ranks = torch.from_numpy(np.ascontiguousarray(ranks))
            self.lo, self.hi = keep_bounds(specs, self.d, 0, torch.int64)
        else:
            self.ranks, off = resident_ranks(np.asarray(ranks), device)
            self.lo, self.hi = (t.to(device) for t in keep_bounds(specs, self.d, off, self.ranks.dtype))

    def sparse_batch(self, idx: torch.Tensor) -> SparseRows:
        """The rows of idx (M, B) as kept coordinates, in buffers reused by the next call of that shape (fresh
        ones cost page faults every step: as much time as building the rows)."""
        bufs = self.rows.get(tuple(idx.shape))
        if bufs is None:
            m, b = idx.shape
            bufs = self.rows[tuple(idx.shape)] = (torch.empty((m, b, self.width), dtype=torch.int32),
                                                  torch.empty((m, b, self.width)),
                                                  torch.empty((m, b), dtype=torch.int32))
        torch.ops.fastroar.sparse_rows_out(self.x, self.order, idx.contiguous(), self.lo, self.hi, self.fill, *bufs)
        return SparseRows(*bufs, self.fill)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        if self.premasked:
            return self.x.index_select(0, (idx + self.base).reshape(-1)).view(*idx.shape, self.d)
        if self.device.type != "cpu":
            return _masked_batch(self.x, self.ranks, idx, self.lo, self.hi, self.fill)
        out = torch.empty((*idx.shape, self.d), dtype=torch.float32)
        self.gather(self.x, self.ranks, idx.contiguous(), self.lo, self.hi, self.fill, out)
        return out


def train_stacked(arch: str, arch_params: dict[str, Any], shape: Sequence[int], num_classes: int,
                  train: tuple[np.ndarray, np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray, np.ndarray],
                  specs: Sequence[Spec], recipe: Recipe, device: torch.device | str = "cpu",
                  test_batch_size: int = 512, return_models: bool = False,
                  timings: dict[str, float] | None = None, sparse_input: bool = False,
                  inputs: tuple[Inputs, Inputs] | None = None) -> list[dict[str, Any]]:
    """Trains one model per spec on (images, labels, ranks) of train, evaluates on test's; per spec a dict
    {accuracy, hits, train_acc, loss} (plus "state_dict" when return_models), in the order of `specs`.
    `timings`, when given, receives the seconds of "setup" (data, models), "train" and "eval".
    `sparse_input`: the first layer, in training and evaluation, on each row's kept coordinates only (CPU,
    compiled extension; see uses_sparse_input): the same model within float rounding, not bit for bit.
    `inputs`, when given, are (train, test) model inputs already masked per (k, direction) (removed
    coordinates imputed, fastroar.stages.imputed): the models read those instead of masking the images."""
    if not batchable(arch):
        raise ValueError(f"train_stacked handles {', '.join(BATCHABLE_ARCHS)}, not {arch!r}")
    if not specs:
        return []
    t0 = time.perf_counter()
    device = torch.device(device)
    real = len(specs)
    specs = list(specs) + ([specs[0]] if real == 1 else [])  # a stack of 1 takes another matmul kernel
    if sparse_input and not sparse_available(device):
        raise ValueError("the sparse first layer needs the CPU and the compiled extension fastroar._C")
    data = _Split(train, specs, device, sparse_input, inputs[0] if inputs else None)
    if data.d != int(math.prod(shape)):
        raise ValueError(f"images have {data.d} coordinates, the model's shape {tuple(shape)} wants {math.prod(shape)}")
    n = data.n
    bs = recipe.batch_size
    steps_per_epoch = -(-n // bs)
    stack = StackedMLP.build(arch, arch_params, shape, num_classes, [s.seed for s in specs], device)
    params = stack.params
    grads = [torch.empty_like(p) for p in params]
    bufs = [torch.empty_like(p) for p in params]
    scratch = [torch.empty_like(p) for p in params] if device.type != "cpu" else []
    cpu_sgd = _cpu_kernels()[1] if device.type == "cpu" else None
    cd = torch.bfloat16 if recipe.uses_autocast(device) else torch.float32
    compiled_step = _compiled_step(device, cd, True) if sparse_input else _compiled_step(device, cd)
    step = 0
    t1 = time.perf_counter()
    loss_sum = torch.zeros(len(specs), device=device)
    correct = torch.zeros(len(specs), dtype=torch.long, device=device)
    for epoch in range(recipe.epochs):
        orders = torch.stack([epoch_order(n, s.seed, epoch) for s in specs]).to(device)
        loss_sum.zero_()
        correct.zero_()
        for start in range(0, n, bs):
            cancel.check()   # between steps: an interrupted run stops here (fastroar.engine.cancel)
            idx = orders[:, start:start + bs]
            rows = data.sparse_batch(idx) if sparse_input else None
            xb = None if sparse_input else data.batch(idx)
            yb = data.y.index_select(0, idx.reshape(-1)).view(idx.shape)
            lr, first = recipe.lr_at(step, steps_per_epoch), step == 0
            if compiled_step is not None:
                batch = tuple(rows) if sparse_input else (xb,)
                losses, hits = compiled_step(params, grads, bufs, *batch, yb, recipe.label_smoothing, lr,
                                             recipe.weight_decay, recipe.momentum, first)
            else:
                acts: list[torch.Tensor] = []
                logits = stack.forward(xb, cd, acts, rows)
                losses, g = _cross_entropy(logits, yb, recipe.label_smoothing)
                hits = (logits.argmax(2) == yb).sum(1)
                stack.backward(g, acts, grads, cd, lambda i: _sgd_step(params[2 * i:2 * i + 2], grads[2 * i:2 * i + 2],
                                                                        bufs[2 * i:2 * i + 2], scratch[2 * i:2 * i + 2],
                                                                        recipe, lr, first, cpu_sgd), rows)
            correct += hits
            loss_sum += losses * idx.shape[1]
            step += 1
        ticks.tick(real / recipe.epochs)   # the caller's bar moves per epoch (fastroar.engine.ticks)
    train_loss = [v / n for v in loss_sum.tolist()]
    train_acc = [c / n for c in correct.tolist()]
    t2 = time.perf_counter()
    hits = evaluate_stacked(stack, test, specs, device, test_batch_size, cd, sparse_input,
                            inputs[1] if inputs else None)
    if timings is not None:
        timings.update(setup=t1 - t0, train=t2 - t1, eval=time.perf_counter() - t2)
    return stack_records(hits[:real], train_acc, train_loss, stack.state_dict if return_models else None)


def stack_records(hits: torch.Tensor, train_acc: Sequence[float], loss: Sequence[float],
                  state_dict: Callable[[int], dict] | None = None) -> list[dict[str, Any]]:
    """One result per model of a stack, in order: test accuracy, per-image test outcomes `hits` ((N,) bool
    array), train accuracy and loss (with its weights when state_dict is given)."""
    n = hits.shape[1]
    correct = hits.sum(1).tolist()
    return [{"accuracy": c / max(1, n), "hits": h, "train_acc": t, "loss": loss_i,
             **({"state_dict": state_dict(i)} if state_dict else {})}
            for i, (c, h, t, loss_i) in enumerate(zip(correct, hits.numpy(), train_acc, loss))]


@torch.no_grad()
def evaluate_stacked(stack: StackedMLP, test: tuple[np.ndarray, np.ndarray, np.ndarray], specs: Sequence[Spec],
                     device: torch.device, batch_size: int = 512,
                     compute_dtype: torch.dtype = torch.float32, sparse_input: bool = False,
                     inputs: Inputs | None = None) -> torch.Tensor:
    """Which test images each stacked model classifies correctly on the test split masked by its own spec (or
    on its mask's premasked `inputs`): (M, N) bool on the CPU, models in order, images in the split's order;
    with sparse_input the first layer on the kept coordinates only (as train_stacked's)."""
    data = _Split(test, specs, device, sparse_input, inputs)
    m = len(specs)
    hits = []
    for start in range(0, data.n, batch_size):
        rows = torch.arange(start, min(start + batch_size, data.n), device=device)
        idx = rows.expand(m, -1).contiguous()
        if sparse_input:
            logits = stack.forward(None, compute_dtype, sparse=data.sparse_batch(idx))
        else:
            logits = stack.forward(data.batch(idx), compute_dtype)
        hits.append(logits.argmax(2) == data.y[rows])
    return torch.cat(hits, 1).cpu() if hits else torch.zeros((m, 0), dtype=torch.bool)
