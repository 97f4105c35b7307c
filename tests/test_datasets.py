"""The embedded datasets against their definitions."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from fastroar.datasets import build_dataset
from fastroar.datasets.blockdigits import null_pattern
from fastroar.errors import ConfigError


def test_blockdigits_blocks_hold_the_digit_and_the_null_pattern():
    ds = build_dataset("blockdigits", seed=3)
    digits = load_digits()
    ref = {tuple(np.round(img * 255 / 16).astype(np.uint8).ravel()): int(t)
           for img, t in zip(digits.images, digits.target)}
    null = null_pattern()
    n_top = 0
    for split in (ds.train, ds.test):
        img = split.images[:, 0]
        top = split.signal.reshape(-1, 16, 8)[:, :8].all(axis=(1, 2))
        n_top += int(top.sum())
        sig = np.where(top[:, None, None], img[:, :8], img[:, 8:])
        nul = np.where(top[:, None, None], img[:, 8:], img[:, :8])
        assert (nul == null).all()
        assert all(ref[tuple(s.ravel())] == y for s, y in zip(sig, split.labels))
        assert (split.signal.sum(1) == 64).all()
    assert len(ds.train) + len(ds.test) == 1797
    assert 0.4 < n_top / 1797 < 0.6  # signal on top or bottom at random


def test_digits_read_from_the_shipped_file_equal_load_digits(monkeypatch):
    """The digits table is read straight from scikit-learn's file (no sklearn import); it must equal
    load_digits exactly, and the fallback (file moved) must give the same."""
    from fastroar.datasets import blockdigits

    digits = load_digits()
    want_images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images, labels = blockdigits.load_digit_blocks()
    assert np.array_equal(images, want_images) and np.array_equal(labels, digits.target)
    assert labels.dtype == np.int64 and images.dtype == np.uint8
    monkeypatch.setattr(blockdigits.importlib.util, "find_spec", lambda name: None)
    images2, labels2 = blockdigits.load_digit_blocks()
    assert np.array_equal(images2, want_images) and np.array_equal(labels2, digits.target)


def test_blockdigits_top_and_seeding():
    top = build_dataset("blockdigits-top")
    assert top.train.signal.reshape(-1, 16, 8)[:, :8].all()
    a, b, c = (build_dataset("blockdigits", seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.train.images, b.train.images)
    assert not np.array_equal(a.train.images, c.train.images)


def test_leakage_follows_equation_2():
    ds = build_dataset("leakage", d=8, block_dim=3, eta=0.4, n_train=500, n_test=100, seed=0)
    x = ds.train.images[:, 0]  # (N, d, block_dim)
    y = 2 * ds.train.labels - 1
    sig = ds.train.signal.reshape(-1, 8, 3)[:, :, 0]
    j = sig.argmax(1)
    assert (sig.sum(1) == 1).all() and (j < 4).all() and len(set(j)) == 4
    u = np.full(3, 1 / np.sqrt(3))
    # the signal block is y*u* + eta*g_j: its residual is an eta-ball draw like every noise block's
    residual = np.linalg.norm(x[np.arange(500), j] - y[:, None] * u, axis=1)
    noise = np.linalg.norm(x, axis=2)[~sig]
    assert residual.max() <= 0.4 + 1e-6 and noise.max() <= 0.4 + 1e-6
    # uniform in the 3-ball of radius eta: E|eta*g| = 3/4 * eta = 0.3 (500 and 3500 draws)
    assert abs(residual.mean() - 0.3) < 0.03 and abs(noise.mean() - 0.3) < 0.02


def test_leakage_signal_block_equals_y_u_star_plus_eta_g_j():
    """eq. (2) exactly: the same generator calls, drawn by hand (the eta*g_j term used to be dropped)."""
    from fastroar.datasets.leakage import uniform_ball

    ds = build_dataset("leakage", d=6, block_dim=2, eta=0.3, n_train=50, n_test=40, seed=5)
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 50)
    j = rng.integers(0, 3, 50)
    g = uniform_ball(rng, (50, 6), 2)
    want = 0.3 * g
    want[np.arange(50), j] += (2 * y - 1)[:, None] * np.full(2, 1 / np.sqrt(2))
    np.testing.assert_array_equal(ds.train.labels, y)
    np.testing.assert_allclose(ds.train.images[:, 0], want.astype(np.float32), rtol=1e-6)
    assert np.array_equal(ds.train.signal.reshape(50, 6, 2)[:, :, 0].argmax(1), j)


def test_leakage_test_split_is_label_balanced_and_all_blocks_variant():
    ds = build_dataset("leakage", n_train=301, n_test=301, seed=1)
    assert np.bincount(ds.test.labels).tolist() == [150, 151]
    allv = build_dataset("leakage", d=10, n_train=2000, n_test=100, seed=1, signal_blocks="all")
    j = allv.train.signal.argmax(1)
    assert set(j) == set(range(10))                       # every block can hold the signal
    x = allv.train.images.reshape(2000, -1)
    np.testing.assert_array_equal(x, (2 * allv.train.labels - 1)[:, None] * np.eye(10)[j])  # x = y*e_j
    assert allv.params["signal_blocks"] == "all" and "signal_blocks" not in ds.params
    with pytest.raises(ConfigError):
        build_dataset("leakage", signal_blocks="some")


@pytest.mark.parametrize("name,params", [("mnist-ish", {}), ("leakage", {"d": 7}), ("leakage", {"eta": -1})])
def test_bad_dataset_requests(name, params):
    with pytest.raises(ConfigError):
        build_dataset(name, **params)
