"""DiffROAR(k) = mean acc(top-k) - mean acc(bottom-k), from the retraining records of one sweep, with a 95 %
confidence interval and tests (fastroar.metrics.intervals) from the records' per-image test outcomes.

A row is one (model, attribution, k). Base models trained as replicates of one entry of `models`
(`replicates: B`) form one family: `families` maps each model name to its family, and the family's row
pools its B base models, so its interval spans base models too. Runs pair by seed (seed s of the top-k
model with seed s of the bottom-k one); rows only count seeds run in both directions. Records without
per-image outcomes (written before they existed) still report: their interval comes from seeds alone
and its `interval` text says so.
"""
from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any, Iterable, Mapping

import numpy as np

from fastroar.engine.hits import unpack_hits
from fastroar.metrics.intervals import RowInterval, compare_rows, diffroar_interval, seeds_only_interval

LEVEL = 0.95

# (family, attribution, k) -> base model name -> direction -> seed -> record
_Grouped = dict[tuple[str, str, float], dict[str, dict[str, dict[int, dict[str, Any]]]]]


def group_records(records: Iterable[dict[str, Any]], families: Mapping[str, str] | None = None) -> _Grouped:
    """Records by row (family, attribution, k), base model, direction and seed."""
    families = families or {}
    rows: _Grouped = defaultdict(lambda: defaultdict(lambda: {"top": {}, "bottom": {}}))
    for r in records:
        family = families.get(r["model"], r["model"])
        rows[(family, r["attribution"], float(r["k"]))][r["model"]][r["direction"]][int(r["seed"])] = r
    return rows


def paired_seeds(by_base: Mapping[str, Mapping[str, Mapping[int, Any]]]) -> dict[str, list[int]]:
    """Per base model, the seeds recorded in both directions (sorted)."""
    return {base: sorted(set(d["top"]) & set(d["bottom"])) for base, d in sorted(by_base.items())}


def outcome_arrays(by_base: Mapping[str, Mapping[str, Mapping[int, dict[str, Any]]]]
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """(top, bottom) per-image outcomes, (B, S, N) bool, of a row's base models over the seeds every one of
    them has in both directions; None where a record lacks outcomes or they do not line up."""
    seeds = paired_seeds(by_base)
    common = sorted(set.intersection(*(set(s) for s in seeds.values()))) if seeds else []
    if not common:
        return None
    arrays: dict[str, list[list[np.ndarray]]] = {"top": [], "bottom": []}
    for base in seeds:
        for direction in ("top", "bottom"):
            per_seed = [unpack_hits(by_base[base][direction][s].get("hits")) for s in common]
            if any(h is None for h in per_seed):
                return None
            arrays[direction].append(per_seed)
    sizes = {h.size for d in arrays.values() for seeds_ in d for h in seeds_}
    if len(sizes) != 1:
        return None
    return np.array(arrays["top"], dtype=bool), np.array(arrays["bottom"], dtype=bool)


def row_interval(by_base: Mapping[str, Mapping[str, Mapping[int, dict[str, Any]]]], diffs: np.ndarray) -> RowInterval:
    """The row's interval: from per-image outcomes (seeds, test images, base models), else from `diffs`, the
    per-seed accuracy differences, alone (old records)."""
    arrays = outcome_arrays(by_base)
    if arrays is not None:
        return diffroar_interval(*arrays, level=LEVEL)
    return seeds_only_interval(diffs, level=LEVEL)


def diffroar_rows(records: Iterable[dict[str, Any]], families: Mapping[str, str] | None = None
                  ) -> list[dict[str, Any]]:
    """One row per (model or family, attribution, k) with both directions recorded: acc_top, acc_bottom,
    diffroar (their paired difference), its 95 % interval ci_low..ci_high, standard error, the one-sided
    p-value of DiffROAR > 0 (p_positive), std over runs (of acc(top) - acc(bottom); NaN for one run), runs
    (seed pairs over all base models), bases, and `interval`: what the interval spans."""
    out = []
    for (model, attribution, k), by_base in sorted(group_records(records, families).items()):
        seeds = paired_seeds(by_base)
        pairs = [(by_base[b]["top"][s], by_base[b]["bottom"][s]) for b, ss in seeds.items() for s in ss]
        if not pairs:
            continue
        top = np.array([float(t["accuracy"]) for t, _ in pairs])
        bottom = np.array([float(b["accuracy"]) for _, b in pairs])
        diff = top - bottom
        iv = row_interval(by_base, diff)
        out.append({
            "model": model, "attribution": attribution, "k": k,
            "acc_top": float(top.mean()), "acc_bottom": float(bottom.mean()), "diffroar": float(diff.mean()),
            "ci_low": iv.lo, "ci_high": iv.hi, "se": iv.se, "p_positive": iv.p_positive,
            "std": float(diff.std(ddof=1)) if len(pairs) > 1 else float("nan"),
            "runs": len(pairs), "bases": sum(1 for ss in seeds.values() if ss), "interval": iv.method,
        })
    return out


def comparison_rows(records: Iterable[dict[str, Any]], families: Mapping[str, str] | None = None
                    ) -> list[dict[str, Any]]:
    """Paired tests between rows of the same k: two models (or families) with the same attribution, and
    two attributions of the same model: difference of DiffROARs (first minus second), its 95 % interval,
    two-sided p-value, on the same test images and seeds (fastroar.metrics.intervals.compare_rows). Rows
    without per-image outcomes are left out."""
    arrays = {key: outcome_arrays(by_base) for key, by_base in group_records(records, families).items()}
    arrays = {key: a for key, a in arrays.items() if a is not None}
    out = []
    for (ka, a), (kb, b) in combinations(sorted(arrays.items()), 2):
        (model_a, attr_a, k_a), (model_b, attr_b, k_b) = ka, kb
        if k_a != k_b or (model_a != model_b and attr_a != attr_b) or a[0].shape[2] != b[0].shape[2]:
            continue
        bases, seeds = min(a[0].shape[0], b[0].shape[0]), min(a[0].shape[1], b[0].shape[1])
        c = compare_rows(a[0][:bases, :seeds], a[1][:bases, :seeds], b[0][:bases, :seeds], b[1][:bases, :seeds],
                         level=LEVEL)
        what = attr_a if model_a == model_b else model_a
        against = attr_b if model_a == model_b else model_b
        out.append({"k": k_a, "of": model_a if model_a == model_b else attr_a, "a": what, "b": against,
                    "difference": c.difference, "ci_low": c.lo, "ci_high": c.hi, "p_two_sided": c.p_two_sided,
                    "runs": bases * seeds})
    return sorted(out, key=lambda r: (r["of"], r["a"], r["b"], r["k"]))
