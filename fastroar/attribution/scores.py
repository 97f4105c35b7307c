"""Precomputed attribution scores: maps computed elsewhere, imported into the rank store under a name.

``scores: {NAME: PATH}`` in the config (``fastroar precompute --scores NAME=PATH``). PATH holds one
score map per image of each prepared split (train and test), in the split's order, each of the images'
shape (C, H, W) or flat (C*H*W,); larger = more important. Accepted layouts:

- a directory with ``train.npy`` and ``test.npy`` (arrays (N, C, H, W) or (N, d));
- an ``.npz`` file with arrays ``train`` and ``test``;
- a Zarr group with arrays ``train`` and ``test``, or a directory with Zarr arrays ``train.zarr``, ``test.zarr``;
- a directory with folders ``train/`` and ``test/`` of per-image ``.npy`` files named by the image's index
  in the split (``0.npy``, ``1.npy``, ... or zero-padded ``00017.npy``).

``scan`` checks count, shape and finiteness against the prepared split and returns a content hash of
the scores (their float32 values, whatever the layout), which the rank store records: changing the
files invalidates the ranks imported from them.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fastroar.errors import ConfigError, UserCodeError

SCAN_ROWS = 4096  # images per block when scores are checked and hashed


class PerImageFolder:
    """A folder of per-image ``<index>.npy`` files as one lazy (N, ...) array."""

    def __init__(self, folder: Path, label: str) -> None:
        files = {}
        for f in folder.glob("*.npy"):
            if not f.stem.isdigit():
                raise UserCodeError(f"{label}: {f} is not named by an image index (expected e.g. 0.npy, 17.npy)")
            files[int(f.stem)] = f
        missing = next((i for i in range(len(files)) if i not in files), None)
        if missing is not None:
            raise UserCodeError(f"{label}: {folder} has {len(files)} files but no {missing}.npy "
                                "(files must be named 0..N-1 by image index)")
        self.files = [files[i] for i in range(len(files))]
        self.label = label
        first = np.load(self.files[0], mmap_mode="r") if self.files else np.zeros(0, np.float32)
        self.shape = (len(self.files), *first.shape)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, rows: slice) -> np.ndarray:
        maps = [np.load(f) for f in self.files[rows]]
        if not maps:
            return np.zeros((0, *self.shape[1:]), np.float32)
        for f, m in zip(self.files[rows], maps):
            if m.shape != self.shape[1:]:
                raise UserCodeError(f"{self.label}: {f} has shape {m.shape}, {self.files[0].name} has "
                                    f"{self.shape[1:]} (every map needs the images' shape)")
        return np.stack(maps)


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))


def open_scores(name: str, path: str | Path, splits: Sequence[str]) -> dict[str, Any]:
    """The score arrays of each split found at `path` (lazy where the format allows)."""
    p = Path(path).expanduser()
    label = f"scores {name!r} ({p})"
    if not p.exists():
        raise ConfigError(f"{label}: no such file or directory")
    found: dict[str, Any] = {}
    try:
        if p.is_file() and p.suffix == ".npz":
            with np.load(p) as z:
                found = {s: z[s] for s in splits if s in z.files}
        elif _is_zarr(p):
            import zarr

            node = zarr.open(str(p), mode="r")
            if isinstance(node, zarr.Array):
                raise ConfigError(f"{label} is one Zarr array; scores need one per split: a group with arrays "
                                  f"{' and '.join(splits)}, or a directory with {splits[0]}.zarr, ...")
            found = {s: node[s] for s in splits if s in node}
        elif p.is_dir():
            import zarr

            for s in splits:
                if (p / f"{s}.npy").is_file():
                    found[s] = np.load(p / f"{s}.npy", mmap_mode="r")
                elif _is_zarr(p / f"{s}.zarr"):
                    found[s] = zarr.open_array(str(p / f"{s}.zarr"), mode="r")
                elif (p / s).is_dir():
                    found[s] = PerImageFolder(p / s, label)
        else:
            raise ConfigError(f"{label}: not a directory, .npz file or Zarr group (see `scores` in the README)")
    except (ValueError, OSError, KeyError) as e:
        raise UserCodeError(f"{label} cannot be read ({type(e).__name__}: {e})") from e
    missing = [s for s in splits if s not in found]
    if missing:
        s = missing[0]
        raise UserCodeError(f"{label} has no {s} split: expected {p}/{s}.npy, {p}/{s}/<index>.npy, a Zarr "
                            f"array {s}, or an .npz key {s}")
    return found


def read_block(array: Any, start: int, stop: int) -> np.ndarray:
    """Rows start:stop as float32 (n, d)."""
    block = np.array(array[start:stop], dtype=np.float32)  # a writable copy (memory maps are read-only)
    return block.reshape(stop - start, -1)


def _signature(path: Path) -> tuple:
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)


def scan(name: str, path: str | Path, sizes: dict[str, int], shape: Sequence[int]) -> str:
    """Checks the scores of every split (count, shape, finite values) against the prepared data and returns
    their content hash (sha256 of the float32 values, split by split); cached per process and file state."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"scores {name!r} ({p}): no such file or directory")
    return _scan(name, str(p), tuple(sizes.items()), tuple(int(s) for s in shape), _signature(p))


@functools.lru_cache(maxsize=32)
def _scan(name: str, path: str, sizes: tuple, shape: tuple, signature: tuple) -> str:
    label = f"scores {name!r} ({path})"
    d = int(np.prod(shape))
    arrays = open_scores(name, path, [s for s, _ in sizes])
    h = hashlib.sha256()
    for split, n in sizes:
        a = arrays[split]
        got = tuple(a.shape)
        if got[0] != n:
            raise UserCodeError(f"{label}: the {split} split has {got[0]} score maps, the prepared {split} split "
                                f"has {n} images (one map per image, in the split's order)")
        if got[1:] != shape and got[1:] != (d,):
            raise UserCodeError(f"{label}: {split} score maps have shape {got[1:]}, the images {shape} "
                                f"(or flat ({d},))")
        if not np.issubdtype(np.dtype(getattr(a, "dtype", np.float32)), np.number):
            raise UserCodeError(f"{label}: {split} scores have dtype {a.dtype}, not a number type")
        h.update(f"{split}:{n}x{d};".encode())
        for start in range(0, n, SCAN_ROWS):
            block = read_block(a, start, min(n, start + SCAN_ROWS))
            bad = ~np.isfinite(block)
            if bad.any():
                first = start + int(np.flatnonzero(bad.any(1))[0])
                raise UserCodeError(f"{label}: {split} score map of image {first} holds NaN or inf; scores must "
                                    "be finite")
            h.update(np.ascontiguousarray(block).tobytes())
    return h.hexdigest()


__all__ = ["open_scores", "read_block", "scan", "PerImageFolder"]
