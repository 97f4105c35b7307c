"""The retrain stage: for each job, a fresh model trained and tested on data unmasked by the job's scheme.

Train and test splits are both unmasked by the same scheme (top-k or bottom-k of the base model's
attribution ranks); coordinates outside the kept set are zero (retrain.fill: or a constant, or imputed from
their neighbours once per (k, direction), fastroar.stages.imputed). Finished jobs are found by key in the
results log and not run again, so an interrupted sweep resumes where it stopped.

Jobs on device-resident data are trained together: the todo jobs of one (base model, attribution,
architecture, recipe, fill) go in groups of up to ``retrain.batch_models`` to one executor task, which
trains the group as one stack of models and returns one record per job (its ``group_size`` says how
many shared the stack; the job's key does not: stacking is an execution detail). One rule,
``stack_trainer``, picks the stack's trainer by architecture:

- MLPs (linear, mlp1, mlp2) always stack (fastroar.training.batched). A model's result does not depend
  on its group (bit for bit on the CPU), so a killed group reruns only its missing jobs and gets the
  records the uninterrupted run would have.
- Any other architecture (resnet18, airbench, a module:callable net, ...) stacks when
  ``retrain.stack_conv`` is on (fastroar.training.stacked_conv, a torch.func vmap stack): ``true``,
  ``false``, or ``auto`` (default) = on CUDA only. On the CPU the stack is about as fast as the models in
  turn (tools/bench_training.py), so the CPU default runs them one per task. Stacked, a model's result
  depends on its group only within float rounding (grouped convolutions sum in another order); a killed
  group still reruns only its missing jobs.

Everything else (data streamed through FFCV, or conv models with stack_conv off) runs one model per task.

``retrain.sparse_input`` (auto | true | false): the MLP stack's first layer on each row's kept coordinates only
(fastroar.training.batched, csrc/sparse_input.cpp), on the CPU with resident data; the streamed path and CUDA
stay dense. Its sums run in another order than the dense GEMM's, so its records differ at float rounding:
whether a job ran sparse is part of its key (fastroar.training.jobs.Job.sparse_input, resolved per job by a
rule on the config and the job's shape, and where it runs, never by a timing), so sparse and dense records
never mix, runs of one config on one machine stay bit-identical to each other, and dense jobs keep the keys
they had before the option existed. Groups never mix sparse and dense jobs.
"""
from __future__ import annotations

import json
import time
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fastroar import __version__
from fastroar.config import Config
from fastroar.cpu import capability
from fastroar.engine import ticks
from fastroar.engine.executors import LocalExecutor, available_memory, usable_cores
from fastroar.engine.faults import fault_point
from fastroar.engine.hits import pack_hits, unpack_hits
from fastroar.engine.loaders.plan import resident_bytes
from fastroar.engine.results import RETRAIN_FIELDS, append_result, read_results, read_results_checked
from fastroar.engine.store import RankStore, SplitArrays
from fastroar.engine.workspace import SPLITS, Workdir
from fastroar.errors import ConfigError, MissingInputError
from fastroar.method import rank_dtype
from fastroar.models import build_model, build_seeded
from fastroar.stages.artifacts import (
    Prepared,
    identity,
    load_prepared,
    resolve_device,
    retrain_recipe,
    seed_counts,
    sweep_jobs,
)
from fastroar.stages.contract import Context, stage
from fastroar.stages.imputed import imputed_inputs
from fastroar.training.batched import Spec, batchable, train_stacked
from fastroar.training.jobs import MODEL_INDEPENDENT, Job, recorded, records_for, unique
from fastroar.training.loop import accuracy_of, test_hits, train_model
from fastroar.training.settings import Recipe
from fastroar.training.stacked_conv import train_stacked_conv

TIMING_KEY = "_timing"   # a task's time breakdown (seconds) on its first record; never written to the log
TICKED_KEY = "_ticked"   # how far a task moved the caller's bar itself; never written to the log


