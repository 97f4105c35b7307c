"""The prepare stage: a dataset's splits written once as FFCV .beton files, plus signal locations.

Completion marker: meta.json is written last; a data dir with meta.json and .beton files that pass
their size/checksum check is complete and skipped on the next run.
"""
from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastroar.datasets import build_dataset
from fastroar.errors import MissingInputError
from fastroar.workspace import SPLITS, Workdir, atomic_save, atomic_write_text, dataset_key


IN_MEMORY_BYTES = 1 << 30  # Prepared.arrays: larger splits are memory-mapped, not read into memory


@dataclass
class Prepared:
    """A prepared dataset on disk: paths and the metadata the later stages need."""

    dir: Path
    meta: dict[str, Any]

    def beton(self, split: str) -> Path:
        return self.dir / f"{split}.beton"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def d(self) -> int:
        return int(np.prod(self.shape))

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def bounds(self) -> tuple[float, float] | None:
        b = self.meta["bounds"]
        return None if b is None else (float(b[0]), float(b[1]))

    def size(self, split: str) -> int:
        return int(self.meta["sizes"][split])

    def signal(self, split: str) -> np.ndarray | None:
        """(N, d) bool signal-block masks, or None when the dataset has none."""
        path = self.dir / f"signal_{split}.npy"
        return np.load(path) if path.exists() else None

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """All (images, labels) of a split, read back through FFCV (cached per process).

        A split whose images exceed IN_MEMORY_BYTES (ImageNet-scale) comes as a memory-mapped view
        (fastroar.loaders.beton.MappedImages: slicing reads just those samples) instead of a copy in memory.
        """
        path = self.beton(split)
        if self.size(split) * self.d * np.dtype(self.meta.get("dtype", "uint8")).itemsize > IN_MEMORY_BYTES:
            from fastroar.loaders.beton import map_beton

            return map_beton(str(path))
        return _read_split(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_split(path: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    from fastroar.loaders import read_beton

    images, labels = read_beton(path)
    images.setflags(write=False)  # shared by every caller in this process
    labels.setflags(write=False)
    return images, labels


def _np_save(arr: np.ndarray, f: io.BufferedWriter) -> None:
    np.save(f, arr)


def prepare(cfg: dict[str, Any], workdir: Workdir, progress: bool = True) -> tuple[Prepared, bool]:
    """Builds and writes the config's dataset unless already complete. Returns (prepared, did_work)."""
    from fastroar.loaders import verify_beton, write_beton

    out = workdir.data_dir(dataset_key(cfg))
    if (out / "meta.json").exists():
        prepared = Prepared(out, json.loads((out / "meta.json").read_text()))
        for split in SPLITS:
            verify_beton(str(prepared.beton(split)))
        return prepared, False
    ds = build_dataset(cfg["dataset"]["name"], **cfg["dataset"]["params"])
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        data = getattr(ds, split)
        write_beton(str(out / f"{split}.beton"), data.images, data.labels, progress=progress)
        if data.signal is not None:
            atomic_save(data.signal, out / f"signal_{split}.npy", saver=_np_save)
    meta = {
        "name": ds.name, "params": ds.params, "key": out.name, "shape": list(ds.shape),
        "dtype": str(ds.train.images.dtype), "num_classes": ds.num_classes,
        "bounds": None if ds.bounds is None else list(ds.bounds),
        "sizes": {split: len(getattr(ds, split)) for split in SPLITS},
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2))
    return Prepared(out, meta), True


def load_prepared(cfg: dict[str, Any], workdir: Workdir) -> Prepared:
    """The prepared data of the config's dataset; a clear error when `prepare` has not run."""
    out = workdir.data_dir(dataset_key(cfg))
    if not (out / "meta.json").exists():
        raise MissingInputError(f"dataset {cfg['dataset']['name']!r} is not prepared in {workdir.root}; "
                                f"run `fastroar prepare --workdir {workdir.root}` first")
    prepared = Prepared(out, json.loads((out / "meta.json").read_text()))
    for split in SPLITS:
        path = prepared.beton(split)
        stat = path.stat() if path.exists() else None
        _verified(str(path), stat and stat.st_size, stat and stat.st_mtime_ns)
    return prepared


@functools.lru_cache(maxsize=16)
def _verified(path: str, size: int | None, mtime_ns: int | None) -> None:
    """Size and SHA-256 of a .beton against its sidecar, once per (path, size, mtime) in a process:
    every stage refuses data that was truncated or damaged after `prepare` wrote it."""
    from fastroar.loaders import verify_beton

    verify_beton(path)
