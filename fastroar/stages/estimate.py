"""The estimate stage: ROAD (fastroar.metrics.road) beside DiffROAR, without retraining. The base model
is evaluated on test images whose removed coordinates are imputed (noisy linear), from the rank store."""
from __future__ import annotations

import time
from typing import Any, Sequence

from fastroar import __version__
from fastroar.engine.results import ROAD_FIELDS, append_result, read_results
from fastroar.engine.store import RankStore
from fastroar.errors import ConfigError, MissingInputError
from fastroar.keys import digest
from fastroar.method import check_level, to_model_input
from fastroar.metrics.road import DEFAULT_NOISE, METHOD, road_levels, value_range
from fastroar.stages.artifacts import identity, load_model, load_prepared, resolve_device, select
from fastroar.stages.contract import Context, stage


@stage("estimate")
def estimate(ctx: Context, *, models: Sequence[str] | None = None, attributions: Sequence[str] | None = None,
             levels: Sequence[float] | None = None, noise: float = DEFAULT_NOISE, seed: int = 0) -> list[dict[str, Any]]:
    """ROAD estimates of every (model, attribution, k) on the test split, from the existing rank store.

    Records go to <workdir>/results/road.jsonl (one per (model, attribution, k), keyed by the model
    hash, dataset, attribution and its parameters, k, noise and seed); existing keys are skipped.
    Returns the records of the selection (old and new). The model runs on the CPU. Holds the
    workdir's estimate lock (a second concurrent `fastroar estimate` is refused).
    """
    cfg, workdir, log = ctx.cfg, ctx.wd, ctx.log
    if not noise >= 0:
        raise ConfigError(f"noise must be >= 0 (a fraction of the value range), got {noise}")
    prepared = load_prepared(cfg, workdir)
    store = RankStore(str(workdir.store_path), mode="r")
    models = select(cfg, "models", models)
    attributions = select(cfg, "attributions", attributions)
    levels = [check_level(k) for k in (levels or cfg["levels"])]
    images, labels = prepared.arrays("test")
    x = to_model_input(images).numpy()
    sigma = float(noise) * value_range(prepared, x)
    path = workdir.road_path
    device = resolve_device(cfg["device"])
    solver = "torch" if device.type == "cuda" else "scipy"   # imputation solve on the device (same result to 1e-5)
    done = read_results(path, ROAD_FIELDS)
    records = []
    for name in models:
        model, ckpt = load_model(workdir, name, prepared)
        for attribution in attributions:
            ident = identity(cfg, prepared, ckpt["hash"], attribution)
            entry = store.open_entry(name, attribution, ident)  # identity checked: ranks from this model
            if not entry.is_complete():
                raise MissingInputError(f"ranks of {name}/{attribution} are incomplete in {store.path}; "
                                        f"run `fastroar precompute --workdir {workdir.root}` (it resumes)")
            base = {"model": name, "attribution": attribution, "model_hash": ckpt["hash"],
                    "dataset_key": prepared.meta["key"], "attribution_params": ident["attribution_params"],
                    "noise": float(noise), "sigma": sigma, "seed": int(seed), "method": METHOD}
            keyed = {k: base | {"k": float(k)} for k in levels}
            keys = {k: digest(v, 16) for k, v in keyed.items()}
            todo = [k for k in levels if keys[k] not in done]
            if todo:
                ranks = entry.split("test").read("ranks")  # checksums verified
                t0 = time.perf_counter()
                for k in todo:
                    (res,) = road_levels(model, x, labels, ranks, [k], sigma, seed=seed, solver=solver,
                                         device=device)
                    rec = keyed[k] | res | {
                        "key": keys[k], "n_test": len(labels), "seconds": round(time.perf_counter() - t0, 3),
                        "fastroar_version": __version__, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
                    append_result(path, rec)
                    done[keys[k]] = rec
                    t0 = time.perf_counter()
            records += [done[keys[k]] for k in levels]
    log(f"[estimate] {len(records)} ROAD estimates in {path}")
    return records

