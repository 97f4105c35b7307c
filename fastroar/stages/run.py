"""The run stage: prepare -> train -> precompute -> retrain -> report for one config. Each inner stage
takes its own lock and skips finished work. Where every task may share the process (CPU, two or more
models to train, MLP retraining in stacks), train, precompute and retrain run as one pool of tasks, each
model's work starting as soon as it is trained, with the same results (fastroar.stages.overlap). The
config is saved once, after every stage succeeded, so a run that fails leaves the workdir's config.yaml
as it was."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastroar.stages.contract import Context, stage
from fastroar.stages.overlap import overlaps, train_to_retrain
from fastroar.stages.precompute import precompute
from fastroar.stages.prepare import prepare
from fastroar.stages.report import report
from fastroar.stages.retrain import retrain
from fastroar.stages.train import train


@stage("run", saves_config=True)
def run(ctx: Context) -> dict[str, Any]:
    """Every stage in order; returns the report's result."""
    inner = replace(ctx, save_config=False)
    prepare(inner)
    if overlaps(inner):   # each model's precompute and retraining start as soon as it is trained
        train_to_retrain(inner)
        if inner.cfg.retrain.seeds == "auto":   # the rounds of added seeds, once every row has its first
            retrain(inner)
    else:
        train(inner)
        precompute(inner)
        retrain(inner)
    ctx.log("")
    return report(inner)
