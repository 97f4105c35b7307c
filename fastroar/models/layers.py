"""The torch building blocks of the architectures in builders.py (airbench's conv group, BatchNorm and
logit scale). builders.py imports this module when it builds a model, so naming and checking an
architecture imports no torch."""
from __future__ import annotations

from torch import nn


class ConvGroup(nn.Module):
    """airbench's block: conv 3x3 -> max-pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU (pool skipped
    when the input is already down to 1 pixel on a side, so small inputs still fit)."""

    def __init__(self, cin: int, cout: int, pool: bool, bn_momentum: float, bn_eps: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm1 = bias_only_bn(cout, bn_momentum, bn_eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = bias_only_bn(cout, bn_momentum, bn_eps)
        self.activ = nn.GELU()
        for conv in (self.conv1, self.conv2):   # identity on the first input channels, as airbench's init
            w = conv.weight.data
            nn.init.dirac_(w[:w.size(1)])

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


def bias_only_bn(channels: int, momentum: float, eps: float) -> nn.BatchNorm2d:
    """airbench's BatchNorm: learned bias, scale fixed at 1 (a frozen weight); momentum and eps as
    builders.airbench passes them (its defaults are airbench's: 0.6 and 1e-12)."""
    bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    bn.weight.requires_grad_(False)
    return bn


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor
