"""Experiment 4 of `fastroar replicate`: DiffROAR of input gradients, standard vs robust, from a workdir's
retraining results (retrained first when asked and missing), with the paired interval of the difference per
k and the ROAD estimate beside it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastroar.engine.results import read_results
from fastroar.errors import FastroarError
from fastroar.metrics.diffroar import comparison_rows, diffroar_rows
from fastroar.stages.contract import Context
from fastroar.stages.estimate import estimate
from fastroar.stages.precompute import precompute
from fastroar.stages.replicate.results import DiffroarComparison, DiffroarMissing, StandardVsRobust
from fastroar.stages.report import plot_curves, road_estimates
from fastroar.stages.retrain import retrain


def diffroar_experiment(ctx: Context, prepared_key: str, hashes: dict[str, str], out_dir: Path,
                        fill_missing: bool = False,
                        png_name: str = "diffroar_standard_vs_robust.png") -> DiffroarComparison | DiffroarMissing:
    """Standard vs robust DiffROAR of `gradient` on ctx's workdir: the records of these models (`hashes`:
    name -> model hash) on this prepared data (`prepared_key`); fill_missing runs the precompute and retrain
    stages first when there are none."""
    cfg, wd, log = ctx.cfg, ctx.wd, ctx.log

    def ours() -> list[dict[str, Any]]:
        return [r for r in read_results(wd.results_path).values()   # zero fill: imputed records are section 5's
                if r.get("dataset_key") == prepared_key and hashes.get(r["model"]) == r.get("model_hash")
                and not r.get("impute")]

    records = ours()
    if fill_missing and not any(r["attribution"] == "gradient" for r in records):
        t0 = time.perf_counter()
        precompute(ctx, attributions=["gradient"])
        retrain(ctx, attributions=["gradient"])
        log(f"[replicate] DiffROAR of gradient on {cfg.dataset.name} in {time.perf_counter() - t0:.1f}s")
        records = ours()
    if not records:
        return DiffroarMissing(
            note=f"no retraining results for these models in {wd.results_path}; run `fastroar run "
                 f"--workdir {wd.root}` first, then rerun `fastroar replicate`")
    rows = diffroar_rows(records)
    paired = {(c["of"], c["a"], c["b"], c["k"]): c for c in comparison_rows(records)}
    try:  # the cheap estimate beside it (skips what `fastroar estimate` already wrote)
        quiet = Context(cfg, wd, log=lambda *a, **k: None, progress=ctx.progress)
        estimate(quiet, models=sorted(hashes), attributions=["gradient"], levels=sorted({r["k"] for r in rows}))
    except FastroarError as e:
        log(f"[replicate] no ROAD estimate: {e}")
    road = road_estimates(wd, prepared_key, records)
    for r in rows:
        if (r["model"], r["attribution"], r["k"]) in road:
            r["road"] = road[(r["model"], r["attribution"], r["k"])]
    std = [m.name for m in cfg.models if not m.adversary]
    rob = [m.name for m in cfg.models if m.adversary]
    comparison: list[StandardVsRobust] = []
    if std and rob:
        by = {(r["model"], r["attribution"], r["k"]): r for r in rows}
        for k in sorted({r["k"] for r in rows}):
            s, r = by.get((std[0], "gradient", k)), by.get((rob[0], "gradient", k))
            if s and r:
                comparison.append(standard_vs_robust(k, s, r, paired_test(paired, "gradient", rob[0], std[0], k)))
    png = out_dir / png_name
    plot_curves(rows, png, f"DiffROAR on {cfg.dataset.name}: standard vs robust")
    return DiffroarComparison(
        rows=rows, comparison=comparison, png=str(png),
        robust_higher_at_every_k=bool(comparison) and all(c.robust_higher for c in comparison),
        significantly_higher=sum(1 for c in comparison if c.difference_ci and c.difference_ci[0] > 0))


def standard_vs_robust(k: float, s: dict[str, Any], r: dict[str, Any], test: dict[str, Any] | None) -> StandardVsRobust:
    """One k's comparison from the standard (s) and robust (r) DiffROAR rows and their paired test."""
    c = StandardVsRobust(k=k, standard=s["diffroar"], standard_std=s["std"], robust=r["diffroar"], robust_std=r["std"],
                         standard_ci=[s["ci_low"], s["ci_high"]], robust_ci=[r["ci_low"], r["ci_high"]],
                         difference_ci=[test["ci_low"], test["ci_high"]] if test else None,
                         p_two_sided=test["p_two_sided"] if test else None,
                         robust_higher=r["diffroar"] > s["diffroar"], runs=min(s["runs"], r["runs"]),
                         standard_road=s.get("road"), robust_road=r.get("road"))
    if c.standard_road is not None and c.robust_road is not None:
        c.road_same_order = (c.robust_road > c.standard_road) == c.robust_higher
    return c


def paired_test(paired: dict[tuple, dict[str, Any]], of: str, a: str, b: str, k: float) -> dict[str, Any] | None:
    """The paired comparison a - b (comparison_rows keeps one order per pair: flipped here when needed)."""
    if (of, a, b, k) in paired:
        return paired[(of, a, b, k)]
    c = paired.get((of, b, a, k))
    if c is None:
        return None
    return c | {"a": a, "b": b, "difference": -c["difference"], "ci_low": -c["ci_high"], "ci_high": -c["ci_low"]}
