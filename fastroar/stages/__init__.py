"""The stages of a study, one module each, every one ``fn(ctx, **options)`` under one contract
(fastroar.stages.contract): prepare -> train -> precompute -> retrain -> report, with run (all of them),
estimate (ROAD) and replicate (the paper's findings). Import a stage from its module
(``from fastroar.stages.retrain import retrain``)."""
from fastroar.stages.contract import Context, open_context, resolve_config, stage

__all__ = ["Context", "open_context", "resolve_config", "stage"]
