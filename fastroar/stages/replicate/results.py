"""What each experiment of `fastroar replicate` hands the claims table and the summary: one dataclass per
result, serialized by :func:`to_json` into summary.json.

The JSON is the file's contract (its keys are read by users and tests), so a field's JSON key is its name
unless its metadata says otherwise: ``key`` renames it, ``inline`` spreads a nested mapping into the parent
(with that prefix), ``omit_none`` leaves the key out while the value is None. Rows that fastroar.metrics
computes (DiffROAR rows, attribution_quality) stay the dicts it returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

# --------------------------------------------------------------------------- serialization


def to_json(value: Any) -> Any:
    """The value as JSON-ready dicts and lists, dataclasses by their fields' JSON keys (module doc)."""
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in fields(value):
            v = getattr(value, f.name)
            if v is None and f.metadata.get("omit_none"):
                continue
            if "inline" in f.metadata:
                out.update({f.metadata["inline"] + k: x for k, x in to_json(v).items()})
            else:
                out[f.metadata.get("key", f.name)] = to_json(v)
        return out
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    return value


def inline(prefix: str = "") -> Any:
    return field(metadata={"inline": prefix})


def optional() -> Any:
    return field(default=None, metadata={"omit_none": True})


# --------------------------------------------------------------------------- shared


@dataclass
class ModelStatus:
    """A base model's clean test accuracy (recomputed), accuracy under attack (from training), the test
    split's chance rate and the warnings they raise."""
    test_acc: float
    robust_test_acc: float | None
    chance: float
    warnings: list[str]


@dataclass
class Skipped:
    """An experiment that did not run, and why."""
    skipped: str


# --------------------------------------------------------------------------- 1. leakage (Fig. 5)


@dataclass
class GradientMass:
    """One model's gradient (one attribution) on eq. (2) data: mean shares of |gradient| mass per region, the
    k = 1 block view (how often the largest |gradient| is the signal coordinate) and AQ."""
    signal_share: float
    other_relevant_share: float
    noise_share: float
    zero_gradient_instances: int
    top1_on_signal: float
    top1_count: int
    n: int
    instance_spread: float          # 0: the same attribution for every instance
    quality: dict[str, float] = inline("aq_")   # fastroar.metrics.aq.attribution_quality


@dataclass
class LeakageModel:
    label: str
    hash: str
    status: ModelStatus = inline()
    by_attribution: dict[str, GradientMass] = field(default_factory=dict, metadata={"key": "by"})


@dataclass
class LeakageAnalytic:
    """DiffROAR at k (one coordinate kept) of a perfectly localizing (ceiling) and a perfectly leaking
    attribution, on a test split of this chance rate."""
    ceiling: float
    perfect_leakage: float
    chance: float
    k: float


@dataclass
class LeakageResult:
    config: dict[str, Any]
    workdir: str
    models: dict[str, LeakageModel]
    attributions: list[str]
    chance_share: float             # share of the signal block among the task-relevant ones
    robust_more_concentrated: bool
    robust_concentrates: bool
    standard_leaks: bool
    diffroar: list[dict[str, Any]]  # fastroar.metrics.diffroar rows
    analytic: LeakageAnalytic
    png: str
    seconds: float = 0.0


# --------------------------------------------------------------------------- 2. the notebook's AQ


@dataclass
class AqModel:
    kind: str                       # standard | robust
    seed: int
    status: ModelStatus = inline()
    aq: dict[str, dict[str, float]] = field(default_factory=dict)   # attribution -> attribution_quality


@dataclass
class AqOverSeeds:
    """One attribution's AQ over a kind's models: mean and std over seeds, the largest per-model standard
    error, and the 95% interval over seeds and test points (`interval` names its method)."""
    mean: float
    std: float
    se: float
    top_hit: float
    bottom_hit: float
    ci: list[float]
    interval: str


