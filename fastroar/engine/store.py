"""The rank store: per-pixel rank maps and bit-packed top-k / bottom-k masks in Zarr (v3).

Layout: one group per (model, attribution), arrays per split, chunked along images::

    masks.zarr/<model>/<attribution>/<split>/ranks   (N, d)             uint16 (d <= 65,536) or int32
                                              /top    (N, L, ceil(d/8)) uint8, bit-packed along d
                                              /bottom (N, L, ceil(d/8)) uint8
                                              /done   (n_chunks,)       uint64, 0 = chunk not written

A chunk counts as done only once its completion record (``done``, written after the data) holds the
CRC32 of the chunk's bytes (+ 2**32, so that a record is never 0). A killed precompute therefore resumes
at the first chunk without a record and never trusts a half-written one; ``verify`` re-reads each chunk
and detects corruption. The group's attributes hold the identity of its inputs (model hash, dataset key,
attribution and its parameters, levels); opening it with other inputs raises StoreMismatchError.
``path`` may be a local directory or any fsspec URL zarr understands.
"""
from __future__ import annotations

import contextlib
import json
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import zarr

from fastroar.engine.faults import fault_point
from fastroar.engine.kernels.reference import rank_dtype
from fastroar.errors import BusyError, MissingInputError, StoreCorruptError, StoreMismatchError

DONE_FLAG = np.uint64(1 << 32)
CHUNK_BYTES = 32 << 20  # rank rows per chunk: about 32 MiB of ranks (>= 1 row)
CHUNK_ARRAYS = ("ranks", "top", "bottom")  # what a chunk's CRC covers, in order
IDENTITY_KEYS = ("model_hash", "dataset_key", "attribution", "attribution_params", "levels", "shape")


# What zarr raises on metadata it cannot parse or a node that is gone: a truncated or deleted zarr.json
DAMAGED_METADATA = (json.JSONDecodeError, UnicodeDecodeError, KeyError, zarr.errors.BaseZarrError)
IDENTITY_WAIT_S = 10.0   # how long a writer waits for another process to finish creating an entry


@contextlib.contextmanager
def metadata_of(store: str, node: str) -> Iterator[None]:
    """Turns zarr's failures on damaged or missing metadata of `node` (a path in the store, "" for its root)
    into one StoreCorruptError naming what to delete."""
    where = f"{store}/{node}" if node else store
    try:
        yield
    except DAMAGED_METADATA as e:
        what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise StoreCorruptError(f"rank store {where}: its metadata (zarr.json) is damaged or missing ({what}); "
                                f"delete {where} and rerun `fastroar precompute` to recompute it") from None


