"""Readers of the paper's datasets in their native files: CIFAR-10 Python pickles, SVHN .mat, MNIST and
Fashion-MNIST idx (unpacked, or still the downloaded .gz, read in memory: nothing is written).

Reading the files here, not through torchvision's dataset classes, lets every failure name its real cause
in one line: the missing file (and what was found where), the file whose MD5 is not the official one
(expected and found), a structure that is not the format's, or no network for --download. torchvision's
tables of the official files' MD5s are the checksum reference; ``verify_checksums=False`` accepts faithful
copies whose bytes differ (re-pickled, re-saved .mat) after checking their structure, with a warning naming
those files. Images come out as uint8 (N, C, H, W) and labels as int64, in the files' order: what
torchvision gives.

idx files (MNIST, Fashion-MNIST) are found in torchvision's layout (``MNIST/raw/``, ``FashionMNIST/raw/``),
in Debian's ``dataset-fashion-mnist`` layout (flat ``.gz`` files in ``/usr/share/datasets/fashion-mnist``:
pass that folder, or its parent, as --data-root) or flat in --data-root; each under the dash name
(``train-images-idx3-ubyte``) or the original release's dot name (``train-images.idx3-ubyte``), plain or
``.gz``. They are verified by the MD5 of their decompressed bytes (:data:`IDX_MD5`), so a faithful
re-compressed copy (Debian's) passes while a copy whose content differs fails, naming the file.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import io
import pickle
import socket
import struct
import sys
import urllib.error
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fastroar.errors import ConfigError, MissingInputError

# name -> expected layout under --data-root (for messages)
LAYOUTS = {
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or the downloaded .gz files)",
    "fashion-mnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (or the downloaded .gz files, "
                     "or fashion-mnist/*.gz as Debian's dataset-fashion-mnist installs them)",
    "cifar10": "cifar-10-batches-py/{data_batch_1..5,test_batch}",
    "svhn": "{train,test}_32x32.mat",
}
ACCEPT_COPIES = "--set dataset.params.verify_checksums=false"
SPLITS = ("train", "test")
IDX_DATASETS = ("mnist", "fashion-mnist")

# MD5 of each official idx file's decompressed bytes, by its dash name. MNIST: the upstream release's
# (what torchvision's .gz archives decompress to); Fashion-MNIST: zalandoresearch's release, to which
# Debian's re-compressed dataset-fashion-mnist files decompress byte for byte. The checksum reference of
# idx files whatever their compression; torchvision's .gz MD5s are accepted as well.
IDX_MD5: dict[str, dict[str, str]] = {
    "mnist": {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
              "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
              "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
              "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"},
    "fashion-mnist": {"train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                      "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
                      "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
                      "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965"},
}
# Where a distribution's package installs a dataset, as a folder under --data-root (Debian: the folder's
# parent is /usr/share/datasets), and the full path, for messages.
PACKAGE_DIRS = {"fashion-mnist": "fashion-mnist"}
INSTALLED = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}


class Layout:
    """Where a dataset's files are, split by split, and the official files' MD5s (from torchvision).

    dir is torchvision's folder (where --download writes); dirs are the folders searched, in order.
    """

    def __init__(self, name: str, root: Path) -> None:
        import torchvision.datasets as tvd

        self.name, self.root = name, root
        self.md5: dict[str, str] = {}
        if name == "cifar10":
            self.dir = root / tvd.CIFAR10.base_folder
            self.files = {"train": [f for f, _ in tvd.CIFAR10.train_list],
                          "test": [f for f, _ in tvd.CIFAR10.test_list]}
            self.md5 = dict(tvd.CIFAR10.train_list + tvd.CIFAR10.test_list)
        elif name == "svhn":
            self.dir = root
            self.files = {s: [tvd.SVHN.split_list[s][1]] for s in SPLITS}
            self.md5 = {tvd.SVHN.split_list[s][1]: tvd.SVHN.split_list[s][2] for s in SPLITS}
        else:  # mnist, fashion-mnist: torchvision publishes MD5s of the .gz archives only
            cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
            self.dir = root / cls.__name__ / "raw"
            self.files = {s: [f"{p}-{kind}-ubyte" for kind in ("images-idx3", "labels-idx1")]
                          for s, p in (("train", "train"), ("test", "t10k"))}
            self.md5 = {Path(url).name: md5 for url, md5 in cls.resources}
        self.dirs = [self.dir]
        if name in IDX_DATASETS:
            package = [root / PACKAGE_DIRS[name]] if name in PACKAGE_DIRS else []
            self.dirs += [d for d in (*package, root) if d not in self.dirs]

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path != self.root else "."

    def names(self, file: str) -> list[str]:
        """The names `file` may have on disk: itself, else (idx files) the dot form and either's .gz."""
        if self.name not in IDX_DATASETS:
            return [file]
        dot = file.replace("-idx", ".idx")
        return [file, f"{file}.gz", dot, f"{dot}.gz"]

    def find(self, file: str) -> Path | None:
        """The file on disk, searched in each of dirs under each of its names; None when it is not there."""
        for d in self.dirs:
            for candidate in self.names(file):
                if (d / candidate).is_file():
                    return d / candidate
        return None

    def found(self) -> str:
        """What idx-like files the searched folders hold, for a message about missing files."""
        seen = []
        for d in self.dirs:
            files = sorted(p.name for p in d.iterdir() if p.is_file() and ("idx" in p.name or "ubyte" in p.name)) \
                if d.is_dir() else []
            if files:
                seen.append(f"{self.rel(d)}/: {', '.join(files)}")
        where = ", ".join(f"{self.rel(d)}/" for d in self.dirs)
        return f"found {'; '.join(seen)}" if seen else f"found no idx files in {where}"

    def missing(self) -> list[str]:
        return [f for s in SPLITS for f in self.files[s] if self.find(f) is None]


