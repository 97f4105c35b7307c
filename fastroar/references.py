"""References to the user's own code, written ``module:attr`` (``mypkg.saliency:smoothgrad``): one rule for
recognising and importing them, used for attribution functions and model factories alike. The module is
imported with the current working directory on ``sys.path``, as ``python -m`` does."""
from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any, Callable

from fastroar.errors import ConfigError, UserCodeError

# module path (dotted) : attribute path (dotted); "captum:..." is captum's, matched before this
USER_REF = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")


def is_reference(name: str) -> bool:
    """Whether `name` looks like ``module:callable``."""
    return isinstance(name, str) and USER_REF.match(name) is not None


def import_reference(name: str, what: str = "attribution function") -> Callable:
    """The callable that ``module:attr`` names (cwd on sys.path); a ConfigError naming what is missing."""
    match = USER_REF.match(name)
    if match is None:
        raise ConfigError(f"{what} {name!r} must look like module:callable (e.g. mypkg.saliency:smoothgrad)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(match["module"])
    except ImportError as e:
        raise ConfigError(f"{what} {name!r}: cannot import module {match['module']!r} ({e}); put it on "
                          "PYTHONPATH or run from its directory") from e
    except Exception as e:  # the user's module itself failed while being imported
        raise UserCodeError(f"{what} {name!r}: importing {match['module']!r} raised "
                            f"{type(e).__name__}: {e}") from e
    for part in match["attr"].split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{what} {name!r}: module {match['module']!r} has no attribute {match['attr']!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{what} {name!r} is not callable")
    return obj