@dataclass
class AqKind:
    runs: int
    test_acc: float                 # mean over the kind's models
    chance: float
    aq: dict[str, AqOverSeeds]


@dataclass
class AqResult:
    config: dict[str, Any]
    workdir: str
    attributions: list[str]
    models: dict[str, AqModel]
    kinds: dict[str, AqKind]
    seconds: float = 0.0
    recipe: str = "leakage-all"     # the config it ran
    reference: bool = False         # --reference: the recipe is the notebook's exact one


# --------------------------------------------------------------------------- 3. BlockMNIST-style


@dataclass
class BlockModel:
    adversary: dict[str, Any] | None
    hash: str
    status: ModelStatus = inline()
    signal_share: float
    localization: dict[str, float]  # level (as text) -> share of the top-k coordinates in the signal block
    localization_ci: list[float]    # its 95% t-interval at the first level
    aq: dict[str, float]            # attribution_quality at m = the block size


@dataclass
class BlockResult:
    dataset: dict[str, Any]
    levels: list[float]
    models: dict[str, BlockModel]
    chance: float                   # share of the signal block in an image
    workdir: str
    png: str
    robust_localizes_better: dict[str, bool] | None = optional()
    standard_near_chance: dict[str, bool] | None = optional()
    seconds: float | None = optional()


# --------------------------------------------------------------------------- 4. DiffROAR


@dataclass
class StandardVsRobust:
    """DiffROAR of input gradients at one k: each model's, and the paired difference robust - standard."""
    k: float
    standard: float
    standard_std: float
    robust: float
    robust_std: float
    standard_ci: list[float]
    robust_ci: list[float]
    difference_ci: list[float] | None
    p_two_sided: float | None
    robust_higher: bool
    runs: int
    standard_road: float | None
    robust_road: float | None
    road_same_order: bool | None = optional()


@dataclass
class DiffroarComparison:
    available: bool = field(default=True, init=False)   # summary.json lists it first
    rows: list[dict[str, Any]]      # fastroar.metrics.diffroar rows (with "road" where estimated)
    comparison: list[StandardVsRobust]
    png: str
    robust_higher_at_every_k: bool
    significantly_higher: int       # levels whose paired interval lies above 0


@dataclass
class DiffroarMissing:
    available: bool = field(default=False, init=False)
    note: str


# --------------------------------------------------------------------------- real data (--data-root)


@dataclass
class RealData:
    """The Sec. 5 experiments on one real dataset, run on its CPU profile config."""
    dataset: str
    config: str                     # the profile's name (configs/<config>.yaml)
    root: str                       # where its files were read
    workdir: str
    n_test: int
    min_test_acc: float | None      # the profile's regime
    block: BlockResult | None       # BlockMNIST only: grids, localization, AQ
    variant: BlockResult | None     # its -Top variant
    diffroar: DiffroarComparison | DiffroarMissing
    seconds: float = 0.0


@dataclass
class RealDataAbsent:
    """A real dataset whose files were not found (or not readable): why, and how to get them."""
    dataset: str
    config: str
    note: str


# --------------------------------------------------------------------------- the table and the summary


@dataclass(frozen=True)
class Claim:
    """One row of the claims table: the finding (and where it comes from), the setting it was measured in,
    the paper's (or reference code's) value, ours with its interval, and the verdict with the interval or
    test it follows from (or why there is none)."""
    claim: str
    setting: str
    reference: str
    ours: str = field(metadata={"key": "fastroar"})
    verdict: str = field(metadata={"key": "agrees"})


@dataclass
class Summary:
    workdir: str
    quick: bool
    out_dir: str
    leakage: LeakageResult
    aq: AqResult
    blockdigits: BlockResult | Skipped
    variant: BlockResult | None
    diffroar: DiffroarComparison | DiffroarMissing
    leakage_control: dict[str, Any] | None = optional()   # fastroar.stages.leakage_claim
    real_data: dict[str, RealData | RealDataAbsent] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
