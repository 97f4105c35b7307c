"""Attribution quality against a known signal block, the chance level of a split, and what DiffROAR must
give on the leakage data of eq. (2) (Shah et al. 2021) for an attribution that hits the signal block at a
known rate.

AQ (the reference repository's synthetic score, notebook 02_fig_in_synthetic_data.ipynb, cells 16-18) is
P(top-1 coordinate = j*) - P(bottom-1 coordinate = j*). For a signal block of m coordinates it is taken at
top-m / bottom-m: the share of the m highest-ranked coordinates inside the block minus the share of the m
lowest-ranked ones (m = 1: the hit rates above). It lies in [-1, 1]: +1 for an attribution whose top-m are
always the block, -1 for one whose bottom-m always are.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def aq_hits(ranks: np.ndarray, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample, the shares of its top-m and of its bottom-m ranked coordinates inside its signal block
    (m = the block's size): AQ is the mean of their difference."""
    r = np.asarray(ranks)
    s = np.asarray(signal, bool)
    if r.shape != s.shape or r.ndim != 2:
        raise ValueError(f"ranks and signal must both be (N, d), got {r.shape} and {s.shape}")
    m = s.sum(1)
    if (m == 0).any():
        raise ValueError("every sample needs a non-empty signal block")
    d = r.shape[1]
    return ((r < m[:, None]) & s).sum(1) / m, ((r >= d - m[:, None]) & s).sum(1) / m


def attribution_quality(ranks: np.ndarray, signal: np.ndarray) -> dict[str, Any]:
    """AQ of rank maps (N, d) (0 = most important) against signal masks (N, d) bool; each sample's m is
    its block size. Returns {"top_hit", "bottom_hit", "aq", "aq_se", "m"}: mean top-m and bottom-m shares,
    their difference, its standard error over samples, and m (an int when every block has the same size,
    else the mean size)."""
    top, bottom = aq_hits(ranks, signal)
    m = np.asarray(signal, bool).sum(1)
    diff = top - bottom
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
    size = int(m[0]) if (m == m[0]).all() else float(m.mean())
    return {"top_hit": float(top.mean()), "bottom_hit": float(bottom.mean()), "aq": float(diff.mean()),
            "aq_se": se, "m": size}


def majority_rate(labels: np.ndarray) -> float:
    """Chance accuracy of a split: the share of its most frequent label (what a constant predictor gets)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    return float(np.bincount(y).max() / len(y)) if len(y) else float("nan")


def leakage_diffroar_expectation(p_top: float, p_bottom: float, chance: float = 0.5) -> float:
    """DiffROAR(k = 1/d) on eq. (2) data with eta = 0 and d~ = 1, for an attribution whose kept top-1 (bottom-1)
    coordinate is the signal one with probability p_top (p_bottom), the retrained model being Bayes-optimal:
    when the kept coordinate is the signal one it shows y (accuracy 1), otherwise it is 0 and the model can
    only predict a constant (accuracy `chance`, the test split's majority rate for a balanced split). So
    acc = p + (1 - p) * chance and DiffROAR = (1 - chance) * (p_top - p_bottom): 0.5 * (p_top - p_bottom) at
    chance 0.5. A perfectly localizing attribution (p_top = 1, p_bottom = 0) gives the ceiling 1 - chance;
    a perfectly leaking one (Theorem 1: equal on the d/2 task-relevant blocks, so p_top = 2/d, p_bottom = 0)
    gives (1 - chance) * 2/d, 0.1 for d = 10."""
    return (1.0 - chance) * (float(p_top) - float(p_bottom))
