"""The user's own attribution function, named ``module:function`` (e.g. ``mypkg.saliency:smoothgrad_sq``).

The function is called as ``fn(model, x, target, **params)``: x a batch in model-input units, target the
model's predicted labels (as the ``gradient`` method uses), params the config's
``attribution_params[<name>]``. It returns scores of x's shape (a tensor or an array; larger = more
important). The module is imported with the current working directory on ``sys.path``, as ``python -m``
does. What the scores depend on (the import path, and a hash of the function's source where
``inspect.getsource`` can read it) is given by ``function_identity`` and recorded in the rank store, so
editing the function invalidates the ranks computed with it.
"""
from __future__ import annotations

import hashlib
import inspect
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from fastroar.errors import UserCodeError
from fastroar.references import USER_REF, import_reference, is_reference  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # imported by user_scores, which runs the function: identities and checks need no torch
    import torch
    from torch import nn


def source_hash(fn: Callable) -> str | None:
    """sha256 of the callable's source (None where inspect cannot read it, e.g. a C function)."""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()


def function_identity(name: str) -> dict[str, Any]:
    """What scores of a user function depend on besides its parameters: import path and source hash."""
    return {"function": name, "source_sha256": source_hash(import_reference(name))}


def user_scores(name: str, model: nn.Module, x: torch.Tensor, *, indices: Sequence[int] | None = None,
                **params: Any) -> torch.Tensor:
    """Scores of the user function `name` for batch x, checked: x's shape (or x's size per sample), finite.

    A failure (it raises, returns another shape, NaN or inf) is a UserCodeError naming the function and
    the batch (its image indices when given)."""
    import torch

    fn = import_reference(name)
    idx = list(indices) if indices is not None else list(range(len(x)))
    where = f"the batch of images {idx[0]}..{idx[-1]}" if idx else "an empty batch"
    was_training = model.training
    model.eval()
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    try:
        with torch.enable_grad():
            scores = fn(model, x.detach().clone(), target, **params)
    except Exception as e:
        raise UserCodeError(f"attribution function {name!r} raised on {where}: {type(e).__name__}: {e}") from e
    finally:
        model.train(was_training)
    if isinstance(scores, np.ndarray):
        scores = torch.from_numpy(scores)
    if not isinstance(scores, torch.Tensor):
        raise UserCodeError(f"attribution function {name!r} returned {type(scores).__name__} on {where}; "
                            "it must return a tensor or array of x's shape")
    if tuple(scores.shape) != tuple(x.shape) and tuple(scores.shape) != (len(x), int(np.prod(x.shape[1:]))):
        raise UserCodeError(f"attribution function {name!r} returned shape {tuple(scores.shape)} on {where}; "
                            f"x has shape {tuple(x.shape)} (scores need one value per coordinate)")
    scores = scores.detach().to(x.device, torch.float32).reshape(x.shape)
    bad = ~torch.isfinite(scores)
    if bool(bad.any()):
        first = int(bad.reshape(len(x), -1).any(1).nonzero()[0, 0])
        raise UserCodeError(f"attribution function {name!r} returned NaN or inf on {where} (first at image "
                            f"{idx[first] if idx else first}); scores must be finite")
    return scores


__all__ = ["is_reference", "import_reference", "function_identity", "source_hash", "user_scores"]