def _md5(path: Path, decompress: bool = False) -> str:
    """MD5 of the file's bytes, or (decompress) of its gzip content."""
    h = hashlib.md5(usedforsecurity=False)
    with (gzip.open(path, "rb") if decompress else open(path, "rb")) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def idx_mismatch(path: Path, expected: str | None, archive_md5: str | None = None) -> tuple[str, str, str] | None:
    """None when idx file `path` holds the official bytes, else (expected, found, note) for a message.

    expected: the MD5 of the official decompressed bytes (None: nothing to check against); archive_md5:
    the official .gz file's own MD5, accepted for a .gz as it is. A .gz passes when either matches, so a
    faithful re-compressed copy passes; its mismatch names the .gz's own MD5 with the decompressed one in
    the note. A file that does not decompress is left to the reader, whose message names the damage.
    """
    if expected is None and archive_md5 is None:
        return None
    if path.suffix != ".gz":
        found = _md5(path)
        return None if expected is None or found == expected else (expected, found, "")
    found = _md5(path)
    if found == archive_md5:
        return None
    try:
        content = _md5(path, decompress=True)
    except (OSError, EOFError):  # gzip.BadGzipFile is an OSError: read_idx names it
        return None
    if content == expected:
        return None
    return (archive_md5 or expected, found,
            f"its decompressed bytes' MD5 is {content}, the official's {expected}" if expected else "")


def _bad(path: Path, what: str, why: str) -> MissingInputError:
    return MissingInputError(f"{path} is not {what}: {why}; replace it with the official file")


def _describe(x: Any) -> str:
    return f"{x.dtype} array of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__


def _as_uint8(x: Any, path: Path, what: str, name: str) -> np.ndarray:
    """Pixels as uint8: uint8 as is, other numeric types only when every value is an integer in 0..255."""
    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return x
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iuf" or (
            x.size and (x.min() < 0 or x.max() > 255 or (x.dtype.kind == "f" and (x != np.round(x)).any()))):
        raise _bad(path, what, f"{name!r} is a {_describe(x)}, expected uint8 pixels")
    return x.astype(np.uint8)


