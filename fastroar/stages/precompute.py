"""The precompute stage: attribution scores on the device, ranked there, rank maps and masks to Zarr.

Scores are ranked by ``fastroar.rank_and_mask`` on the device they were computed on, right after the
backward pass, so only ranks and mask bits cross to the host. The first batch of each task is also
ranked by the NumPy reference and must agree exactly (a cheap guard on the fast path).

Attributions imported from precomputed scores (config ``scores: {NAME: PATH}``) are read from their
files instead of computed, checked against the prepared splits before anything is written, and ranked
by the same op into the same store. A user's ``module:function`` attribution is tried on a first batch
before its entry is created, so a function that fails outright leaves the store as it was.

Work is planned as chunk tasks (model, attribution, split, chunk ids): the local executor runs them in
turn, the Ray executor one task per chunk-aligned range, each writing disjoint Zarr chunks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from fastroar.attribution import attribute, check_attribution
from fastroar.attribution.scores import open_scores, read_block
from fastroar.config import Config
from fastroar.engine import cancel
from fastroar.engine.executors import LocalExecutor
from fastroar.engine.kernels import rank_and_mask
from fastroar.engine.kernels.reference import rank_reference
from fastroar.engine.store import RankStore
from fastroar.engine.workspace import SPLITS, Workdir
from fastroar.errors import UserCodeError
from fastroar.method import to_model_input
from fastroar.stages.artifacts import (
    attribution_params,
    identity,
    is_user_function,
    load_model,
    load_prepared,
    resolve_device,
    scores_path,
    select,
)
from fastroar.stages.contract import Context, save_config, stage


@dataclass(frozen=True)
class ChunkTask:
    model: str
    attribution: str
    split: str
    chunks: tuple[int, ...]


def rank_batch(model: torch.nn.Module, x: torch.Tensor, attribution: str, params: dict[str, Any],
               indices: Sequence[int], levels: Sequence[float], labels: Any = None):
    """One batch attributed and ranked on its device: host (ranks, top, bottom) and the device scores.
    labels: the batch's true labels (attributions such as gradient:loss use them)."""
    scores = attribute(model, x, attribution, indices=indices, labels=labels, **params).reshape(len(x), -1)
    ranks, top, bottom = rank_and_mask(scores, list(levels))
    return ranks.cpu().numpy(), top.cpu().numpy(), bottom.cpu().numpy(), scores


def compute_chunks(task: ChunkTask, cfg: Config, workdir: Workdir) -> int:
    """An executor task: computes and writes the task's chunks (skipping any done meanwhile)."""
    prepared = load_prepared(cfg, workdir)
    device = resolve_device(cfg.device)
    model, ckpt = load_model(workdir, task.model, prepared)
    model.to(device)
    ident = identity(cfg, prepared, ckpt["hash"], task.attribution)
    params = attribution_params(cfg, task.attribution)
    arrays = RankStore(str(workdir.store_path)).open_entry(task.model, task.attribution, ident).split(task.split)
    spath = scores_path(cfg, task.attribution)
    if spath is not None:
        source = open_scores(task.attribution, spath, [task.split])[task.split]
    images, labels = prepared.arrays(task.split)
    batch_size = cfg.precompute.batch_size
    done = arrays.done_chunks()
    checked = False
    written = 0
    for c in task.chunks:
        if done[c]:
            continue
        start, stop = arrays.chunk_range(c)
        parts = []
        for b0 in range(start, stop, batch_size):
            cancel.check()   # between batches: an interrupted run stops here, this chunk unwritten
            b1 = min(stop, b0 + batch_size)
            if spath is not None:  # imported scores: ranked by the same op
                scores = torch.from_numpy(read_block(source, b0, b1)).to(device)
                out = [a.cpu().numpy() for a in rank_and_mask(scores, list(ident["levels"]))]
            else:
                x = to_model_input(images[b0:b1]).to(device)
                y = torch.as_tensor(np.array(labels[b0:b1]), dtype=torch.long, device=device)
                try:
                    *out, scores = rank_batch(model, x, task.attribution, params, range(b0, b1), ident["levels"],
                                              labels=y)
                except UserCodeError as e:  # nothing of this chunk is written
                    raise UserCodeError(f"model {task.model!r}, {task.split} split: {e}") from None
            if not checked:
                if not np.array_equal(out[0], rank_reference(scores.float().cpu().numpy())):
                    raise RuntimeError("the rank kernel disagrees with the NumPy reference; set "
                                       "FASTROAR_BACKEND=numpy to work around it, and report this bug")
                checked = True
            parts.append(out)
        arrays.write_chunk(c, *(np.concatenate(p) for p in zip(*parts)))
        written += 1
    return written


