"""The estimate stage: ROAD (fastroar.metrics.road) beside DiffROAR, without retraining. The base model
is evaluated on test images whose removed coordinates are imputed (noisy linear), from the rank store.

rule "fastroar" (default) uses the rank store's coordinate ranks and DiffROAR's counts, so ROAD(k) sits
beside DiffROAR(k) on the same masks; rule "reference" orders pixels by the attribution summed over
channels and truncates counts, as ROAD's code does (fastroar.metrics.road). On one-channel data the
store's ranks are already pixel ranks; on more channels the scores of the test split are recomputed
(the stage's model, attribution and parameters: the ones the store's ranks came from)."""
from __future__ import annotations

import time
from typing import Any, Sequence

from fastroar import __version__
from fastroar.config import Config
from fastroar.engine.results import ROAD_FIELDS, append_result, read_results
from fastroar.engine.store import RankStore
from fastroar.errors import ConfigError, MissingInputError
from fastroar.keys import digest
from fastroar.method import check_level, to_model_input
from fastroar.metrics.road import DEFAULT_NOISE, METHOD, RULES, pixel_ranks, road_levels, value_range
from fastroar.stages.artifacts import (
    attribution_params,
    identity,
    load_model,
    load_prepared,
    resolve_device,
    scores_path,
    select,
)
from fastroar.stages.contract import Context, stage


def split_pixel_ranks(cfg: Config, model, attribution: str, images, labels, device,
                     stored_ranks) -> Any:
    """The reference rule's (N, H*W) pixel ranks of the test split: the stored coordinate ranks when the
    images have one channel, else the ranks of the recomputed scores' channel sums."""
    import numpy as np
    import torch

    from fastroar.attribution import attribute
    from fastroar.attribution.scores import open_scores, read_block

    if images.shape[1] == 1:
        return stored_ranks
    spath = scores_path(cfg, attribution)
    source = open_scores(attribution, spath, ["test"])["test"] if spath is not None else None
    params = attribution_params(cfg, attribution)
    batch_size = cfg.precompute.batch_size
    model.to(device)
    out = []
    for b0 in range(0, len(images), batch_size):
        b1 = min(len(images), b0 + batch_size)
        if source is not None:
            scores = read_block(source, b0, b1)
        else:
            x = to_model_input(images[b0:b1]).to(device)
            y = torch.as_tensor(np.array(labels[b0:b1]), dtype=torch.long, device=device)
            scores = attribute(model, x, attribution, indices=range(b0, b1), labels=y, **params).float().cpu().numpy()
        out.append(pixel_ranks(np.asarray(scores).reshape(b1 - b0, *images.shape[1:])))
    model.cpu()
    return np.concatenate(out)


@stage("estimate")
def estimate(ctx: Context, *, models: Sequence[str] | None = None, attributions: Sequence[str] | None = None,
             levels: Sequence[float] | None = None, noise: float = DEFAULT_NOISE, seed: int = 0,
             rule: str = RULES[0]) -> list[dict[str, Any]]:
    """ROAD estimates of every (model, attribution, k) on the test split, from the existing rank store.

    Records go to <workdir>/results/road.jsonl (one per (model, attribution, k), keyed by the model
    hash, dataset, attribution and its parameters, k, noise and seed, and the rule when it is not the
    default: records written before rules existed are the default rule's); existing keys are skipped.
    Returns the records of the selection (old and new). The model runs on the CPU. A progress bar moves
    per (model, attribution, k) estimated. Holds the workdir's estimate lock (a second concurrent
    `fastroar estimate` is refused).
    """
    from tqdm.auto import tqdm

    cfg, workdir, log = ctx.cfg, ctx.wd, ctx.log
    if not noise >= 0:
        raise ConfigError(f"noise must be >= 0 (a fraction of the value range), got {noise}")
    if rule not in RULES:
        raise ConfigError(f"ROAD rule must be one of {', '.join(RULES)}, got {rule!r}")
    prepared = load_prepared(cfg, workdir)
    store = RankStore(str(workdir.store_path), mode="r")
    models = select(cfg, "models", models)
    attributions = select(cfg, "attributions", attributions)
    levels = [check_level(k) for k in (levels or cfg.levels)]
    images, labels = prepared.arrays("test")
    x = to_model_input(images).numpy()
    sigma = float(noise) * value_range(prepared, x)
    path = workdir.road_path
    device = resolve_device(cfg.device)
    solver = "torch" if device.type == "cuda" else "scipy"   # imputation solve on the device (same result to 1e-5)
    done = read_results(path, ROAD_FIELDS)
    records = []
    bar = tqdm(total=len(models) * len(attributions) * len(levels), desc="estimate", unit="level",
               disable=not ctx.progress)
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
            if rule != RULES[0]:  # the default rule's keys are those of records written before rules existed
                base["rule"] = rule
            keyed = {k: base | {"k": float(k)} for k in levels}
            keys = {k: digest(v, 16) for k, v in keyed.items()}
            todo = [k for k in levels if keys[k] not in done]
            bar.update(len(levels) - len(todo))
            if todo:
                ranks = entry.split("test").read("ranks")  # checksums verified
                if rule == "reference":
                    ranks = split_pixel_ranks(cfg, model, attribution, images, labels, device, ranks)
                t0 = time.perf_counter()
                for k in todo:
                    bar.set_postfix_str(f"{name}/{attribution} k={k:g}")
                    (res,) = road_levels(model, x, labels, ranks, [k], sigma, seed=seed, solver=solver,
                                         device=device, rule=rule)
                    rec = keyed[k] | res | {
                        "key": keys[k], "n_test": len(labels), "seconds": round(time.perf_counter() - t0, 3),
                        "fastroar_version": __version__, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
                    append_result(path, rec)
                    done[keys[k]] = rec
                    t0 = time.perf_counter()
                    bar.update(1)
            records += [done[keys[k]] for k in levels]
    bar.close()
    log(f"[estimate] {len(records)} ROAD estimates in {path}")
    return records

