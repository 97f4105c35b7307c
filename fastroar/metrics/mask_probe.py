"""The mask-only control: how well the keep-mask alone, without any pixel value, predicts the label.

DiffROAR retrains on images whose unkept coordinates are removed, but which coordinates are kept is
chosen by the base model's attribution, so the mask's shape can itself encode the label ("class
information leakage", Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022, Sec. 3 - shown there for ROAR). The control trains a probe on the binary keep-mask
of each train image (1 = kept, 0 = removed; the keep rule of fastroar.method) and reports its accuracy
on the test images' masks. When it reaches the retrained model's accuracy, that DiffROAR cell measures
the mask's shape as much as the kept pixels.

The probe is a multinomial logistic regression: scikit-learn's LogisticRegression objective (mean
cross-entropy plus an L2 penalty on the weights, C = 1, intercept unpenalized, lbfgs's stopping rule gtol =
tol = 1e-4) minimized by scipy's L-BFGS-B on one BLAS thread, deterministic. Two changes of how, not what,
make it 3-5x cheaper a cell at BlockMNIST's d = 1,568 (tools/bench_sparse.py's probe rows): the features are
centred in the solver's coordinates (w.(x - mean) + b' is the same model as w.x + b, b = b' - w.mean, with the
same penalty, so the same minimizer; the uncentred 0/1 masks make the problem badly conditioned and L-BFGS
took up to 5x more iterations), and masks that keep at most SPARSE_MAX_DENSITY of the coordinates are held as a
CSR matrix (products in proportion to the kept share; denser masks stay dense, where BLAS is faster). The
intercepts start at the classes' log frequencies, the optimum of the weights-zero model. It is a cheaper
stand-in for retraining the study's own architecture on the mask as the input image;
tools/mask_probe_check.py compares the two on a study's rank maps.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastroar.method import check_direction, keep_range

# enters the cache key. A larger train split is subsampled (seeded) to max_train images, fewer where
# d is large (max_elements / d, at least min_train), which bounds the probe's memory (float64 features) and time.
# version 2: the centred L-BFGS fit below (version 1: scikit-learn's LogisticRegression on the raw 0/1 masks,
# the same objective and tol, stopped elsewhere near the same minimum).
PROBE = {"probe": "logreg-multinomial", "C": 1.0, "max_iter": 1000, "tol": 1e-4, "max_train": 10_000,
         "max_elements": 50_000_000, "min_train": 1000, "seed": 0, "version": 2}

# masks keeping at most this share of the coordinates are fitted as CSR: measured at d = 1,568, N = 10,000,
# one thread, a loss-and-gradient evaluation took 0.14x the dense one's time at density 0.05, 0.5x at 0.2,
# 0.8x at 0.4 and 1.2x at 0.5
SPARSE_MAX_DENSITY = 0.4


def keep_mask(ranks: np.ndarray, k: float, direction: str) -> np.ndarray:
    """(N, d) ranks -> (N, d) bool keep-mask of the top-k or bottom-k scheme (fastroar.method's keep rule)."""
    ranks = np.asarray(ranks)
    lo, hi = keep_range(k, check_direction(direction), ranks.shape[-1])
    return (ranks >= lo) & (ranks < hi)


def probe_accuracy(train_mask: np.ndarray, train_labels: np.ndarray, test_mask: np.ndarray,
                   test_labels: np.ndarray, C: float = PROBE["C"], max_iter: int = PROBE["max_iter"],
                   tol: float = PROBE["tol"]) -> float:
    """Test accuracy of a multinomial logistic regression fitted on the train keep-masks (N, d) bool.

    Where every train mask is the same (nothing to learn from), the probe predicts the train split's
    majority class, as any classifier that sees a constant input must."""
    xtr = np.asarray(train_mask).reshape(len(train_mask), -1)
    xte = np.asarray(test_mask).reshape(len(test_mask), -1)
    ytr, yte = np.asarray(train_labels), np.asarray(test_labels)
    classes = np.unique(ytr)
    if len(classes) < 2 or not (xtr != xtr[:1]).any():
        values, counts = np.unique(ytr, return_counts=True)
        return float(np.mean(yte == values[np.argmax(counts)]))
    weights, intercept = fit_logistic(xtr, np.searchsorted(classes, ytr), len(classes), C, max_iter, tol)
    return float(np.mean(classes[np.argmax(_features(xte) @ weights.T + intercept, axis=1)] == yte))


def fit_logistic(x: np.ndarray, y: np.ndarray, n_classes: int, C: float = PROBE["C"],
                 max_iter: int = PROBE["max_iter"], tol: float = PROBE["tol"]) -> tuple[np.ndarray, np.ndarray]:
    """(weights (n_classes, d), intercepts (n_classes,)) of scikit-learn's multinomial LogisticRegression
    objective on features x (N, d) and labels y in 0..n_classes-1: mean over samples of the cross-entropy
    logsumexp(z) - z_y, z = W x + b, plus ||W||^2 / (2 C N). Minimized by scipy's L-BFGS-B with the options
    scikit-learn's lbfgs solver passes (gtol = tol, maxls 50, ftol 64 eps), in centred coordinates (module
    docstring), from intercepts at the log class frequencies, on one BLAS thread."""
    from scipy import optimize
    from scipy.special import logsumexp
    from threadpoolctl import threadpool_limits

    n, d = x.shape
    mean = np.asarray(x.mean(axis=0), dtype=np.float64).ravel()
    feats = _features(x)
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0
    l2 = 1.0 / (C * n)

    def loss_grad(v: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = v[:-n_classes].reshape(n_classes, d), v[-n_classes:]   # b: the centred features' intercepts
        z = feats @ w.T + (b - w @ mean)
        lse = logsumexp(z, axis=1)
        r = (np.exp(z - lse[:, None]) - onehot) / n                   # d loss / d z
        rsum = r.sum(axis=0)
        grad_w = np.asarray(feats.T @ r).T - np.outer(rsum, mean) + l2 * w
        loss = float(np.mean(lse - z[np.arange(n), y]) + 0.5 * l2 * np.sum(w * w))
        return loss, np.concatenate([grad_w.ravel(), rsum])

    v0 = np.zeros(n_classes * (d + 1))
    prior = np.log(np.maximum(np.bincount(y, minlength=n_classes), 1) / n)
    v0[-n_classes:] = prior - prior.mean()   # softmax-invariant shift: the intercepts sum to 0, as scikit-learn's
    with threadpool_limits(1):   # the fit's products are small; on a busy machine threads made it 40x slower
        res = optimize.minimize(loss_grad, v0, method="L-BFGS-B", jac=True,
                                options={"maxiter": max_iter, "maxls": 50, "gtol": tol,
                                         "ftol": 64 * np.finfo(float).eps})
    w = res.x[:-n_classes].reshape(n_classes, d)
    return w, res.x[-n_classes:] - w @ mean     # stopped at max_iter is still a probe


def _features(mask: np.ndarray) -> Any:
    """0/1 float64 features of (N, d) masks: a scipy CSR matrix where at most SPARSE_MAX_DENSITY of the
    entries are set, else a dense array."""
    import scipy.sparse as sp

    mask = np.asarray(mask)
    if np.count_nonzero(mask) <= SPARSE_MAX_DENSITY * mask.size:
        return sp.csr_matrix(mask).astype(np.float64)
    return mask.astype(np.float64)


def mask_only_accuracy(train_ranks: np.ndarray, train_labels: np.ndarray, test_ranks: np.ndarray,
                       test_labels: np.ndarray, k: float, direction: str) -> float:
    """The mask-only control of one (k, direction): probe_accuracy on the keep-masks of both splits (the train
    split subsampled to train_cap(d) images, seeded, when it is larger)."""
    train_labels = np.asarray(train_labels)
    cap = train_cap(int(np.shape(train_ranks)[-1]))
    if len(train_labels) > cap:
        rows = np.sort(np.random.default_rng(PROBE["seed"]).choice(len(train_labels), cap, replace=False))
        train_ranks, train_labels = np.asarray(train_ranks)[rows], train_labels[rows]
    return probe_accuracy(keep_mask(train_ranks, k, direction), train_labels,
                          keep_mask(test_ranks, k, direction), test_labels)


def train_cap(d: int) -> int:
    """How many train images the probe fits on at dimension d (PROBE's max_train, max_elements, min_train)."""
    return int(max(PROBE["min_train"], min(PROBE["max_train"], PROBE["max_elements"] // max(1, d))))


def leaks(mask_acc: float | None, retrained_acc: float | None, chance: float, n_test: int) -> bool:
    """Whether the mask alone reaches the retrained accuracy: mask_acc >= retrained_acc - m and
    mask_acc > chance + m, with m = two binomial standard errors of an accuracy on n_test images,
    2 * sqrt(p (1 - p) / n_test) at p = retrained_acc (floor 0.01). The second condition keeps a cell
    where both sit at chance (nothing learnt from either) from being flagged."""
    if mask_acc is None or retrained_acc is None or any(map(math.isnan, (mask_acc, retrained_acc))):
        return False
    margin = max(0.01, 2.0 * math.sqrt(retrained_acc * (1.0 - retrained_acc) / max(1, n_test)))
    return mask_acc >= retrained_acc - margin and mask_acc > chance + margin


def probe_settings() -> dict[str, Any]:
    return dict(PROBE)
