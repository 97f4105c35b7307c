#!/usr/bin/env python
"""How often a DiffROAR interval covers what it should: on a study's real records, or on simulated ones.

    python tools/interval_coverage.py WORKDIR [--subset 5]      # a study retrained with many seeds (e.g. 20)
    python tools/interval_coverage.py --simulate [--studies 1000]

Real records (WORKDIR/results/results.jsonl, or a .jsonl path): retraining records (model, attribution, k,
direction, seed, accuracy, and ``hits``, the per-image outcomes of fastroar/engine/hits.py) are grouped
into rows by (model, attribution, k) and paired by seed. For every row, the all-seed mean is the target;
the seeds are cut, in seed order, into disjoint subsets of ``--subset`` seeds (the first one is "the
first 5 seeds") and of 2 seeds, and the table says how often each kind of interval from a subset covers
the all-seed mean:

- ``interval``: fastroar.metrics.intervals.diffroar_interval (seeds and test images);
- ``seeds-only t``: the Student t interval over the subset's per-seed DiffROARs;
- ``mean ± std``: what the report printed before: mean ± sample std over the subset's seeds.

The all-seed mean shares the subsets' test images, so it is a stricter target for a seeds-only interval
than for one that includes the test set. Rows whose records lack ``hits`` get only the seeds-only lines.

--simulate: the same methods on simulated studies (fastroar.metrics.intervals.simulate_outcomes, with the
noise sizes measured on the default study), against the true DiffROAR (expectation over seeds and the
population of test images; a fresh test set per study); and what ``retrain.seeds: auto``
(more_seeds_useful) spends and covers against fixed 5 and 20 seeds.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from scipy import stats

from fastroar.engine.hits import unpack_hits
from fastroar.engine.results import read_results
from fastroar.metrics.intervals import batch_intervals, diffroar_interval, more_seeds_useful, simulate_outcomes

LEVEL = 0.95


@dataclass
class Row:
    """One DiffROAR row's paired seeds: per-seed accuracies, and per-image outcomes (S, N) when all have hits."""

    model: str
    attribution: str
    k: float
    seeds: list[int]
    acc_top: np.ndarray
    acc_bottom: np.ndarray
    top: np.ndarray | None
    bottom: np.ndarray | None

    @property
    def diffs(self) -> np.ndarray:
        """Per-seed DiffROARs, from the per-image outcomes when present (they agree with the accuracies)."""
        if self.top is not None:
            return self.top.mean(axis=1) - self.bottom.mean(axis=1)
        return self.acc_top - self.acc_bottom


def rows_from_records(records: Iterable[dict[str, Any]]) -> tuple[list[Row], list[str]]:
    """(rows, notes): records grouped by (model, attribution, k), paired by seed; notes say what was dropped."""
    by_row: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = defaultdict(lambda: {"top": {}, "bottom": {}})
    notes: list[str] = []
    duplicates = 0
    for r in records:
        if r.get("direction") not in ("top", "bottom") or "accuracy" not in r:
            continue
        row = by_row[(r["model"], r["attribution"], float(r["k"]))][r["direction"]]
        if int(r["seed"]) in row:
            duplicates += 1
            continue
        row[int(r["seed"])] = r
    if duplicates:
        notes.append(f"{duplicates} record(s) repeat a (row, direction, seed) already read (other settings?): "
                     "the first one read counts")
    rows = []
    for (model, attribution, k), by_dir in sorted(by_row.items()):
        seeds = sorted(set(by_dir["top"]) & set(by_dir["bottom"]))
        if not seeds:
            continue
        top_recs = [by_dir["top"][s] for s in seeds]
        bottom_recs = [by_dir["bottom"][s] for s in seeds]
        hits_top = [unpack_hits(r.get("hits")) for r in top_recs]
        hits_bottom = [unpack_hits(r.get("hits")) for r in bottom_recs]
        hits = hits_top + hits_bottom
        top = bottom = None
        if all(h is not None for h in hits) and len({h.size for h in hits}) == 1:
            top, bottom = np.stack(hits_top), np.stack(hits_bottom)
        elif any(h is not None for h in hits):
            notes.append(f"{model}/{attribution}/k={k}: per-image outcomes missing or of different lengths in "
                         "some records: seeds only")
        acc_top = np.array([float(r["accuracy"]) for r in top_recs])
        acc_bottom = np.array([float(r["accuracy"]) for r in bottom_recs])
        if top is not None and not (np.allclose(top.mean(1), acc_top, atol=1e-6)
                                    and np.allclose(bottom.mean(1), acc_bottom, atol=1e-6)):
            notes.append(f"{model}/{attribution}/k={k}: hits disagree with the recorded accuracy")
        rows.append(Row(model, attribution, k, seeds, acc_top, acc_bottom, top, bottom))
    return rows, notes


