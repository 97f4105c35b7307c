"""The mask-only probe's fit (fastroar.metrics.mask_probe.fit_logistic) against scikit-learn's
LogisticRegression on the same data, its determinism, and the cache of fastroar.stages.mask_control: a
record of the previous probe version is not reused, and a model-independent attribution's cells are
probed once for every model."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from fastroar.metrics import mask_probe
from fastroar.metrics.mask_probe import fit_logistic, probe_accuracy

CLASSES, D = 6, 48


def masks(n: int, density: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) bool masks of the given density whose class c sets coordinates c, c + CLASSES, ... more often."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    p = np.full((n, D), density)
    p[np.arange(D)[None, :] % CLASSES == y[:, None]] = min(1.0, density + 0.25)
    return rng.random((n, D)) < p, y


def sklearn_fit(x: np.ndarray, y: np.ndarray, **kw):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=1.0, **kw).fit(x.astype(np.float64), y)


@pytest.mark.parametrize("density, sparse", [(0.1, True), (0.6, False)])
def test_the_fit_is_scikit_learns_logistic_regression(density, sparse):
    x, y = masks(600, density, 0)
    xte, yte = masks(400, density, 1)
    assert mask_probe.SPARSE_MAX_DENSITY == 0.4
    assert (type(mask_probe._features(x)).__name__ == "csr_matrix") == sparse
    ref = sklearn_fit(x, y, tol=1e-10, max_iter=10_000)        # the minimizer, to high precision
    w, b = fit_logistic(x, y, CLASSES, tol=1e-10, max_iter=10_000)
    np.testing.assert_allclose(w, ref.coef_, atol=2e-5)
    np.testing.assert_allclose(b, ref.intercept_, atol=2e-4)
    # at the probe's own tolerance: the test accuracy of scikit-learn's default fit, to an image or two
    default = sklearn_fit(x, y, max_iter=1000)
    want = float(np.mean(default.predict(xte.astype(np.float64)) == yte))
    assert abs(probe_accuracy(x, y, xte, yte) - want) <= 2 / len(yte)
    assert probe_accuracy(x, y, xte, yte, tol=1e-10, max_iter=10_000) == float(
        np.mean(ref.predict(xte.astype(np.float64)) == yte))


def test_sparse_and_dense_features_reach_the_same_fit(monkeypatch):
    x, y = masks(500, 0.2, 2)
    fits = []
    for share in (0.0, 1.0):   # every mask dense, every mask CSR
        monkeypatch.setattr(mask_probe, "SPARSE_MAX_DENSITY", share)
        fits.append(fit_logistic(x, y, CLASSES, tol=1e-10, max_iter=10_000))
    np.testing.assert_allclose(fits[0][0], fits[1][0], atol=1e-5)
    np.testing.assert_allclose(fits[0][1], fits[1][1], atol=1e-4)


def test_the_probe_is_deterministic():
    x, y = masks(500, 0.3, 3)
    xte, yte = masks(300, 0.3, 4)
    first, again = fit_logistic(x, y, CLASSES), fit_logistic(x, y, CLASSES)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert probe_accuracy(x, y, xte, yte) == probe_accuracy(x, y, xte, yte)


def test_old_probe_records_are_not_reused_and_model_independent_cells_are_probed_once(copy, monkeypatch):
    from fastroar.engine.results import append_result, read_results
    from fastroar.engine.store import RankStore
    from fastroar.keys import digest
    from fastroar.stages import mask_control
    from fastroar.stages.artifacts import load_prepared, sweep_records
    from fastroar.stages.contract import open_context
    from fastroar.training.jobs import SHARED_MODEL

    ctx = open_context(copy, log=lambda *a: None, progress=False)
    prepared = load_prepared(ctx.cfg, ctx.wd)
    _, mine, _, _ = sweep_records(ctx.cfg, ctx.wd, prepared)
    cells = {(r["model"], r["attribution"], float(r["k"]), r["direction"]) for r in mine}
    hashes = {r["model"]: r["model_hash"] for r in mine}
    models = sorted(hashes)
    assert len(models) == 2 and {c[1] for c in cells} == {"gradient", "random"}
    path = mask_control.mask_probe_path(ctx.wd)
    path.unlink(missing_ok=True)
    # a record of the version-1 probe (scikit-learn on the raw masks), keyed as it was then: not this probe's
    old = {"probe": "logreg-multinomial", "C": 1.0, "max_iter": 1000, "max_train": 10_000,
           "max_elements": 50_000_000, "min_train": 1000, "seed": 0, "version": 1}
    stale = (models[0], "gradient", min(c[2] for c in cells), "top")
    ident = mask_control.entry_identity(ctx.cfg, ctx.wd, prepared, stale[0], hashes[stale[0]], "gradient")
    append_result(path, {"key": digest({"entry": ident, "k": stale[2], "direction": "top", "probe": old}, 16),
                         "mask_acc": -1.0})

    calls = []
    real = mask_control.mask_only_accuracy
    monkeypatch.setattr(mask_control, "mask_only_accuracy", lambda *a: calls.append(a[4:]) or real(*a))
    out = mask_control.mask_controls(ctx.cfg, ctx.wd, prepared, cells, hashes)
    assert set(out) == cells and out[stale] >= 0.0
    gradient = [c for c in cells if c[1] == "gradient"]
    shared = {c[2:] for c in cells if c[1] == "random"}
    assert len(calls) == len(gradient) + len(shared)   # the random cells once, not once per model
    records = [r for r in read_results(path).values() if "model" in r]
    assert sorted((r["k"], r["direction"]) for r in records if r["model"] == SHARED_MODEL) == sorted(shared)

    # the shared record is right for every model: their random ranks are one array, probed as each model's
    store = RankStore(str(ctx.wd.store_path), mode="r")
    labels = {s: prepared.arrays(s)[1] for s in ("train", "test")}
    ranks = {}
    for m in models:
        entry = store.open_entry(m, "random", mask_control.entry_identity(ctx.cfg, ctx.wd, prepared, m, hashes[m],
                                                                           "random"))
        ranks[m] = {s: entry.split(s).read("ranks") for s in ("train", "test")}
    assert all(np.array_equal(ranks[models[0]][s], ranks[models[1]][s]) for s in ("train", "test"))
    k, direction = sorted(shared)[0]
    want = real(ranks[models[1]]["train"], labels["train"], ranks[models[1]]["test"], labels["test"], k, direction)
    assert out[(models[0], "random", k, direction)] == out[(models[1], "random", k, direction)] == want

    calls.clear()   # everything is cached now
    assert mask_control.mask_controls(ctx.cfg, ctx.wd, prepared, cells, hashes) == out and not calls


def test_a_model_independent_cell_is_probed_from_another_models_ranks_when_one_entry_is_gone(copy):
    import shutil

    from fastroar.engine.store import RankStore
    from fastroar.stages import mask_control
    from fastroar.stages.artifacts import load_prepared, sweep_records
    from fastroar.stages.contract import open_context

    ctx = open_context(copy, log=lambda *a: None, progress=False)
    prepared = load_prepared(ctx.cfg, ctx.wd)
    _, mine, _, _ = sweep_records(ctx.cfg, ctx.wd, prepared)
    cells = {(r["model"], "random", float(r["k"]), r["direction"]) for r in mine if r["attribution"] == "random"}
    hashes = {r["model"]: r["model_hash"] for r in mine}
    first, second = sorted(hashes)
    store = RankStore(str(ctx.wd.store_path), mode="r")
    entry = store.open_entry(second, "random", mask_control.entry_identity(ctx.cfg, ctx.wd, prepared, second,
                                                                            hashes[second], "random"))
    ranks = {s: entry.split(s).read("ranks") for s in ("train", "test")}
    shutil.rmtree(ctx.wd.store_path / first / "random")   # the first model's ranks are gone, the second's stay
    mask_control.mask_probe_path(ctx.wd).unlink(missing_ok=True)
    notes = []
    out = mask_control.mask_controls(ctx.cfg, ctx.wd, prepared, cells, hashes, notes.append)
    assert set(out) == cells and not notes
    labels = {s: prepared.arrays(s)[1] for s in ("train", "test")}
    for _, _, k, direction in cells:
        want = mask_probe.mask_only_accuracy(ranks["train"], labels["train"], ranks["test"], labels["test"], k,
                                             direction)
        assert out[(first, "random", k, direction)] == out[(second, "random", k, direction)] == want
