"""Conv training steps on the CPU in NCHW (the default) against channels_last (recipe cpu_channels_last).

The BlockMNIST CPU profile's model (airbench layout, widths 16/32/32, 1x56x28 inputs, batch 128) trained by
fastroar's own loop (fastroar.training.loop.train_model) on one torch thread, as every retraining and base
model runs: plain training steps, and PGD-training steps with the profile's robust adversary (l2, eps 1.0,
5 steps). GFLOP/s count the matrix-product FLOPs of tools/study_flops.py (a training step, plus a forward
and input gradient per PGD step) over the wall time; torch.mm 2048^2 on the same one thread is the
context row. Each channels_last row is compared with its NCHW row measured in the same run.

Synthetic inputs: uniform in [0, 1) with about half the pixels zeroed (masked-looking data); the kernels
are dense, so the values do not change the work done.
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Row  # noqa: E402
from bench_e2e import mm_gflops  # noqa: E402
from study_flops import per_sample_flops  # noqa: E402

ARCH, PARAMS, SHAPE, CLASSES, BATCH = "airbench", {"widths": [16, 32, 32], "bn_eps": 1e-5}, (1, 56, 28), 10, 128


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.rand(BATCH, *SHAPE, generator=g)
        x *= torch.rand(BATCH, *SHAPE, generator=g) < 0.5
        out.append((x, torch.randint(0, CLASSES, (BATCH,), generator=g)))
    return out


def _seconds_per_step(batches, channels_last: bool, adversary) -> float:
    """Best of 2 epochs over `batches` (the first also warms oneDNN's primitive cache), per step."""
    from fastroar.models import build_model
    from fastroar.training.loop import train_model
    from fastroar.training.settings import Recipe

    torch.manual_seed(0)
    model = build_model(ARCH, SHAPE, CLASSES, **PARAMS)
    recipe = Recipe(epochs=1, batch_size=BATCH, lr=0.1, cpu_channels_last=channels_last)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        train_model(model, batches, recipe, adversary=adversary, bounds=(0.0, 1.0), progress=False,
                    generator=torch.Generator().manual_seed(1))
        best = min(best, (time.perf_counter() - t0) / len(batches))
    return best


def rows(quick: bool) -> list[Row]:
    import fastroar  # noqa: F401  (pins the CPU kernels as every fastroar process runs them)
    from fastroar.training.settings import Adversary

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        per = per_sample_flops(ARCH, PARAMS, SHAPE, CLASSES)
        out: list[Row] = []
        for label, adversary, steps in (("training step", None, 0),
                                        ("PGD-training step (l2, 5 steps)", Adversary(norm="l2", eps=1.0, steps=5), 5)):
            batches = _batches(8 if quick else (30 if adversary is None else 10))
            flops = BATCH * (per["train"] + steps * per["input_grad"])
            section = f"{label} airbench 16/32/32 1x56x28 batch {BATCH}, one thread"
            nchw = flops / _seconds_per_step(batches, False, adversary) / 1e9
            cl = flops / _seconds_per_step(batches, True, adversary) / 1e9
            out += [Row(section, "NCHW (default)", nchw, "GFLOP/s", "NCHW (default)", 1.0, "fastroar's train_model"),
                    Row(section, "channels_last (cpu_channels_last)", cl, "GFLOP/s", "NCHW (default)", cl / nchw,
                        "same loop, model and batches in channels_last")]
        mm = mm_gflops()   # on the one thread set above
        out.append(Row(out[0].section, "torch.mm 2048^2", mm, "GFLOP/s", "NCHW (default)", mm / out[0].throughput,
                       "the compute limit's kernel, one thread"))
        return out
    finally:
        torch.set_num_threads(threads)