def plan(cfg: Config, workdir: Workdir, **selection: Any) -> list[Job]:
    """The sweep's jobs, after checking each (model, attribution) has complete ranks from that model."""
    prepared = load_prepared(cfg, workdir)
    jobs = sweep_jobs(cfg, workdir, prepared, **selection)
    store = RankStore(str(workdir.store_path), mode="r")
    for name, model_hash, a in sorted({(j.model, j.model_hash, j.attribution) for j in jobs}):
        entry = store.open_entry(name, a, identity(cfg, prepared, model_hash, a))
        if not entry.is_complete():
            raise MissingInputError(f"ranks of {name}/{a} are incomplete in {store.path}; "
                                    f"run `fastroar precompute --workdir {workdir.root}` (it resumes)")
    if any(j.impute for j in jobs) and prepared.data_path(cfg.loader, resolve_device(cfg.device),
                                                         ranks=True) != "resident":
        raise ConfigError("retrain.fill road imputes each (k, direction) once and holds the result in memory, "
                          "which needs the resident data path; this split is streamed (loader "
                          f"{cfg.loader!r} or too large): set loader: resident, or use retrain.fill zero")
    return jobs


_CHECKED: set[tuple] = set()


def _ranks(store_path: str, model: str, attribution: str, split: str):
    """The split's rank map as a (lazy) Zarr array, every chunk checked against its checksum once per process
    and store state. The FFCV path streams it chunk by chunk; the resident paths read it whole."""
    store = RankStore(store_path, mode="r")
    arrays = SplitArrays(store.root[store.entry_path(model, attribution)][split])
    state = (store_path, model, attribution, split, arrays.array("done")[:].tobytes())
    if state not in _CHECKED:
        arrays.check()
        _CHECKED.add(state)
    return arrays.ranks


def run_job(job: Job, cfg: Config, workdir: Workdir, prepared: Prepared | None = None,
            progress: bool = False) -> dict[str, Any]:
    """Trains and evaluates one job's model; returns its result record (not yet logged)."""
    prepared = prepared or load_prepared(cfg, workdir)
    device = resolve_device(cfg.device)
    if stackable(job, cfg, prepared, device):
        return run_group([job], cfg, workdir, prepared)[0]
    recipe = Recipe(**job.recipe)
    t0 = time.perf_counter()
    mask = dict(k=job.k, direction=job.direction, fill=job.fill)
    store = str(workdir.store_path)
    if job.impute:   # the imputed inputs, held whole (plan() checked the resident path is taken)
        train_loader, test_loader = (imputed_loader(job, workdir, prepared, s, device, recipe) for s in SPLITS)
        path_name = "resident"
    else:
        train_loader, path_name = prepared.loader(
            "train", mode=cfg.loader, batch_size=recipe.batch_size, seed=job.seed, train=True, device=device,
            ranks=_ranks(store, job.model, job.attribution, "train"), **mask)
        test_loader, _ = prepared.loader(
            "test", mode=cfg.loader, batch_size=512, seed=0, train=False, device=device,
            ranks=_ranks(store, job.model, job.attribution, "test"), **mask)
    model = build_seeded(job.seed, job.arch, prepared.shape, prepared.num_classes, **job.arch_params).to(device)
    stats = train_model(model, train_loader, recipe, desc=f"retrain {job.direction}-{job.k}", progress=progress)
    hits = test_hits(model, test_loader, recipe)
    stats = stats | {"accuracy": accuracy_of(hits), "hits": hits.numpy()}
    return _record(job, recipe, stats, time.perf_counter() - t0, path_name, device, 1)


def imputed_loader(job: Job, workdir: Workdir, prepared: Prepared, split: str, device: torch.device,
                   recipe: Recipe):
    """A resident loader over the job's imputed inputs of `split` (shuffled by the job's seed for train)."""
    from fastroar.engine.loaders import ResidentLoader

    ranks = np.asarray(_ranks(str(workdir.store_path), job.model, job.attribution, split)[:])
    x = imputed_inputs(workdir, prepared, split, ranks, job.k, job.direction, job.impute, device)
    train = split == "train"
    return ResidentLoader(x.reshape(-1, *prepared.shape), prepared.arrays(split)[1], device=device, shuffle=train,
                          batch_size=recipe.batch_size if train else 512, seed=job.seed if train else 0)


