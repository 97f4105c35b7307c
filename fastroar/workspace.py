"""Where each stage reads and writes inside --workdir, and the small file helpers they share.

    <workdir>/config.yaml                     the resolved config of the last run
    <workdir>/data/<dataset-key>/             {train,test}.beton (+ .json sidecars), signal_<split>.npy, meta.json
    <workdir>/models/<name>/                  model.pt (weights, config, hash), model.json (summary)
    <workdir>/masks.zarr                      rank maps and masks (fastroar.store)
    <workdir>/results/results.jsonl           one record per retraining job
    <workdir>/report/                         diffroar.csv, localization.csv, diffroar.png
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from fastroar.config import digest
from fastroar.errors import BusyError, FastroarError, MissingInputError

SPLITS = ("train", "test")


class Workdir:
    def __init__(self, root: str | Path, create: bool = False, store: str | None = None) -> None:
        self.root = Path(root)
        self.store = store  # rank store elsewhere: a path or fsspec URL (e.g. s3://bucket/study.zarr)
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = self.root / ".write-test"
                probe.write_text("")
                probe.unlink()
            except OSError as e:
                raise FastroarError(f"cannot write to workdir {self.root}: {e.strerror}; "
                                    "choose a writable --workdir") from e
        elif not self.root.is_dir():
            raise MissingInputError(f"workdir {self.root} does not exist; run `fastroar prepare --workdir "
                                    f"{self.root}` (or `fastroar run`) first")

    def data_dir(self, dataset_key: str) -> Path:
        return self.root / "data" / dataset_key

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    @property
    def store_path(self) -> Path | str:
        """<workdir>/masks.zarr, or the config's `store` (a path or an fsspec URL a cluster shares)."""
        return self.store or self.root / "masks.zarr"

    @property
    def results_path(self) -> Path:
        return self.root / "results" / "results.jsonl"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"


# Parameters that say how to obtain data, not what the data are: they do not enter the key.
NON_IDENTITY_PARAMS = ("download", "verify_checksums")


def dataset_key(cfg: dict[str, Any]) -> str:
    """Names the prepared data by content: dataset name + hash of its parameters."""
    ds = cfg["dataset"]
    params = {k: v for k, v in ds.get("params", {}).items() if k not in NON_IDENTITY_PARAMS}
    return f"{ds['name']}-{digest({'name': ds['name'], 'params': params})}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FastroarError("device 'cuda' asked for, but torch sees no CUDA device; use --device cpu")
    return torch.device(name)


@contextlib.contextmanager
def stage_lock(workdir: Workdir, stage: str):
    """Holds an exclusive lock on <workdir>/.<stage>.lock while the stage runs.

    Two processes running the same stage on one workdir would both start the same missing chunks or
    jobs; the second is refused instead. The OS drops the lock when its holder dies (even by SIGKILL),
    so a killed run never leaves a stale lock behind. The file stays empty, so it never changes.
    """
    path = workdir.root / f".{stage}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BusyError(f"another `fastroar {stage}` is running on {workdir.root} (it holds {path}); wait "
                        "for it to finish, then rerun this command: it picks up whatever is left") from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def locked(stage: str):
    """Decorator for a stage function ``fn(cfg, workdir, ...)``: runs it under stage_lock(workdir, stage)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(cfg, workdir, *args, **kwargs):
            with stage_lock(workdir, stage):
                return fn(cfg, workdir, *args, **kwargs)

        return wrapper

    return decorate


def atomic_write_text(path: Path, text: str) -> None:
    """Writes a file so that readers see the old content or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: Path, saver=torch.save) -> None:
    """torch.save (or `saver(obj, file)`) through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            saver(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
