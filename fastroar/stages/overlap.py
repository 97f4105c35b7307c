"""``fastroar run``'s overlapped path: train, precompute and retrain as one pool of tasks on the CPU's cores.

Stage by stage, a run waits for the slowest base model: the PGD-trained one takes several times the
standard one's time, and while it trains alone the other cores idle. Here each base model's work starts as
soon as what it needs is there: its precompute tasks when it is trained, its retrain groups when its rank
maps are complete. One queue of tasks (fastroar.engine.executors.TaskQueue) keeps every core busy, by
priority: training first (it gates the rest), then precompute, then retrain groups, the largest first;
last, on a thread that would otherwise idle while the final groups finish, the report's plotting imports.

Nothing in the results depends on this: each task is the stage's own function (train_one, compute_chunks,
run_group_task) and runs as it would in its stage, with one torch thread, its own generators and the seeded
build lock; model files, store arrays and records are those of the stages run one after another
(tests/test_overlap.py). Records are written by this thread alone, one at a time, as the retrain stage
writes them; an interrupted run resumes through the stages' own skipping of finished work.

It is taken only where every task may share the process (``overlaps``): on the CPU, with at least two
models to train side by side (the train stage's own rule), built-in attributions computed here, on
resident data, and a model whose training draws nothing from torch's global generator
(``draws_no_global_randomness``): MLPs, retrained in stacks, or a built-in conv architecture without
dropout, retrained one job per task (on the threads here, where the retrain stage alone would start one
worker process per core: the same function, one torch thread, so the same records). Everything else runs
the stages in turn.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from fastroar.attribution.methods import METHODS
from fastroar.config import Config
from fastroar.engine import ticks
from fastroar.engine.executors import TaskQueue, usable_cores
from fastroar.models.builders import BUILDERS, build_model
from fastroar.stages import retrain as retrain_stage
from fastroar.stages.artifacts import checkpoint_path, load_prepared, model_config, resolve_device
from fastroar.stages.contract import Context, stage
from fastroar.stages.precompute import compute_chunks, plan_precompute
from fastroar.stages.report import import_plotting
from fastroar.stages.train import side_by_side, train_one, untrained
from fastroar.training.batched import batchable
from fastroar.training.jobs import recorded, unique

TRAIN, PRECOMPUTE, RETRAIN, IDLE = 0, 1, 2, 3   # task priorities: lower starts first
# modules that draw from torch's global generator in training mode
RANDOM_MODULES = (nn.modules.dropout._DropoutNd, nn.RReLU)


def overlaps(ctx: Context) -> bool:
    """Whether the run's train, precompute and retrain may overlap (module doc)."""
    cfg, wd = ctx.cfg, ctx.wd
    if any(spec.checkpoint for spec in cfg.models) or cfg.scores:
        return False   # registering a checkpoint or importing scores rewrites the config: stage by stage
    if any(a not in METHODS for a in cfg.attributions):
        return False   # captum's and the user's functions may draw from torch's global generator
    device = resolve_device(cfg.device)
    prepared = load_prepared(cfg, wd)
    if not draws_no_global_randomness(cfg, device, prepared.shape, prepared.num_classes):
        return False
    to_train = [model_config(cfg, spec) for spec in cfg.models if not checkpoint_path(wd, spec.name).exists()]
    return (side_by_side(to_train, cfg, prepared, device) > 1
            and prepared.data_path(cfg.loader, device, ranks=True) == "resident")


def draws_no_global_randomness(cfg: Config, device: torch.device, shape: tuple[int, ...], num_classes: int) -> bool:
    """Whether the retrain tasks may run on threads of one process with the records they get alone: their
    models draw nothing from torch's global generator once built (the build itself is seeded under a lock,
    fastroar.models.builders.seeded_global_rng). MLPs, in stacks; a built-in conv architecture (airbench,
    resnet18: code of fastroar's or torchvision's fixed by the registry) trained one per task, without
    dropout-like modules. Not: a conv stack (vmap draws per model), torchvision's, timm's or the user's
    models (their code may draw anywhere)."""
    arch = cfg.model.arch
    if batchable(arch):
        return True
    if arch not in BUILDERS or retrain_stage.stacks_conv(cfg.retrain.stack_conv, device):
        return False
    model = build_model(arch, tuple(shape), num_classes, **cfg.model.params)
    return not any(isinstance(m, RANDOM_MODULES) for m in model.modules())


