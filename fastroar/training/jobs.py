"""Retraining jobs: one (model, attribution, k, direction, seed) each, keyed by all they depend on.

Job-key rule for model-independent attributions (``MODEL_INDEPENDENT``: ``random``, ``edge``): their ranks
depend on the input alone, so a job's data, ranks and recipe are the same for every base model. Their key
holds ``SHARED_MODEL`` in place of the base model's name and hash: the jobs of two base models have one
key, run once, and the one record serves both (the retrain stage runs each key once; a lookup by
:func:`recorded` gives each model's job that record). Records written before this rule, keyed per model
(``Job.legacy_key``), still count: found under the legacy key of any model's job, they serve the shared key.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product
from typing import Any, Sequence

from fastroar.keys import digest

# Attributions whose scores do not depend on the base model (fastroar.attribution.methods: random scores
# seeded by sample index; the Sobel edges of the input) and the marker their keys hold instead of a model.
MODEL_INDEPENDENT = frozenset({"random", "edge"})
SHARED_MODEL = "model-independent"


@dataclass(frozen=True)
class Job:
    model: str              # the base model whose attribution ranked the pixels
    attribution: str
    k: float
    direction: str          # "top" | "bottom"
    seed: int
    model_hash: str         # identity of what the job depends on: same inputs -> same key
    dataset_key: str
    arch: str
    arch_params: dict
    recipe: dict
    fill: float = 0.0       # value of removed coordinates (model-input units): 0 = zero fill

    @property
    def shared(self) -> bool:
        """Whether the job is the same for every base model (module docstring)."""
        return self.attribution in MODEL_INDEPENDENT

    def _fields(self) -> dict[str, Any]:
        fields = asdict(self)
        if fields["fill"] == 0.0:  # the default keeps the keys that records were written under before fill
            del fields["fill"]
        return fields

    @property
    def key(self) -> str:
        fields = self._fields()
        if self.shared:
            fields["model"] = fields["model_hash"] = SHARED_MODEL
        return digest(fields, 16)

    @property
    def legacy_key(self) -> str | None:
        """The per-model key a shared job had before model-independent jobs were shared; None otherwise."""
        return digest(self._fields(), 16) if self.shared else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"key": self.key}


def sweep(cfg: dict[str, Any], model_hashes: dict[str, str], dataset_key: str, recipe: dict[str, Any],
          models: Sequence[str], attributions: Sequence[str], levels: Sequence[float],
          directions: Sequence[str], seeds: Sequence[int], fill: float = 0.0) -> list[Job]:
    """The cartesian product of the sweep, in a stable order."""
    return [
        Job(model=m, attribution=a, k=float(k), direction=d, seed=int(s), model_hash=model_hashes[m],
            dataset_key=dataset_key, arch=cfg["model"]["arch"], arch_params=dict(cfg["model"]["params"]),
            recipe=dict(recipe), fill=float(fill))
        for m, a, k, d, s in product(models, attributions, levels, directions, seeds)
    ]


def recorded(done: dict[str, dict[str, Any]], jobs: Sequence[Job]) -> dict[str, dict[str, Any]]:
    """{job key: its record} for the jobs of `jobs` that have one in `done` (records by key): under the
    job's key, else (a shared job) under the legacy key of any of the given jobs with the same key."""
    out = {j.key: done[j.key] for j in jobs if j.key in done}
    for j in jobs:
        if j.key not in out and j.legacy_key is not None and j.legacy_key in done:
            out[j.key] = done[j.legacy_key]
    return out


def records_for(done: dict[str, dict[str, Any]], jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Each job's record, in job order (jobs without one left out), as that job's (:func:`for_job`): under
    its key, else its own legacy key (the record made for its model), else a shared key's record."""
    shared = recorded(done, jobs)
    out = []
    for j in jobs:
        rec = done.get(j.key) or (done.get(j.legacy_key) if j.legacy_key else None) or shared.get(j.key)
        if rec is not None:
            out.append(for_job(rec, j))
    return out


def unique(jobs: Sequence[Job]) -> list[Job]:
    """The jobs with distinct keys, first of each kept (a shared job once, for the first base model)."""
    seen: set[str] = set()
    out = []
    for j in jobs:
        if j.key not in seen:
            seen.add(j.key)
            out.append(j)
    return out


def for_job(record: dict[str, Any], job: Job) -> dict[str, Any]:
    """`record` as `job`'s: a shared job's record (run for another base model, or keyed the legacy way)
    names this job's base model and hash, so per-model tables count it once per model."""
    if record.get("model") == job.model and record.get("model_hash") == job.model_hash:
        return record
    return record | {"model": job.model, "model_hash": job.model_hash}
