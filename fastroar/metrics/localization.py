"""Signal-block localization: where a dataset records each sample's signal block, the share of the top-k
ranked coordinates that lie inside it."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fastroar.engine.kernels.reference import keep_mask_reference
from fastroar.method import n_kept


def localization(ranks: np.ndarray, signal: np.ndarray, levels: Sequence[float]) -> list[float]:
    """Per level k: the share of the top-k ranked coordinates lying in the sample's signal block, averaged."""
    return [float(np.mean(shares)) if shares.size else float("nan")
            for shares in (localization_shares(ranks, signal, k) for k in levels)]


def localization_shares(ranks: np.ndarray, signal: np.ndarray, k: float) -> np.ndarray:
    """Per sample: the share of its top-k ranked coordinates lying in its signal block (empty when k keeps
    no coordinate)."""
    r = np.asarray(ranks)
    n = n_kept(k, r.shape[1])
    if not n:
        return np.zeros(0)
    return (keep_mask_reference(r, k, "top") & signal).sum(axis=1) / n
