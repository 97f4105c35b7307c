"""Model registry: the paper's architectures, sized from the dataset's input shape and class count.

- ``mlp1``: one hidden ReLU layer (the leakage experiments);
- ``mlp2``: two hidden ReLU layers (BlockMNIST-style data);
- ``linear``: a linear classifier (Theorem 1's baseline);
- ``resnet18``: torchvision's ResNet18; ``stem: small`` (default: 3x3 stride-1, no max-pool, for small inputs)
  or ``stem: imagenet`` (torchvision's 7x7 stride-2 stem and max-pool, for 112-224 px images);
- ``torchvision:<name>``: any torchvision classification model (``torchvision.models.get_model``, random
  init, ``num_classes`` of the data); its first convolution takes the data's channels, and with
  ``small_input: true`` becomes a 3x3 stride-1 convolution and a max-pool right after it is dropped (the
  small stem of ``resnet18``); other params go to torchvision's builder;
- ``timm:<name>``: a timm model (``timm.create_model``, ``num_classes`` and ``in_chans`` of the data),
  when timm is installed;
- ``module:callable``: the user's own factory, called as ``factory(shape, num_classes, **params)``; it
  must return an ``nn.Module`` (the module is imported with the current directory on ``sys.path``).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
from typing import Any, Callable

from torch import nn

from fastroar.errors import ConfigError, UserCodeError


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


FACTORY = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
ARCH_FORMS = "torchvision:<name>, timm:<name> or module:callable"


def _torchvision_names() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("timm architectures need timm, which is not installed: pip install timm") from None
    return timm


def _factory(arch: str) -> Callable[..., nn.Module]:
    match = FACTORY.match(arch)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(match["module"])
    except ImportError as e:
        raise ConfigError(f"model architecture {arch!r}: cannot import module {match['module']!r} ({e}); "
                          "put it on PYTHONPATH or run from its directory") from e
    for part in match["attr"].split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model architecture {arch!r}: module {match['module']!r} has no {match['attr']!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model architecture {arch!r} is not callable")
    return obj


def check_arch(arch: Any) -> str:
    """`arch` if it names an architecture this installation can build, else a ConfigError naming the fix."""
    if arch in BUILDERS:
        return arch
    if isinstance(arch, str) and arch.startswith("torchvision:"):
        if arch.split(":", 1)[1] not in _torchvision_names():
            raise ConfigError(f"torchvision has no classification model {arch.split(':', 1)[1]!r} "
                              "(e.g. torchvision:resnet18, torchvision:mobilenet_v3_small)")
        return arch
    if isinstance(arch, str) and arch.startswith("timm:"):
        timm = _timm()
        if not timm.is_model(arch.split(":", 1)[1]):
            raise ConfigError(f"timm has no model {arch.split(':', 1)[1]!r}")
        return arch
    if isinstance(arch, str) and FACTORY.match(arch):
        _factory(arch)
        return arch
    raise ConfigError(f"unknown model architecture {arch!r}; choose one of: {', '.join(sorted(BUILDERS))}, "
                      f"{ARCH_FORMS}")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def adapt_stem(model: nn.Module, channels: int, small_input: bool) -> nn.Module:
    """The first Conv2d takes `channels` inputs; small_input: it becomes 3x3 stride 1 (padding 1) and a
    MaxPool2d before the second convolution becomes an identity (as resnet18's small stem)."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return model
    name, conv = convs[0]
    if small_input or conv.in_channels != channels:
        kernel, stride, padding = ((3, 3), (1, 1), (1, 1)) if small_input else (conv.kernel_size, conv.stride,
                                                                                conv.padding)
        _replace(model, name, nn.Conv2d(channels, conv.out_channels, kernel, stride=stride, padding=padding,
                                        bias=conv.bias is not None))
    if small_input:
        order = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
        second_conv = next((i for i, n in enumerate(order) if n in dict(convs) and n != name), len(order))
        for n in order[:second_conv]:
            if isinstance(model.get_submodule(n), nn.MaxPool2d):
                _replace(model, n, nn.Identity())
    return model


def torchvision_model(name: str, shape: tuple[int, ...], num_classes: int, small_input: bool = False,
                      **params: Any) -> nn.Module:
    import torchvision.models

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **params)
    return adapt_stem(model, int(shape[0]), bool(small_input))


def build_model(arch: str, shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """A freshly initialised model (initialisation follows torch's global RNG: seed it first)."""
    check_arch(arch)
    try:
        if arch in BUILDERS:
            return BUILDERS[arch](tuple(shape), num_classes, **kwargs)
        if arch.startswith("torchvision:"):
            return torchvision_model(arch.split(":", 1)[1], tuple(shape), num_classes, **kwargs)
        if arch.startswith("timm:"):
            return _timm().create_model(arch.split(":", 1)[1], pretrained=False, num_classes=num_classes,
                                        in_chans=int(shape[0]), **kwargs)
    except TypeError as e:
        raise ConfigError(f"bad parameters for model {arch!r}: {e}") from e
    try:
        model = _factory(arch)(tuple(int(s) for s in shape), num_classes, **kwargs)
    except Exception as e:
        raise UserCodeError(f"model factory {arch!r} raised {type(e).__name__}: {e} (called as "
                            f"factory(shape={tuple(shape)}, num_classes={num_classes}, **{kwargs}))") from e
    if not isinstance(model, nn.Module):
        raise UserCodeError(f"model factory {arch!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def state_hash(model: nn.Module, config: dict[str, Any]) -> str:
    """sha256 over the parameters' and buffers' bytes (in key order) and the JSON of the config."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


__all__ = ["build_model", "check_arch", "state_hash", "BUILDERS"]
