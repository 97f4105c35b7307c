"""Retraining throughput: M models trained as one stack vs the same M trained one after another.

CPU rows (and one CUDA row when a GPU is present): M = 10 jobs of one sweep (5 levels x top/bottom,
seeds 0..9) on the same synthetic data, as the retrain stage would run them: the single-model path
(ResidentLoader + train_model + evaluate, as run_job trains a job it does not stack) one job after
another, against fastroar.training.batched's stack. Both must agree (the same test accuracy per job)
or the row says by how much. Throughput counts every model's training images: M x epochs x N / s.

Conv rows: the same comparison for M = 4 conv models and fastroar.training.stacked_conv's torch.func
stack (what retrain.stack_conv turns on): a miniature ResNet (torchvision's BasicBlock) at 3x16x16 on
the CPU, and on CUDA also resnet18 at 3x32x32; the section names the device. On the CPU the stack is
about as fast as M models in turn, which is why retrain.stack_conv's auto stacks on CUDA only. These
small conv models stay near chance on this data, so float rounding (grouped convolutions sum in another
order; the thread count alone does too) can flip a few test predictions over more steps: the row gives
the largest accuracy difference then.

GPU row (when CUDA is present): wall time of a CIFAR-10-shaped DiffROAR curve, ResNet18, 5 levels x 2
directions x 5 seeds = 50 trainings on synthetic 32x32x3 data (50k train, 10k test images, random rank
maps), the fast recipe of configs/cifar10.yaml. quick mode (or FASTROAR_BENCH_CURVE_RUNS=n) times n of
the 50 trainings and extrapolates; the row says which.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Row  # noqa: E402

M = 10
CONV_M = 4
LEVELS = [0.05, 0.1, 0.2, 0.3, 0.5]


def _data(n: int, shape: tuple[int, ...], classes: int, seed: int):
    from fastroar.engine.kernels.reference import rank_reference

    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    flat = x.reshape(n, d).astype(np.float32)
    y = np.stack([flat[:, c::classes].mean(1) for c in range(classes)], 1).argmax(1).astype(np.int64)
    return x, y, rank_reference(np.abs(flat - 128) + rng.random((n, d), dtype=np.float32) * 64)


def _specs():
    from fastroar.training.batched import Spec

    return [Spec(LEVELS[i // 2], ("top", "bottom")[i % 2], i) for i in range(M)]


class _TorchLoader:
    """Stand-in for ResidentLoader's torch engine (same order, same masks) where numba is missing."""

    def __init__(self, images, labels, *, batch_size, seed=0, ranks=None, k=None, direction=None,
                 device="cpu", shuffle=True):
        from fastroar.engine.kernels.reference import n_kept

        self.x = torch.from_numpy(images).to(device).float().div_(255.0).contiguous()
        self.y = torch.from_numpy(labels).to(device)
        self.r = torch.from_numpy(ranks.astype(np.int32)).to(device)
        d = self.r.shape[1]
        n = n_kept(k, d)
        self.lo, self.hi = (0, n) if direction == "top" else (d - n, d)
        self.bs, self.seed, self.shuffle, self.epoch, self.n = batch_size, seed, shuffle, 0, len(labels)

    def __len__(self):
        return -(-self.n // self.bs)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = (torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)).to(self.x.device)
        self.epoch += 1
        for start in range(0, self.n, self.bs):
            idx = order[start:start + self.bs]
            r = self.r.index_select(0, idx)
            xb = self.x.index_select(0, idx)
            xb.view(len(idx), -1).masked_fill_((r < self.lo) | (r >= self.hi), 0.0)
            yield xb, self.y.index_select(0, idx)


def _sequential(arch, params, shape, classes, train, test, specs, recipe, device):
    try:
        from fastroar.engine.loaders.resident import ResidentLoader
    except ImportError:  # numba missing (a bare GPU image): the same batches from a torch-only loader
        ResidentLoader = _TorchLoader
    from fastroar.models import build_model
    from fastroar.training.loop import evaluate, train_model

    accs = []
    for s in specs:
        loader = ResidentLoader(train[0], train[1], batch_size=recipe.batch_size, seed=s.seed, ranks=train[2],
                                k=s.k, direction=s.direction, device=device)
        test_loader = ResidentLoader(test[0], test[1], batch_size=512, shuffle=False, ranks=test[2], k=s.k,
                                     direction=s.direction, device=device)
        torch.manual_seed(s.seed)
        model = build_model(arch, shape, classes, **params).to(device)
        train_model(model, loader, recipe, progress=False)
        accs.append(evaluate(model, test_loader, recipe))
    return accs


def tiny_resnet(shape, num_classes, width=16):
    """resnet18 in miniature (a `module:callable` architecture): stem conv + BatchNorm, one basic block,
    one strided basic block, pooled linear head; torchvision's BasicBlock, as resnet18's."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    down = nn.Sequential(nn.Conv2d(width, 2 * width, 1, stride=2, bias=False), nn.BatchNorm2d(2 * width))
    return nn.Sequential(nn.Conv2d(shape[0], width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True), BasicBlock(width, width),
                         BasicBlock(width, 2 * width, stride=2, downsample=down),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


def _compare(case, quick: bool, device: str, trainer=None, m: int = M) -> list[Row]:
    """Rows of one case: m sequential single-model trainings vs one stack of m (trained by `trainer`,
    default the MLP stack), interleaved, best of each."""
    from fastroar.training.batched import train_stacked
    from fastroar.training.settings import Recipe

    trainer = trainer or train_stacked
    name, shape, classes, n, arch, params, batch = case
    train, test = _data(n, shape, classes, 0), _data(500, shape, classes, 1)
    recipe = Recipe(epochs=2 if quick else 4, batch_size=batch, lr=0.05, weight_decay=5e-4)
    specs = _specs()[:m]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    t_seq = t_stk = float("inf")
    for _ in range(2 if quick else 3):  # interleaved, best of each: this machine's load comes and goes
        t0 = time.perf_counter()
        seq = _sequential(arch, params, shape, classes, train, test, specs, recipe, device)
        sync()
        t_seq = min(t_seq, time.perf_counter() - t0)
        t0 = time.perf_counter()
        stacked = trainer(arch, params, shape, classes, train, test, specs, recipe, device)
        sync()
        t_stk = min(t_stk, time.perf_counter() - t0)
    images = m * recipe.epochs * n
    diff = max(abs(r["accuracy"] - a) for r, a in zip(stacked, seq))
    where = "" if device == "cpu" else f" ({torch.cuda.get_device_name()})"
    section = f"retrain {m}x {arch.rpartition(':')[2]} {name} d={int(np.prod(shape))}{where}"
    ctx = f"{recipe.epochs} epochs x {n} img, batch {batch}; " + (
        "accuracies equal" if diff == 0 else f"max |accuracy difference| {diff:.4f}")
    return [Row(section, f"{m} sequential (single-model path)", images / t_seq, "img/s", f"{m} sequential", 1.0,
                f"{t_seq:.2f}s"),
            Row(section, f"{m} stacked, one data pass", images / t_stk, "img/s", f"{m} sequential", t_seq / t_stk,
                f"{t_stk:.2f}s; {ctx}")]


def _mlp_rows(quick: bool) -> list[Row]:
    # (name, shape, classes, n_train, arch, params, batch): the leakage and blockdigits configs' models, and a
    # CIFAR-sized input (d = 3072) where the matmuls (at the cores' FLOP peak), not per-step overhead, dominate.
    cases = [("leakage-shaped", (10,), 2, 2000, "mlp1", {"width": 1000}, 100),
             ("blockdigits-shaped", (1, 16, 8), 10, 1500, "mlp2", {"width": 256}, 64),
             ("cifar-shaped", (3, 32, 32), 10, 2000 if quick else 5000, "mlp2", {"width": 256}, 128)]
    torch.set_num_threads(2)
    rows = [row for case in cases for row in _compare(case, quick, "cpu")]
    if torch.cuda.is_available():
        rows += _compare(("cifar-shaped", (3, 32, 32), 10, 5000, "mlp2", {"width": 256}, 128), quick, "cuda")
    return rows


def _conv_rows(quick: bool) -> list[Row]:
    """M stacked conv models (torch.func vmap) vs M sequential: on the CPU, and on CUDA when present."""
    from fastroar.training.stacked_conv import train_stacked_conv

    # (name, shape, classes, n_train, arch, params, batch); the CPU case's name says where it ran (a CUDA
    # row's section names the GPU)
    tiny = ("16px on {}", (3, 16, 16), 10, 256 if quick else 512, "bench_training:tiny_resnet", {}, 32)
    torch.set_num_threads(2)
    rows = _compare((tiny[0].format("cpu"), *tiny[1:]), quick, "cpu", train_stacked_conv, CONV_M)
    if torch.cuda.is_available():
        cifar = ("cifar-shaped", (3, 32, 32), 10, 2048 if quick else 8192, "resnet18", {}, 256)
        for case in ((tiny[0].format("cuda"), *tiny[1:]), cifar):
            rows += _compare(case, quick, "cuda", train_stacked_conv, CONV_M)
    return rows


def _curve_row(quick: bool) -> list[Row]:
    from fastroar.training.settings import Recipe, fast_recipe

    runs_total = len(LEVELS) * 2 * 5
    runs = int(os.environ.get("FASTROAR_BENCH_CURVE_RUNS", 2 if quick else runs_total))
    device = torch.device("cuda")
    n_train, n_test, shape = 50_000, 10_000, (3, 32, 32)
    rng = np.random.default_rng(0)
    d = int(np.prod(shape))

    def split(n):
        x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        y = rng.integers(0, 10, n).astype(np.int64)
        perm = rng.permutation(d).astype(np.uint16)   # rank maps: shifted copies of one permutation
        ranks = perm[(np.arange(d)[None, :] + rng.integers(0, d, (n, 1))) % d]
        return x, y, ranks

    train, test = split(n_train), split(n_test)
    paper = Recipe(epochs=150, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4)  # configs/cifar10.yaml
    recipe = fast_recipe(paper, n_train=n_train, compile=os.environ.get("FASTROAR_BENCH_COMPILE") == "1")
    from fastroar.training.batched import Spec

    specs = [Spec(k, dr, s) for k in LEVELS for dr in ("top", "bottom") for s in range(5)][:runs]
    torch.backends.cudnn.benchmark = True
    _sequential("resnet18", {}, shape, 10, train, test, specs[:1], Recipe(**{**recipe.to_dict(), "epochs": 1}),
                device)   # warm-up: cuDNN autotuning, allocator, (compile)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    _sequential("resnet18", {}, shape, 10, train, test, specs, recipe, device)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    total = dt * runs_total / runs
    images = runs * recipe.epochs * n_train
    how = "measured" if runs == runs_total else f"extrapolated from {runs} of {runs_total} trainings"
    name = torch.cuda.get_device_name(device)
    return [Row(f"DiffROAR curve resnet18 cifar-shaped ({name})", f"{runs_total} trainings, fast recipe",
                images / dt, "img/s", "target 600 s", 600.0 / total,
                f"{total:.0f} s for the curve ({how}); {recipe.epochs} epochs, batch {recipe.batch_size}, "
                f"bf16+channels_last{', compiled' if recipe.compile else ''}")]


def rows(quick: bool) -> list[Row]:
    out = _mlp_rows(quick) + _conv_rows(quick)
    if torch.cuda.is_available():
        out += _curve_row(quick)
    return out


if __name__ == "__main__":
    from bench import print_table

    quick = "--quick" in sys.argv
    # `python tools/bench_training.py [--quick] conv`: the conv stacking rows alone
    print_table(_conv_rows(quick) if "conv" in sys.argv[1:] else rows(quick))
