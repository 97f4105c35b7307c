"""AQ (attribution quality against the known signal block) by hand, and the analytic DiffROAR facts of the
leakage data: a perfectly localizing attribution scores the ceiling 1 - chance (0.5), a perfectly leaking
one (Theorem 1) 0.1 for d = 10 - checked by really retraining on rank maps fixed by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastroar.metrics.aq import attribution_quality, leakage_diffroar_expectation, majority_rate


def test_aq_top1_bottom1_by_hand():
    # d = 4, signal coordinate per sample; ranks 0 = most important
    ranks = np.array([[0, 1, 2, 3],    # j*=0 is top-1           -> +1
                      [3, 0, 1, 2],    # j*=0 is bottom-1        -> -1
                      [1, 0, 3, 2],    # j*=3 neither            ->  0
                      [2, 3, 0, 1]])   # j*=2 is top-1           -> +1
    signal = np.zeros((4, 4), bool)
    signal[[0, 1, 2, 3], [0, 0, 3, 2]] = True
    got = attribution_quality(ranks, signal)
    assert got["top_hit"] == 0.5 and got["bottom_hit"] == 0.25 and got["aq"] == 0.25 and got["m"] == 1
    assert got["aq_se"] == pytest.approx(np.std([1, -1, 0, 1], ddof=1) / 2)


def test_aq_top_m_bottom_m_for_blocks():
    # d = 6, blocks of m = 2
    ranks = np.array([[0, 1, 2, 3, 4, 5],     # block {0,1}: top-2 all in (1), bottom-2 none (0)
                      [0, 5, 1, 2, 3, 4]])    # block {1,2}: top-2 = {0,2} -> 1/2; bottom-2 = {1,5} -> 1/2
    signal = np.zeros((2, 6), bool)
    signal[0, [0, 1]] = True
    signal[1, [1, 2]] = True
    got = attribution_quality(ranks, signal)
    assert got["m"] == 2
    assert got["top_hit"] == pytest.approx(0.75) and got["bottom_hit"] == pytest.approx(0.25)
    assert got["aq"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        attribution_quality(ranks, np.zeros((2, 6), bool))


def test_majority_rate_and_the_expectation_formula():
    assert majority_rate(np.array([0, 1, 1, 1])) == 0.75 and majority_rate(np.array([0, 1])) == 0.5
    assert leakage_diffroar_expectation(1.0, 0.0) == 0.5
    assert leakage_diffroar_expectation(0.2, 0.0) == pytest.approx(0.1)
    assert leakage_diffroar_expectation(1.0, 0.0, chance=0.514) == pytest.approx(0.486)


def _retrained_diffroar_split(ds, train_scores: np.ndarray, test_scores: np.ndarray, seeds=(0, 1)) -> float:
    """DiffROAR(0.1) of fixed scores: fastroar's rank kernel, then the stacked retraining of `retrain`."""
    from fastroar.engine.kernels import rank
    from fastroar.training import Recipe
    from fastroar.training.batched import Spec, train_stacked

    def ranks_of(scores):
        return np.asarray(rank(torch.from_numpy(np.ascontiguousarray(scores, np.float32))))

    specs = [Spec(0.1, d, s) for d in ("top", "bottom") for s in seeds]
    out = train_stacked("mlp1", {"width": 32}, ds.shape, 2,
                        (ds.train.images, ds.train.labels, ranks_of(train_scores)),
                        (ds.test.images, ds.test.labels, ranks_of(test_scores)),
                        specs, Recipe(epochs=8, batch_size=100, lr=0.05, weight_decay=0.0))
    acc = {(sp.direction, sp.seed): o["accuracy"] for sp, o in zip(specs, out)}
    return float(np.mean([acc[("top", s)] - acc[("bottom", s)] for s in seeds]))


@pytest.fixture(scope="module")
def leakage_data():
    from fastroar.datasets import build_dataset

    return build_dataset("leakage", d=10, block_dim=1, eta=0.0, n_train=2000, n_test=1000, seed=3)


def test_perfectly_localizing_attribution_reaches_the_ceiling(leakage_data):
    ds = leakage_data
    assert majority_rate(ds.test.labels) == 0.5
    # the signal coordinate first, the others after it by index: top-1 = j*, bottom-1 = a noise block
    scores = lambda split: np.where(split.signal, 2.0, 1.0 - np.arange(10) / 10)  # noqa: E731
    from fastroar.engine.kernels import rank

    r = np.asarray(rank(torch.from_numpy(scores(ds.test).astype(np.float32))))
    assert attribution_quality(r, ds.test.signal)["aq"] == 1.0
    got = _retrained_diffroar_split(ds, scores(ds.train), scores(ds.test))
    assert got == pytest.approx(leakage_diffroar_expectation(1.0, 0.0, majority_rate(ds.test.labels)), abs=0.02)


def test_perfectly_leaking_attribution_gives_one_tenth(leakage_data):
    ds = leakage_data
    # Theorem 1: equal on the d/2 task-relevant blocks, lower on the noise blocks (the same for every sample)
    flat = np.r_[np.ones(5), np.zeros(5)]
    got = _retrained_diffroar_split(ds, np.tile(flat, (len(ds.train), 1)), np.tile(flat, (len(ds.test), 1)))
    # ties go to the lower index, so top-1 is block 0: the signal block for 1/5 of the samples
    p_top = float(np.mean(ds.test.signal[:, 0]))
    assert p_top == pytest.approx(0.2, abs=0.04)
    assert got == pytest.approx(leakage_diffroar_expectation(p_top, 0.0), abs=0.04)
    assert got == pytest.approx(0.1, abs=0.05)


def test_a_score_of_models_at_chance_never_reads_as_agreement():
    from fastroar.stages.replicate.claims import agree_trained

    assert agree_trained(1.0, 0.5, "yes") == "yes"
    verdict = agree_trained(0.52, 0.5, "yes")
    assert verdict.startswith("not comparable") and "acc 0.52, chance 0.50" in verdict
