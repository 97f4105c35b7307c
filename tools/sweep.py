#!/usr/bin/env python
"""Measured sweeps: a dataset of the real size in its native format, then every stage of fastroar on it, timed.

    python tools/bench.py --sweep cifar10 [--arch airbench] [--recipe airbench] [--seeds 5]
    python tools/bench.py --sweep imagenet10 [--arch resnet18]
    python tools/sweep.py cifar10 --size-fraction 0.01 --generate-only --root DIR   # a small copy

Generated data (labels a model can learn: each class has its own colour and stripe orientation, under
pixel noise):

- cifar10: 50,000 + 10,000 images 32x32x3 in the ``cifar-10-batches-py`` pickle layout (data_batch_1..5,
  test_batch, batches.meta; dicts with b"data" (N, 3072) uint8 R, G, B planes and b"labels");
- imagenet10: 13,000 + 500 JPEGs at 112 px in ``train/<wnid>/`` and ``val/<wnid>/`` folders of the 60
  ImageNet-1k wnids of ``fastroar/datasets/data/imagenet10.json`` (label = superclass).

The bytes differ from the official files, so every stage runs with
``--set dataset.params.verify_checksums=false``. The stages (prepare, train, precompute, retrain, report)
run one after another as ``python -m fastroar.cli <stage>`` subprocesses in one workdir; the wall time of
each and of the whole is printed, as a Markdown table. Meant for the GPU machine: at full size this is
far too slow for a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"cifar10": (50_000, 10_000), "imagenet10": (13_000, 500)}
STAGES = ("prepare", "train", "precompute", "retrain", "report")
CLASSES = 10


def class_images(labels: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """(N, side, side, 3) uint8: class c has its own mean colour and stripe orientation/frequency, plus noise."""
    n = len(labels)
    hues = np.array([[230, 40, 40], [40, 200, 40], [40, 40, 230], [220, 220, 40], [220, 40, 220],
                     [40, 220, 220], [250, 140, 30], [130, 60, 200], [120, 120, 120], [200, 170, 140]], np.float32)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    out = np.empty((n, side, side, 3), np.uint8)
    for start in range(0, n, 1000):
        lab = labels[start:start + 1000]
        angle = (lab * np.pi / CLASSES)[:, None, None]
        freq = (2 + lab % 4)[:, None, None] * np.pi * 2
        phase = rng.random((len(lab), 1, 1)) * 2 * np.pi
        stripes = 0.5 + 0.5 * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        img = hues[lab][:, None, None, :] * (0.45 + 0.55 * stripes[..., None])
        img += rng.normal(0, 28, img.shape)
        out[start:start + 1000] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} as CIFAR-10's Python pickles."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    per = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    batches = [(f"data_batch_{i + 1}", n, f"training batch {i + 1} of 5") for i, n in enumerate(per)]
    batches.append(("test_batch", n_test, "testing batch 1 of 1"))
    for name, n, label in batches:
        labels = rng.integers(0, CLASSES, n)
        images = class_images(labels, 32, rng)
        entry = {b"batch_label": label.encode(), b"labels": [int(v) for v in labels],
                 b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(n, 3072),
                 b"filenames": [f"synthetic_{name}_{i}.png".encode() for i in range(n)]}
        with open(d / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [s.encode() for s in names], b"num_cases_per_batch": 10000, b"num_vis": 3072},
                    f, protocol=2)
    return root


def write_imagenet10(root: Path, n_train: int, n_test: int, side: int = 112, seed: int = 0) -> Path:
    """root/{train,val}/<wnid>/<wnid>_<i>.JPEG, class c's images spread over superclass c's 6 wnids."""
    from PIL import Image

    mapping = json.loads((Path(__file__).resolve().parents[1] / "fastroar" / "datasets" / "data"
                          / "imagenet10.json").read_text())["superclasses"]
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_test)):
        labels = np.arange(n) % CLASSES
        counters: dict[str, int] = {}
        for start in range(0, n, 1000):
            lab = labels[start:start + 1000]
            images = class_images(lab, side, rng)
            for j, (c, img) in enumerate(zip(lab, images)):
                members = mapping[int(c)]["members"]
                wnid = members[((start + j) // CLASSES) % len(members)]["wnid"]
                folder = root / split / wnid
                folder.mkdir(parents=True, exist_ok=True)
                i = counters[wnid] = counters.get(wnid, 0) + 1
                Image.fromarray(img).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return root


def generate(dataset: str, root: Path, fraction: float = 1.0, seed: int = 0) -> Path:
    least = CLASSES if dataset == "cifar10" else 6 * CLASSES   # imagenet10: an image in each of its 60 wnid folders
    n_train, n_test = (max(least, int(round(n * fraction))) for n in SIZES[dataset])
    if dataset == "cifar10":
        return write_cifar10(root, n_train, n_test, seed)
    return write_imagenet10(root, n_train, n_test, seed=seed)


def stage_command(stage: str, dataset: str, root: Path, workdir: Path, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "fastroar.cli", stage, "-d", dataset, "--data-root", str(root),
           "--workdir", str(workdir), "--set", "dataset.params.verify_checksums=false"]
    if args.arch:
        cmd += ["--set", f"model.arch={args.arch}"]
    if args.device:
        cmd += ["--device", args.device]
    if stage == "retrain":
        cmd += ["--recipe", args.recipe, "--seeds", str(args.seeds)]
    for kv in args.set or []:
        cmd += ["--set", kv]
    return cmd


def run_sweep(args: argparse.Namespace) -> int:
    base = Path(args.root or tempfile.mkdtemp(prefix=f"sweep-{args.dataset}-"))
    data_root, workdir = base / "data", base / "workdir"
    times: list[tuple[str, float]] = []
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    generate(args.dataset, data_root, args.size_fraction, args.seed)
    times.append(("generate data (not part of a run)", time.perf_counter() - t0))
    print(f"[sweep] {args.dataset} written under {data_root} in {times[-1][1]:.1f}s", file=sys.stderr)
    if args.generate_only:
        return 0
    t_run = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    for stage in STAGES:
        cmd = stage_command(stage, args.dataset, data_root, workdir, args)
        print(f"[sweep] {' '.join(cmd)}", file=sys.stderr)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, env=env)
        times.append((stage, time.perf_counter() - t0))
        if rc:
            print(f"[sweep] {stage} failed (exit {rc})", file=sys.stderr)
            return rc
    times.append(("run (prepare .. report)", time.perf_counter() - t_run))
    times.append(("all", time.perf_counter() - t_all))
    print(f"| {args.dataset} sweep ({args.arch or 'config arch'}, recipe {args.recipe}, seeds {args.seeds}) | wall s |")
    print("|---|---|")
    for name, s in times:
        print(f"| {name} | {s:.1f} |")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(SIZES))
    ap.add_argument("--root", help="where data/ and workdir/ go (default: a new temporary directory)")
    ap.add_argument("--size-fraction", type=float, default=1.0, help="fraction of the real split sizes (tests)")
    ap.add_argument("--generate-only", action="store_true", help="write the dataset and stop")
    ap.add_argument("--arch", default=None, help="model.arch for base and retrain models (e.g. airbench, resnet18)")
    ap.add_argument("--recipe", default="fast", choices=["paper", "fast", "airbench"])
    ap.add_argument("--seeds", type=int, default=5, help="runs per (level, direction) (the paper: 5)")
    ap.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    ap.add_argument("--set", action="append", help="extra config override KEY=VALUE (repeatable)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not 0 < args.size_fraction <= 1:
        raise SystemExit("--size-fraction must lie in (0, 1]")
    return run_sweep(args)


if __name__ == "__main__":
    sys.exit(main())
