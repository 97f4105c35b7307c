"""The `replicate` stage: runs the experiments in order, builds the claims table, writes summary.json and
summary.md (the package's doc says what each experiment measures)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from fastroar.engine.workspace import atomic_write_text
from fastroar.stages import leakage_claim
from fastroar.stages.artifacts import load_prepared
from fastroar.stages.contract import Context, save_config, stage
from fastroar.stages.replicate.aq import aq_experiment
from fastroar.stages.replicate.block import block_experiment, has_signal, variant_experiment
from fastroar.stages.replicate.claims import claims
from fastroar.stages.replicate.diffroar import diffroar_experiment
from fastroar.stages.replicate.leakage import leakage_experiment
from fastroar.stages.replicate.real_data import real_configs, real_data_experiments
from fastroar.stages.replicate.render import summary_json, summary_markdown
from fastroar.stages.replicate.results import BlockResult, DiffroarMissing, RealData, Skipped, Summary


@stage("replicate")
def replicate(ctx: Context, *, quick: bool = False, instances: int = 20, data_root: str | Path | None = None,
              real_overrides: Sequence[str] = (), reference: bool = False) -> Summary:
    """Runs the experiments; writes <workdir>/replicate/{*.png, summary.json, summary.md}.
    The workdir's config (its device setting included) also sets the leakage models' device.

    data_root: where real MNIST / Fashion-MNIST live, for the real-data claims (fastroar.stages.replicate.
    real_data; `real_overrides` are --set overrides of their profile configs). reference: the AQ experiment
    runs the reference notebook's exact recipe (configs/leakage-reference.yaml) instead of leakage-all."""
    cfg, wd, log, progress = ctx.cfg, ctx.wd, ctx.log, ctx.progress
    device = None if cfg.device == "auto" else cfg.device
    real_configs(data_root, quick=quick, device=device, overrides=real_overrides)   # a bad override fails first
    t0 = time.perf_counter()
    if not (wd.root / "config.yaml").exists():
        save_config(ctx)
    out_dir = wd.root / "replicate"
    out_dir.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    leakage = leakage_experiment(out_dir, quick=quick, device=device, progress=progress, instances=instances,
                                 log=log)
    leakage.seconds = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    aq = aq_experiment(out_dir, quick=quick, device=device, progress=progress, log=log, reference=reference)
    aq.seconds = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    if has_signal(cfg):
        block = block_experiment(ctx, out_dir)
        variant = variant_experiment(ctx, out_dir, quick)
        block.seconds = round(time.perf_counter() - t, 1)
        key = load_prepared(cfg, wd).meta["key"]
        hashes = {n: m.hash for n, m in block.models.items()}
        diffroar = diffroar_experiment(ctx, key, hashes, out_dir, fill_missing=not quick)
        t = time.perf_counter()
        control = leakage_claim.leakage_control(ctx, fill_missing=not quick)
        control["seconds"] = round(time.perf_counter() - t, 1)
    else:
        note = (f"the workdir's dataset {cfg.dataset.name!r} records no signal blocks; use a workdir "
                "of blockdigits / blockmnist (e.g. a fresh --workdir) for the BlockMNIST and DiffROAR experiments")
        block, variant, diffroar, control = Skipped(note), None, DiffroarMissing(note), None
    real = real_data_experiments(out_dir, data_root, quick=quick, device=device, progress=progress, log=log,
                                 overrides=real_overrides)
    summary = Summary(workdir=str(wd.root), quick=quick, out_dir=str(out_dir), leakage=leakage, aq=aq,
                      blockdigits=block, variant=variant, diffroar=diffroar, leakage_control=control,
                      real_data=real)
    summary.claims = claims(summary)
    summary.warnings = list(all_warnings(summary))
    summary.seconds = round(time.perf_counter() - t0, 1)
    atomic_write_text(out_dir / "summary.json", summary_json(summary))
    md = summary_markdown(summary)
    atomic_write_text(out_dir / "summary.md", md)
    log(md)
    return summary


def all_warnings(s: Summary) -> Iterator[str]:
    """Every base model's warnings, each prefixed by its experiment's data."""
    parts: list[tuple[str, Any]] = [("leakage", s.leakage), ("leakage-all", s.aq)]
    parts += [(res.dataset["name"], res) for res in (s.blockdigits, s.variant) if isinstance(res, BlockResult)]
    parts += [(f"real {res.dataset['name']}", res) for r in s.real_data.values() if isinstance(r, RealData)
              for res in (r.block, r.variant) if res is not None]
    for label, res in parts:
        for m in res.models.values():
            yield from (f"[{label}] {w}" for w in m.status.warnings)
