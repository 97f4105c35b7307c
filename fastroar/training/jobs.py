"""Retraining jobs: one (model, attribution, k, direction, seed) each, keyed by all they depend on."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product
from typing import Any, Callable, Sequence

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
    def key(self) -> str:
        fields = self._fields()
        if fields["fill"] == 0.0:  # the default keeps the keys that records were written under before fill
            del fields["fill"]
        return digest(fields, 16)

    def _fields(self) -> dict[str, Any]:
        """The job's fields without those at defaults that older keys and records never held: a dense job
        without imputation keeps the key and record fields written before sparse_input and impute existed."""
        fields = asdict(self)
        if not fields["sparse_input"]:
            del fields["sparse_input"]
        if fields["impute"] is None:
            del fields["impute"]
        return fields

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


def sweep(cfg: dict[str, Any], model_hashes: dict[str, str], dataset_key: str, recipe: dict[str, Any],
          models: Sequence[str], attributions: Sequence[str], levels: Sequence[float],
          directions: Sequence[str], seeds: Sequence[int], fill: float = 0.0,
          sparse_input: Callable[[float], bool] | None = None, impute: dict[str, Any] | None = None) -> list[Job]:
    """The cartesian product of the sweep, in a stable order. `sparse_input(k)`: whether a level-k job's first
    layer runs sparse (retrain.sparse_input resolved; default never); `impute`: the imputation of removed
    coordinates (retrain.fill road), else None."""
    return [
        Job(model=m, attribution=a, k=float(k), direction=d, seed=int(s), model_hash=model_hashes[m],
            dataset_key=dataset_key, arch=cfg["model"]["arch"], arch_params=dict(cfg["model"]["params"]),
            recipe=dict(recipe), fill=float(fill), sparse_input=bool(sparse_input and sparse_input(float(k))),
            impute=dict(impute) if impute else None)
        for m, a, k, d, s in product(models, attributions, levels, directions, seeds)
    ]
