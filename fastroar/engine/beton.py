"""Base image shards: a split's images and labels written once as an FFCV ``.beton`` file.

Each file holds two fields, ``image`` (an ``NDArrayField`` of the images' (C, H, W) shape, uint8 or
float32) and ``label`` (an ``IntField``). Beside it, ``<path>.json`` records the sample count, shape,
dtype, file size and SHA-256, so that a truncated or corrupted file is caught before training on it.
Writes are atomic: the file is built as ``<path>.tmp`` and renamed into place only once complete.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
import functools
import glob
import hashlib
import json
import os
import pickle
from typing import Any, Iterator

import numpy as np

from fastroar.engine.faults import fault_point
from fastroar.errors import BetonError

IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
_MIN_PAGE, _DEFAULT_PAGE = 1 << 21, 1 << 23  # FFCV's smallest page (2 MiB) and its default (8 MiB)


def _fix(path: str) -> str:
    return f"delete it (and {path}.json) and rerun `fastroar prepare`"


def _sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _Samples:
    """The indexable dataset FFCV's writer reads: sample i -> (image i, label i).

    FFCV's writer processes cannot report an exception (its parent would wait forever), so a failing
    sample is written as zeros and its exception pickled to ``<errors>.<pid>``; write_beton raises it
    once the writer is done. After a failure the remaining samples are not loaded.
    """

    def __init__(self, images: Any, labels: np.ndarray, errors: str) -> None:
        self.images, self.labels, self.errors = images, labels, errors
        self.shape, self.dtype = tuple(images.shape[1:]), np.dtype(images.dtype)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        if isinstance(self.images, np.ndarray):
            return self.images[i], int(self.labels[i])
        if not os.path.exists(self.errors):  # the flag: some sample failed
            try:
                image = np.asarray(self.images[i])
                if image.shape != self.shape or image.dtype != self.dtype:
                    raise ValueError(f"sample {i} is {image.dtype} {image.shape}, expected {self.dtype} {self.shape}")
                return image, int(self.labels[i])
            except Exception as e:  # noqa: BLE001 - reported by write_beton
                with open(f"{self.errors}.{os.getpid()}", "ab") as f:
                    pickle.dump((int(i), e), f)
                open(self.errors, "a").close()
        return np.zeros(self.shape, self.dtype), int(self.labels[i])


def _failures(errors: str) -> list[str]:
    """The failure flag and the per-process exception files of a write, where present."""
    folder, name = os.path.split(errors)
    if not os.path.isdir(folder or "."):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder or ".")
                  if f == name or f.startswith(name + "."))


def _first_failure(errors: str) -> BaseException | None:
    """The exception of the lowest failing sample index recorded by _Samples, or None."""
    found = []
    for path in _failures(errors):
        if path == errors:
            os.remove(path)
            continue
        try:
            with open(path, "rb") as f:
                while True:
                    found.append(pickle.load(f))
        except EOFError:
            pass
        except Exception as e:  # noqa: BLE001 - an unpicklable exception still stops the write
            found.append((1 << 62, FastroarError(f"a sample could not be written ({e})")))
        os.remove(path)
    return min(found, key=lambda t: t[0])[1] if found else None


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


def _orphans(path: str) -> list[str]:
    """Temporary files a killed writer of `path` left behind (its process no longer exists)."""
    out = []
    for f in glob.glob(glob.escape(path) + ".*.*"):
        pid = f[len(path) + 1:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            out.append(f)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

    `images` may be an ndarray or a lazy array-like (``shape``, ``dtype``, ``ndim``, ``images[i]``, e.g.
    fastroar.datasets.folder.LazyImages): samples are then loaded one by one in the writer's processes,
    never all at once. An exception loading a sample is raised here (nothing is left at `path`).
    Returns the metadata {n, shape, dtype, size_bytes, sha256}, also written to ``path + '.json'``.
    """
    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    path = os.fspath(path)
    lazy = not isinstance(images, np.ndarray) and all(hasattr(images, a) for a in ("shape", "dtype", "ndim"))
    images = images if lazy else np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    if images.dtype not in IMAGE_DTYPES:
        raise ValueError(f"images must be uint8 or float32, got {images.dtype}")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be ({images.shape[0]},) integers, got {labels.dtype} {labels.shape}")
    if images.shape[0] == 0:
        raise ValueError("cannot write an empty dataset")
    if not lazy:
        images = np.ascontiguousarray(images)
    labels = labels.astype(np.int64)
    shape = tuple(int(s) for s in images.shape[1:])
    sample_bytes = int(np.prod(shape)) * np.dtype(images.dtype).itemsize

    # Names unique to this process: a second writer of the same path (which the prepare lock refuses, but a
    # caller of this function may not hold it) can never write into our file or delete it under us.
    tmp, sidecar_tmp, errors = (f"{path}.{os.getpid()}.{suffix}" for suffix in ("tmp", "json.tmp", "errors"))
    for stale in _orphans(path):
        os.remove(stale)
    workers = num_workers or max(1, min(os.cpu_count() or 1, 8, (len(labels) + 999) // 1000))
    writer = DatasetWriter(tmp, {"image": NDArrayField(dtype=images.dtype, shape=shape), "label": IntField()},
                           page_size=_page_size(sample_bytes, len(labels)), num_workers=workers)
    try:
        with _writer_progress(progress):
            writer.from_indexed_dataset(_Samples(images, labels, errors),
                                        chunksize=max(1, min(1000, len(labels) // workers)))
        failure = _first_failure(errors)
        if failure is not None:
            raise failure
        meta = {"n": int(len(labels)), "shape": list(shape), "dtype": images.dtype.name,
                "size_bytes": os.path.getsize(tmp), "sha256": _sha256(tmp)}
        with open(sidecar_tmp, "w") as f:
            json.dump(meta, f, indent=2)
        fault_point("beton.after_write")
        # The data first, then its sidecar: a kill in between leaves a pair that fails verify_beton.
        os.replace(tmp, path)
        os.replace(sidecar_tmp, path + ".json")
    except BaseException:
        for stale in (tmp, sidecar_tmp, *_failures(errors)):
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


@functools.lru_cache(maxsize=None)
def stored_bytes_decoder() -> type:
    """StoredBytes, the decoder of an image field into its stored bytes, defined on first use (importing
    ffcv takes seconds). The masked loader and read_beton both decode through it."""
    from ffcv.fields.ndarray import NDArrayDecoder
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler

    class StoredBytes(NDArrayDecoder):  # a subclass: FFCV takes a pipeline's decoder by the field's class
        """Decoder of an NDArrayField into (B, nbytes) uint8 rows, the sample's stored bytes.

        Like FFCV's NDArrayDecoder, minus its per-compile ctypes memcpy dispatcher (whose numba
        finalizer raises KeyError when a loader is garbage collected)."""

        def declare_state_and_memory(self, previous_state):
            nbytes = int(np.prod(self.field.shape)) * np.dtype(self.field.dtype).itemsize
            return (replace(previous_state, jit_mode=True, shape=(nbytes,), dtype=np.dtype(np.uint8)),
                    AllocationQuery((nbytes,), np.dtype(np.uint8)))

        def generate_code(self):
            my_range = Compiler.get_iterator()
            mem_read = self.memory_read

            def decode_bytes(indices, destination, metadata, storage_state):  # pragma: no cover - jitted
                for ix in my_range(indices.shape[0]):
                    data = mem_read(metadata[indices[ix]], storage_state)
                    row = destination[ix]
                    for j in range(row.shape[0]):
                        row[j] = data[j]
                return destination[:indices.shape[0]]

            decode_bytes.is_parallel = True
            return decode_bytes

    return StoredBytes


def beton_layout(path: str) -> tuple[int, tuple[int, ...], np.dtype]:
    """(N, (C, H, W), dtype) of a base .beton, read from its header; BetonError when it is not one."""
    from ffcv.reader import Reader

    if not os.path.exists(path):
        raise BetonError(f"{path} does not exist; rerun `fastroar prepare`")
    try:
        reader = Reader(path)
    except Exception as e:  # FFCV raises assorted errors on a damaged header
        raise BetonError(f"{path} is not a readable .beton ({type(e).__name__}: {e}); delete it (and "
                         f"{path}.json) and rerun `fastroar prepare`") from e
    field = reader.handlers.get("image")
    dtype = np.dtype(getattr(field, "dtype", np.void))
    if field is None or "label" not in reader.handlers or dtype not in (np.uint8, np.float32):
        raise BetonError(f"{path} has no uint8/float32 'image' and 'label' fields; delete it (and "
                         f"{path}.json) and rerun `fastroar prepare`")
    return int(reader.num_samples), tuple(int(s) for s in field.shape), dtype


def read_beton(path: str, *, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """All (images (N, C, H, W) in the stored dtype, labels (N,) int64) of a .beton, in file order."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import ToTensor

    path = os.fspath(path)
    n, shape, dtype = beton_layout(path)
    StoredBytes = stored_bytes_decoder()
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


def read_beton_cached(path: str) -> tuple[np.ndarray, np.ndarray]:
    """read_beton, once per process and file state (path, mtime, size): the one in-memory copy of a split
    that every stage and loader of this process shares. The arrays are read-only."""
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    return _read_cached(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _read_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_beton(path)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


class MappedImages:
    """Read-only array-like (N, C, H, W) over the images of a .beton, memory-mapped: ``images[a:b]``,
    ``images[i]`` and ``images[index_array]`` read just those samples from the file (the OS page cache
    does the rest), so a split larger than memory can be walked batch by batch. ``np.asarray`` reads all."""

    def __init__(self, path: str, pointers: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.pointers = os.fspath(path), np.asarray(pointers, np.int64)
        self.dtype = np.dtype(dtype)
        self.shape = (len(self.pointers), *(int(s) for s in shape))
        self.ndim = len(self.shape)
        self._nbytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._map: np.memmap | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict[str, Any]:  # picklable (Ray tasks): the map is reopened on use
        return {**self.__dict__, "_map": None}

    def _sample(self, i: int) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        p = int(self.pointers[i])
        return self._map[p:p + self._nbytes].view(self.dtype).reshape(self.shape[1:])

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return np.array(self._sample(range(len(self))[int(index)]))
        idx = range(len(self))[index] if isinstance(index, slice) else np.asarray(index).reshape(-1)
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        for j, i in enumerate(idx):
            out[j] = self._sample(int(i))
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def map_beton(path: str) -> tuple[MappedImages, np.ndarray]:
    """(images as a MappedImages view, labels (N,) int64) of a base .beton written by write_beton."""
    from ffcv.reader import Reader

    path = os.fspath(path)
    n, shape, dtype = beton_layout(path)
    meta = Reader(path).metadata  # per sample: the image's data pointer (NDArrayField), the label (IntField)
    image_field, label_field = meta.dtype.names[:2]
    return MappedImages(path, meta[image_field], shape, dtype), np.asarray(meta[label_field], np.int64)
