"""The retrain stage: for each job, a fresh model trained and tested on data unmasked by the job's scheme.

Train and test splits are both unmasked by the same scheme (top-k or bottom-k of the base model's
attribution ranks); coordinates outside the kept set are zero. Finished jobs are found by key in the
results log and not run again, so an interrupted sweep resumes where it stopped.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fastroar import __version__
from fastroar.attribution.precompute import identity
from fastroar.errors import MissingInputError
from fastroar.datasets.prepare import Prepared, load_prepared
from fastroar.faults import fault_point
from fastroar.loaders.select import split_loader
from fastroar.models import build_model
from fastroar.roar.jobs import Job, sweep
from fastroar.roar.results import append_result, read_results
from fastroar.store import RankStore, SplitArrays
from fastroar.training.loop import Recipe, evaluate, train_model
from fastroar.training.stage import load_model
from fastroar.workspace import Workdir, locked, resolve_device


def retrain_recipe(cfg: dict[str, Any]) -> Recipe:
    """The base models' recipe with the retrain section's overrides (epochs, lr, ...)."""
    over = {k: v for k, v in cfg["retrain"].items() if k in Recipe.__dataclass_fields__}
    return Recipe(**{**cfg["train"], **over})


def plan(cfg: dict[str, Any], workdir: Workdir, *, models: Sequence[str] | None = None,
         attributions: Sequence[str] | None = None, levels: Sequence[float] | None = None,
         directions: Sequence[str] | None = None, n_seeds: int | None = None) -> list[Job]:
    """The sweep's jobs, after checking each (model, attribution) has complete ranks from that model."""
    prepared = load_prepared(cfg, workdir)
    store = RankStore(str(workdir.store_path), mode="r")
    models = list(models or [m["name"] for m in cfg["models"]])
    attributions = list(attributions or cfg["attributions"])
    hashes = {}
    for name in models:
        _, ckpt = load_model(workdir, name, prepared)
        hashes[name] = ckpt["hash"]
        for a in attributions:
            entry = store.open_entry(name, a, identity(cfg, prepared, ckpt["hash"], a))
            if not entry.is_complete():
                raise MissingInputError(f"ranks of {name}/{a} are incomplete in {store.path}; "
                                        f"run `fastroar precompute --workdir {workdir.root}` (it resumes)")
    return sweep(cfg, hashes, prepared.meta["key"], retrain_recipe(cfg).to_dict(), models, attributions,
                 levels or cfg["levels"], directions or cfg["retrain"]["directions"],
                 range(n_seeds or cfg["retrain"]["seeds"]))


@functools.lru_cache(maxsize=8)
def _ranks(store_path: str, model: str, attribution: str, split: str) -> np.ndarray:
    store = RankStore(store_path, mode="r")
    return SplitArrays(store.root[store.entry_path(model, attribution)][split]).read("ranks")  # checksums verified


def run_job(job: Job, cfg: dict[str, Any], workdir: Workdir, prepared: Prepared | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Trains and evaluates one job's model; returns its result record (not yet logged)."""
    prepared = prepared or load_prepared(cfg, workdir)
    device = resolve_device(cfg["device"])
    recipe = Recipe(**job.recipe)
    t0 = time.perf_counter()
    mask = dict(k=job.k, direction=job.direction)
    store = str(workdir.store_path)
    train_loader, path_name = split_loader(
        prepared, "train", cfg, batch_size=recipe.batch_size, seed=job.seed, train=True, device=device,
        ranks=_ranks(store, job.model, job.attribution, "train"), **mask)
    test_loader, _ = split_loader(
        prepared, "test", cfg, batch_size=512, seed=0, train=False, device=device,
        ranks=_ranks(store, job.model, job.attribution, "test"), **mask)
    torch.manual_seed(job.seed)
    model = build_model(job.arch, prepared.shape, prepared.num_classes, **job.arch_params).to(device)
    stats = train_model(model, train_loader, recipe, desc=f"retrain {job.direction}-{job.k}", progress=progress)
    return job.to_dict() | {
        "accuracy": evaluate(model, test_loader), "train_acc": stats["train_acc"], "loss": stats["loss"],
        "seconds": round(time.perf_counter() - t0, 3), "loader": path_name, "device": str(device),
        "fastroar_version": __version__, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def run_job_task(job: Job, cfg: dict[str, Any], workdir: Workdir) -> dict[str, Any]:
    """An executor task: one job, everything loaded from the (shared) workdir."""
    return run_job(job, cfg, workdir)


@locked("retrain")
def retrain_stage(cfg: dict[str, Any], workdir: Workdir, progress: bool = True, log: Callable = print,
                  executor=None, **selection: Any) -> list[dict[str, Any]]:
    """Runs every job of the sweep that has no record yet; returns the sweep's records."""
    from fastroar.executors import LocalExecutor

    executor = executor or LocalExecutor()
    jobs = plan(cfg, workdir, **selection)
    results_path = workdir.results_path
    done = read_results(results_path)
    todo = [j for j in jobs if j.key not in done]
    log(f"[retrain] {len(jobs)} jobs: {len(jobs) - len(todo)} already done, {len(todo)} to run "
        f"({executor.name} executor)")
    for record in executor.map(run_job_task, [(job, cfg, workdir) for job in todo], progress, "retrain"):
        append_result(results_path, record)
        fault_point("retrain.after_append")
    done = read_results(results_path)
    paths = sorted({done[j.key]["loader"] for j in jobs if j.key in done})
    log(f"[retrain] {sum(j.key in done for j in jobs)}/{len(jobs)} jobs recorded in {results_path} "
        f"(data path: {', '.join(paths)})")
    return [done[j.key] for j in jobs if j.key in done]
