"""The user's own trained model: a checkpoint file read as a state dict and fitted to an architecture.

A checkpoint is a ``torch.save``d state dict, a whole saved ``nn.Module``, or a dict holding the state
dict under ``state_dict`` (fastroar's own ``model.pt``, and the usual training-script layout). It must
fit the architecture built from the config (same keys, same shapes) and the data (a batch of the
images' shape gives one logit per class); otherwise one UserCodeError says which key, shape or step
differs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastroar.errors import ConfigError, StoreCorruptError, UserCodeError


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file (a state dict, a whole module, or {'state_dict': ...})."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"checkpoint {p}: no such file")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserCodeError(f"checkpoint {p} cannot be read by torch.load ({type(e).__name__}: {e})") from e
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise UserCodeError(f"checkpoint {p} holds a {type(obj).__name__}, not a state dict, an nn.Module or "
                            "a dict with a 'state_dict'")
    return obj


def load_saved(path: Path) -> dict[str, Any]:
    """The dict of a model.pt that fastroar's train wrote; StoreCorruptError naming the fix when the file
    cannot be read back (truncated by a full disk or a copy, damaged)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... by kind of damage
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise StoreCorruptError(f"{path} is damaged: torch.load cannot read it ({type(e).__name__}: {first}); "
                                f"delete {path.parent} and rerun `fastroar train`") from None
    if not isinstance(ckpt, dict) or not {"state_dict", "config", "hash"} <= set(ckpt):
        raise StoreCorruptError(f"{path} is not a checkpoint `fastroar train` wrote; delete {path.parent} and "
                                "rerun `fastroar train`")
    return ckpt


def fit_state(model: nn.Module, state: dict[str, torch.Tensor], label: str, shape: tuple[int, ...],
              num_classes: int) -> nn.Module:
    """model with `state` loaded, once the keys and shapes match and a batch of the data's shape gives
    (batch, num_classes) logits; UserCodeError naming the first difference otherwise."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        what = (f"the architecture has {missing[0]!r}, the checkpoint does not" if missing else
                f"the checkpoint has {extra[0]!r}, the architecture does not")
        count = f" ({len(missing)} keys missing, {len(extra)} unexpected)"
        raise UserCodeError(f"{label} does not fit the architecture: {what}{count}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise UserCodeError(f"{label} does not fit the architecture: {k!r} has shape {tuple(state[k].shape)} "
                                f"in the checkpoint, {tuple(v.shape)} in the model")
    model.load_state_dict(state)
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape))
    except Exception as e:
        raise UserCodeError(f"{label} does not fit the data: a batch of shape {(2, *shape)} raised "
                            f"{type(e).__name__}: {e}") from e
    if tuple(out.shape) != (2, num_classes):
        raise UserCodeError(f"{label} does not fit the data: it gives logits of shape {tuple(out.shape)} for a "
                            f"batch of 2, the data have {num_classes} classes (expected (2, {num_classes}))")
    return model


__all__ = ["read_state", "fit_state", "load_saved"]
