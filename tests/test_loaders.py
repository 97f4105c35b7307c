"""Loaders: .beton round trips, integrity checks, and masked batches equal to the NumPy reference, exactly.

Samples are identified through their labels (labels = arange(N)). Rank maps come from scores with many
ties (rank_reference breaks them by index). FFCV loaders are slow to import and compile, so they are
built once per module and re-levelled with set_mask.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from fastroar.engine.beton import BetonError, read_beton, verify_beton, write_beton
from fastroar.engine.kernels.reference import keep_mask_reference, n_kept, rank_reference

U8_SHAPE = (3, 7, 5)     # d = 105: not a multiple of 8 (exercises the packed-mask tail)
F32_SHAPE = (1, 16, 8)
N_U8, N_F32 = 300, 130
BATCH = 64               # 300 = 4 * 64 + 44: a partial last batch
LEVELS = [(0.1, "top"), (0.5, "bottom"), (0.37, "top"), (0.9, "bottom"), (0.003, "top")]


def tied_ranks(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Rank maps of scores drawn from 4 values (ties everywhere), with a NaN here and there."""
    scores = rng.integers(0, 4, (n, d)).astype(np.float32)
    scores[rng.random((n, d)) < 0.01] = np.nan
    return rank_reference(scores)


def reference_batch(images: np.ndarray, ranks: np.ndarray | None, ids: np.ndarray, k, direction,
                    fill: float = 0.0) -> np.ndarray:
    """What the loaders must return for samples `ids`: model input (x/255 for uint8), `fill` outside the mask."""
    x = images[ids]
    x = (x / 255).astype(np.float32) if x.dtype == np.uint8 else x.astype(np.float32)
    if ranks is None:
        return x
    keep = keep_mask_reference(ranks[ids], k, direction).reshape(x.shape)
    return np.where(keep, x, np.float32(fill))


def check_epoch(loader, images, ranks, k, direction, *, drop_last=False, batch=BATCH, fill=0.0) -> np.ndarray:
    """Iterates one epoch, checks every batch exactly and that each sample comes once; returns the id order."""
    n = len(images)
    seen = np.zeros(n, dtype=np.int64)
    order = []
    batches = 0
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == images.shape[1:] and y.shape == (x.shape[0],)
        ids = y.cpu().numpy()
        got = x.cpu().numpy()
        want = reference_batch(images, ranks, ids, k, direction, fill)
        assert np.array_equal(got, want), f"batch {batches} differs from the reference ({k}, {direction})"
        seen[ids] += 1
        order.append(ids)
        batches += 1
    assert batches == len(loader)
    if drop_last:
        assert seen.sum() == (n // batch) * batch and seen.max() == 1
    else:
        assert (seen == 1).all(), "every sample must be seen exactly once per epoch"
    return np.concatenate(order)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("loaders")
    u8 = rng.integers(0, 256, (N_U8, *U8_SHAPE), dtype=np.uint8)
    f32 = rng.standard_normal((N_F32, *F32_SHAPE)).astype(np.float32)
    f32[0, 0, 0, :3] = [-0.0, np.inf, -np.inf]
    out = {
        "root": root,
        "u8": u8, "u8_path": str(root / "u8.beton"),
        "f32": f32, "f32_path": str(root / "f32.beton"),
        "u8_ranks": tied_ranks(rng, N_U8, int(np.prod(U8_SHAPE))),
        "f32_ranks": tied_ranks(rng, N_F32, int(np.prod(F32_SHAPE))),
    }
    out["u8_meta"] = write_beton(out["u8_path"], u8, np.arange(N_U8), progress=False)
    out["f32_meta"] = write_beton(out["f32_path"], f32, np.arange(N_F32), progress=False)
    return out


# ------------------------------------------------------------------------------------------ .beton files

def test_roundtrip_byte_exact(data):
    for kind, shape in (("u8", U8_SHAPE), ("f32", F32_SHAPE)):
        path, images = data[f"{kind}_path"], data[kind]
        meta = data[f"{kind}_meta"]
        assert meta["n"] == len(images) and tuple(meta["shape"]) == shape
        assert meta["dtype"] == images.dtype.name and meta["size_bytes"] == os.path.getsize(path)
        with open(path + ".json") as f:
            assert json.load(f) == meta
        assert not os.path.exists(path + ".tmp")
        assert verify_beton(path) == meta
        got, labels = read_beton(path)
        assert got.dtype == images.dtype and got.shape == images.shape
        assert got.tobytes() == images.tobytes()  # bytes, so -0.0 and infinities count too
        assert labels.dtype == np.int64 and np.array_equal(labels, np.arange(len(images)))


def test_roundtrip_odd_shape_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (17, 3, 7, 5), dtype=np.uint8)
    labels = rng.integers(-5, 1000, 17)
    path = str(tmp_path / "odd.beton")
    write_beton(path, images, labels, progress=False)
    got, got_labels = read_beton(path)
    assert np.array_equal(got, images) and np.array_equal(got_labels, labels)