@stage("pipeline", locks=("train", "precompute", "retrain"))
def train_to_retrain(ctx: Context) -> list[dict[str, Any]]:
    """Trains the base models, computes their ranks and retrains the sweep, each model's work starting as
    soon as its inputs exist; returns the sweep's records."""
    cfg, wd, log = ctx.cfg, ctx.wd, ctx.log
    prepared = load_prepared(cfg, wd)
    device = resolve_device(cfg.device)
    _, to_train = untrained(ctx, prepared, device)
    threads = usable_cores()
    log(f"[run] train, precompute and retrain overlapped on {threads} threads: each model's ranks and "
        f"retraining start as soon as it is trained")
    recorder = retrain_stage.Recorder(ctx)
    pending_tasks: dict[str, int] = {}
    queued: set[str] = set()   # retrain job keys handed to the queue
    # one bar over the sweep's jobs with its total known from the start (done jobs count once planned)
    bar = tqdm(total=retrain_stage.sweep_size(cfg), desc="retrain", unit="job", disable=not ctx.progress)
    with TaskQueue(threads) as queue, bar, ticks.sink(bar.update):   # retrain tasks move the bar per epoch

        def trained(name: str) -> None:   # its precompute tasks, or straight on to its retraining
            tasks = plan_precompute(cfg, wd, [name])
            log(f"[precompute] {name}: {sum(len(t.chunks) for t in tasks)} chunks to compute in {len(tasks)} tasks")
            pending_tasks[name] = len(tasks)
            for task in tasks:
                queue.add((PRECOMPUTE,), (PRECOMPUTE, name), compute_chunks, task, cfg, wd)
            if not tasks:
                ranked(name)

        def ranked(name: str) -> None:    # its retrain groups, largest first
            jobs = retrain_stage.plan(cfg, wd, models=[name])
            done = recorded(retrain_stage.read_results(wd.results_path, retrain_stage.RETRAIN_FIELDS), jobs)
            # a model-independent job runs once: for the first model ranked, not again for the next
            new = [j for j in unique(jobs) if j.key not in queued]
            queued.update(j.key for j in new)
            todo = [j for j in new if j.key not in done]
            bar.update(len(new) - len(todo))
            groups = retrain_stage.tasks_of(todo, cfg, prepared, device)
            served = sum(j.key not in done for j in jobs) - len(todo)   # queued for an earlier model
            log(f"[retrain] {name}: {len(jobs)} jobs: {sum(j.key in done for j in jobs)} already done, {len(todo)} "
                f"to run in {len(groups)} tasks{retrain_stage.memory_note(cfg, prepared, groups)}"
                + (f"; {served} served by an earlier model's runs (model-independent attributions)" if served else ""))
            recorder.planned += len(groups)
            for group in groups:
                queue.add((RETRAIN, -len(group)), (RETRAIN, name), retrain_stage.run_group_task, group, cfg, wd)

        # the report's plotting imports, on a thread with nothing else left to start (the run's tail)
        queue.add((IDLE,), (IDLE, ""), import_plotting)
        for mcfg in to_train:
            queue.add((TRAIN,), (TRAIN, mcfg["name"]), train_one, mcfg, prepared, cfg, wd, device, ctx.progress, log)
        waiting = {m["name"] for m in to_train}
        for spec in cfg.models:
            if spec.name not in waiting:
                trained(spec.name)
        try:
            for (kind, name), result in queue.results():
                if kind == TRAIN:
                    trained(name)
                elif kind == PRECOMPUTE:
                    pending_tasks[name] -= 1
                    if not pending_tasks[name]:
                        ranked(name)
                elif kind == RETRAIN:
                    bar.update(retrain_stage.finished_jobs(result))
                    recorder.record(result)
        except KeyboardInterrupt:
            # Ctrl-C: the running tasks stop at their next step; the records of any that finished meanwhile
            # are kept (models and ranks their tasks write themselves), the locks still held
            for (kind, _), result in queue.drain():
                if kind == RETRAIN:
                    retrain_stage.finished_jobs(result)
                    recorder.record(result)
            raise
    recorder.summary(threads, overlapped=True)
    return retrain_stage.log_recorded(ctx, retrain_stage.plan(cfg, wd))
