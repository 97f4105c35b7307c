"""Loader throughput: the masked FFCV loader against FFCV unmasked and a torch DataLoader timed in the same run.

Each measured call is one full epoch (random order, batch 256, last partial batch kept) producing float32
model input (B, C, H, W) on the CPU: pixels / 255, zeroed outside the top-30% mask of a rank map.

- ffcv unmasked: fastroar.engine.loaders.make_loader without ranks (the same pipeline minus the mask);
- ffcv masked: make_loader with the (N, d) rank maps as a side array (set_mask packs the level's keep bits;
  its one-off cost per level is given as context);
- torch DataLoader (2 workers, persistent): a Dataset over NumPy memmaps of the images and ranks, each
  sample converted and masked in torch (ranks widened from uint16), default collate;
- resident (numba, cpu): fastroar.engine.loaders.ResidentLoader, the whole split in memory as float32.

Every path's first batch is checked against the NumPy reference before it is timed. Datasets are random
uint8 images with random-permutation rank maps, written to a temporary directory that is removed after.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Row, best_time  # noqa: E402

K, DIRECTION, BATCH, WORKERS = 0.3, "top", 256, 2


class _MaskedArrays(torch.utils.data.Dataset):
    """The plain PyTorch way: one sample at a time from memmapped arrays, converted and masked in torch."""

    def __init__(self, images_path: str, labels: np.ndarray, ranks_path: str, n: int) -> None:
        self.images_path, self.ranks_path, self.labels, self.n = images_path, ranks_path, labels, n
        self.images = self.ranks = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.images is None:  # opened in each worker
            self.images = np.load(self.images_path, mmap_mode="r")
            self.ranks = np.load(self.ranks_path, mmap_mode="r")
        x = torch.from_numpy(np.array(self.images[i])).float().div_(255.0)
        r = torch.from_numpy(self.ranks[i].astype(np.int32))
        x.view(-1).masked_fill_(r >= self.n, 0.0)
        return x, int(self.labels[i])


def _epoch(loader) -> int:
    seen = 0
    for _, y in loader:
        seen += len(y)
    return seen


def _check(loader, images: np.ndarray, ranks: np.ndarray | None, what: str) -> None:
    """The first batch must equal the reference, or the comparison is void."""
    from fastroar.engine.kernels.reference import keep_mask_reference

    x, y = next(iter(loader))
    ids = y.numpy()
    want = (images[ids] / 255).astype(np.float32)
    if ranks is not None:
        want = np.where(keep_mask_reference(ranks[ids], K, DIRECTION).reshape(want.shape), want, np.float32(0))
    if not np.array_equal(x.numpy(), want):
        raise AssertionError(f"bench_loaders: {what} disagrees with the reference")
    for _ in loader:  # finish the epoch (FFCV needs it before the next one)
        pass


def _data(n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from fastroar.engine.kernels.reference import rank_dtype

    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    ranks = rng.permuted(np.broadcast_to(np.arange(d, dtype=rank_dtype(d)), (n, d)), axis=1)
    return images, ranks


def _section(section: str, n: int, shape: tuple[int, ...], tmp: str, repeat: int) -> list[Row]:
    from fastroar.engine.beton import write_beton
    from fastroar.engine.kernels.reference import n_kept
    from fastroar.engine.loaders import ResidentLoader, make_loader

    images, ranks = _data(n, shape)
    d = int(np.prod(shape))
    labels = np.arange(n)
    beton = os.path.join(tmp, f"{section.replace(' ', '_')}.beton")
    write_beton(beton, images, labels, progress=False)
    np.save(os.path.join(tmp, "images.npy"), images)
    np.save(os.path.join(tmp, "ranks.npy"), ranks)

    def time_epoch(loader) -> float:
        return n / best_time(lambda: _epoch(loader), repeat=repeat, min_time=0.3)

    # torch DataLoader first: its workers fork before any FFCV/Numba threads exist in this process.
    ds = _MaskedArrays(os.path.join(tmp, "images.npy"), labels, os.path.join(tmp, "ranks.npy"), n_kept(K, d))
    torch_loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                                               persistent_workers=True, drop_last=False)
    _check(torch_loader, images, ranks, "torch DataLoader")
    tp_torch = time_epoch(torch_loader)
    del torch_loader

    plain = make_loader(beton, batch_size=BATCH, order="random", seed=0, num_workers=WORKERS)
    _check(plain, images, None, "ffcv unmasked")
    tp_plain = time_epoch(plain)
    masked = make_loader(beton, batch_size=BATCH, order="random", seed=0, ranks=ranks, k=K, direction=DIRECTION,
                         num_workers=WORKERS)
    _check(masked, images, ranks, "ffcv masked")
    t0 = time.perf_counter()
    masked.set_mask(K, DIRECTION)
    t_level = time.perf_counter() - t0
    tp_masked = time_epoch(masked)
    del plain, masked

    resident = ResidentLoader(images, labels, batch_size=BATCH, seed=0, ranks=ranks, k=K, direction=DIRECTION)
    _check(resident, images, ranks, "resident")
    tp_resident = time_epoch(resident)

    mb = n * (d + ranks.itemsize * d) / 1e6
    tdl, fu, fm = "torch DataLoader masked (2 workers)", "ffcv unmasked", "ffcv masked"
    return [
        Row(section, tdl, tp_torch, "img/s", tdl, 1.0, f"{mb:,.0f} MB images+ranks (memmap)"),
        Row(section, fu, tp_plain, "img/s", tdl, tp_plain / tp_torch, "same output, no mask"),
        Row(section, fm, tp_masked, "img/s", fu, tp_masked / tp_plain,
            f"{tp_masked / tp_torch:.1f}x torch DataLoader; set_mask (pack level bits) {t_level * 1e3:.0f} ms"),
        Row(section, fm, tp_masked, "img/s", tdl, tp_masked / tp_torch, "target >= 3x"),
        Row(section, "resident masked (numba, cpu)", tp_resident, "img/s", fm, tp_resident / tp_masked,
            "whole split in memory as float32"),
    ]


def rows(quick: bool) -> list[Row]:
    """Loader throughput on 32x32x3 and 224x224x3 uint8 datasets (random order, batch 256, 2 workers)."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(WORKERS)
    tmp = tempfile.mkdtemp(prefix="fastroar-bench-loaders-")
    try:
        small_n, big_n, repeat = (2_000, 300, 2) if quick else (10_000, 2_000, 3)
        out = _section(f"loader 32x32x3 N={small_n}", small_n, (3, 32, 32), tmp, repeat)
        out += _section(f"loader 224x224x3 N={big_n}", big_n, (3, 224, 224), tmp, repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        torch.set_num_threads(torch_threads)
    return out


if __name__ == "__main__":
    from bench import print_table

    print_table(rows("--quick" in sys.argv))