def test_verify_detects_corruption_and_truncation(data, tmp_path):
    src = data["u8_path"]
    flipped = str(tmp_path / "flipped.beton")
    shutil.copy(src, flipped)
    shutil.copy(src + ".json", flipped + ".json")
    size = os.path.getsize(flipped)
    with open(flipped, "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BetonError, match="corrupted") as e:
        verify_beton(flipped)
    assert flipped in str(e.value) and "fastroar prepare" in str(e.value) and "delete it" in str(e.value)
    verify_beton(flipped, checksum=False)  # same size: only the checksum catches it

    truncated = str(tmp_path / "truncated.beton")
    shutil.copy(src + ".json", truncated + ".json")
    with open(src, "rb") as f, open(truncated, "wb") as g:
        g.write(f.read(size - 100))
    with pytest.raises(BetonError, match="truncated") as e:
        verify_beton(truncated, checksum=False)
    assert truncated in str(e.value) and "fastroar prepare" in str(e.value)

    orphan = str(tmp_path / "orphan.beton")
    shutil.copy(src, orphan)
    with pytest.raises(BetonError, match="orphan.beton.json"):
        verify_beton(orphan)
    with pytest.raises(BetonError, match="does not exist"):
        verify_beton(str(tmp_path / "absent.beton"))
    assert isinstance(BetonError("x"), ValueError)


@pytest.mark.parametrize("writer", ["plain", "ffcv"])
def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch, writer):
    """An exception inside either writer (NumPy's in-process one for arrays, FFCV's for num_workers or lazy
    inputs) leaves nothing behind: no partial file, no sidecar, no temporary."""
    import ffcv.writer

    import fastroar.engine.beton as beton

    path = str(tmp_path / "half.beton")

    def boom(self_or_path, *args, **kwargs):
        with open(getattr(self_or_path, "fname", self_or_path), "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    if writer == "ffcv":
        monkeypatch.setattr(ffcv.writer.DatasetWriter, "from_indexed_dataset", boom)
    else:
        monkeypatch.setattr(beton, "_write_plain", boom)
    with pytest.raises(KeyboardInterrupt):
        write_beton(path, np.zeros((4, 1, 2, 2), np.uint8), np.arange(4), progress=False,
                    num_workers=1 if writer == "ffcv" else None)
    assert os.listdir(tmp_path) == []


def test_format_constants_are_ffcvs():
    import ffcv.fields.base
    import ffcv.fields.ndarray
    import ffcv.types

    import fastroar.engine.beton as beton

    assert beton.HEADER_TYPE == ffcv.types.HeaderType and beton.FFCV_VERSION == ffcv.types.CURRENT_VERSION
    assert beton.FIELD_DESC_TYPE == ffcv.types.FieldDescType
    assert beton.ALLOC_TABLE_TYPE == ffcv.types.ALLOC_TABLE_TYPE
    assert beton.NDARRAY_ARGS_TYPE == ffcv.fields.ndarray.NDArrayArgsType
    assert FIELD_DESC_ARGS == ffcv.fields.base.ARG_TYPE.itemsize
    handlers = ffcv.types.TYPE_ID_HANDLER
    assert handlers[beton.NDARRAY_TYPE_ID] is ffcv.fields.NDArrayField
    assert handlers[beton.INT_TYPE_ID] is ffcv.fields.IntField and handlers[0] is ffcv.fields.FloatField


FIELD_DESC_ARGS = 1024


@pytest.mark.parametrize("n,shape,dtype", [(1797, (1, 16, 8), np.uint8), (5, (3, 4, 4), np.float32),
                                           (9000, (1, 28, 28), np.uint8), (3, (3, 300, 400), np.uint8)])
def test_plain_writer_writes_ffcvs_bytes(tmp_path, n, shape, dtype):
    """The in-process NumPy writer produces byte for byte what FFCV's DatasetWriter writes with one worker
    (several pages, a page tail, float32, a sample of over a page's half), and FFCV's Reader and Loader
    read it back; our reader also reads FFCV's multi-worker files (samples not in page order)."""
    from ffcv.fields import IntField, NDArrayField
    from ffcv.reader import Reader
    from ffcv.writer import DatasetWriter

    import fastroar.engine.beton as beton

    rng = np.random.default_rng(n)
    images = (rng.integers(0, 256, (n, *shape)) if dtype == np.uint8 else rng.standard_normal((n, *shape))
              ).astype(dtype)
    labels = rng.integers(0, 10, n)
    ours = str(tmp_path / "ours.beton")
    meta = write_beton(ours, images, labels, progress=False)
    page = beton._page_size(images[0].nbytes, n)
    for workers in (1, 2):
        theirs = str(tmp_path / f"ffcv{workers}.beton")
        fields = {"image": NDArrayField(dtype=np.dtype(dtype), shape=shape), "label": IntField()}
        DatasetWriter(theirs, fields, page_size=page, num_workers=workers).from_indexed_dataset(
            beton._Samples(images, labels, str(tmp_path / "errors")), chunksize=max(1, n // 7))
        if workers == 1:
            with open(ours, "rb") as a, open(theirs, "rb") as b:
                assert a.read() == b.read()
        got, got_labels = read_beton(theirs)
        assert got.tobytes() == images.tobytes() and np.array_equal(got_labels, labels)
        mapped, mapped_labels = beton.map_beton(theirs)
        assert np.array_equal(mapped[[n - 1, 0]], images[[n - 1, 0]]) and np.array_equal(mapped_labels, labels)
    reader = Reader(ours)
    assert int(reader.num_samples) == n and tuple(reader.handlers["image"].shape) == shape
    assert np.array_equal(reader.metadata[reader.metadata.dtype.names[1]], labels)
    assert verify_beton(ours) == meta and beton.beton_layout(ours) == (n, shape, np.dtype(dtype))


def test_write_rejects_bad_input(tmp_path):
    path = str(tmp_path / "bad.beton")
    with pytest.raises(ValueError, match="uint8 or float32"):
        write_beton(path, np.zeros((2, 1, 2, 2), np.float64), np.arange(2))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        write_beton(path, np.zeros((2, 4), np.uint8), np.arange(2))
    with pytest.raises(ValueError, match="labels"):
        write_beton(path, np.zeros((2, 1, 2, 2), np.uint8), np.arange(3))


# ------------------------------------------------------------------------------------------ mask kernels

@pytest.mark.parametrize("d", [1, 8, 105, 43_200, 70_000])
def test_packed_mask_kernel_edges(d):
    """Packed keep bits and the fused apply kernel against the reference, at n = 0, n = d and ranks >= 2^15."""
    from fastroar.engine.loaders.masked import masked_model_input, pack_keep_bits

    rng = np.random.default_rng(d)
    n = 4
    ranks = tied_ranks(rng, n, d)
    assert ranks.dtype == (np.uint16 if d <= 65536 else np.int32)
    src = rng.integers(0, 256, (n, d), dtype=np.uint8)
    idx = np.array([3, 1, 1, 0], dtype=np.uint64)
    for k in (1e-7, 0.25, 0.5, 0.999, 1 - 1e-9):
        for direction in ("top", "bottom"):
            bits = pack_keep_bits(ranks, k, direction)
            want_bits = np.packbits(keep_mask_reference(ranks, k, direction), axis=-1, bitorder="little")
            assert np.array_equal(bits, want_bits)
            out = np.full((n, d), np.nan, np.float32)
            masked_model_input(src, idx, bits, out)
            keep = keep_mask_reference(ranks[idx.astype(np.int64)], k, direction)
            assert np.array_equal(out, np.where(keep, src / 255, 0).astype(np.float32))


# ------------------------------------------------------------------------------------------ FFCV path

FFCV_CONFIGS = [("random", True), ("random", False), ("quasi_random", True), ("quasi_random", False)]


@pytest.fixture(scope="module")
def ffcv_loaders(data):
    from fastroar.engine.loaders.masked import make_loader

    k0, dir0 = LEVELS[0]
    return {(order, cache): make_loader(data["u8_path"], batch_size=BATCH, order=order, seed=3,
                                        ranks=data["u8_ranks"], k=k0, direction=dir0, os_cache=cache)
            for order, cache in FFCV_CONFIGS}


@pytest.mark.parametrize("order,os_cache", FFCV_CONFIGS)
def test_ffcv_masked_equals_reference(data, ffcv_loaders, order, os_cache):
    loader = ffcv_loaders[(order, os_cache)]
    assert len(loader) == -(-N_U8 // BATCH)
    orders = []
    for k, direction in LEVELS:
        loader.set_mask(k, direction)
        orders.append(check_epoch(loader, data["u8"], data["u8_ranks"], k, direction))
    assert not np.array_equal(orders[0], np.arange(N_U8)), "shuffled order expected"
    assert not np.array_equal(orders[0], orders[1]), "each epoch draws a new order"


def test_ffcv_unmasked_sequential_and_float32(data):
    from fastroar.engine.loaders.masked import make_loader

    plain = make_loader(data["u8_path"], batch_size=BATCH, order="sequential")
    ids = check_epoch(plain, data["u8"], None, None, None)
    assert np.array_equal(ids, np.arange(N_U8))

    f32 = make_loader(data["f32_path"], batch_size=32, order="random", seed=1, ranks=data["f32_ranks"],
                      k=0.3, direction="bottom", drop_last=True)
    assert len(f32) == N_F32 // 32
    for k, direction in ((0.3, "bottom"), (0.6, "top")):
        f32.set_mask(k, direction)
        check_epoch(f32, data["f32"], data["f32_ranks"], k, direction, drop_last=True, batch=32)


def test_ffcv_validation(data):
    from fastroar.engine.loaders.masked import make_loader

    path, ranks = data["u8_path"], data["u8_ranks"]
    bad = [
        (dict(ranks=ranks, k=0.0, direction="top"), "k must"),
        (dict(ranks=ranks, k=1.0, direction="top"), "k must"),
        (dict(ranks=ranks, k=-0.2, direction="bottom"), "k must"),
        (dict(ranks=ranks, k=None, direction="top"), "k must"),
        (dict(ranks=ranks, k=0.5, direction="middle"), "direction"),
        (dict(ranks=ranks, k=0.5, direction=None), "direction"),
        (dict(ranks=ranks[:-1], k=0.5, direction="top"), r"shape \(N, d\) = \(300, 105\)"),
        (dict(ranks=ranks[:, :-1], k=0.5, direction="top"), "shape"),
        (dict(ranks=ranks.astype(np.float32), k=0.5, direction="top"), "integers"),
        (dict(k=0.5, direction="top"), "need ranks"),
        (dict(order="shuffled"), "order"),
    ]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            make_loader(path, batch_size=BATCH, **kwargs)
    with pytest.raises(BetonError, match="does not exist"):
        make_loader(path + ".missing", batch_size=BATCH)


def test_ffcv_streams_a_zarr_rank_map(data, tmp_path):
    """Rank maps can stay on disk (Zarr, chunked): packed masks equal the in-memory ones, batches the reference."""
    import zarr

    from fastroar.engine.loaders.masked import make_loader, pack_keep_bits

    ranks = data["u8_ranks"]
    z = zarr.create_array(str(tmp_path / "r.zarr"), shape=ranks.shape, chunks=(37, ranks.shape[1]), dtype=ranks.dtype)
    z[:] = ranks
    for k, direction in LEVELS:
        np.testing.assert_array_equal(pack_keep_bits(z, k, direction), pack_keep_bits(ranks, k, direction))
    loader = make_loader(data["u8_path"], batch_size=BATCH, order="random", seed=1, ranks=z, k=0.37,
                         direction="top")
    assert loader._spec.ranks is z  # not read into memory
    check_epoch(loader, data["u8"], ranks, 0.37, "top")


FILL = 0.4137  # retrain.fill: mean (any value; exactly representable or not)


def test_every_path_fills_removed_coordinates(data):
    """--fill mean: removed coordinates take the fill value, on the FFCV path and both resident engines."""
    from fastroar.engine.loaders.masked import make_loader
    from fastroar.engine.loaders.resident import ResidentLoader

    u8, ranks = data["u8"], data["u8_ranks"]
    loaders = [make_loader(data["u8_path"], batch_size=BATCH, order="random", seed=2, ranks=ranks, k=0.3,
                           direction="top", fill=FILL)]
    loaders += [ResidentLoader(u8, np.arange(N_U8), batch_size=BATCH, seed=2, ranks=ranks, k=0.3, direction="top",
                               engine=engine, fill=FILL) for engine in ("numba", "torch")]
    for loader in loaders:
        for k, direction in ((0.3, "top"), (0.6, "bottom")):
            loader.set_mask(k, direction)
            check_epoch(loader, u8, ranks, k, direction, fill=np.float32(FILL))


# ------------------------------------------------------------------------------------------ resident path

@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_resident_equals_reference(data, engine):
    from fastroar.engine.loaders.resident import ResidentLoader

    loader = ResidentLoader(data["u8"], np.arange(N_U8), batch_size=BATCH, seed=5, ranks=data["u8_ranks"],
                            k=LEVELS[0][0], direction=LEVELS[0][1], engine=engine)
    orders = []
    for k, direction in LEVELS:
        loader.set_mask(k, direction)
        orders.append(check_epoch(loader, data["u8"], data["u8_ranks"], k, direction))
    assert not np.array_equal(orders[0], np.arange(N_U8)) and not np.array_equal(orders[0], orders[1])

    f32 = ResidentLoader(data["f32"], np.arange(N_F32), batch_size=32, seed=0, ranks=data["f32_ranks"],
                         k=0.45, direction="top", shuffle=False, drop_last=True, engine=engine)
    ids = check_epoch(f32, data["f32"], data["f32_ranks"], 0.45, "top", drop_last=True, batch=32)
    assert np.array_equal(ids, np.arange(len(ids)))
    plain = ResidentLoader(data["u8"], np.arange(N_U8), batch_size=BATCH, seed=0, engine=engine)
    check_epoch(plain, data["u8"], None, None, None)


@pytest.mark.parametrize("engine", ["numba", "torch"])
def test_resident_uint16_high_ranks(engine):
    """d > 2^15: uint16 ranks above 32767 (stored offset as int16 by the torch engine), n = 0 and n = d."""
    from fastroar.engine.loaders.resident import ResidentLoader

    rng = np.random.default_rng(7)
    shape = (3, 120, 120)
    d = int(np.prod(shape))
    images = rng.integers(0, 256, (5, *shape), dtype=np.uint8)
    ranks = tied_ranks(rng, 5, d)
    assert ranks.dtype == np.uint16 and ranks.max() > 40_000
    loader = ResidentLoader(images, np.arange(5), batch_size=2, seed=0, ranks=ranks, k=0.5, direction="top",
                            engine=engine)
    for k in (1e-7, 0.2, 0.5, 0.8, 1 - 1e-9):
        assert n_kept(k, d) in (0, d) or 0 < n_kept(k, d) < d
        for direction in ("top", "bottom"):
            loader.set_mask(k, direction)
            check_epoch(loader, images, ranks, k, direction, batch=2)


def test_resident_validation(data):
    from fastroar.engine.loaders.resident import ResidentLoader

    with pytest.raises(ValueError, match="k must"):
        ResidentLoader(data["u8"], np.arange(N_U8), batch_size=8, ranks=data["u8_ranks"], k=1.5, direction="top")
    with pytest.raises(ValueError, match="direction"):
        ResidentLoader(data["u8"], np.arange(N_U8), batch_size=8, ranks=data["u8_ranks"], k=0.5, direction="up")
    with pytest.raises(ValueError, match="shape"):
        ResidentLoader(data["u8"], np.arange(N_U8), batch_size=8, ranks=data["u8_ranks"][1:], k=0.5,
                       direction="top")
    with pytest.raises(ValueError, match="engine"):
        ResidentLoader(data["u8"], np.arange(N_U8), batch_size=8, engine="numba", device="meta")


def test_choose_loader_follows_budget(data):
    from fastroar.engine.loaders.masked import MaskedLoader
    from fastroar.engine.loaders.plan import ResidentLoader, resident_bytes
    from fastroar.engine.loaders.plan import open_loader as choose_loader

    path, ranks = data["u8_path"], data["u8_ranks"]
    need = resident_bytes(N_U8, U8_SHAPE, 2)
    assert need == N_U8 * 105 * 4 + N_U8 * 8 + N_U8 * 105 * 2
    common = dict(batch_size=BATCH, seed=2, ranks=ranks, k=0.25, direction="bottom")
    loader, name = choose_loader(path, max_resident_bytes=need, **common)
    assert name == "resident" and isinstance(loader, ResidentLoader)
    check_epoch(loader, data["u8"], ranks, 0.25, "bottom")
    loader, name = choose_loader(path, **common)  # default CPU budget: 2 GiB
    assert name == "resident"
    loader, name = choose_loader(path, max_resident_bytes=need - 1, shuffle=False, **common)
    assert name == "ffcv" and isinstance(loader, MaskedLoader)
    ids = check_epoch(loader, data["u8"], ranks, 0.25, "bottom")
    assert np.array_equal(ids, np.arange(N_U8)), "shuffle=False streams in file order"
    with pytest.raises(ValueError, match="k must"):
        choose_loader(path, batch_size=BATCH, ranks=ranks, k=2.0, direction="top")


# ------------------------------------------------------------------------------------------ CUDA (device tool)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@needs_cuda
@pytest.mark.parametrize("order,os_cache", FFCV_CONFIGS)
def test_ffcv_masked_to_cuda_equals_reference(data, order, os_cache):
    """The FFCV path with ToDevice('cuda'): batches arrive on the GPU, bit-identical to the reference."""
    from fastroar.engine.loaders.masked import make_loader

    loader = make_loader(data["u8_path"], batch_size=BATCH, order=order, seed=3, ranks=data["u8_ranks"],
                         k=LEVELS[0][0], direction=LEVELS[0][1], os_cache=os_cache, device="cuda")
    for k, direction in LEVELS[:3]:
        loader.set_mask(k, direction)
        for x, _ in loader:
            assert x.device.type == "cuda"
            break
        check_epoch(loader, data["u8"], data["u8_ranks"], k, direction)


@needs_cuda
def test_resident_on_cuda_equals_reference():
    """The device-resident path on the GPU (torch engine, one comparison per batch). Self-contained (no
    .beton), so it also runs where FFCV is not installed."""
    from fastroar.engine.loaders.resident import ResidentLoader

    rng = np.random.default_rng(11)
    for shape, dtype in ((U8_SHAPE, np.uint8), ((3, 120, 120), np.uint8), (F32_SHAPE, np.float32)):
        n, d = 150, int(np.prod(shape))
        images = (rng.integers(0, 256, (n, *shape), dtype=np.uint8) if dtype == np.uint8
                  else rng.standard_normal((n, *shape)).astype(np.float32))
        ranks = tied_ranks(rng, n, d)
        loader = ResidentLoader(images, np.arange(n), batch_size=BATCH, seed=5, ranks=ranks, k=LEVELS[0][0],
                                direction=LEVELS[0][1], device="cuda")
        for k, direction in LEVELS:
            loader.set_mask(k, direction)
            assert next(iter(loader))[0].device.type == "cuda"
            check_epoch(loader, images, ranks, k, direction)