def plan_precompute(cfg: Config, workdir: Workdir, models: Sequence[str] | None = None,
                    attributions: Sequence[str] | None = None, chunks_per_task: int | None = None) -> list[ChunkTask]:
    """Creates (or checks) each entry and returns tasks covering its missing chunks.

    chunks_per_task=None gives one task per (entry, split); an integer cuts them into ranges that size.
    """
    for a in attributions or ():
        if scores_path(cfg, a) is None:
            check_attribution(a)
    prepared = load_prepared(cfg, workdir)
    models = select(cfg, "models", models)
    loaded = {name: load_model(workdir, name, prepared) for name in models}  # all exist, or fail first
    store = RankStore(str(workdir.store_path))
    # every identity first (precomputed scores are checked here), and every new user function tried on a
    # first batch, so that a bad input fails before any entry is created
    idents = {(name, a): identity(cfg, prepared, ckpt["hash"], a)
              for name, (_, ckpt) in loaded.items() for a in attributions or cfg.attributions}
    for (name, a), ident in idents.items():
        if is_user_function(a) and store.entry_path(name, a) not in store.root:
            try_function(name, loaded[name][0], a, cfg, prepared)
    tasks = []
    for name in loaded:
        for attribution in attributions or cfg.attributions:
            entry = store.open_entry(name, attribution, idents[(name, attribution)],
                                     {s: prepared.size(s) for s in SPLITS},
                                     chunk_size=cfg.precompute.chunk_size)
            for split in SPLITS:
                missing = entry.split(split).missing_chunks()
                step = chunks_per_task or max(1, len(missing))
                tasks += [ChunkTask(name, attribution, split, tuple(missing[i:i + step]))
                          for i in range(0, len(missing), step)]
    return tasks


def try_function(name: str, model: torch.nn.Module, attribution: str, cfg: Config, prepared) -> None:
    """The user function on the train split's first batch (raises its UserCodeError, naming the batch)."""
    images, _ = prepared.arrays("train")
    n = min(prepared.size("train"), cfg.precompute.batch_size)
    device = resolve_device(cfg.device)
    try:
        attribute(model.to(device), to_model_input(images[:n]).to(device), attribution, indices=range(n),
                  **attribution_params(cfg, attribution))
    except UserCodeError as e:
        raise UserCodeError(f"model {name!r}, train split: {e}; nothing was written") from None
    finally:
        model.cpu()


@stage("precompute")
def precompute(ctx: Context, *, models: Sequence[str] | None = None, attributions: Sequence[str] | None = None,
               executor=None) -> int:
    """Fills every missing chunk of every (model, attribution) entry; returns the chunks computed."""
    cfg, workdir, progress, log = ctx.cfg, ctx.wd, ctx.progress, ctx.log
    executor = executor or LocalExecutor()
    per_task = 1 if executor.name == "ray" else None
    tasks = plan_precompute(cfg, workdir, models, attributions, chunks_per_task=per_task)
    n_chunks = sum(len(t.chunks) for t in tasks)
    log(f"[precompute] {n_chunks} chunks to compute in {len(tasks)} tasks ({executor.name} executor)")
    computed = sum(executor.map(compute_chunks, [(t, cfg, workdir) for t in tasks], progress, "precompute"))
    if cfg.scores and ctx.save_config:  # later stages (retrain, report) learn the scores' names from it
        save_config(ctx)
    return computed
