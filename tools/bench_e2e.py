"""End to end: `fastroar run` on the default config (blockdigits, fresh workdir, interpreter start and
imports included) against tools/plain_pipeline.py, the same study in plain PyTorch, timed in the same run.

Also each stage's wall time (`fastroar run --verbose`; the run overlaps train, precompute and retrain
as one "pipeline"), the stacked retrain's achieved GFLOP/s (`fastroar retrain` alone on the finished
workdir) against torch.mm of the retrain's layer products at the stack's size (M x B rows) timed in this run, and the
compute-limit estimate: the study's matmul FLOPs divided by this machine's large-product torch.mm speed.
Runs alternate (fastroar, plain, fastroar, ...) and the best of each is kept; the matmul speeds are
timed before and after every run and the best kept (machines here are shared: on a loaded machine the
compute-limit estimate is the optimistic one, and the GFLOP/s ratios compare different moments).

FLOPs: tools/study_flops.py counts them from the default config (every distinct retraining, the base
models' training with PGD, the attributions) on its own model; the stack-size torch.mm row uses the MLP's
layer products (mlp2 width 256 on 16x8 inputs).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import torch
from bench import Row, best_time
from study_flops import study_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "blockdigits.yaml")
D, WIDTH, CLASSES = 128, 256, 10
P = D * WIDTH + WIDTH * WIDTH + WIDTH * CLASSES
STACK, BATCH = 16, 64


def default_study_flops() -> dict[str, float]:
    import yaml

    from fastroar.datasets import build_dataset

    with open(CONFIG) as f:
        cfg = yaml.safe_load(f)
    ds = build_dataset(cfg["dataset"]["name"], **cfg["dataset"].get("params", {}))
    return study_flops(cfg, tuple(ds.shape), ds.num_classes, len(ds.train.labels), len(ds.test.labels))


def mm_gflops(size: int = 2048) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size ** 3 / best_time(lambda: torch.mm(a, b), repeat=3, min_time=0.3) / 1e9


def mm_same_size_gflops() -> float:
    """torch.mm over the retrain's products at the stack's size: forward, weight and input gradients of the
    three layers with M*B = 1024 rows, as single large products."""
    rows = STACK * BATCH
    dims = [(D, WIDTH), (WIDTH, WIDTH), (WIDTH, CLASSES)]
    xs = [torch.randn(rows, i) for i, _ in dims]
    ws = [torch.randn(i, o) for i, o in dims]
    gs = [torch.randn(rows, o) for _, o in dims]

    def step():
        for x, w, g in zip(xs, ws, gs):
            torch.mm(x, w)
            torch.mm(x.t(), g)
        for w, g in list(zip(ws, gs))[1:]:
            torch.mm(g, w.t())

    flops = rows * (6 * P - 2 * D * WIDTH)
    return flops / best_time(step, repeat=3, min_time=0.3) / 1e9


def run_fastroar() -> tuple[float, dict[str, float], tuple[float, int, float] | None]:
    """(wall seconds, stage wall times, retrain alone) of `fastroar run` in a fresh workdir. The run overlaps
    train, precompute and retrain, so the retrain has no wall of its own there: `fastroar retrain` on the
    finished workdir, its results removed, gives it (wall, threads, compute thread-seconds)."""
    wd = tempfile.mkdtemp(prefix="fastroar-e2e-")
    try:
        t0 = time.perf_counter()
        out = _fastroar("run", wd)
        wall = time.perf_counter() - t0
        shutil.rmtree(os.path.join(wd, "results"))
        alone = _fastroar("retrain", wd)
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    stages = {m[1]: float(m[2]) for m in re.finditer(r"(\w+) ([\d.]+)s", _line(out, "[run] stage wall times"))}
    m = re.search(r"jobs in ([\d.]+)s on (\d+) threads?: compute ([\d.]+)s, outside compute", alone)
    return wall, stages, (float(m[1]), int(m[2]), float(m[3])) if m else None


def _fastroar(command: str, workdir: str) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "fastroar.cli", command, "--workdir", workdir, "--no-progress",
                          "--verbose"], env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"fastroar {command} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def run_plain() -> float:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "plain_pipeline.py")], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"plain pipeline failed:\n{out.stdout}\n{out.stderr}")
    return time.perf_counter() - t0


def _line(text: str, prefix: str) -> str:
    return next((line for line in text.splitlines() if line.startswith(prefix)), "")


def rows(quick: bool) -> list[Row]:
    reps = 1 if quick else 2
    flops = default_study_flops()
    fast, plain, mm, same = [], [], [], []
    for _ in range(reps):   # interleaved: the two pipelines and the matmul speeds see the same load
        for run, into in ((run_fastroar, fast), (run_plain, plain)):
            mm.append(mm_gflops())
            same.append(mm_same_size_gflops())
            into.append(run())
    mm.append(mm_gflops())
    same.append(mm_same_size_gflops())
    wall, stages, compute = min(fast, key=lambda r: r[0])
    plain_wall, mm_speed, same_speed = min(plain), max(mm), max(same)
    limit = flops["total"] / (mm_speed * 1e9)
    section = "e2e blockdigits (default config)"
    out = [
        Row(section, "plain PyTorch pipeline", plain_wall, "s", "plain PyTorch pipeline", 1.0,
            "Dataset masking in __getitem__, DataLoader, one model at a time"),
        Row(section, "fastroar run", wall, "s", "plain PyTorch pipeline", plain_wall / wall,
            f"target >= 5x; best of {reps}, imports and interpreter start included"),
        Row(section, "compute-limit estimate", limit, "s", "fastroar run", wall / limit,
            f"{flops['total'] / 1e12:.2f} TFLOP / {mm_speed:.0f} GFLOP/s (torch.mm 2048^2); ratio = run / "
            f"estimate, target <= 3x; useful-compute share {limit / wall:.0%}"),
    ]
    for name, sec in stages.items():
        out.append(Row(section, f"stage {name}", sec, "s", "fastroar run", sec / wall, "share of the run's wall time"))
    if compute:
        retrain_wall, threads, seconds = compute
        speed = flops["retrain"] / retrain_wall / 1e9
        out.append(Row("retrain GEMM speed", "stacked retrain (`fastroar retrain` wall)", speed, "GFLOP/s",
                       "torch.mm same size", speed / same_speed,
                       f"{flops['retrain'] / 1e12:.2f} TFLOP in {retrain_wall:.1f}s on {threads} thread(s); "
                       "target >= 0.5x"))
        speed = flops["retrain"] / seconds / 1e9
        out.append(Row("retrain GEMM speed", "stacked retrain per thread (train+eval only)", speed, "GFLOP/s",
                       "torch.mm same size", speed / same_speed,
                       f"{seconds:.1f} thread-seconds in training and evaluation, on {threads} thread(s)"))
    out.append(Row("retrain GEMM speed", "torch.mm same size", same_speed, "GFLOP/s", "torch.mm same size", 1.0,
                   f"the retrain's products with {STACK}x{BATCH} rows; torch.mm 2048^2: {mm_speed:.0f} GFLOP/s"))
    return out
