"""The config's schema: every key a config may hold, its type, its bounds and its default, written once.

A config is parsed once into these frozen models (pydantic v2), and the stages read it typed. Numbers keep
the type the config wrote them in (``lr: 1`` stays the integer 1): content keys hash the values as written,
and a saved config (``Section.saved``) is the keys the config set, in its order, plus the keys that are
always saved (``SAVED``) with their defaults, so keys and saved configs are those of the dict-based
versions byte for byte. Unknown keys are refused with the closest valid key suggested, wrong types and
values name the key and what it expects.

Sizes have bounds that a real study never reaches but a typo does (``--seeds 1000000`` would plan
millions of jobs before the first one ran).
"""
from __future__ import annotations

import copy
import difflib
import math
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    WrapValidator,
    model_validator,
)

from fastroar.errors import ConfigError
from fastroar.method import DIRECTIONS, RECIPES

if TYPE_CHECKING:
    import torch

MAX_SEEDS = 1000            # runs per (level, direction)
MAX_BATCH = 1 << 16         # images per batch, anywhere
MAX_MODELS_PER_GROUP = 4096
MAX_REPLICATES = 32         # base models per entry of models
SCHEDULES = ("cosine", "onecycle", "step")
NORMS = ("l2", "linf")


def _as_written(value: Any, handler: Any) -> Any:
    checked = handler(value)
    return value if type(value) is int else checked  # an integer stays one: keys hash what the config wrote


# strict: a YAML int or float, never a bool or a string; and finite: .inf or .nan would train models whose every
# number is NaN, and every DiffROAR row would print 0.000 without a word
Number = Annotated[float, AllowInfNan(False), WrapValidator(_as_written)]


def _fill(value: Any) -> Any:
    if value in ("zero", "mean", "road"):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            return value
        raise ValueError("must be a finite number (or zero, mean, road)")
    raise ValueError("must be zero, mean, road or a number")


def _stack_conv(value: Any) -> Any:
    # isinstance, not `in`: 1 == True and 0 == False would let integers through
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError("must be auto, true or false")