def _blocks(n_seeds: int, size: int) -> list[slice]:
    return [slice(i, i + size) for i in range(0, n_seeds - size + 1, size)]


def _covers(lo: float, hi: float, target: float) -> bool:
    return bool(lo <= target <= hi)  # NaN ends (one seed, no spread) never cover


def record_coverage(rows: list[Row], subset: int) -> list[dict[str, Any]]:
    """Coverage of the all-seed mean by intervals from disjoint seed subsets (first subset and all of them)."""
    tally: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    half_widths: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        diffs = row.diffs
        target = float(diffs.mean())
        if len(row.seeds) < 2 * subset:  # the all-seed mean must rest on more than one subset
            continue
        for size in sorted({2, subset}):
            for j, block in enumerate(_blocks(len(row.seeds), size)):
                which = ("first", "all") if j == 0 else ("all",)
                d = diffs[block]
                sd = d.std(ddof=1)
                lo_t, hi_t = (stats.t.interval(LEVEL, size - 1, loc=d.mean(), scale=sd / np.sqrt(size))
                              if sd > 0 else (np.nan, np.nan))
                results = {f"mean ± std, {size} seeds": _covers(d.mean() - sd, d.mean() + sd, target),
                           f"seeds-only t, {size} seeds": _covers(lo_t, hi_t, target)}
                if row.top is not None:
                    r = diffroar_interval(row.top[block], row.bottom[block], LEVEL)
                    results[f"interval, {size} seeds"] = _covers(r.lo, r.hi, target)
                    half_widths[f"interval, {size} seeds"].append(r.half_width)
                for method, ok in results.items():
                    for w in which:
                        tally[(method, w, "")].append(ok)
    out = []
    for (method, which, _), oks in sorted(tally.items()):
        hw = half_widths.get(method)
        out.append({"method": method, "subsets": "first" if which == "first" else "every disjoint",
                    "n": len(oks), "covered": int(sum(oks)), "rate": float(np.mean(oks)),
                    "median_half_width": float(np.median(hw)) if hw else float("nan")})
    return out


SCENARIOS = (  # (B, S, sd_base, sd_seed): probit-scale sds; sizes as measured on the default study
    (1, 5, 0.0, 0.08), (1, 2, 0.0, 0.08), (1, 5, 0.1, 0.15), (3, 5, 0.1, 0.08), (3, 2, 0.1, 0.08),
)


def replay_auto(rows: list[Row], first: int = 3, max_seeds: int = 20) -> list[dict[str, Any]]:
    """What `retrain.seeds: auto` runs on a study recorded with max_seeds seeds: each row starts with `first`
    seeds and takes the seeds the rule asks for, round by round, from the recorded ones (records are
    deterministic per seed under pinned kernels, so this is what a run would have trained). Per row: seeds
    used, the half-width then, and the half-width with all recorded seeds."""
    out = []
    for r in rows:
        if r.top is None or len(r.seeds) < max_seeds:
            continue
        s = first
        while True:
            advice = more_seeds_useful(r.top[None, :s], r.bottom[None, :s], min_seeds=first, max_seeds=max_seeds)
            if not advice.more:
                break
            s = min(max_seeds, s + advice.add)
        used = diffroar_interval(r.top[None, :s], r.bottom[None, :s])
        full = diffroar_interval(r.top[None, :max_seeds], r.bottom[None, :max_seeds])
        out.append({"row": f"{r.model}/{r.attribution}/k={r.k:g}", "seeds": s, "half_width": used.half_width,
                    f"half_width_{max_seeds}": full.half_width})
    return out


