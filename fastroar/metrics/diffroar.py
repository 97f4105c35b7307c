"""DiffROAR(k) = mean acc(top-k) - mean acc(bottom-k), from the retraining records of one sweep."""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import numpy as np


def diffroar_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, attribution, k) with both directions recorded.

    std is the sample standard deviation over seeds of acc(top) - acc(bottom), pairing runs by seed
    (NaN for a single run: one run has no spread to estimate); rows only count seeds run in both directions.
    """
    acc: dict[tuple, dict[str, dict[int, float]]] = defaultdict(lambda: {"top": {}, "bottom": {}})
    for r in records:
        acc[(r["model"], r["attribution"], float(r["k"]))][r["direction"]][int(r["seed"])] = float(r["accuracy"])
    rows = []
    for (model, attribution, k), by_dir in sorted(acc.items()):
        seeds = sorted(set(by_dir["top"]) & set(by_dir["bottom"]))
        if not seeds:
            continue
        top = np.array([by_dir["top"][s] for s in seeds])
        bottom = np.array([by_dir["bottom"][s] for s in seeds])
        diff = top - bottom
        rows.append({
            "model": model, "attribution": attribution, "k": k,
            "acc_top": float(top.mean()), "acc_bottom": float(bottom.mean()),
            "diffroar": float(diff.mean()), "std": float(diff.std(ddof=1)) if len(seeds) > 1 else float("nan"),
            "runs": len(seeds),
        })
    return rows
