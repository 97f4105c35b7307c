"""Base image shards: a split's images and labels written once as an FFCV ``.beton`` file.

Each file holds two fields, ``image`` (an ``NDArrayField`` of the images' (C, H, W) shape, uint8 or
float32) and ``label`` (an ``IntField``). Beside it, ``<path>.json`` records the sample count, shape,
dtype, file size and SHA-256, so that a truncated or corrupted file is caught before training on it.
Writes are atomic: the file is built as ``<path>.tmp`` and renamed into place only once complete.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from typing import Any, Iterator

import numpy as np

from fastroar.errors import FastroarError

IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
_MIN_PAGE, _DEFAULT_PAGE = 1 << 21, 1 << 23  # FFCV's smallest page (2 MiB) and its default (8 MiB)


class BetonError(FastroarError, ValueError):
    """A .beton file is missing its sidecar, truncated or corrupted."""


def _fix(path: str) -> str:
    return f"delete it (and {path}.json) and rerun `fastroar prepare`"


def _sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Samples:
    """The indexable dataset FFCV's writer reads: sample i -> (image i, label i)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.images[i], int(self.labels[i])


@contextlib.contextmanager
def _writer_progress(enabled: bool) -> Iterator[None]:
    """FFCV's writer always draws a tqdm bar; silence it when progress is off."""
    import ffcv.writer

    original = ffcv.writer.tqdm
    if not enabled:
        ffcv.writer.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        ffcv.writer.tqdm = original


def _page_size(sample_bytes: int, n: int) -> int:
    """FFCV's default page for real datasets, smaller ones for tiny files; always room for 2 samples."""
    page = _MIN_PAGE
    while page < _DEFAULT_PAGE and page < sample_bytes * n // 4:
        page *= 2
    while page < 2 * sample_bytes:
        page *= 2
    return page


def write_beton(path: str, images: np.ndarray, labels: np.ndarray, *, progress: bool = True,
                num_workers: int | None = None) -> dict[str, Any]:
    """Writes (N, C, H, W) images (uint8 or float32) and (N,) integer labels to an FFCV .beton at `path`.

    Returns the metadata {n, shape, dtype, size_bytes, sha256}, also written to ``path + '.json'``.
    """
    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    path = os.fspath(path)
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    if images.dtype not in IMAGE_DTYPES:
        raise ValueError(f"images must be uint8 or float32, got {images.dtype}")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be ({images.shape[0]},) integers, got {labels.dtype} {labels.shape}")
    if images.shape[0] == 0:
        raise ValueError("cannot write an empty dataset")
    images = np.ascontiguousarray(images)
    labels = labels.astype(np.int64)
    shape = tuple(int(s) for s in images.shape[1:])
    sample_bytes = int(images[0].nbytes)

    tmp = path + ".tmp"
    for stale in (tmp, path + ".json.tmp"):
        if os.path.exists(stale):
            os.remove(stale)
    workers = num_workers or max(1, min(os.cpu_count() or 1, 8, (len(labels) + 999) // 1000))
    writer = DatasetWriter(tmp, {"image": NDArrayField(dtype=images.dtype, shape=shape), "label": IntField()},
                           page_size=_page_size(sample_bytes, len(labels)), num_workers=workers)
    try:
        with _writer_progress(progress):
            writer.from_indexed_dataset(_Samples(images, labels), chunksize=max(1, min(1000, len(labels) // workers)))
        meta = {"n": int(len(labels)), "shape": list(shape), "dtype": images.dtype.name,
                "size_bytes": os.path.getsize(tmp), "sha256": _sha256(tmp)}
        with open(path + ".json.tmp", "w") as f:
            json.dump(meta, f, indent=2)
        # The data first, then its sidecar: a kill in between leaves a pair that fails verify_beton.
        os.replace(tmp, path)
        os.replace(path + ".json.tmp", path + ".json")
    except BaseException:
        for stale in (tmp, path + ".json.tmp"):
            if os.path.exists(stale):
                os.remove(stale)
        raise
    return meta


def beton_meta(path: str) -> dict[str, Any]:
    """The sidecar metadata of a .beton ({n, shape, dtype, size_bytes, sha256}); BetonError when absent."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BetonError(f"{path} does not exist; rerun `fastroar prepare`")
    try:
        with open(path + ".json") as f:
            meta = json.load(f)
        return {key: meta[key] for key in ("n", "shape", "dtype", "size_bytes", "sha256")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BetonError(f"{path}: its integrity record {path}.json is missing or unreadable ({e}); "
                         f"{_fix(path)}") from e


def verify_beton(path: str, *, checksum: bool = True) -> dict[str, Any]:
    """Checks a .beton against its sidecar (size, and SHA-256 unless checksum=False); returns the metadata.

    Raises BetonError naming the file and the fix when it is missing, truncated or corrupted.
    """
    path = os.fspath(path)
    meta = beton_meta(path)
    size = os.path.getsize(path)
    if size != meta["size_bytes"]:
        raise BetonError(f"{path} is {size:,} bytes, expected {meta['size_bytes']:,} (truncated or "
                         f"overwritten); {_fix(path)}")
    if checksum and _sha256(path) != meta["sha256"]:
        raise BetonError(f"{path} is corrupted (SHA-256 does not match {path}.json); {_fix(path)}")
    return meta


def read_beton(path: str, *, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """All (images (N, C, H, W) in the stored dtype, labels (N,) int64) of a .beton, in file order."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    from fastroar.loaders.masked import beton_layout, ffcv_operations

    path = os.fspath(path)
    n, shape, dtype = beton_layout(path)
    StoredBytes, _ = ffcv_operations()
    loader = Loader(path, batch_size=batch_size, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    os_cache=True, pipelines={"image": [StoredBytes(), ToTensor()], "label": [IntDecoder(), ToTensor()]})
    images = np.empty((n, *shape), dtype=dtype)
    flat = images.reshape(n, -1).view(np.uint8)
    labels = np.empty(n, dtype=np.int64)
    at = 0
    for x, y in loader:  # buffers are reused by the loader: copy each batch out
        b = x.shape[0]
        flat[at:at + b] = x.numpy()
        labels[at:at + b] = y.numpy().reshape(-1)
        at += b
    if at != n:
        raise BetonError(f"{path}: read {at} of {n} samples; {_fix(path)}")
    return images, labels
