"""Model registry: the paper's architectures, sized from the dataset's input shape and class count.

- ``mlp1``: one hidden ReLU layer (the leakage experiments);
- ``mlp2``: two hidden ReLU layers (BlockMNIST-style data);
- ``linear``: a linear classifier (Theorem 1's baseline);
- ``resnet18``: torchvision's ResNet18; ``stem: small`` (default: 3x3 stride-1, no max-pool, for small inputs)
  or ``stem: imagenet`` (torchvision's 7x7 stride-2 stem and max-pool, for 112-224 px images).
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from torch import nn

from fastroar.errors import ConfigError


def mlp(shape: tuple[int, ...], num_classes: int, widths: list[int]) -> nn.Module:
    d = 1
    for s in shape:
        d *= int(s)
    layers: list[nn.Module] = [nn.Flatten()]
    for w in widths:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def resnet18(shape: tuple[int, ...], num_classes: int, stem: str = "small") -> nn.Module:
    """torchvision's ResNet18. stem="small" (default): 3x3 stride-1 first conv and no max-pool, for 8-32 px
    inputs, which a 7x7 stride-2 conv plus max-pool would shrink to nothing; stem="imagenet": torchvision's
    own stem (7x7 stride 2 + max-pool), what the paper used at 112 px (16x less compute there)."""
    from torchvision.models import resnet18 as tv_resnet18

    if stem not in ("small", "imagenet"):
        raise ConfigError(f"resnet18 stem must be 'small' or 'imagenet', got {stem!r}")
    model = tv_resnet18(num_classes=num_classes)
    if stem == "imagenet":
        if int(shape[0]) != 3:
            model.conv1 = nn.Conv2d(int(shape[0]), 64, kernel_size=7, stride=2, padding=3, bias=False)
        return model
    model.conv1 = nn.Conv2d(int(shape[0]), 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "linear": lambda shape, num_classes: mlp(shape, num_classes, []),
    "mlp1": lambda shape, num_classes, width=1000: mlp(shape, num_classes, [width]),
    "mlp2": lambda shape, num_classes, width=256: mlp(shape, num_classes, [width, width]),
    "resnet18": resnet18,
}


def build_model(arch: str, shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """A freshly initialised model (initialisation follows torch's global RNG: seed it first)."""
    if arch not in BUILDERS:
        raise ConfigError(f"unknown model architecture {arch!r}; choose one of: {', '.join(sorted(BUILDERS))}")
    try:
        return BUILDERS[arch](tuple(shape), num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"bad parameters for model {arch!r}: {e}") from e


def state_hash(model: nn.Module, config: dict[str, Any]) -> str:
    """sha256 over the parameters' and buffers' bytes (in key order) and the JSON of the config."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


__all__ = ["build_model", "state_hash", "BUILDERS"]
