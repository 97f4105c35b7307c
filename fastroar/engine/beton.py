"""Base image shards: a split's images and labels written once as an FFCV ``.beton`` file.

Each file holds two fields, ``image`` (an ``NDArrayField`` of the images' (C, H, W) shape, uint8 or
float32) and ``label`` (an ``IntField``). Beside it, ``<path>.json`` records the sample count, shape,
dtype, file size and SHA-256, so that a truncated or corrupted file is caught before training on it.
Writes are atomic: the file is built as ``<path>.<pid>.tmp`` and renamed into place only once complete.

Importing ffcv is slow (it compiles Numba code at import; docs/benchmarks.md has the figure), and its
writer starts worker processes; both are built for ImageNet, not for a split of a few thousand small images.
So a split given as an in-memory array is written here with NumPy alone (``_write_plain``): the same
bytes FFCV's writer produces with one worker (header, field descriptors, per-sample metadata, pages
filled in sample order and zero-padded, allocation table), which FFCV's Reader and Loader read as their
own (tests/test_loaders.py compares the two writers byte for byte). Lazy inputs (image folders, loaded
one sample at a time) still go through FFCV's writer and its processes. The header, metadata and
samples are read back with NumPy too (``_layout``), so the resident path never imports ffcv.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import pickle
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np

from fastroar.engine.faults import fault_point
from fastroar.errors import BetonError, FastroarError
from fastroar.keys import file_sha256

IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
_MIN_PAGE, _DEFAULT_PAGE = 1 << 21, 1 << 23  # FFCV's smallest page (2 MiB) and its default (8 MiB)

# FFCV's file format (ffcv/types.py, ffcv/fields/ndarray.py, format version 2), spelled out so that plain
# NumPy can write and read it; tests/test_loaders.py checks these against ffcv's own definitions.
FFCV_VERSION = 2
HEADER_TYPE = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"),
                        ("num_samples", "<u8"), ("alloc_table_ptr", "<u8")], align=True)
FIELD_DESC_TYPE = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))],
                           align=True)
ALLOC_TABLE_TYPE = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
NDARRAY_ARGS_TYPE = np.dtype([("shape", "<u8", 32), ("type_length", "<u8")])
NDARRAY_TYPE_ID, INT_TYPE_ID = 4, 1          # FFCV's NDArrayField and IntField
_FIELD_META = {NDARRAY_TYPE_ID: np.dtype("<u8"), INT_TYPE_ID: np.dtype("<i8"),   # per-sample metadata
               0: np.dtype("<f8")}                                            # (FloatField)


def _fix(path: str) -> str:
    return f"delete it (and {path}.json) and rerun `fastroar prepare`"


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


def _field_descriptors(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The two field descriptors FFCV writes for {"image": NDArrayField(dtype, shape), "label": IntField()}."""
    desc = np.zeros(2, FIELD_DESC_TYPE)
    for i, (name, type_id) in enumerate((("image", NDARRAY_TYPE_ID), ("label", INT_TYPE_ID))):
        desc[i]["type_id"] = type_id
        encoded = np.frombuffer(name.encode("ascii"), "<u1")
        desc[i]["name"][:len(encoded)] = encoded
    args = np.zeros(1, NDARRAY_ARGS_TYPE)
    args["shape"][0][:len(shape)] = np.asarray(shape, "<u8")
    encoded_type = np.frombuffer(json.dumps(np.dtype(dtype).descr).encode("ascii"), "<u1")
    args["type_length"][0] = len(encoded_type)
    blob = np.concatenate([args.view("<u1"), encoded_type])
    desc[0]["arguments"][:len(blob)] = blob
    return desc


