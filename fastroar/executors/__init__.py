"""Executors run retraining jobs and yield their records as they finish. ``local``: in this process."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from tqdm.auto import tqdm

from fastroar.errors import ConfigError


def run_local(jobs: Sequence, cfg: dict[str, Any], workdir, progress: bool = True) -> Iterator[dict[str, Any]]:
    from fastroar.datasets.prepare import load_prepared
    from fastroar.roar.retrain import run_job

    prepared = load_prepared(cfg, workdir)
    for job in tqdm(jobs, desc="retrain", disable=not progress, unit="job"):
        yield run_job(job, cfg, workdir, prepared)


EXECUTORS: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {"local": run_local}


def get_executor(name: str) -> Callable[..., Iterator[dict[str, Any]]]:
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose one of: {', '.join(sorted(EXECUTORS))}")
    return EXECUTORS[name]
