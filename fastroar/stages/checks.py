"""Config checks that need the science registries: dataset, architecture and attribution names and the
parameters they are passed, the store's location. The config package checks structure and values (the
recipes and adversaries included); this runs right after it, before any stage does work."""
from __future__ import annotations

import difflib
import inspect
import math
from pathlib import Path
from typing import Any, Callable

from fastroar.attribution import METHODS, check_attribution
from fastroar.config import Config
from fastroar.datasets.registry import PARAM_HINTS, REGISTRY
from fastroar.errors import ConfigError
from fastroar.models import BUILDERS, check_arch
from fastroar.stages.artifacts import is_user_function


def check_config(cfg: Config) -> Config:
    """cfg, once its names resolve in the registries, the parameters it passes them exist and its store
    location can be used."""
    name = cfg.dataset.name
    if name not in REGISTRY:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    check_params(REGISTRY[name], cfg.dataset.params, f"dataset {name!r}", "dataset.params", PARAM_HINTS)
    arch = cfg.model.arch
    check_arch(arch)
    if arch in BUILDERS:  # torchvision:, timm: and module:callable builders take what they take
        check_params(BUILDERS[arch], cfg.model.params, f"model {arch!r}", "model.params", {},
                     positional=("shape", "num_classes"))
        check_builtin_params(cfg.model.params)
    scores = cfg.scores
    for name in scores:
        if name in METHODS:
            raise ConfigError(f"scores name {name!r} is a built-in attribution; import the scores under another name")
    for a in cfg.attributions:
        # the user's module:function is imported by the stages that run it (precompute), not here: its saved
        # rows stay readable (report, load_results) where the module is not importable
        if a not in scores and not is_user_function(a):
            check_attribution(a)
    if cfg.store:
        check_store(cfg.store)
    return cfg


def check_params(fn: Callable, params: dict[str, Any], what: str, key: str, hints: dict[str, str],
                 positional: tuple[str, ...] = ()) -> None:
    """ConfigError when `params` names a keyword that `fn` does not take (closest one suggested)."""
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    valid = [n for n in sig.parameters if n not in positional]
    for name in params:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
            if name in hints:  # the reason it does not apply says what to do
                raise ConfigError(f"{what} takes no parameter {name!r}{hints[name]}")
            fix = f"; did you mean {key}.{close[0]}?" if close else ""
            raise ConfigError(f"{what} takes no parameter {name!r}{fix} (its parameters: "
                              f"{', '.join(valid) or 'none'})")


def _width(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WIDTH


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


MAX_WIDTH = 1 << 20   # units of a layer: beyond this, a typo (a 2-layer MLP of that width needs terabytes)
# The values of the built-in architectures' parameters (their names are checked by check_params): a width
# of 0 builds a model with no units, that trains to chance with only torch's warnings; "32" or 32.5 fail
# deep inside torch.
BUILTIN_PARAMS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "width": (_width, f"an integer between 1 and {MAX_WIDTH}"),
    "widths": (lambda v: isinstance(v, list) and len(v) == 3 and all(map(_width, v)),
               f"a list of 3 integers between 1 and {MAX_WIDTH}"),
    "stem": (lambda v: v in ("small", "imagenet"), "small or imagenet"),
    "bn_momentum": (lambda v: _finite(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "scaling_factor": (lambda v: _finite(v) and v > 0, "a finite number > 0"),
}


def check_builtin_params(params: dict[str, Any]) -> None:
    """ConfigError naming the first parameter of a built-in architecture whose value it cannot use."""
    for name, value in params.items():
        ok, expects = BUILTIN_PARAMS.get(name, (lambda v: True, ""))
        if not ok(value):
            raise ConfigError(f"model.params.{name} must be {expects}, got {value!r}")


def check_store(store: str) -> None:
    """A store location zarr can open: a local directory (or a path to create), or an fsspec URL whose
    protocol is known and whose filesystem package is installed."""
    if "://" in store and not store.startswith("file://"):
        import fsspec

        protocol = store.split("://", 1)[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as e:
            raise ConfigError(f"store {store!r} needs a filesystem package that is not installed ({e}); install "
                              "it (e.g. `pip install s3fs` for s3://, gcsfs for gs://) or use a local --store"
                              ) from None
        except ValueError:
            raise ConfigError(f"store {store!r}: unknown protocol {protocol!r}; use a local path or an fsspec URL "
                              "(s3://, gs://, file://, ...)") from None
        return
    local = Path(store.removeprefix("file://"))
    if local.exists() and not local.is_dir():
        raise ConfigError(f"store {store} is a file; --store takes a directory (created when missing) or an "
                          "fsspec URL")
