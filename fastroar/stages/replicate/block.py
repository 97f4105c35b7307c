"""Experiment 3 of `fastroar replicate`: BlockMNIST-style data (the workdir's dataset when it records signal
blocks) and its other signal-position variant: |input gradient| grids, mass on the signal block,
localization per level and AQ (top-m vs bottom-m, m = the block size) per model. Paper (Sec. 5): standard
gradients localize on the -Top variant, not on the random one; robust ones on both."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fastroar.config import Config, validate
from fastroar.method import to_model_input
from fastroar.metrics.aq import attribution_quality
from fastroar.metrics.localization import localization, localization_shares
from fastroar.stages.artifacts import load_model
from fastroar.stages.contract import Context
from fastroar.stages.prepare import prepare
from fastroar.stages.replicate.measures import (
    mass_shares,
    model_status,
    ranks_of,
    share_interval,
    signed_gradient,
    sub_workdir,
)
from fastroar.stages.replicate.plots import plot_block_grid
from fastroar.stages.replicate.results import BlockModel, BlockResult
from fastroar.stages.train import train

OTHER_VARIANT = {"blockdigits": "blockdigits-top", "blockdigits-top": "blockdigits",
                 "blockmnist": "blockmnist-top", "blockmnist-top": "blockmnist"}


def has_signal(cfg: Config) -> bool:
    """Whether the config's dataset records signal blocks (a BlockMNIST-style one)."""
    return cfg.dataset.name in OTHER_VARIANT


def block_experiment(ctx: Context, out_dir: Path, png_name: str | None = None) -> BlockResult:
    """|input gradient| of each base model of ctx's workdir (trained when absent): grid, mass share,
    localization per level and AQ (top-m vs bottom-m, m = the signal block's size). The grid is
    `png_name`, by default <dataset>_gradients.png (blockdigits_gradients.png, blockmnist_gradients.png)."""
    cfg, wd = ctx.cfg, ctx.wd
    png_name = png_name or f"{cfg.dataset.name}_gradients.png"
    prepared, _ = prepare(ctx)
    train(ctx)  # skips models that exist
    images, labels = prepared.arrays("test")
    signal = prepared.signal("test")
    x = to_model_input(images)
    models: dict[str, BlockModel] = {}
    grads = {}
    for spec in cfg.models:
        name = spec.name
        model, ckpt = load_model(wd, name, prepared)
        g = signed_gradient(model, x).numpy().reshape(len(x), -1)
        grads[name] = np.abs(g)
        ranks = ranks_of(np.abs(g))
        models[name] = BlockModel(
            adversary=spec.saved().get("adversary"), hash=ckpt["hash"],
            status=model_status(cfg, ckpt, labels, x, model),
            signal_share=float(np.nanmean(mass_shares(g, signal))),
            localization=dict(zip(map(str, cfg.levels), localization(ranks, signal, cfg.levels))),
            localization_ci=share_interval(localization_shares(ranks, signal, cfg.levels[0])),
            aq=attribution_quality(ranks, signal))
    png = out_dir / png_name
    plot_block_grid(images, signal, grads, labels, prepared.shape, png)
    res = BlockResult(dataset=cfg.dataset.saved(), levels=list(cfg.levels), models=models,
                      chance=float(signal.sum(1).mean() / signal.shape[1]), workdir=str(wd.root), png=str(png))
    std = [m for m in models.values() if not m.adversary]
    rob = [m for m in models.values() if m.adversary]
    if std and rob:
        s, r = std[0], rob[0]
        res.robust_localizes_better = {k: r.localization[k] > s.localization[k] for k in s.localization}
        res.standard_near_chance = {k: abs(v - res.chance) < 0.1 for k, v in s.localization.items()}
    return res


def variant_experiment(ctx: Context, out_dir: Path, quick: bool, png_name: str | None = None) -> BlockResult | None:
    """block_experiment on the other signal-position variant of the workdir's dataset (same settings),
    trained into <out>/<variant>/<digest>; its grid is `png_name`, by default <variant>_gradients.png."""
    other = OTHER_VARIANT.get(ctx.cfg.dataset.name)
    if other is None:
        return None
    raw = ctx.cfg.saved()
    raw["dataset"]["name"] = other
    raw.pop("store", None)  # the sub-workdir keeps its own rank store
    cfg = validate(raw)
    wd = sub_workdir(out_dir, other, [cfg], quick)
    return block_experiment(Context(cfg, wd, ctx.log, ctx.progress), out_dir, png_name or f"{other}_gradients.png")