def _write_plain(path: str, images: np.ndarray, labels: np.ndarray, page_size: int) -> None:
    """Writes what FFCV's DatasetWriter writes with one worker, in this process, with NumPy only.

    FFCV's layout: header; field descriptors; per-sample metadata (image pointer, label); zeros up to the
    first page boundary; pages of page_size bytes, each holding whole samples in sample order (a sample
    that does not fit the page's remaining space starts the next page), zero-padded; the allocation table
    (sample id, pointer, size) in sample order; the header's alloc_table_ptr points at it."""
    n = len(labels)
    nbytes = int(np.prod(images.shape[1:])) * images.dtype.itemsize
    desc = _field_descriptors(tuple(images.shape[1:]), images.dtype)
    meta_type = np.dtype([("", _FIELD_META[NDARRAY_TYPE_ID]), ("", _FIELD_META[INT_TYPE_ID])], align=True)
    meta_start = HEADER_TYPE.itemsize + desc.nbytes
    data_start = -(-(meta_start + n * meta_type.itemsize) // page_size) * page_size
    per_page = page_size // nbytes
    pages = -(-n // per_page)
    index = np.arange(n, dtype=np.uint64)
    ptr = data_start + (index // per_page) * page_size + (index % per_page) * nbytes
    meta = np.zeros(n, meta_type)
    meta[meta_type.names[0]] = ptr
    meta[meta_type.names[1]] = labels
    table = np.zeros(n, ALLOC_TABLE_TYPE)
    table["sample_id"], table["ptr"], table["size"] = index, ptr, nbytes
    header = np.zeros(1, HEADER_TYPE)
    header["version"], header["num_fields"], header["page_size"] = FFCV_VERSION, 2, page_size
    header["num_samples"], header["alloc_table_ptr"] = n, data_start + pages * page_size
    flat = images.reshape(n, -1).view(np.uint8)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(desc.tobytes())
        f.write(meta.tobytes())
        f.write(bytes(data_start - f.tell()))
        page = np.zeros(page_size, np.uint8)
        for p in range(pages):
            block = flat[p * per_page:(p + 1) * per_page].reshape(-1)
            page[:block.size] = block
            page[block.size:] = 0
            f.write(page.data)
        f.write(table.tobytes())


def write_beton(path: str, images: np.ndarray, labels: np.ndarray, *, progress: bool = True,
                num_workers: int | None = None) -> dict[str, Any]:
    """Writes (N, C, H, W) images (uint8 or float32) and (N,) integer labels to an FFCV .beton at `path`.

    An ndarray is written in this process with NumPy (``_write_plain``: FFCV's one-worker bytes, no ffcv
    import, no processes) unless `num_workers` asks for FFCV's writer. `images` may also be a lazy
    array-like (``shape``, ``dtype``, ``ndim``, ``images[i]``, e.g. fastroar.datasets.folder.LazyImages):
    samples are then loaded one by one in FFCV's writer processes, never all at once. An exception
    loading a sample is raised here (nothing is left at `path`).
    Returns the metadata {n, shape, dtype, size_bytes, sha256}, also written to ``path + '.json'``.
    """
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
    page_size = _page_size(sample_bytes, len(labels))
    try:
        if lazy or num_workers:
            _write_ffcv(tmp, images, labels, shape, page_size, errors, progress, num_workers)
        else:
            _write_plain(tmp, images, labels, page_size)
        meta = {"n": int(len(labels)), "shape": list(shape), "dtype": images.dtype.name,
                "size_bytes": os.path.getsize(tmp), "sha256": file_sha256(tmp)}
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


def _write_ffcv(tmp: str, images: Any, labels: np.ndarray, shape: tuple[int, ...], page_size: int, errors: str,
                progress: bool, num_workers: int | None) -> None:
    """FFCV's DatasetWriter with its worker processes (lazy inputs: samples loaded in the workers)."""
    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    workers = num_workers or max(1, min(os.cpu_count() or 1, 8, (len(labels) + 999) // 1000))
    writer = DatasetWriter(tmp, {"image": NDArrayField(dtype=images.dtype, shape=shape), "label": IntField()},
                           page_size=page_size, num_workers=workers)
    with _writer_progress(progress):
        writer.from_indexed_dataset(_Samples(images, labels, errors),
                                    chunksize=max(1, min(1000, len(labels) // workers)))
    failure = _first_failure(errors)
    if failure is not None:
        raise failure


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
    if checksum and file_sha256(path) != meta["sha256"]:
        raise BetonError(f"{path} is corrupted (SHA-256 does not match {path}.json); {_fix(path)}")
    return meta


@functools.lru_cache(maxsize=None)
def stored_bytes_decoder() -> type:
    """StoredBytes, the decoder of an image field into its stored bytes, defined on first use (importing
    ffcv takes seconds). The masked loader decodes through it."""
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


@dataclass(frozen=True)
class Layout:
    """A base .beton's header, read with NumPy: sample count, image shape and dtype, and per sample the
    image's byte offset in the file and its label."""

    n: int
    shape: tuple[int, ...]
    dtype: np.dtype
    pointers: np.ndarray   # (N,) uint64
    labels: np.ndarray     # (N,) int64


def _layout(path: str) -> Layout:
    """The Layout of a base .beton (fields "image": NDArrayField uint8/float32, "label": IntField);
    BetonError naming the fix when the file is missing, damaged or not one."""
    if not os.path.exists(path):
        raise BetonError(f"{path} does not exist; rerun `fastroar prepare`")
    bad = (f"{path} has no uint8/float32 'image' and 'label' fields; delete it (and {path}.json) and rerun "
           f"`fastroar prepare`")
    try:
        header = np.fromfile(path, HEADER_TYPE, count=1)
        if len(header) != 1 or int(header[0]["version"]) != FFCV_VERSION:
            raise ValueError("no FFCV format-2 header")
        header = header[0]
        num_fields, n = int(header["num_fields"]), int(header["num_samples"])
        desc = np.fromfile(path, FIELD_DESC_TYPE, count=num_fields, offset=HEADER_TYPE.itemsize)
        if len(desc) != num_fields:
            raise ValueError("truncated field descriptors")
        names = [bytes(d["name"]).split(b"\0", 1)[0].decode("ascii") for d in desc]
        types = [int(d["type_id"]) for d in desc]
        if any(t not in _FIELD_META for t in types):
            raise ValueError(f"field types {types} are not FFCV's ndarray/int/float fields")
        meta_type = np.dtype([("", _FIELD_META[t]) for t in types], align=True)
        meta = np.fromfile(path, meta_type, count=n, offset=HEADER_TYPE.itemsize + desc.nbytes)
        if len(meta) != n:
            raise ValueError(f"truncated metadata ({len(meta)} of {n} samples)")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BetonError(f"{path} is not a readable .beton ({type(e).__name__}: {e}); delete it (and "
                         f"{path}.json) and rerun `fastroar prepare`") from e
    if "image" not in names or "label" not in names:
        raise BetonError(bad)
    image, label = names.index("image"), names.index("label")
    if types[image] != NDARRAY_TYPE_ID or types[label] != INT_TYPE_ID:
        raise BetonError(bad)
    args = desc[image]["arguments"]
    head = args[:NDARRAY_ARGS_TYPE.itemsize].view(NDARRAY_ARGS_TYPE)[0]
    try:
        descr = json.loads(bytes(args[NDARRAY_ARGS_TYPE.itemsize:][:int(head["type_length"])]).decode("ascii"))
        dtype = np.dtype([tuple(x) for x in descr])["f0"]
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise BetonError(bad) from e
    if dtype not in IMAGE_DTYPES:
        raise BetonError(bad)
    shape = [int(v) for v in head["shape"]]
    while shape and shape[-1] == 0:
        shape.pop()
    return Layout(n, tuple(shape), np.dtype(dtype), np.asarray(meta[meta_type.names[image]], np.uint64),
                  np.asarray(meta[meta_type.names[label]], np.int64))


def beton_layout(path: str) -> tuple[int, tuple[int, ...], np.dtype]:
    """(N, (C, H, W), dtype) of a base .beton, read from its header; BetonError when it is not one."""
    lay = _layout(os.fspath(path))
    return lay.n, lay.shape, lay.dtype


def read_beton(path: str) -> tuple[np.ndarray, np.ndarray]:
    """All (images (N, C, H, W) in the stored dtype, labels (N,) int64) of a .beton, in file order.

    Read with NumPy through the header's per-sample pointers: runs of consecutive samples (a page of
    FFCV's one-worker layout, a chunk of its multi-worker one) are copied as one block."""
    path = os.fspath(path)
    lay = _layout(path)
    nbytes = int(np.prod(lay.shape)) * lay.dtype.itemsize
    size = os.path.getsize(path)
    ptr = lay.pointers.astype(np.int64)
    if lay.n and (int(ptr.min()) < 0 or int(ptr.max()) + nbytes > size):
        raise BetonError(f"{path}: a sample lies beyond the end of the file ({size:,} bytes); {_fix(path)}")
    images = np.empty((lay.n, *lay.shape), dtype=lay.dtype)
    flat = images.reshape(lay.n, -1).view(np.uint8)
    data = np.memmap(path, dtype=np.uint8, mode="r") if lay.n else None
    breaks = np.flatnonzero(np.diff(ptr) != nbytes) + 1 if lay.n else []
    for a, b in zip(np.r_[0, breaks], np.r_[breaks, lay.n]):
        start = int(ptr[a])
        flat[a:b] = data[start:start + (b - a) * nbytes].reshape(b - a, nbytes)
    del data
    return images, lay.labels.copy()


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
    lay = _layout(os.fspath(path))
    return MappedImages(os.fspath(path), lay.pointers, lay.shape, lay.dtype), lay.labels
