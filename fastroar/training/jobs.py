"""Retraining jobs: one (model, attribution, k, direction, seed) each, keyed by all they depend on."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product
from typing import Any, Sequence

from fastroar.keys import digest


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
    impute: dict | None = None  # removed coordinates imputed instead (retrain.fill road): method, noise, seed

    @property
    def key(self) -> str:
        return digest(self._fields(), 16)

    def _fields(self) -> dict[str, Any]:
        fields = asdict(self)
        if fields["fill"] == 0.0:  # the default keeps the keys that records were written under before fill
            del fields["fill"]
        if fields["impute"] is None:  # likewise before imputation existed: keys and records unchanged
            del fields["impute"]
        return fields

    def to_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        if fields["impute"] is None:  # records of jobs without imputation hold the fields they always held
            del fields["impute"]
        return fields | {"key": self.key}


def sweep(cfg: dict[str, Any], model_hashes: dict[str, str], dataset_key: str, recipe: dict[str, Any],
          models: Sequence[str], attributions: Sequence[str], levels: Sequence[float],
          directions: Sequence[str], seeds: Sequence[int], fill: float = 0.0,
          impute: dict[str, Any] | None = None) -> list[Job]:
    """The cartesian product of the sweep, in a stable order."""
    return [
        Job(model=m, attribution=a, k=float(k), direction=d, seed=int(s), model_hash=model_hashes[m],
            dataset_key=dataset_key, arch=cfg["model"]["arch"], arch_params=dict(cfg["model"]["params"]),
            recipe=dict(recipe), fill=float(fill), impute=dict(impute) if impute else None)
        for m, a, k, d, s in product(models, attributions, levels, directions, seeds)
    ]
