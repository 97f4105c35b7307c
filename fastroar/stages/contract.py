"""The stage contract: every stage is ``fn(ctx, **options)`` under one decorator.

``Context`` carries what every stage needs: the resolved config, the workdir, where to log and whether
to draw progress bars. ``open_context`` resolves the config the same way for every caller (the CLI,
``run``, ``replicate``, the Python API): ``--config`` FILE, else ``--dataset``'s shipped YAML, else the
workdir's saved config.yaml, else the default dataset; then ``--set`` overrides.

``@stage(name)`` gives each stage the same lifecycle:

- it holds the workdir's lock for that stage (a second process running the same stage on the same
  workdir is refused; the OS drops the lock when its holder dies, even by SIGKILL); a stage that does the
  work of several at once (``run``'s overlapped train, precompute and retrain) holds each of their locks;
- it times the stage (``ctx.timings[name]``);
- it pins torch to one CPU thread, so results do not depend on the machine's core count (a stage that
  runs no torch says ``uses_torch=False`` and then imports none: `report` reads files and plots);
- with ``saves_config=True`` it writes the config to <workdir>/config.yaml only once the stage has
  succeeded, so a stage that fails leaves the saved config as it was;
- a workdir that this call created and the failed stage left empty is removed again.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from fastroar.config import Config, load_config
from fastroar.engine.faults import fault_point
from fastroar.engine.workspace import Workdir, atomic_write_text, refuse_foreign, stage_lock
from fastroar.stages.artifacts import check_trained
from fastroar.stages.checks import check_config

# Stages that use the base models `train` made: each refuses a config the models were not trained with
# (what `train` itself refuses), before doing any work.
READS_TRAINED_MODELS = ("precompute", "retrain", "report", "estimate")


@dataclass
class Context:
    """What a stage runs with: the config (parsed and checked), the workdir, a log function and progress."""

    cfg: Config
    wd: Workdir
    log: Callable[[str], None] = print
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    save_config: bool = True  # False inside `run`, which saves the config once, when all its stages succeeded
    verbose: bool = False     # stages print where their time goes (retrain: compute vs the rest, per job)


def resolve_config(workdir: str | Path | None = None, *, dataset: str | None = None,
                   config_path: str | None = None, overrides: Sequence[str] = (),
                   checkpoints: Mapping[str, str] | None = None) -> Config:
    """The validated config of a call: --config FILE, else --dataset's shipped YAML, else the workdir's
    saved config.yaml, else the default dataset's; then the --set overrides, then the --checkpoint
    NAME=PATH registrations."""
    saved = Path(workdir) / "config.yaml" if workdir is not None else None
    use_saved = not (config_path or dataset) and saved is not None and saved.exists()
    return check_config(load_config(dataset=dataset, path=saved if use_saved else config_path,
                                    overrides=list(overrides), checkpoints=dict(checkpoints or {})))


def open_context(workdir: str | Path, *, dataset: str | None = None, config_path: str | None = None,
                 overrides: Sequence[str] = (), create: bool = False, log: Callable[[str], None] = print,
                 progress: bool = True, checkpoints: Mapping[str, str] | None = None,
                 verbose: bool = False) -> Context:
    """The Context of a stage call: the config resolved and validated before anything is created, so a bad
    option creates no workdir; create=True makes the workdir (stages that start a study: prepare, run). A
    directory that is not fastroar's is refused first: its config.yaml is not a saved config."""
    refuse_foreign(workdir)
    cfg = resolve_config(workdir, dataset=dataset, config_path=config_path, overrides=overrides,
                         checkpoints=checkpoints)
    return Context(cfg, Workdir(workdir, create=create, store=cfg.store), log, progress,
                   verbose=verbose)


def save_config(ctx: Context) -> None:
    """<workdir>/config.yaml := the context's config as written (Config.saved), atomically."""
    atomic_write_text(ctx.wd.root / "config.yaml", yaml.safe_dump(ctx.cfg.saved(), sort_keys=False))


def _one_cpu_thread() -> None:
    """One intra-op torch thread on the CPU, in every stage process. A float sum split over N threads is
    rounded differently for each N, and PGD training amplifies that into different models: with a fixed
    count, a config gives the same records on any machine. Numba's kernels and CUDA keep their own
    parallelism."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def stage(name: str, *, saves_config: bool = False, uses_torch: bool = True,
          locks: Sequence[str] | None = None) -> Callable:
    """Decorator of a stage function ``fn(ctx, **options)``: lock, timing, torch pinned to one thread
    (unless uses_torch=False) and the saved config (module doc). `locks`: the stages whose locks it holds,
    when it does the work of several at once (default: its own)."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(ctx: Context, **options: Any) -> Any:
            if uses_torch:
                _one_cpu_thread()
            try:
                with contextlib.ExitStack() as held:
                    for lock in locks or (name,):
                        held.enter_context(stage_lock(ctx.wd, lock))
                    if name in READS_TRAINED_MODELS:
                        check_trained(ctx.cfg, ctx.wd)
                    fault_point(f"stage.{name}")  # tests: pause or kill here, lock held
                    t0 = time.perf_counter()
                    result = fn(ctx, **options)
                    if saves_config and ctx.save_config:
                        save_config(ctx)
                    ctx.timings[name] = ctx.timings.get(name, 0.0) + time.perf_counter() - t0
                    return result
            except BaseException:
                ctx.wd.remove_if_unused()
                raise

        wrapper.stage_name = name  # type: ignore[attr-defined]
        wrapper.pins_torch = uses_torch  # type: ignore[attr-defined]
        return wrapper

    return decorate
