#!/usr/bin/env python
"""Validates the mask-only control's cheap probe against the retraining itself.

    python tools/mask_probe_check.py --workdir WORKDIR [--seeds 2]

For every (model, attribution, k, direction) of a finished study (`fastroar run`), trains the study's own
retrain architecture and recipe (the stacked trainer of `fastroar retrain`, one model per seed) on the
binary keep-mask as the input image (1 = kept, 0 = removed; no pixel values), and prints its test accuracy
beside the logistic-regression probe that `fastroar report` shows (fastroar.metrics.mask_probe), with the
largest and mean absolute difference.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()

    import torch

    from fastroar.engine.store import RankStore
    from fastroar.metrics.mask_probe import keep_mask, mask_only_accuracy
    from fastroar.stages.artifacts import identity, load_prepared, retrain_recipe, sweep_records
    from fastroar.stages.contract import open_context
    from fastroar.stages.report import format_table
    from fastroar.training.batched import Spec, train_stacked

    torch.set_num_threads(1)
    ctx = open_context(Path(args.workdir), progress=False)
    cfg, wd = ctx.cfg, ctx.wd
    prepared = load_prepared(cfg, wd)
    jobs, mine, _, _ = sweep_records(cfg, wd, prepared)
    hashes = {r["model"]: r["model_hash"] for r in mine}
    recipe = retrain_recipe(cfg, prepared.size("train"))
    labels = {s: prepared.arrays(s)[1] for s in ("train", "test")}
    store = RankStore(str(wd.store_path), mode="r")
    rows, t_probe, t_mlp = [], 0.0, 0.0
    for model, attribution in sorted({(j.model, j.attribution) for j in jobs if j.model in hashes}):
        entry = store.open_entry(model, attribution, identity(cfg, prepared, hashes[model], attribution))
        ranks = {s: entry.split(s).read("ranks") for s in ("train", "test")}
        for k in cfg.levels:
            for direction in cfg.retrain.directions:
                t0 = time.perf_counter()
                probe = mask_only_accuracy(ranks["train"], labels["train"], ranks["test"], labels["test"], k, direction)
                t1 = time.perf_counter()
                # the mask is the image; all-zero ranks with a top spec keep every coordinate of it
                split = {s: (keep_mask(ranks[s], k, direction).astype(np.float32).reshape(-1, *prepared.shape),
                             labels[s], np.zeros_like(ranks[s])) for s in ("train", "test")}
                res = train_stacked(cfg.model.arch, cfg.model.params, prepared.shape,
                                    prepared.num_classes, split["train"], split["test"],
                                    [Spec(0.5, "top", seed) for seed in range(args.seeds)], recipe)
                t_probe, t_mlp = t_probe + t1 - t0, t_mlp + time.perf_counter() - t1
                mlp = float(np.mean([r["accuracy"] for r in res]))
                rows.append({"model": model, "attribution": attribution, "k": k, "direction": direction,
                             "probe": probe, "mlp_on_mask": mlp, "diff": probe - mlp})
    print(format_table(rows, ("model", "attribution", "k", "direction", "probe", "mlp_on_mask", "diff")))
    diff = np.abs([r["diff"] for r in rows])
    print(f"\n{len(rows)} cells: |probe - {cfg.model.arch} on the mask ({args.seeds} seeds, retrain recipe "
          f"{recipe.name}, {recipe.epochs} epochs)| max {diff.max():.3f}, mean {diff.mean():.3f}; "
          f"probe {t_probe:.1f}s, retraining {t_mlp:.1f}s")


if __name__ == "__main__":
    main()
