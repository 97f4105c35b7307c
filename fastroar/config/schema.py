"""The config's schema: every key a config may hold, its type and its bounds, checked before any work.

A config stays a plain dict (it is saved whole and enters content keys); the schema only validates it,
so a config that passes is used exactly as written. Unknown keys are refused with the closest valid key
suggested, wrong types and values name the key and what it expects. Built on pydantic (v2): one
declarative model per section instead of hand-written checks.

Sizes have bounds that a real study never reaches but a typo does (``--seeds 1000000`` would plan
millions of jobs before the first one ran).
"""
from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from fastroar.errors import ConfigError
from fastroar.method import STEP_DECAY

MAX_SEEDS = 1000            # runs per (level, direction)
MAX_BATCH = 1 << 16         # images per batch, anywhere
MAX_MODELS_PER_GROUP = 4096
MAX_REPLICATES = 32         # base models per entry of models
# strict: a YAML int or float, never a bool or a string; and finite: .inf or .nan would train models whose every
# number is NaN, and every DiffROAR row would print 0.000 without a word
Number = Annotated[float, AllowInfNan(False)]


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
    model_config = ConfigDict(extra="forbid", strict=True)


class Dataset(Section):
    name: StrictStr
    params: dict[str, Any] = {}


class Model(Section):
    arch: StrictStr
    params: dict[str, Any] = {}


class Recipe(Section):
    """The training recipe keys (fastroar.training.settings.Recipe checks their values in detail)."""

    epochs: StrictInt = Field(10, ge=1, le=100_000)
    batch_size: StrictInt = Field(128, ge=1, le=MAX_BATCH)
    lr: Number = Field(0.1, gt=0)
    momentum: Number = Field(0.9, ge=0, lt=1)       # >= 1: every step adds up, SGD diverges
    weight_decay: Number = Field(5e-4, ge=0)
    warmup_epochs: Number = Field(0.0, ge=0)
    label_smoothing: Number = Field(0.0, ge=0, lt=1)
    name: Literal["paper", "fast", "airbench"] = "paper"
    schedule: Literal["cosine", "onecycle", "step"] = "cosine"
    autocast: StrictBool = False
    channels_last: StrictBool = False
    compile: StrictBool = False
    # schedule step: lr * max(decay_floor, decay_factor ** (epoch // decay_every)); defaults: fastroar.method
    decay_every: StrictInt = Field(STEP_DECAY["decay_every"], ge=1, le=100_000)
    decay_factor: Number = Field(STEP_DECAY["decay_factor"], gt=0, le=1)
    decay_floor: Number = Field(STEP_DECAY["decay_floor"], ge=0, le=1)
    # train each batch on its distinct (x, y) rows, weighted by their counts (fastroar.training.loop.collapsed)
    collapse_duplicates: StrictBool = False


class Train(Recipe):
    """train: the base models' recipe, plus a check of the trained models (enters no key)."""

    min_test_acc: Optional[Number] = Field(None, ge=0, le=1)


class Adversary(Section):
    norm: Literal["l2", "linf"]
    eps: Number = Field(gt=0)
    steps: StrictInt = Field(7, ge=1, le=10_000)
    step_size: Optional[Number] = Field(None, gt=0)
    random_start: StrictBool = True


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
    """retrain: the sweep's shape, plus recipe overrides of the base models' train section."""

    directions: list[Literal["top", "bottom"]] = Field(["top", "bottom"], min_length=1, max_length=2)
    # runs per (level, direction): a number, or auto = add seeds to a row while they still narrow its
    # interval (fastroar.metrics.intervals), up to max_seeds
    seeds: Union[Annotated[StrictInt, Field(ge=1, le=MAX_SEEDS)], Literal["auto"]] = 5
    max_seeds: StrictInt = Field(20, ge=2, le=MAX_SEEDS)
    recipe: Literal["paper", "fast", "airbench"] = "paper"
    batch_models: StrictInt = Field(16, ge=1, le=MAX_MODELS_PER_GROUP)
    fast_epochs: Optional[StrictInt] = Field(None, ge=1, le=100_000)
    # zero | mean | a number | road: removed coordinates imputed as ROAD does (noisy linear, resident data)
    fill: Annotated[Any, AfterValidator(_fill)] = "zero"
    stack_conv: Annotated[Any, AfterValidator(_stack_conv)] = "auto"   # conv models in stacks: auto = on CUDA
    # the stacked MLP's first layer on the kept coordinates only (CPU): auto | true | false (same values)
    sparse_input: Annotated[Any, AfterValidator(_stack_conv)] = "auto"


class Config(Section):
    dataset: Dataset
    model: Model
    train: Train = Train()
    models: list[BaseModelSpec] = Field([BaseModelSpec(name="standard")], min_length=1, max_length=64)
    attributions: list[StrictStr] = Field(["gradient"], min_length=1, max_length=64)
    attribution_params: dict[str, dict[str, Any]] = {}
    scores: dict[str, StrictStr] = {}  # attributions computed elsewhere: NAME -> path of their score maps
    levels: list[Number] = Field([0.1, 0.2, 0.3, 0.5], min_length=1, max_length=1000)
    precompute: Precompute = Precompute()
    retrain: Retrain = Retrain()
    loader: Literal["auto", "ffcv", "resident"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    store: Optional[StrictStr] = Field(None, min_length=1)


# Recipe fields may be set under retrain too (they override the train section for retraining), but
# their defaults there are the train section's, not Recipe's: only what a config writes is checked.
def check(cfg: Any, source: str = "the config") -> None:
    """ConfigError naming the first bad key of `cfg` (unknown, wrong type, out of bounds), else nothing."""
    if cfg is not None and not isinstance(cfg, dict):
        raise ConfigError(f"{source} must be a mapping of keys (dataset:, model:, ...), got {_kind(cfg)}")
    if not cfg:
        raise ConfigError(f"{source} is empty; it needs at least dataset: {{name: ...}} and model: {{arch: ...}}")
    try:
        Config.model_validate(cfg)
    except ValidationError as e:
        errors = e.errors()
        # a misspelt key also makes its correct spelling "missing": name the misspelling
        first = next((err for err in errors if err["type"] == "extra_forbidden"), errors[0])
        raise ConfigError(_message(first, cfg, source)) from None


def _message(err: dict[str, Any], cfg: dict[str, Any], source: str) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("float", "str", "int")
                                                             or p.startswith("constrained-")))]  # union tags
    key = _dotted(loc)
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        parent_loc, name = loc[:-1], str(loc[-1])
        model = _model_at(parent_loc)
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


def _model_at(loc: list[Any]) -> type[BaseModel] | None:
    model: Any = Config
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