def _record(job: Job, recipe: Recipe, result: dict[str, Any], seconds: float, loader: str,
            device: torch.device, group_size: int) -> dict[str, Any]:
    """A job's record: its identity, test accuracy and per-image test outcomes (`hits`, for intervals and
    paired tests), training stats, and where and how it ran (device, CPU kernels, loader, version)."""
    return job.to_dict() | {
        "accuracy": result["accuracy"], "hits": pack_hits(result["hits"]), "train_acc": result["train_acc"],
        "loss": result["loss"], "recipe_name": recipe.name, "seconds": round(seconds, 3), "loader": loader,
        "group_size": group_size, "device": str(device), "cpu_capability": capability(),
        "fastroar_version": __version__, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def stacks_conv(setting: str | bool, device: torch.device) -> bool:
    """retrain.stack_conv `setting`: whether non-MLP architectures train in stacks. auto = on CUDA only: on the CPU
    a vmapped stack's grouped convolutions are about as fast as M models in turn (tools/bench_training.py's
    conv rows), and the CPU default keeps the records one model per task gives."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def stack_trainer(arch: str):
    """The trainer of a stack of `arch` models: batched matmuls for MLPs (fastroar.training.batched), a
    torch.func vmap stack for any other architecture (fastroar.training.stacked_conv). Same signature."""
    return train_stacked if batchable(arch) else train_stacked_conv


def stackable(job: Job, cfg: Config, prepared: Prepared, device: torch.device) -> bool:
    """Whether the job trains in a stack: an MLP, or any other architecture when retrain.stack_conv is on,
    whose train and test splits (with their rank maps) take the resident path (the engine's one rule,
    fastroar.engine.loaders.choose_path)."""
    conv_stack = stacks_conv(cfg.retrain.stack_conv, device) and not job.impute  # conv stacks mask in place
    if not (batchable(job.arch) or conv_stack):
        return False
    return prepared.data_path(cfg.loader, device, ranks=True) == "resident"


def groups(jobs: Sequence[Job], cfg: Config, prepared: Prepared, device: torch.device) -> list[list[Job]]:
    """Executor tasks: stackable jobs of one (model, attribution, arch, recipe) in groups of up to
    retrain.batch_models (in sweep order), every other job alone."""
    size = cfg.retrain.batch_models
    out: list[list[Job]] = []
    open_groups: dict[str, list[Job]] = {}
    for job in jobs:
        if size <= 1 or not stackable(job, cfg, prepared, device):
            out.append([job])
            continue
        key = json.dumps([job.model, job.attribution, job.model_hash, job.arch, job.arch_params, job.recipe,
                          job.fill] + ([True] if job.sparse_input else []) + ([job.impute] if job.impute else []),
                         sort_keys=True)
        group = open_groups.get(key)
        if group is None or len(group) >= size:
            group = open_groups[key] = []
            out.append(group)
        group.append(job)
    return out


def run_group(jobs: Sequence[Job], cfg: Config, workdir: Workdir,
              prepared: Prepared | None = None) -> list[dict[str, Any]]:
    """Trains the jobs of one group (same model, attribution, arch, recipe) as one stack; their records."""
    prepared = prepared or load_prepared(cfg, workdir)
    device = resolve_device(cfg.device)
    first = jobs[0]
    if any((j.model, j.attribution, j.arch, j.arch_params, j.recipe, j.sparse_input, j.impute)
           != (first.model, first.attribution, first.arch, first.arch_params, first.recipe, first.sparse_input,
               first.impute) for j in jobs):
        raise ValueError("a group's jobs must share model, attribution, arch, recipe, sparse_input and imputation")
    recipe = Recipe(**first.recipe)
    store = str(workdir.store_path)
    t0 = time.perf_counter()
    # the stack holds both splits whole (stackable() checked they fit): read the rank maps once
    split = {s: (*prepared.arrays(s), np.asarray(_ranks(store, first.model, first.attribution, s)[:]))
             for s in ("train", "test")}
    timing = {"ranks": time.perf_counter() - t0}
    extra: dict[str, Any] = {"sparse_input": True} if first.sparse_input else {}
    if first.impute:   # each (k, direction) of the group imputed once (or read back), then shared by its seeds
        t1 = time.perf_counter()
        masks = sorted({(j.k, j.direction) for j in jobs})
        extra["inputs"] = tuple({m: imputed_inputs(workdir, prepared, s, split[s][2], *m, first.impute, device)
                                 for m in masks} for s in ("train", "test"))
        timing["impute"] = time.perf_counter() - t1
    results = stack_trainer(first.arch)(first.arch, first.arch_params, prepared.shape, prepared.num_classes,
                                        split["train"], split["test"],
                                        [Spec(j.k, j.direction, j.seed, j.fill) for j in jobs], recipe, device,
                                        timings=timing, **extra)
    total = time.perf_counter() - t0
    timing["task"] = total
    seconds = total / len(jobs)
    records = [_record(j, recipe, r, seconds, "resident", device, len(jobs))
               for j, r in zip(jobs, results)]
    records[0][TIMING_KEY] = timing   # the task's breakdown, taken off before the record is written
    return records


def run_group_task(jobs: list[Job], cfg: Config, workdir: Workdir) -> list[dict[str, Any]]:
    """An executor task: a group of jobs (one stack, or one job alone); their records. It is worth its job
    count on the caller's bar (fastroar.engine.ticks), which its training moves per epoch; the first
    record carries what it ticked (TICKED_KEY), for the caller to add the rest (finished_jobs)."""
    with ticks.task(len(jobs)) as share:
        records = [run_job(jobs[0], cfg, workdir)] if len(jobs) == 1 else run_group(jobs, cfg, workdir)
    records[0][TICKED_KEY] = share.done if share is not None else 0.0
    return records


def finished_jobs(records: list[dict[str, Any]]) -> float:
    """How far a finished task moves the bar beyond its ticks (taken off its first record)."""
    return len(records) - records[0].pop(TICKED_KEY, 0.0)


def task_memory(cfg: Config, prepared: Prepared, models: int) -> int:
    """Rough bytes one task holds: both splits as float32 model input with their rank maps (what the
    resident and stacked paths keep; the streamed path keeps less), plus weights, gradients and momentum
    of its models."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        params = sum(p.numel() for p in build_model(cfg.model.arch, prepared.shape, prepared.num_classes,
                                                   **cfg.model.params).parameters())
    n = sum(prepared.size(s) for s in SPLITS)
    return resident_bytes(n, prepared.shape, rank_dtype(prepared.d).itemsize) + models * params * 4 * 3