def _labels(y: Any, n: int, low: int, high: int, path: Path, what: str, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.size != n or y.dtype.kind not in "iuf" or (y.size and (y.dtype.kind == "f" and (y != np.round(y)).any())):
        raise _bad(path, what, f"{name!r} holds {y.size} values of type {y.dtype}, expected {n} integer labels")
    y = y.reshape(-1).astype(np.int64)
    if y.size and (y.min() < low or y.max() > high):
        raise _bad(path, what, f"{name!r} holds labels {y.min()}..{y.max()}, expected {low}..{high}")
    return y


# ---- the three formats ----

def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch pickle (Python 2 or 3, str or bytes keys): data (N, 3072) uint8 rows of R, G, B
    planes, labels in 0..9 -> (N, 3, 32, 32) uint8, (N,) int64."""
    what = "a CIFAR-10 batch (a pickled dict with 'data' (N, 3072) uint8 and 'labels')"
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ...
        raise _bad(path, what, f"it does not unpickle ({type(e).__name__}: {e})") from None
    if not isinstance(entry, dict):
        raise _bad(path, what, f"it holds a {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    if "data" not in entry or "labels" not in entry:
        raise _bad(path, what, f"its keys are {sorted(map(str, entry))}")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _bad(path, what, f"'data' is a {_describe(data)}")
    data = _as_uint8(data, path, what, "data")
    labels = _labels(entry["labels"], len(data), 0, 9, path, what, "labels")
    return data.reshape(-1, 3, 32, 32), labels


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN {train,test}_32x32.mat: X (32, 32, 3, N), y (N, 1) in 1..10 (10 is the digit 0)
    -> (N, 3, 32, 32) uint8, (N,) int64 with 10 -> 0."""
    from scipy.io import loadmat

    what = "an SVHN .mat file (X (32, 32, 3, N) uint8, y (N, 1) in 1..10)"
    try:
        mat = loadmat(str(path))
    except NotImplementedError:  # scipy reads MATLAB v4 to v7.2
        raise _bad(path, what, "it is a MATLAB v7.3 (HDF5) file; re-save it in MATLAB with -v7") from None
    except Exception as e:
        raise _bad(path, what, f"it does not load as .mat ({type(e).__name__}: {e})") from None
    if "X" not in mat or "y" not in mat:
        raise _bad(path, what, f"its variables are {sorted(k for k in mat if not k.startswith('__'))}")
    X = mat["X"]
    if not isinstance(X, np.ndarray) or X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise _bad(path, what, f"'X' is a {_describe(X)}")
    X = _as_uint8(X, path, what, "X")
    y = _labels(mat["y"], X.shape[3], 0, 10, path, what, "y")
    y[y == 10] = 0
    return np.ascontiguousarray(X.transpose(3, 2, 0, 1)), y


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (MNIST's format), plain or gzip-compressed, as a uint8 array."""
    what = "an idx file of unsigned bytes"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise _bad(path, what, f"it does not read ({type(e).__name__}: {e})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise _bad(path, what, f"its header is {raw[:4].hex()}, expected 000008 then the number of dimensions")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim]) if len(raw) >= 4 + 4 * ndim else None
    body = raw[4 + 4 * ndim:]
    if dims is None or len(body) != int(np.prod(dims)):
        raise _bad(path, what, f"it holds {len(body)} bytes of data, its header announces {dims}")
    return np.frombuffer(body, np.uint8).reshape(dims).copy()


def read_mnist_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise _bad(images_path, "MNIST images", f"its shape is {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1 or len(labels) != len(images) or (labels.size and labels.max() > 9):
        raise _bad(labels_path, "MNIST labels", f"it holds {labels.shape} labels up to {labels.max(initial=0)}, "
                                                f"expected {len(images)} labels in 0..9")
    return images[:, None], labels.astype(np.int64)


# ---- --download ----

NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, socket.gaierror, http.client.HTTPException)


def _fetch_one(layout: Layout, filename: str, fetch: Callable[[], None], targets: list[Path]) -> None:
    """Runs `fetch` (torchvision's download helpers) quietly; any failure -> one line naming the file and
    the cause, leaving no partial file or empty folder behind."""
    chain = [p for p in (layout.dir, *layout.dir.parents) if p == layout.root or layout.root in p.parents]
    created = [p for p in chain if not p.exists()]  # deepest first
    before = {p for p in targets if p.exists()}
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet):
            fetch()
    except BaseException as e:
        for p in targets:
            if p not in before:
                p.unlink(missing_ok=True)
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        place = f"place the files under {layout.root} as {LAYOUTS[layout.name]}"
        if isinstance(e, urllib.error.HTTPError):
            raise MissingInputError(f"could not download {filename}: the server answered {e.code} {e.reason}; "
                                    f"{place}") from None
        if isinstance(e, NETWORK_ERRORS):
            reason = getattr(e, "reason", None) or e
            raise MissingInputError(f"could not download {filename}: no network ({reason}); {place}") from None
        if isinstance(e, OSError):
            raise MissingInputError(f"could not download {filename} into {layout.dir}: "
                                    f"{e.strerror or e} ({e.filename})") from None
        if isinstance(e, RuntimeError):  # torchvision: the downloaded file failed its MD5 check
            raise MissingInputError(f"could not download {filename}: the downloaded file is not the official "
                                    f"one (its MD5 differs); {place}") from None
        raise
    sys.stdout.write(quiet.getvalue())


def download(layout: Layout, missing: list[str]) -> None:
    """Fetches the official files that are missing (only those: a file already there is never replaced)."""
    import tarfile

    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    if layout.name == "cifar10":
        cls = tvd.CIFAR10
        archive = layout.root / cls.filename
        _fetch_one(layout, cls.filename, lambda: download_url(cls.url, str(layout.root), cls.filename, cls.tgz_md5),
                   [archive])
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if Path(m.name).name in missing
                       and Path(m.name).parent.name == cls.base_folder]
            tar.extractall(layout.root, members=members, filter="data")
    elif layout.name == "svhn":
        for split in SPLITS:
            url, filename, md5 = tvd.SVHN.split_list[split]
            if filename in missing:
                _fetch_one(layout, filename, lambda: download_url(url, str(layout.root), filename, md5),
                           [layout.root / filename])
    else:
        cls = tvd.MNIST if layout.name == "mnist" else tvd.FashionMNIST
        for url, md5 in cls.resources:
            gz = Path(url).name
            if gz[:-len(".gz")] not in missing:
                continue
            urls = [f"{m}{gz}" for m in cls.mirrors] if hasattr(cls, "mirrors") else [url]

            def fetch(urls=urls, gz=gz, md5=md5) -> None:
                for i, u in enumerate(urls):
                    try:
                        return download_and_extract_archive(u, str(layout.dir), filename=gz, md5=md5)
                    except urllib.error.URLError:
                        if i == len(urls) - 1:
                            raise

            _fetch_one(layout, gz, fetch, [layout.dir / gz, layout.dir / gz[:-len(".gz")]])


# ---- one dataset, both splits ----

def _asked(name: str, asked: str | None) -> str:
    """How messages name the data: the dataset the user asked for, and what it is built from."""
    return name if not asked or asked == name else f"{name} (for {asked})"


def read_dataset(name: str, root: str | None, download_missing: bool = False, verify_checksums: bool = True,
                 asked: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images uint8 (N, C, H, W), labels int64)} for train and test of dataset `name`.

    asked: the dataset the user asked for when it is built from `name` (blockmnist from mnist): messages
    name it. idx files are checked against :data:`IDX_MD5` (tests replace the table).
    """
    if not isinstance(verify_checksums, bool):
        raise ConfigError(f"dataset.params.verify_checksums is true or false, not {verify_checksums!r}")
    if not root:
        built = f" is built from {name} read from disk" if asked and asked != name else " is read from disk"
        installed = INSTALLED.get(name)
        hint = f"; {installed} holds it" if installed is not None and installed.is_dir() else ""
        raise ConfigError(f"dataset {asked or name!r}{built}: pass --data-root DIR holding {LAYOUTS[name]}"
                          f"{hint} (add --download to fetch it)")
    root_path = Path(root).expanduser()
    if not root_path.is_dir() and not download_missing:
        raise MissingInputError(f"--data-root {root} does not exist (expected {LAYOUTS[name]} inside it for "
                                f"{asked or name}; add --download to fetch the dataset)")
    layout = Layout(name, root_path)
    missing = layout.missing()
    if missing and download_missing:
        download(layout, missing)
        missing = layout.missing()
    if missing:
        where = layout.rel(layout.dir) + "/" if layout.dir != root_path else ""
        present = len(missing) < sum(len(f) for f in layout.files.values())
        found = f"; {layout.found()}" if name in IDX_DATASETS else ""
        raise MissingInputError(
            f"{_asked(name, asked)} under {root} lacks {', '.join(where + f for f in missing)} "
            f"(expected {LAYOUTS[name]}{found}); "
            + ("copy the missing file(s) there" if present else "put the dataset there")
            + " or add --download to fetch what is missing")

    paths = {s: [layout.find(f) for f in layout.files[s]] for s in SPLITS}
    differ = []  # (path, expected, found, note) for files that have an official MD5 and do not match it
    for split in SPLITS:
        for file, path in zip(layout.files[split], paths[split]):
            if name in IDX_DATASETS:
                bad = idx_mismatch(path, IDX_MD5.get(name, {}).get(file), layout.md5.get(f"{file}.gz"))
                if bad is not None:
                    differ.append((path, *bad))
            elif layout.md5.get(path.name) is not None:
                found = _md5(path)
                if found != layout.md5[path.name]:
                    differ.append((path, layout.md5[path.name], found, ""))
    if differ and verify_checksums:
        path, expected, found, note = differ[0]
        also = f"also not the official bytes: {', '.join(p.name for p, *_ in differ[1:])}" if differ[1:] else ""
        more = f" ({'; '.join(n for n in (note, also) if n)})" if note or also else ""
        raise MissingInputError(
            f"checksum mismatch: {path} has MD5 {found}, the official {name} file's is {expected}{more}; "
            f"for a faithful copy written by another tool, add {ACCEPT_COPIES} (its structure is still checked), "
            "else replace it with the official file")

    out = {}
    for split in SPLITS:
        if name == "cifar10":
            parts = [read_cifar_batch(p) for p in paths[split]]
            out[split] = (np.concatenate([d for d, _ in parts]), np.concatenate([y for _, y in parts]))
        elif name == "svhn":
            out[split] = read_svhn_mat(paths[split][0])
        else:
            out[split] = read_mnist_split(*paths[split])
    if differ:
        print(f"Warning: {name}: checksums not verified (verify_checksums=false): "
              f"{', '.join(layout.rel(p) for p, *_ in differ)} differ from the official files; "
              "read after checking their structure", file=sys.stderr)
    return out
