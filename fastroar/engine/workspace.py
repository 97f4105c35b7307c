"""Where each stage reads and writes inside --workdir, and the small file helpers they share.

    <workdir>/config.yaml                     the resolved config of the last run
    <workdir>/data/<dataset-key>/             {train,test}.beton (+ .json sidecars), signal_<split>.npy, meta.json
    <workdir>/models/<name>/                  model.pt (weights, config, hash), model.json (summary)
    <workdir>/masks.zarr                      rank maps and masks (fastroar.engine.store)
    <workdir>/results/results.jsonl           one record per retraining job
    <workdir>/results/road.jsonl              one record per ROAD estimate
    <workdir>/report/                         diffroar.csv, localization.csv, diffroar.png
    <workdir>/.fastroar                       the marker: fastroar made this workdir (empty file)

fastroar overwrites those files, so it works only in a directory that is its own: new or empty (it then
writes the marker), marked, or laid out as an older version's workdir (data/<key>/meta.json or
models/<name>/model.json, from before the marker). A directory holding other files (the user's own
config.yaml or report/) is refused before anything is read or written there.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from fastroar.errors import BusyError, FastroarError, MissingInputError

SPLITS = ("train", "test")
MARKER = ".fastroar"


def _bookkeeping(entry: Path) -> bool:
    """A stage's lock file or the marker: what a failed first stage leaves in a workdir it made."""
    return entry.is_file() and entry.name.startswith(".") and (entry.name.endswith(".lock") or entry.name == MARKER)


def is_ours(root: Path) -> bool:
    """Whether directory `root` is a fastroar workdir: marked, or laid out as one of before the marker, or
    holding nothing but fastroar's bookkeeping."""
    if (root / MARKER).is_file():
        return True
    if any(root.glob("data/*/meta.json")) or any(root.glob("models/*/model.json")):
        return True
    return all(_bookkeeping(e) for e in root.iterdir())


def refuse_foreign(root: str | Path) -> None:
    """FastroarError when `root` is a directory that fastroar did not make and that holds files: fastroar
    would read the user's config.yaml as its own and overwrite files of the names it writes."""
    root = Path(root)
    if not root.is_dir() or is_ours(root):
        return
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in root.iterdir() if not _bookkeeping(e))
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    raise FastroarError(f"workdir {root} holds files fastroar did not write ({shown}); fastroar writes "
                        "config.yaml, data/, models/, masks.zarr, results/ and report/ there and would overwrite "
                        f"them: choose a new or empty --workdir (if {root} is a fastroar workdir, mark it: "
                        f"`touch {root / MARKER}`)")


class Workdir:
    def __init__(self, root: str | Path, create: bool = False, store: str | None = None) -> None:
        self.root = Path(root)
        self.store = store  # rank store elsewhere: a path or fsspec URL (e.g. s3://bucket/study.zarr)
        if self.root.exists() and not self.root.is_dir():
            raise FastroarError(f"workdir {self.root} is a file, not a directory; choose another --workdir")
        if self.root.is_symlink() and not self.root.exists():
            raise FastroarError(f"workdir {self.root} is a link to {os.readlink(self.root)}, which does not exist; "
                                "create that directory, or choose another --workdir")
        refuse_foreign(self.root)
        self.created = create and not self.root.exists()  # made by this call (removed again if left empty)
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = self.root / ".write-test"
                probe.write_text("")
                probe.unlink()
                if not any(self.root.iterdir()):  # new or empty: fastroar's from now on
                    (self.root / MARKER).write_text("")
            except OSError as e:
                raise FastroarError(f"cannot write to workdir {self.root}: {e.strerror}; "
                                    "choose a writable --workdir") from e
        elif not self.root.is_dir():
            raise MissingInputError(f"workdir {self.root} does not exist; run `fastroar prepare --workdir "
                                    f"{self.root}` (or `fastroar run`) first")

    def remove_if_unused(self) -> None:
        """Removes the workdir again when this call created it and it holds nothing but lock files and the
        marker (the first stage failed): a failed start leaves no empty workdir behind."""
        if not self.created or not self.root.is_dir():
            return
        entries = list(self.root.iterdir())
        if all(_bookkeeping(e) for e in entries):
            for e in entries:
                e.unlink()
            self.root.rmdir()

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
    def road_path(self) -> Path:
        return self.root / "results" / "road.jsonl"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"


@contextlib.contextmanager
def stage_lock(workdir: Workdir, stage: str):
    """Holds an exclusive lock on <workdir>/.<stage>.lock while the stage runs.

    Two processes running the same stage on one workdir would both start the same missing chunks or
    jobs, or write the same files; the second is refused instead. The OS drops the lock when its holder
    dies (even by SIGKILL), so a killed run never leaves a stale lock behind. The file stays empty, so it
    never changes.
    """
    path = str(workdir.root / f".{stage}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as e:
        if not os.path.exists(path):
            raise
        raise FastroarError(f"cannot open the lock file {path} ({e.strerror}): it belongs to user "
                            f"{_owner(path)}, whose fastroar ran on {workdir.root}; work in a workdir of your own "
                            "(or have that user make this one writable for you)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BusyError(f"another `fastroar {stage}` is running on {workdir.root} (it holds {path}; deleting "
                        "that file does not free it, it only lets a second run repeat the same work); wait "
                        "for it to finish, then rerun this command: it picks up whatever is left") from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _owner(path: str) -> str:
    import pwd

    uid = os.stat(path).st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Writes a file through `write(f)` into a temporary file unique to this call, then renames it into
    place: readers (and concurrent writers) see the old content or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_save(obj: Any, path: Path, saver: Callable[[Any, BinaryIO], None] | None = None) -> None:
    """torch.save (or `saver(obj, file)`) through a temporary file and a rename."""
    if saver is None:
        import torch

        saver = torch.save
    try:
        atomic_write(path, lambda f: saver(obj, f))
    except RuntimeError as e:
        # torch.save's zip writer reports a failed write (a full disk, a quota) as an internal check:
        # "[enforce fail at inline_container.cc:...] unexpected pos ..."
        if "inline_container" not in str(e) and "unexpected pos" not in str(e):
            raise
        raise OSError(errno.EIO, f"torch.save could not write {path.name} (the disk is full, or the file system "
                                 "refused the write)", str(path)) from None


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
