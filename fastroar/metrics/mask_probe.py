"""The mask-only control: how well the keep-mask alone, without any pixel value, predicts the label.

DiffROAR retrains on images whose unkept coordinates are removed, but which coordinates are kept is
chosen by the base model's attribution, so the mask's shape can itself encode the label ("class
information leakage", Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
Methods", ICML 2022, Sec. 3 - shown there for ROAR). The control trains a probe on the binary keep-mask
of each train image (1 = kept, 0 = removed; the keep rule of fastroar.method) and reports its accuracy
on the test images' masks. When it reaches the retrained model's accuracy, that DiffROAR cell measures
the mask's shape as much as the kept pixels.

The probe is a multinomial logistic regression (scikit-learn, L-BFGS, L2 penalty C = 1, on the 0/1
features as they are), on one BLAS thread: deterministic, about 0.1 s per (k, direction) at d = 128 with
1,438 train images. It is a cheaper stand-in for retraining the study's own architecture on the mask as
the input image; tools/mask_probe_check.py compares the two on a study's rank maps.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastroar.method import check_direction, keep_range

# enters the cache key. A larger train split is subsampled (seeded) to max_train images, fewer where
# d is large (max_elements / d, at least min_train), which bounds the probe's memory (float64 features) and time.
PROBE = {"probe": "logreg-multinomial", "C": 1.0, "max_iter": 1000, "max_train": 10_000, "max_elements": 50_000_000,
         "min_train": 1000, "seed": 0, "version": 1}


def keep_mask(ranks: np.ndarray, k: float, direction: str) -> np.ndarray:
    """(N, d) ranks -> (N, d) bool keep-mask of the top-k or bottom-k scheme (fastroar.method's keep rule)."""
    ranks = np.asarray(ranks)
    lo, hi = keep_range(k, check_direction(direction), ranks.shape[-1])
    return (ranks >= lo) & (ranks < hi)


def probe_accuracy(train_mask: np.ndarray, train_labels: np.ndarray, test_mask: np.ndarray,
                   test_labels: np.ndarray, C: float = PROBE["C"], max_iter: int = PROBE["max_iter"]) -> float:
    """Test accuracy of a multinomial logistic regression fitted on the train keep-masks (N, d) bool.

    Where every train mask is the same (nothing to learn from), the probe predicts the train split's
    majority class, as any classifier that sees a constant input must."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    xtr = np.asarray(train_mask, dtype=np.float64).reshape(len(train_mask), -1)
    xte = np.asarray(test_mask, dtype=np.float64).reshape(len(test_mask), -1)
    ytr, yte = np.asarray(train_labels), np.asarray(test_labels)
    if len(np.unique(ytr)) < 2 or not (xtr != xtr[:1]).any():
        values, counts = np.unique(ytr, return_counts=True)
        return float(np.mean(yte == values[np.argmax(counts)]))
    # one BLAS thread: the fit's products are tiny, and on a busy machine threads made it 40x slower (measured)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)  # a probe stopped at max_iter is still a probe
        probe = LogisticRegression(C=C, max_iter=max_iter).fit(xtr, ytr)
    return float(np.mean(probe.predict(xte) == yte))


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
