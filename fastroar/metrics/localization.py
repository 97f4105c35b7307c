"""Signal-block localization: where a dataset records each sample's signal block, the share of the top-k
ranked coordinates that lie inside it."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fastroar.engine.kernels.reference import keep_mask_reference
from fastroar.method import n_kept


def localization(ranks: np.ndarray, signal: np.ndarray, levels: Sequence[float]) -> list[float]:
    """Per level k: the share of the top-k ranked coordinates lying in the sample's signal block, averaged."""
    r = np.asarray(ranks)
    out = []
    for k in levels:
        keep = keep_mask_reference(r, k, "top")
        n = n_kept(k, r.shape[1])
        hits = (keep & signal).sum(axis=1)
        out.append(float(np.mean(hits / n)) if n else float("nan"))
    return out