def tasks_of(jobs: Sequence[Job], cfg: Config, prepared: Prepared, device: torch.device) -> list[list[Job]]:
    """The executor tasks of `jobs` (groups), largest first: tasks running side by side then finish together."""
    return sorted(groups(jobs, cfg, prepared, device), key=len, reverse=True) if jobs else []


def shares_process(tasks: Sequence[Sequence[Job]], cfg: Config, prepared: Prepared,
                   device: torch.device) -> bool:
    """Whether the tasks may run on threads of this process: stacked MLP groups on the CPU share it well
    (torch and the stack's kernels release the GIL, and a model's numbers do not depend on what runs beside
    it: one torch thread per task, no global RNG after the locked seeded build). Conv stacks are left out:
    their layers may draw from torch's RNG."""
    return device.type == "cpu" and all(batchable(g[0].arch) and stackable(g[0], cfg, prepared, device)
                                        for g in tasks)


def cpu_workers(tasks: Sequence[Sequence[Job]], cfg: Config, prepared: Prepared, device: torch.device,
                threadsafe: bool) -> int:
    """Worker processes for CPU tasks that may not share this process (conv jobs, unless --workers says
    otherwise): one per usable core, as many as half the available memory holds at task_memory each. Each
    runs torch on one thread, as the task would here, so the records are the same; one after another, the
    2-core machine's BlockMNIST profile retrained on one core while the other idled. The executor caps it
    at the task count (LocalExecutor.workers_for)."""
    if device.type != "cpu" or threadsafe or len(tasks) < 2:
        return 1
    cores, free = usable_cores(), available_memory()
    if free is None:
        return cores
    return max(1, min(cores, free // 2 // max(1, task_memory(cfg, prepared, max(map(len, tasks))))))


class Recorder:
    """Writes finished tasks' records to the results log (each record once, in the caller's thread), and with
    ctx.verbose prints where each task's time went (compute vs the rest) and the stage's totals."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.tasks = self.jobs = 0           # finished so far
        self.planned = 0                     # tasks known so far (a run's pipeline plans them model by model)
        self.compute = self.rest = 0.0
        self.timed = 0                       # tasks that reported their time breakdown
        self.t0 = time.perf_counter()

    def record(self, records: list[dict[str, Any]]) -> None:
        timing = records[0].pop(TIMING_KEY, None)
        t_write = time.perf_counter()
        for record in records:
            append_result(self.ctx.wd.results_path, record)
            fault_point("retrain.after_append")
        self.tasks += 1
        self.jobs += len(records)
        if timing is None:   # a single job's task (run_job) keeps no breakdown
            return
        self.timed += 1
        busy = timing["train"] + timing["eval"]
        other = timing["task"] - busy + time.perf_counter() - t_write
        self.compute, self.rest = self.compute + busy, self.rest + other
        if self.ctx.verbose:
            self.ctx.log(f"[retrain] task {self.tasks}/{self.planned}: {len(records)} jobs; compute {busy:.2f}s (train "
                         f"{timing['train']:.2f}s, eval {timing['eval']:.2f}s), the rest {other:.3f}s = "
                         f"{1000 * other / len(records):.1f} ms/job (ranks {timing['ranks']:.3f}s, "
                         f"{'imputation ' + format(timing['impute'], '.3f') + 's, ' if 'impute' in timing else ''}"
                         "setup "
                         f"{timing['setup']:.3f}s, recording {time.perf_counter() - t_write:.3f}s)")

    def summary(self, threads: int, overlapped: bool = False) -> None:
        """With ctx.verbose: the jobs run since this recorder started, compute vs the rest, in thread-seconds
        (overlapped: the wall is the run's train, precompute and retrain, and "the rest" includes them)."""
        if not (self.ctx.verbose and self.jobs):
            return
        wall = time.perf_counter() - self.t0
        # tasks side by side on `threads` threads: their seconds add up to at most threads x the wall
        capacity = wall * threads
        compute, rest = self.compute, self.rest
        scope = " (with train and precompute, overlapped)" if overlapped else ""
        on = f"on {threads} thread{'s' if threads > 1 else ''}"
        if self.timed < self.tasks:   # no breakdown for some tasks: a compute share would count them as idle
            self.ctx.log(f"[retrain] {self.jobs} jobs in {wall:.2f}s{scope} {on}, "
                         f"{wall * threads / self.jobs:.2f} thread-seconds per job")
            return
        self.ctx.log(f"[retrain] {self.jobs} jobs in {wall:.2f}s{scope} {on}: "
                     f"compute {compute:.2f}s, outside compute {capacity - compute:.2f}s = "
                     f"{1000 * (capacity - compute) / self.jobs:.1f} ms/job (in tasks {rest:.2f}s, executor, stage "
                     f"and idle threads {capacity - compute - rest:.2f}s); thread-seconds, {compute / capacity:.0%} "
                     "in compute")


def sweep_size(cfg: Config) -> int:
    """How many distinct jobs the config's whole sweep has (a model-independent attribution's jobs count
    once): the retrain bar's total, known before any base model is trained (with seeds: auto, its first
    round's)."""
    per = len(cfg.levels) * len(cfg.retrain.directions) * seed_counts(cfg)[0]
    shared = sum(a in MODEL_INDEPENDENT for a in cfg.attributions)
    return per * (len(cfg.models) * (len(cfg.attributions) - shared) + shared)


def log_recorded(ctx: Context, jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Logs how many of `jobs` have a record, and returns those records (in job order)."""
    results_path = ctx.wd.results_path
    # a shared job's record serves every model's job
    records = records_for(read_results(results_path, RETRAIN_FIELDS), jobs)
    paths = sorted({r["loader"] for r in records})
    ctx.log(f"[retrain] {len(records)}/{len(jobs)} jobs recorded in {results_path} "
            f"(data path: {', '.join(paths)})")
    return records


def memory_note(cfg: Config, prepared: Prepared, tasks: Sequence[Sequence[Job]]) -> str:
    return f", about {task_memory(cfg, prepared, max(map(len, tasks))) / 2**20:,.0f} MiB per task" if tasks else ""


@stage("retrain")
def retrain(ctx: Context, *, executor=None, **selection: Any) -> list[dict[str, Any]]:
    """Runs every job of the sweep that has no record yet; with retrain.seeds = auto (and no --seeds) then
    adds seeds, round by round, to the rows whose interval they still narrow; returns the sweep's records."""
    cfg, workdir = ctx.cfg, ctx.wd
    executor = executor or LocalExecutor()
    jobs = plan(cfg, workdir, **selection)
    done, skipped = read_results_checked(workdir.results_path, RETRAIN_FIELDS)
    if skipped:   # torn, damaged or not a retraining record: never used, their jobs run again
        ctx.log(f"[retrain] {skipped.note(workdir.results_path)}; a job without a usable record runs again")
    execute(ctx, jobs, recorded(done, jobs), executor)
    if cfg.retrain.seeds == "auto" and not selection.get("n_seeds"):
        while extra := auto_jobs(ctx, jobs, **selection):
            jobs = jobs + extra
            execute(ctx, jobs, recorded(read_results(workdir.results_path, RETRAIN_FIELDS), jobs), executor,
                    what="seeds: auto, more seeds for the rows they still narrow")
    return log_recorded(ctx, jobs)


def execute(ctx: Context, jobs: Sequence[Job], done: dict[str, dict[str, Any]], executor, what: str = "") -> None:
    """Runs the jobs of `jobs` that have no record in `done` (a model-independent job once for all models) on
    the executor, recording each task's records as it finishes."""
    cfg, workdir, progress, log = ctx.cfg, ctx.wd, ctx.progress, ctx.log
    todo = [j for j in unique(jobs) if j.key not in done]   # a model-independent job runs once for all models
    prepared = load_prepared(cfg, workdir)
    device = resolve_device(cfg.device)
    tasks = tasks_of(todo, cfg, prepared, device)
    threadsafe = shares_process(tasks, cfg, prepared, device)
    cpu = cpu_workers(tasks, cfg, prepared, device, threadsafe)
    threads = executor.threads_for(len(tasks), threadsafe)
    workers = executor.workers_for(len(tasks), threadsafe, cpu)
    on = f" on {threads} threads" if threads > 1 else f" in {workers} worker processes" if workers > 1 else ""
    recorded_jobs = sum(j.key in done for j in jobs)
    served = len(jobs) - recorded_jobs - len(todo)   # jobs of other models that the same runs serve
    log(f"[retrain] {len(jobs)} jobs: {recorded_jobs} already done, {len(todo)} to run "
        f"in {len(tasks)} tasks ({executor.name} executor{on}, recipe {retrain_recipe(cfg).name}"
        f"{memory_note(cfg, prepared, tasks)}){f' ({what})' if what else ''}"
        + (f"; their records also serve {served} jobs of other models (model-independent attributions run "
           "once for every model)" if served else ""))
    recorder = Recorder(ctx)
    recorder.planned = len(tasks)
    # the bar counts jobs (a task of 16 stacked jobs moves it by 16), its total fixed before the first task
    with tqdm(total=len(todo), desc="retrain", unit="job", disable=not progress) as bar, ticks.sink(bar.update):
        for records in executor.map(run_group_task, [(group, cfg, workdir) for group in tasks], False,
                                    "retrain", threadsafe=threadsafe, cpu_workers=cpu):
            bar.update(finished_jobs(records))
            recorder.record(records)
    recorder.summary(max(threads, workers))   # worker processes: one torch thread each


def auto_jobs(ctx: Context, jobs: Sequence[Job], **selection: Any) -> list[Job]:
    """retrain.seeds = auto: the next seeds of each row (model, attribution, k) of `jobs` whose interval more
    seeds would still narrow (fastroar.metrics.intervals.more_seeds_useful, from the rows' per-image outcomes),
    up to retrain.max_seeds; [] when no row wants more. Rows whose records lack per-image outcomes get none."""
    from fastroar.metrics.intervals import more_seeds_useful

    cfg, workdir = ctx.cfg, ctx.wd
    first, most = seed_counts(cfg)
    done = read_results(workdir.results_path)
    outcomes: dict[tuple, dict[str, dict[int, np.ndarray]]] = {}
    for j in jobs:
        hits = unpack_hits(done[j.key].get("hits")) if j.key in done else None
        if hits is not None:
            outcomes.setdefault((j.model, j.attribution, j.k), {"top": {}, "bottom": {}})[j.direction][j.seed] = hits
    have = {(j.model, j.attribution, j.k, j.direction, j.seed) for j in jobs}
    directions = sorted({j.direction for j in jobs})
    # the selection's sweep at the most seeds a row may get, built once: each row's next seeds are picked from it
    widest = {(j.model, j.attribution, j.k, j.direction, j.seed): j
              for j in sweep_jobs(cfg, workdir, load_prepared(cfg, workdir), **{**selection, "n_seeds": most})}
    extra: list[Job] = []
    for (model, attribution, k), by_dir in sorted(outcomes.items()):
        seeds = sorted(set(by_dir["top"]) & set(by_dir["bottom"]))
        if not seeds or len(seeds) >= most:
            continue
        top = np.stack([by_dir["top"][s] for s in seeds])[None]
        bottom = np.stack([by_dir["bottom"][s] for s in seeds])[None]
        advice = more_seeds_useful(top, bottom, min_seeds=first, max_seeds=most)
        if not advice.more:
            continue
        for seed in range(len(seeds), min(most, len(seeds) + advice.add)):
            extra += [widest[slot] for d in directions
                      if (slot := (model, attribution, k, d, seed)) in widest and slot not in have]
    return extra
