"""The run stage: prepare -> train -> precompute -> retrain -> report for one config. Each inner stage
takes its own lock and skips finished work; the config is saved once, after every stage succeeded, so a
run that fails leaves the workdir's config.yaml as it was."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastroar.stages.contract import Context, stage
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
    train(inner)
    precompute(inner)
    retrain(inner)
    ctx.log("")
    return report(inner)