class Section(BaseModel):
    """A frozen config section that remembers the order its keys were written in (for ``saved``).
    Built directly (``Recipe(epochs=0)``), a bad value raises ConfigError naming the key."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    SAVED: ClassVar[tuple[str, ...]] = ()   # keys saved with their default when the config does not set them
    _order: tuple[str, ...] = PrivateAttr(default=())

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(_message(_first(e), data, type(self).__name__, root=type(self))) from None

    # pydantic calls an overridden __init__ while validating nested sections too; this marks it as the base
    # one (as pydantic's RootModel does), so only a direct construction turns errors into ConfigError
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data: Any, handler: Any) -> Any:
        section = handler(data)
        if isinstance(data, dict):
            section._order = tuple(data)
        return section

    def saved(self) -> dict[str, Any]:
        """The section as a config writes it: the keys it set, in the order written, then those of SAVED it
        did not set, in field order (with their defaults); a fresh copy."""
        written = [k for k in self._order if k in self.model_fields_set]
        rest = [k for k in type(self).model_fields
                if k not in written and (k in self.model_fields_set or k in self.SAVED)]
        return {k: _saved(getattr(self, k)) for k in written + rest}


def _saved(value: Any) -> Any:
    if isinstance(value, Section):
        return value.saved()
    if isinstance(value, list):
        return [_saved(v) for v in value]
    if isinstance(value, dict):
        return {k: _saved(v) for k, v in value.items()}
    return copy.deepcopy(value)


class Dataset(Section):
    SAVED = ("params",)
    name: StrictStr
    params: dict[str, Any] = {}


class Model(Section):
    SAVED = ("params",)
    arch: StrictStr
    params: dict[str, Any] = {}


class Recipe(Section):
    """Optimisation settings: SGD with (Nesterov) momentum and a per-step learning-rate schedule.

    schedule "cosine": linear warm-up over warmup_epochs, then cosine decay to 0 (the paper's recipe);
    "onecycle": linear rise to lr over warmup_epochs, then linear decay to 0; "step": after warm-up,
    lr * max(decay_floor, decay_factor ** (epoch // decay_every)), constant within an epoch (the reference
    notebook's synthetic check). collapse_duplicates trains each batch on its distinct (x, y) rows weighted
    by their counts (fastroar.training.loop.collapsed; the single-model loop only). autocast (bf16) and
    channels_last take effect on CUDA only; cpu_channels_last puts conv models and their batches in the
    channels_last memory format on the CPU too (the single-model loop and its evaluation: oneDNN's NHWC
    convolutions, faster than NCHW for the BlockMNIST profile's conv net, tools/bench.py --only
    memory_format; other float rounding than NCHW, so it is its own key field, off by default);
    compile wraps the model in torch.compile for training.
    The fields after label_smoothing were added later: to_dict leaves them out while they hold their
    defaults, so the keys of models and jobs made before them are unchanged. The fast and airbench
    recipes are derived from it in fastroar.training.settings.
    """

    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("name", "schedule", "autocast", "channels_last", "compile",
                                                "decay_every", "decay_factor", "decay_floor", "collapse_duplicates",
                                                "cpu_channels_last")

    epochs: StrictInt = Field(10, ge=1, le=100_000)
    batch_size: StrictInt = Field(128, ge=1, le=MAX_BATCH)
    lr: Number = Field(0.1, gt=0)
    momentum: Number = Field(0.9, ge=0, lt=1)       # >= 1: every step adds up, SGD diverges
    weight_decay: Number = Field(5e-4, ge=0)
    warmup_epochs: Number = Field(0.0, ge=0)
    label_smoothing: Number = Field(0.0, ge=0, lt=1)
    name: Literal[RECIPES] = "paper"
    schedule: Literal[SCHEDULES] = "cosine"
    autocast: StrictBool = False
    channels_last: StrictBool = False
    compile: StrictBool = False
    # schedule step: lr * max(decay_floor, decay_factor ** (epoch // decay_every)) (the reference notebook's)
    decay_every: StrictInt = Field(50, ge=1, le=100_000)
    decay_factor: Number = Field(0.75, gt=0, le=1)
    decay_floor: Number = Field(0.01, ge=0, le=1)
    # train each batch on its distinct (x, y) rows, weighted by their counts (fastroar.training.loop.collapsed)
    collapse_duplicates: StrictBool = False
    cpu_channels_last: StrictBool = False

    def to_dict(self) -> dict[str, Any]:
        """The recipe's fields as keys hash them (the later fields only when they differ from the default)."""
        out = {k: getattr(self, k) for k in Recipe.model_fields}
        for key in self.LATER_FIELDS:
            if out[key] == Recipe.model_fields[key].default:
                del out[key]
        return out

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        total = self.epochs * steps_per_epoch
        warmup = int(self.warmup_epochs * steps_per_epoch)
        if self.schedule == "step" and not (warmup and step < warmup):
            epoch = step // max(1, steps_per_epoch)   # constant within an epoch, as LambdaLR stepped per epoch
            return self.lr * max(self.decay_floor, self.decay_factor ** (epoch // self.decay_every))
        return self.lr * lr_factor(step, total, warmup, self.schedule)

    def uses_autocast(self, device: torch.device) -> bool:
        return self.autocast and device.type == "cuda"

    def uses_channels_last(self, device: torch.device) -> bool:
        return self.channels_last if device.type == "cuda" else self.cpu_channels_last and device.type == "cpu"

    def recipe_overrides(self) -> dict[str, Any]:
        """The recipe fields this section sets (retrain: what overrides the train section's recipe)."""
        return {k: getattr(self, k) for k in Recipe.model_fields if k in self.model_fields_set}


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """The learning rate of step `step` of `total`, as a share of the recipe's lr (what `schedule` means)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "onecycle":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Train(Recipe):
    """train: the base models' recipe, plus a check of the trained models (enters no key)."""

    min_test_acc: Optional[Number] = Field(None, ge=0, le=1)

    def recipe(self) -> Recipe:
        """The base models' Recipe: the recipe fields the section sets, the others Recipe's defaults
        (min_test_acc is a check of the trained models, not a recipe field)."""
        return Recipe(**self.recipe_overrides())


class Adversary(Section):
    """A PGD threat model. step_size defaults to 2.5 * eps / steps (Madry et al.)."""

    norm: Literal[NORMS]
    eps: Number = Field(gt=0)
    steps: StrictInt = Field(7, ge=1, le=10_000)
    step_size: Optional[Number] = Field(None, gt=0)
    random_start: StrictBool = True

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class BaseModelSpec(Section):
    name: StrictStr = Field(min_length=1)
    adversary: Optional[Adversary] = None
    seed: StrictInt = Field(0, ge=0)
    checkpoint: Optional[StrictStr] = Field(None, min_length=1)  # the user's trained model, not trained here
    # B base models of this recipe (seeds seed, seed+1, ...): intervals then span base models too.
    # The loader expands them into entries NAME, NAME.1, ... that name their family in replicate_of.
    replicates: StrictInt = Field(1, ge=1, le=MAX_REPLICATES)
    replicate_of: Optional[StrictStr] = Field(None, min_length=1)


class Precompute(Section):
    batch_size: StrictInt = Field(256, ge=1, le=MAX_BATCH)
    chunk_size: Optional[StrictInt] = Field(None, ge=1, le=1 << 20)


class Retrain(Recipe):
    """retrain: the sweep's shape, plus recipe overrides of the base models' train section (only the recipe
    fields it sets override them: recipe_overrides)."""

    SAVED = ("directions", "seeds", "recipe", "batch_models", "fast_epochs", "stack_conv", "fill")
    directions: list[Literal[DIRECTIONS]] = Field(list(DIRECTIONS), min_length=1, max_length=2)
    # runs per (level, direction): a number, or auto = add seeds to a row while they still narrow its
    # interval (fastroar.metrics.intervals), up to max_seeds
    seeds: Union[Annotated[StrictInt, Field(ge=1, le=MAX_SEEDS)], Literal["auto"]] = 5
    max_seeds: StrictInt = Field(20, ge=2, le=MAX_SEEDS)
    recipe: Literal[RECIPES] = "paper"
    batch_models: StrictInt = Field(16, ge=1, le=MAX_MODELS_PER_GROUP)
    fast_epochs: Optional[StrictInt] = Field(None, ge=1, le=100_000)
    stack_conv: Annotated[Any, AfterValidator(_stack_conv)] = "auto"   # conv models in stacks: auto = on CUDA
    # zero | mean | a number | road: removed coordinates imputed as ROAD does (noisy linear, resident data)
    fill: Annotated[Any, AfterValidator(_fill)] = "zero"
    # the stacked MLP's first layer on the kept coordinates only (CPU): auto | true | false (same values)
    sparse_input: Annotated[Any, AfterValidator(_stack_conv)] = "auto"


class Config(Section):
    """A whole run configuration (saved() is what config.yaml holds)."""

    SAVED = ("train", "models", "attributions", "attribution_params", "levels", "retrain", "precompute",
             "loader", "device")
    dataset: Dataset
    model: Model
    train: Train = Train()
    models: list[BaseModelSpec] = Field([BaseModelSpec(name="standard")], min_length=1, max_length=64)
    attributions: list[StrictStr] = Field(["gradient"], min_length=1, max_length=64)
    attribution_params: dict[str, dict[str, Any]] = {}
    scores: dict[str, StrictStr] = {}  # attributions computed elsewhere: NAME -> path of their score maps
    levels: list[Number] = Field([0.1, 0.2, 0.3, 0.5], min_length=1, max_length=1000)
    retrain: Retrain = Retrain()
    precompute: Precompute = Precompute()
    loader: Literal["auto", "ffcv", "resident"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    store: Optional[StrictStr] = Field(None, min_length=1)


def check(cfg: Any, source: str = "the config") -> Config:
    """`cfg` (a dict as YAML gives it) parsed into a Config; ConfigError naming the first bad key (unknown,
    wrong type, out of bounds)."""
    if cfg is not None and not isinstance(cfg, dict):
        raise ConfigError(f"{source} must be a mapping of keys (dataset:, model:, ...), got {_kind(cfg)}")
    if not cfg:
        raise ConfigError(f"{source} is empty; it needs at least dataset: {{name: ...}} and model: {{arch: ...}}")
    try:
        return Config.model_validate(cfg)
    except ValidationError as e:
        raise ConfigError(_message(_first(e), cfg, source)) from None


def _first(e: ValidationError) -> dict[str, Any]:
    errors = e.errors()
    # a misspelt key also makes its correct spelling "missing": name the misspelling
    return next((err for err in errors if err["type"] == "extra_forbidden"), errors[0])


def _message(err: dict[str, Any], cfg: dict[str, Any], source: str, root: type[BaseModel] | None = None) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("float", "str", "int")
                                                             or p.startswith("constrained-")))]  # union tags
    key = _dotted(loc)
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        parent_loc, name = loc[:-1], str(loc[-1])
        model = _model_at(parent_loc, root or Config)
        valid = sorted(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"; did you mean {_dotted([*parent_loc, close[0]])}?" if close else ""
        where = f" under {_dotted(parent_loc)}" if parent_loc else ""
        return (f"unknown config key {key!r} in {source}{hint} (valid keys{where}: {', '.join(valid)})")
    if kind == "missing":
        return f"{source} lacks {key} (e.g. {_example(key)})"
    if key in UNION_EXPECTS and kind in ("int_type", "int_parsing", "int_from_float", "literal_error"):
        return f"config key {key} {UNION_EXPECTS[key]}, got {_shown(value)}"
    return f"config key {key} {_expects(err)}, got {_shown(value)}"


# keys that take a number or a word: pydantic reports one branch of the union, the message names both
UNION_EXPECTS = {"retrain.seeds": "must be an integer or auto"}


def _expects(err: dict[str, Any]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be an integer"
    if kind in ("float_type", "float_parsing"):
        return "must be a number"
    if kind == "finite_number":
        return "must be a finite number (not .inf or .nan)"
    if kind == "bool_type":
        return "must be true or false"
    if kind in ("string_type",):
        return "must be a string"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return "must be a mapping (key: value, ...)"
    if kind == "list_type":
        return "must be a list ([a, b, ...])"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
              "less_than_equal": "<= {le}", "too_short": "at least {min_length} long",
              "too_long": "at most {max_length} long", "string_too_short": "non-empty"}
    if kind in bounds:
        return "must be " + bounds[kind].format(**ctx)
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"is not valid ({err['msg']})"


def _model_at(loc: list[Any], root: type[BaseModel]) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _inner_model(field.annotation)
        if model is None:
            return None
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def _dotted(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _example(key: str) -> str:
    return {"dataset": "dataset: {name: blockdigits}", "model": "model: {arch: mlp2}",
            "dataset.name": "dataset: {name: blockdigits}", "model.arch": "model: {arch: mlp2}"}.get(
        key, f"{key}: ...")


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            type(None): "nothing"}.get(type(value), type(value).__name__)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
