"""The Zarr rank store: chunk completion records, resume, identity checks, corruption detection."""
from __future__ import annotations

import numpy as np
import pytest

from fastroar.engine.kernels.reference import packed_masks_reference, rank_reference
from fastroar.engine.store import RankStore
from fastroar.errors import MissingInputError, StoreMismatchError

IDENTITY = {"model_hash": "abc", "dataset_key": "ds-1", "attribution": "gradient", "attribution_params": {},
            "levels": [0.25, 0.5], "shape": [1, 3, 5]}


def chunk_data(n, seed=0):
    scores = np.random.default_rng(seed).integers(0, 4, (n, 15)).astype(np.float32)
    ranks = rank_reference(scores)
    return (ranks, *packed_masks_reference(ranks, IDENTITY["levels"]))


def test_entry_layout_and_chunk_records(tmp_path):
    store = RankStore(str(tmp_path / "m.zarr"))
    entry = store.open_entry("standard", "gradient", IDENTITY, {"train": 10, "test": 4}, chunk_size=4)
    tr = entry.split("train")
    assert tr.n_chunks == 3 and tr.missing_chunks() == [0, 1, 2]
    assert tr.ranks.dtype == np.uint16 and tr.group["top"].shape == (10, 2, 2)
    data = chunk_data(10)
    tr.write_chunk(2, *(a[8:10] for a in data))
    assert tr.missing_chunks() == [0, 1] and not entry.is_complete()
    with pytest.raises(MissingInputError, match="2 of 3 chunks not computed"):
        tr.read()
    tr.write_chunk(0, *(a[0:4] for a in data))
    tr.write_chunk(1, *(a[4:8] for a in data))
    np.testing.assert_array_equal(tr.read(), data[0])
    np.testing.assert_array_equal(tr.read("bottom"), data[2])
    # reopened from disk (read-only), the same entry and contents
    again = RankStore(str(tmp_path / "m.zarr"), mode="r").open_entry("standard", "gradient", IDENTITY)
    assert again.split("train").missing_chunks() == [] and again.split("test").missing_chunks() == [0]


def test_a_chunk_without_its_record_is_redone_and_records_catch_corruption(tmp_path):
    store = RankStore(str(tmp_path / "m.zarr"))
    tr = store.open_entry("m", "gradient", IDENTITY, {"train": 8}, chunk_size=4).split("train")
    data = chunk_data(8)
    tr.group["ranks"][0:4] = data[0][0:4]  # data landed, then the process died before the record
    assert tr.missing_chunks() == [0, 1]
    tr.write_chunk(0, *(a[0:4] for a in data))
    tr.write_chunk(1, *(a[4:8] for a in data))
    assert tr.verify() == []
    tr.group["ranks"][5, 0] = (int(tr.group["ranks"][5, 0]) + 1) % 15  # silent corruption of chunk 1
    assert tr.verify() == [1]


def test_another_models_store_is_refused_and_left_intact(tmp_path):
    store = RankStore(str(tmp_path / "m.zarr"))
    tr = store.open_entry("m", "gradient", IDENTITY, {"train": 4}, chunk_size=4).split("train")
    tr.write_chunk(0, *chunk_data(4))
    with pytest.raises(StoreMismatchError, match="model_hash='abc'.*'zzz'.*Delete"):
        store.open_entry("m", "gradient", IDENTITY | {"model_hash": "zzz"}, {"train": 4})
    with pytest.raises(StoreMismatchError, match="levels"):
        store.open_entry("m", "gradient", IDENTITY | {"levels": [0.1]}, {"train": 4})
    np.testing.assert_array_equal(store.open_entry("m", "gradient", IDENTITY).split("train").read(), chunk_data(4)[0])


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(MissingInputError, match="run `fastroar precompute`"):
        RankStore(str(tmp_path / "nothing.zarr"), mode="r")
