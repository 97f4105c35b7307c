"""tools/sweep.py's generated datasets are read by fastroar's own readers, in the native layouts, with labels
a model can learn (a nearest-class-mean classifier already separates them)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import sweep  # noqa: E402

from fastroar.datasets.folder import build_imagenet10  # noqa: E402
from fastroar.datasets.native import read_dataset  # noqa: E402


def _nearest_mean_accuracy(xtr, ytr, xte, yte) -> float:
    xtr, xte = xtr.reshape(len(xtr), -1).astype(np.float32), xte.reshape(len(xte), -1).astype(np.float32)
    means = np.stack([xtr[ytr == c].mean(0) for c in range(10)])
    pred = ((xte[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return float((pred == yte).mean())


def test_cifar10_sweep_data_is_read_by_the_cifar_reader(tmp_path):
    assert sweep.SIZES["cifar10"] == (50_000, 10_000)
    sweep.main(["cifar10", "--size-fraction", "0.01", "--generate-only", "--root", str(tmp_path)])
    files = sorted(p.name for p in (tmp_path / "data" / "cifar-10-batches-py").iterdir())
    assert files == ["batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                     "data_batch_5", "test_batch"]
    splits = read_dataset("cifar10", str(tmp_path / "data"), verify_checksums=False)
    (xtr, ytr), (xte, yte) = splits["train"], splits["test"]
    assert xtr.shape == (500, 3, 32, 32) and xte.shape == (100, 3, 32, 32) and xtr.dtype == np.uint8
    assert set(np.unique(ytr)) == set(range(10))
    assert _nearest_mean_accuracy(xtr, ytr, xte, yte) > 0.8


def test_imagenet10_sweep_data_is_read_by_the_folder_reader(tmp_path):
    assert sweep.SIZES["imagenet10"] == (13_000, 500)
    sweep.main(["imagenet10", "--size-fraction", "0.02", "--generate-only", "--root", str(tmp_path)])
    assert len(list((tmp_path / "data" / "train").iterdir())) == 60        # every wnid folder
    first = next((tmp_path / "data" / "train").rglob("*.JPEG"))
    from PIL import Image

    assert Image.open(first).size == (112, 112) and Image.open(first).format == "JPEG"
    ds = build_imagenet10(str(tmp_path / "data"), image_size=112)
    xtr, ytr = np.asarray(ds.train.images), np.asarray(ds.train.labels)
    xte, yte = np.asarray(ds.test.images), np.asarray(ds.test.labels)
    assert xtr.shape == (260, 3, 112, 112) and xte.shape == (60, 3, 112, 112)
    assert _nearest_mean_accuracy(xtr, ytr, xte, yte) > 0.8
