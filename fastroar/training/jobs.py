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
from typing import Any, Callable, Sequence

from fastroar.config import Config
from fastroar.keys import digest
from fastroar.method import n_kept

BATCHABLE_ARCHS = ("linear", "mlp1", "mlp2")   # the MLPs fastroar.training.batched trains in stacks

# retrain.sparse_input = auto: the sparse first layer (csrc/sparse_input.cpp) where the first layer is large
# (d >= SPARSE_MIN_D) and the mask keeps at most SPARSE_MAX_SHARE of it. Measured (tools/bench_sparse.py and
# stacks of 4 at one level; one thread, dense in the same run, on a shared 2-core machine): at d = 1568, mlp2
# width 256, 2.1-2.3x the dense stack's training speed over k = 0.05 ... 0.5 on MNIST-like images (a quarter
# of the pixels lit: black kept pixels are skipped too, so even k = 0.9 ran 1.5x); with every pixel nonzero
# 1.55x at k = 0.3, break-even at k = 0.5, 0.75-0.8x at k = 0.7-0.9: hence the share. At blockdigits'
# d = 128, whose first layer holds a third of mlp2's work, 0.95-1.3x: auto leaves the default study dense
# (its records and keys stay those an older workdir holds); 512 lies between the two shapes measured.
SPARSE_MIN_D = 512
SPARSE_MAX_SHARE = 0.5

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
    # the first layer ran on the kept coordinates only (retrain.sparse_input resolved for this job): its sums
    # run in another order, so its records differ from the dense layer's at float rounding and get their own key
    sparse_input: bool = False
    impute: dict | None = None  # removed coordinates imputed instead (retrain.fill road): method, noise, seed

    @property
    def shared(self) -> bool:
        """Whether the job is the same for every base model (module docstring)."""
        return self.attribution in MODEL_INDEPENDENT

    def _fields(self) -> dict[str, Any]:
        """The job's fields without those at defaults that older keys and records never held: a dense job
        without imputation keeps the key and record fields written before sparse_input and impute existed."""
        fields = asdict(self)
        if not fields["sparse_input"]:
            del fields["sparse_input"]
        if fields["impute"] is None:
            del fields["impute"]
        return fields

    def _key_fields(self) -> dict[str, Any]:
        fields = self._fields()
        if fields["fill"] == 0.0:  # the default keeps the keys that records were written under before fill
            del fields["fill"]
        return fields

    @property
    def key(self) -> str:
        fields = self._key_fields()
        if self.shared:
            fields["model"] = fields["model_hash"] = SHARED_MODEL
        return digest(fields, 16)

    @property
    def legacy_key(self) -> str | None:
        """The per-model key a shared job had before model-independent jobs were shared; None otherwise."""
        return digest(self._key_fields(), 16) if self.shared else None

    def to_dict(self) -> dict[str, Any]:
        return self._fields() | {"key": self.key}


def sparse_input_wanted(setting: Any, arch: str, k: float, d: int) -> bool:
    """The config's half of retrain.sparse_input's rule, on the job's shape alone (no torch, no device):
    `false` never, `true` for every stacked MLP, `auto` for stacked MLPs with d >= SPARSE_MIN_D and
    n / d <= SPARSE_MAX_SHARE. Where the job then runs decides the rest (fastroar.training.batched.
    uses_sparse_input: the CPU, resident data, the compiled extension)."""
    if setting is False or arch not in BATCHABLE_ARCHS:
        return False
    return setting is True or (d >= SPARSE_MIN_D and n_kept(k, d) <= SPARSE_MAX_SHARE * d)


def sweep(cfg: Config, model_hashes: dict[str, str], dataset_key: str, recipe: dict[str, Any],
          models: Sequence[str], attributions: Sequence[str], levels: Sequence[float],
          directions: Sequence[str], seeds: Sequence[int], fill: float = 0.0,
          sparse_input: Callable[[float], bool] | None = None, impute: dict[str, Any] | None = None) -> list[Job]:
    """The cartesian product of the sweep, in a stable order. `sparse_input(k)`: whether a level-k job's first
    layer runs sparse (retrain.sparse_input resolved; default never); `impute`: the imputation of removed
    coordinates (retrain.fill road), else None."""
    return [
        Job(model=m, attribution=a, k=float(k), direction=d, seed=int(s), model_hash=model_hashes[m],
            dataset_key=dataset_key, arch=cfg.model.arch, arch_params=dict(cfg.model.params),
            recipe=dict(recipe), fill=float(fill), sparse_input=bool(sparse_input and sparse_input(float(k))),
            impute=dict(impute) if impute else None)
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