def chunk_rows(d: int, max_rows: int = 1024) -> int:
    """Images per chunk: at most max_rows, and about CHUNK_BYTES of ranks."""
    return int(max(1, min(max_rows, CHUNK_BYTES // (d * rank_dtype(d).itemsize))))


def chunk_crc(*arrays: np.ndarray) -> np.uint64:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).tobytes(), crc)
    return np.uint64(crc) | DONE_FLAG


@dataclass
class SplitArrays:
    """The arrays of one split of one entry, and the chunk bookkeeping over them."""

    group: zarr.Group
    # the group's arrays, opened once: each opening reads their metadata through zarr's event loop (about
    # 1-3 ms), and the bookkeeping below asks for them per chunk. Shapes and chunking never change.
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, repr=False, compare=False)

    def array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            root = getattr(self.group.store, "root", self.group.store)
            with metadata_of(str(root), self.group.path.rsplit("/", 1)[0]):
                self._arrays[name] = self.group[name]
        return self._arrays[name]

    @property
    def ranks(self) -> zarr.Array:
        return self.array("ranks")

    @property
    def n(self) -> int:
        return int(self.ranks.shape[0])

    @property
    def rows_per_chunk(self) -> int:
        return int(self.ranks.chunks[0])

    @property
    def n_chunks(self) -> int:
        return int(self.array("done").shape[0])

    def chunk_range(self, c: int) -> tuple[int, int]:
        start = c * self.rows_per_chunk
        return start, min(self.n, start + self.rows_per_chunk)

    def done_chunks(self) -> np.ndarray:
        return self.array("done")[:] != 0

    def missing_chunks(self) -> list[int]:
        return [int(c) for c in np.flatnonzero(~self.done_chunks())]

    def write_chunk(self, c: int, ranks: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> None:
        """Writes chunk c's data, then its completion record (the order is what makes resume safe)."""
        start, stop = self.chunk_range(c)
        if len(ranks) != stop - start:
            raise ValueError(f"chunk {c} holds rows {start}:{stop}, got {len(ranks)} rows")
        self.array("ranks")[start:stop] = ranks
        self.array("top")[start:stop] = top
        self.array("bottom")[start:stop] = bottom
        fault_point("store.before_record")
        self.array("done")[c] = chunk_crc(ranks, top, bottom)  # the order of CHUNK_ARRAYS
        fault_point("store.after_record")

    def read(self, name: str = "ranks") -> np.ndarray:
        """A whole array, after checking every chunk is complete and still matches its completion record
        (each array is read once: the check runs on the arrays in memory)."""
        self._require_complete()
        whole = {a: self._decode(lambda a=a: self.array(a)[:], a) for a in CHUNK_ARRAYS}
        self._raise_if_bad(self.verify(whole))
        return whole[name]

    def check(self) -> None:
        """Raises unless every chunk is written and its bytes match its completion record. Reads one chunk of
        rows at a time, so memory stays bounded whatever the split's size."""
        self._require_complete()
        self._raise_if_bad(self.verify())

    def verify(self, whole: dict[str, np.ndarray] | None = None) -> list[int]:
        """Indices of done chunks whose bytes no longer match their recorded CRC: read chunk by chunk, or
        sliced from `whole` (the arrays already in memory)."""
        done = self.array("done")[:]
        bad = []
        for c in map(int, np.flatnonzero(done)):
            start, stop = self.chunk_range(c)
            parts = ([whole[a][start:stop] for a in CHUNK_ARRAYS] if whole is not None else
                     [self._decode(lambda a=a: self.array(a)[start:stop], f"{a} chunk {c}") for a in CHUNK_ARRAYS])
            if chunk_crc(*parts) != done[c]:
                bad.append(c)
        return bad

    def _require_complete(self) -> None:
        missing = self.missing_chunks()
        if missing:
            raise MissingInputError(
                f"{self.group.path}: {len(missing)} of {self.n_chunks} chunks not computed yet; "
                "run `fastroar precompute` (it resumes where it stopped)")

    def _raise_if_bad(self, bad: list[int]) -> None:
        if bad:
            start, stop = self.chunk_range(bad[0])
            self._corrupt(f"chunk {bad[0]} (images {start}:{stop}) does not match its checksum")

    def _decode(self, read, what: str) -> np.ndarray:
        try:
            return read()
        except Exception as e:  # a damaged chunk file fails in the codec, with codec-specific errors
            self._corrupt(f"{what} cannot be decoded ({type(e).__name__}: {e})")

    def _corrupt(self, what: str) -> None:
        root = getattr(self.group.store, "root", self.group.store)
        entry = self.group.path.rsplit("/", 1)[0]
        raise StoreCorruptError(f"rank store {root}: {self.group.path}: {what} (damaged after it was written); "
                                f"delete {root}/{entry} and rerun `fastroar precompute` to recompute it")


class RankStore:
    """A Zarr group of rank-map entries, one per (model, attribution)."""

    def __init__(self, path: str, mode: str = "a") -> None:
        self.path = str(path)
        # fsspec's local filesystem does not create parent directories unless asked to
        opts = {"storage_options": {"auto_mkdir": True}} if self.path.startswith(("file://", "local://")) else {}
        if mode == "r":
            try:
                self.root = zarr.open_group(self.path, mode="r", **opts)
            except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
                raise MissingInputError(f"no rank store at {self.path}; run `fastroar precompute` first") from e
            except DAMAGED_METADATA:
                with metadata_of(self.path, ""):
                    raise
        else:
            with metadata_of(self.path, ""):
                self.root = zarr.open_group(self.path, mode="a", **opts)

    def entry_path(self, model: str, attribution: str) -> str:
        return f"{model}/{attribution.replace('/', '_')}"

    def open_entry(self, model: str, attribution: str, identity: dict[str, Any],
                   split_sizes: dict[str, int] | None = None, chunk_size: int | None = None) -> "Entry":
        """The entry for (model, attribution); created from `split_sizes` when absent (needs write mode).

        identity must hold IDENTITY_KEYS; an existing entry made from other inputs raises StoreMismatchError.
        """
        path = self.entry_path(model, attribution)
        entry = self._existing(path, rebuild=split_sizes is not None)
        if entry is None and split_sizes is None:
            raise MissingInputError(
                f"no ranks for model {model!r} and attribution {attribution!r} in {self.path}; "
                "run `fastroar precompute` first")
        if entry is None:
            try:
                return self._create(path, identity, split_sizes, chunk_size)
            except (zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError):
                # another process (a run on another workdir sharing this --store) created it at the same
                # moment: use theirs, once its identity is written
                entry = self._existing(path, rebuild=False)
                if entry is None:
                    raise BusyError(f"another process is creating rank store entry {self.path}/{path}; rerun "
                                    "when it is done (finished chunks are kept)") from None
        entry.check_identity(identity, self.path)
        return entry

    def stored_identity(self, model: str, attribution: str) -> dict[str, Any] | None:
        """The identity attributes recorded for (model, attribution), or None where there is no entry."""
        path = self.entry_path(model, attribution)
        with metadata_of(self.path, path):
            return dict(self.root[path].attrs) if path in self.root else None

    def _existing(self, path: str, rebuild: bool) -> "Entry | None":
        """The entry at `path` once its identity is written, or None when there is none. An entry without
        identity is being created by another process, or was left so by a killed one: a writer (`rebuild`)
        waits up to IDENTITY_WAIT_S for the identity, then deletes the leftover to create it anew; a reader
        is told what to run (deleting it there could break the creating process)."""
        deadline = time.monotonic() + (IDENTITY_WAIT_S if rebuild else 0.0)
        with metadata_of(self.path, path):
            while path in self.root:
                group = self.root[path]
                if "model_hash" in group.attrs:
                    return Entry(group)
                if time.monotonic() >= deadline:
                    if not rebuild:
                        raise MissingInputError(
                            f"rank store entry {self.path}/{path} is incomplete: a `fastroar precompute` is "
                            "creating it right now (wait for it), or one was killed while creating it (run "
                            "`fastroar precompute`: it rebuilds it)")
                    del self.root[path]  # creation was interrupted before its identity was written: rebuild
                    return None
                time.sleep(0.2)
        return None

    def _create(self, path: str, identity: dict[str, Any], split_sizes: dict[str, int],
                chunk_size: int | None) -> "Entry":
        group = self.root.require_group(path)
        shape = tuple(identity["shape"])
        d = int(np.prod(shape))
        levels = list(identity["levels"])
        rows = chunk_size or chunk_rows(d)
        nbytes = (d + 7) // 8
        for split, n in split_sizes.items():
            g = group.require_group(split)
            g.create_array("ranks", shape=(n, d), chunks=(rows, d), dtype=rank_dtype(d), fill_value=0)
            g.create_array("top", shape=(n, len(levels), nbytes), chunks=(rows, len(levels), nbytes),
                           dtype="uint8", fill_value=0)
            g.create_array("bottom", shape=(n, len(levels), nbytes), chunks=(rows, len(levels), nbytes),
                           dtype="uint8", fill_value=0)
            # One record per chunk, each its own Zarr chunk, so writers of disjoint chunks never collide.
            g.create_array("done", shape=(-(-n // rows),), chunks=(1,), dtype="uint64",
                           fill_value=0)
        # Identity last: an entry without it was interrupted while being created and is rebuilt.
        fault_point("store.before_identity")
        group.attrs.update({k: identity[k] for k in IDENTITY_KEYS} | {"splits": list(split_sizes)})
        return Entry(group)


@dataclass
class Entry:
    """One (model, attribution) entry: identity attributes plus a SplitArrays per split."""

    group: zarr.Group

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def levels(self) -> list[float]:
        return list(self.group.attrs["levels"])

    def split(self, name: str) -> SplitArrays:
        root = str(getattr(self.group.store, "root", self.group.store))
        with metadata_of(root, self.group.path):
            if name not in self.group:
                raise MissingInputError(f"{self.group.path} has no split {name!r}")
            return SplitArrays(self.group[name])

    def is_complete(self) -> bool:
        return all(not self.split(s).missing_chunks() for s in self.group.attrs.get("splits", []))

    def check_identity(self, identity: dict[str, Any], store_path: str) -> None:
        stored = self.attrs
        for key in IDENTITY_KEYS:
            want = _jsonable(identity[key])
            if key in stored and _jsonable(stored[key]) != want:
                old = _jsonable(stored[key])
                if isinstance(old, dict) and isinstance(want, dict):  # name the parameters that differ
                    what = "; ".join(f"{key}.{k}: {old.get(k)!r} -> {want.get(k)!r}"
                                     for k in sorted(set(old) | set(want)) if old.get(k) != want.get(k))
                    why = _WHY.get(next((k for k in _WHY if old.get(k) != want.get(k)), ""), "another setting")
                    raise StoreMismatchError(
                        f"rank store {store_path}/{self.group.path} was made with other inputs ({what}: {why}). "
                        f"Delete {store_path}/{self.group.path} and rerun `fastroar precompute` to recompute "
                        "it, or use another --workdir.")
                raise StoreMismatchError(
                    f"rank store {store_path}/{self.group.path} was made with {key}={_short(stored[key])}, "
                    f"but this run has {key}={_short(want)} (another model, dataset or setting). Delete "
                    f"{store_path}/{self.group.path} to recompute it, or use another --workdir.")


_WHY = {  # recorded inputs of user-provided attributions, and what a change of each means
    "source_sha256": "the attribution function's source changed since its ranks were computed",
    "function": "another attribution function",
    "scores_sha256": "the precomputed score files changed since they were imported",
}


def _short(v: Any, limit: int = 80) -> str:
    """repr(v), cut to `limit` characters: a message names a list of 1,000 levels, it does not print it."""
    text = repr(_jsonable(v))
    return text if len(text) <= limit else f"{text[:limit - 5]}... ({len(v)} values)" if hasattr(v, "__len__") \
        else text[:limit] + "..."


def _jsonable(v: Any) -> Any:
    """Normalise tuples/lists and numbers so stored (JSON) and fresh values compare equal."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


__all__ = ["RankStore", "Entry", "SplitArrays", "chunk_rows", "chunk_crc"]
