"""The BlockMNIST CPU profile's whole study on real MNIST (configs/blockmnist-cpu.yaml): `fastroar run` wall
time, its ratio to the compute-limit estimate (tools/study_flops.py's FLOPs over this run's torch.mm 2048^2
speed; goal <= 1.5x) and to tools/plain_pipeline.py on the same data and settings (goal >= 5x), in one run.

Runs only when real MNIST is at --data-root (bench.py's option; ROOT/MNIST/raw as torchvision lays it out,
e.g. from Debian's or PyPI's packaged copies); otherwise its one row says "skipped: no data". The full study
takes hours on a 2-core CPU (see docs/benchmarks.md); --quick runs a reduced study on the same data (an MLP,
one epoch, one level and seed) that exercises the same path in minutes.

Peak memory is the largest resident set of the child processes (getrusage RUSAGE_CHILDREN).
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from bench import Row
from bench_e2e import mm_gflops
from plain_pipeline import load_study
from study_flops import study_flops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "blockmnist-cpu.yaml")
SECTION = "e2e BlockMNIST CPU profile (real MNIST)"
QUICK = ["model.arch=mlp2", "model.params={width: 64}", "train.epochs=1", "retrain.epochs=1", "retrain.seeds=1",
         "levels=[0.1]", "models=[{name: standard}, {name: robust, adversary: {norm: l2, eps: 1.0, steps: 1}}]"]


def data_root() -> str | None:
    """The --data-root given to bench.py, if it holds MNIST's raw files."""
    root = os.environ.get("FASTROAR_BENCH_DATA_ROOT")
    if root and os.path.isdir(os.path.join(root, "MNIST", "raw")) and os.listdir(os.path.join(root, "MNIST", "raw")):
        return root
    return None


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def run_fastroar(root: str, overrides: list[str]) -> float:
    wd = tempfile.mkdtemp(prefix="fastroar-realdata-")
    try:
        sets = [a for o in overrides for a in ("--set", o)]
        return _timed([sys.executable, "-m", "fastroar.cli", "run", "--config", CONFIG, "--data-root", root,
                       "--workdir", wd, "--no-progress", *sets])
    finally:
        shutil.rmtree(wd, ignore_errors=True)


def run_plain(root: str, overrides: list[str]) -> float:
    sets = [a for o in overrides for a in ("--set", o)]
    return _timed([sys.executable, os.path.join(ROOT, "tools", "plain_pipeline.py"), "--config", CONFIG,
                   "--data-root", root, *sets])


def study(root: str, overrides: list[str]) -> dict[str, float]:
    """The study's FLOPs: the config with the overrides applied as plain_pipeline applies them."""
    from fastroar.datasets import build_dataset

    cfg = load_study(CONFIG, root, overrides)
    ds = build_dataset(cfg["dataset"]["name"], **cfg["dataset"].get("params", {}))
    return study_flops(cfg, tuple(ds.shape), ds.num_classes, len(ds.train.labels), len(ds.test.labels))


def rows(quick: bool) -> list[Row]:
    root = data_root()
    if root is None:
        return [Row(SECTION, "skipped: no data", float("nan"), "", "-", float("nan"),
                    "pass --data-root ROOT with real MNIST at ROOT/MNIST/raw")]
    overrides = QUICK if quick else []
    flops = study(root, overrides)
    speeds = [mm_gflops()]
    wall = run_fastroar(root, overrides)
    speeds.append(mm_gflops())
    plain = run_plain(root, overrides)
    speeds.append(mm_gflops())
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    limit = flops["total"] / (max(speeds) * 1e9)
    what = "quick: reduced study" if quick else "configs/blockmnist-cpu.yaml"
    return [
        Row(SECTION, "plain PyTorch pipeline", plain, "s", "plain PyTorch pipeline", 1.0,
            f"{what}; every attribution's retrainings per model"),
        Row(SECTION, "fastroar run", wall, "s", "plain PyTorch pipeline", plain / wall,
            f"goal >= 5x; {flops['distinct_retrainings']:.0f} distinct retrainings; peak RSS {peak_gib:.1f} GiB"),
        Row(SECTION, "compute-limit estimate", limit, "s", "fastroar run", wall / limit,
            f"{flops['total'] / 1e12:.1f} TFLOP / {max(speeds):.0f} GFLOP/s (torch.mm 2048^2); ratio = run / "
            "estimate, goal <= 1.5x"),
    ]