def simulated_coverage(studies: int, seed: int, n_images: int = 359) -> list[dict[str, Any]]:
    """Coverage of the true DiffROAR over simulated studies, per scenario and method."""
    rng = np.random.default_rng(seed)
    out = []
    for B, S, sd_base, sd_seed in SCENARIOS:
        sim = simulate_outcomes(rng, 0.6, 0.3, B, S, n_images, sd_base, sd_seed, studies=studies)
        d = sim.top.astype(np.int8) - sim.bottom.astype(np.int8)
        truth = sim.true_diffroar if B > 1 else sim.true_given_bases
        r = batch_intervals(d, LEVEL)
        per_seed = d.mean(axis=-1).reshape(studies, B * S)
        m, sd = per_seed.mean(1), per_seed.std(1, ddof=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            lo_t, hi_t = stats.t.interval(LEVEL, B * S - 1, loc=m, scale=sd / np.sqrt(B * S))
        name = f"B={B} S={S} sd_base={sd_base} sd_seed={sd_seed}"
        for method, covered, hw in (
            ("interval", (r["lo"] <= truth) & (truth <= r["hi"]), r["half_width"]),
            ("seeds-only t", (lo_t <= truth) & (truth <= hi_t), (hi_t - lo_t) / 2),
            ("mean ± std over seeds", np.abs(m - truth) <= sd, sd),
        ):
            out.append({"scenario": name, "method": method, "n": studies, "covered": int(covered.sum()),
                        "rate": float(covered.mean()), "median_half_width": float(np.nanmedian(hw))})
    return out


AUTO_SCENARIOS = (  # (sd_image, sd_seed): a row the test set dominates, the measured sizes, a noisy row
    (4.0, 0.03), (3.0, 0.08), (3.0, 0.4),
)


def simulated_auto(studies: int, seed: int, n_images: int = 359, max_seeds: int = 20) -> list[dict[str, Any]]:
    """retrain.seeds: auto (more_seeds_useful, from 3 seeds up to max_seeds) against fixed 5 and max_seeds."""
    rng = np.random.default_rng(seed)
    out = []
    for sd_image, sd_seed in AUTO_SCENARIOS:
        sim = simulate_outcomes(rng, 0.6, 0.3, 1, max_seeds, n_images, 0.0, sd_seed, sd_image=sd_image,
                                studies=studies)
        truth = sim.true_given_bases
        used, covered, half = [], [], []
        for i in range(studies):
            S = 3
            while (advice := more_seeds_useful(sim.top[i, :, :S], sim.bottom[i, :, :S], LEVEL,
                                               max_seeds=max_seeds)).more:
                S += advice.add
            r = diffroar_interval(sim.top[i, :, :S], sim.bottom[i, :, :S], LEVEL)
            used.append(S)
            covered.append(r.lo <= truth[i] <= r.hi)
            half.append(r.half_width)
        name = f"sd_image={sd_image} sd_seed={sd_seed}"
        out.append({"scenario": name, "seeds": "auto", "mean_seeds": float(np.mean(used)),
                    "rate": float(np.mean(covered)), "median_half_width": float(np.median(half))})
        for fixed in (5, max_seeds):
            r = batch_intervals(sim.top[..., :fixed, :].astype(np.int8) - sim.bottom[..., :fixed, :], LEVEL)
            out.append({"scenario": name, "seeds": str(fixed), "mean_seeds": float(fixed),
                        "rate": float(np.mean((r["lo"] <= truth) & (truth <= r["hi"]))),
                        "median_half_width": float(np.median(r["half_width"]))})
    return out


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    body = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(b, widths)) + " |" for b in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir", nargs="?", help="a study's workdir (or its results .jsonl)")
    p.add_argument("--subset", type=int, default=5, help="seeds per subset (default 5)")
    p.add_argument("--simulate", action="store_true", help="print the coverage on simulated studies")
    p.add_argument("--studies", type=int, default=1000, help="simulated studies per scenario (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="simulation RNG seed")
    p.add_argument("--auto", action="store_true",
                   help="also replay retrain.seeds: auto on the workdir's records (a study run with 20 seeds)")
    args = p.parse_args(argv)
    if args.subset < 2:
        p.error("--subset must be at least 2 (an interval needs two seeds)")
    if args.simulate:
        print(f"Coverage of the true DiffROAR by {LEVEL:.0%} intervals, {args.studies} simulated studies each")
        print(format_table(simulated_coverage(args.studies, args.seed),
                           ["scenario", "method", "n", "covered", "rate", "median_half_width"]))
        print(f"\nretrain.seeds: auto (more_seeds_useful's defaults: seed share <= 0.2, 3 to 20 seeds) vs fixed "
              f"seeds, {args.studies} studies each")
        print(format_table(simulated_auto(args.studies, args.seed),
                           ["scenario", "seeds", "mean_seeds", "rate", "median_half_width"]))
    if args.workdir:
        path = Path(args.workdir)
        if path.is_dir():
            path = path / "results" / "results.jsonl"
        if not path.exists():
            print(f"Error: no results log at {path}; pass a workdir that retrain has written to", file=sys.stderr)
            return 2
        rows, notes = rows_from_records(read_results(path).values())
        for n in notes:
            print(f"[coverage] {n}", file=sys.stderr)
        table = record_coverage(rows, args.subset)
        usable = sum(len(r.seeds) >= 2 * args.subset for r in rows)
        print(f"{path}: {len(rows)} rows, {usable} with at least {2 * args.subset} seeds; target: the all-seed mean")
        if not table:
            print(f"no row has {2 * args.subset} or more paired seeds: retrain with more seeds (e.g. 20)")
        else:
            print(format_table(table, ["method", "subsets", "n", "covered", "rate", "median_half_width"]))
        if args.auto:
            replay = replay_auto(rows)
            if replay:
                used = sum(r["seeds"] for r in replay)
                print(f"\nretrain.seeds: auto replayed on these records: {used} seed pairs of {20 * len(replay)} "
                      f"(20 per row), {5 * len(replay)} with seeds: 5")
                print(format_table(replay, ["row", "seeds", "half_width", "half_width_20"]))
    if not args.simulate and not args.workdir:
        p.error("pass a workdir, --simulate, or both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
