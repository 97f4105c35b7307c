"""Model registry against torchvision: the ImageNet stem is torchvision's ResNet18 itself; the small stem
differs only in its first conv (3x3, stride 1) and the missing max-pool."""
from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18 as tv_resnet18

from fastroar.errors import ConfigError
from fastroar.models import build_model


def test_imagenet_stem_is_torchvisions_resnet18():
    torch.manual_seed(0)
    ours = build_model("resnet18", (3, 112, 112), 10, stem="imagenet").eval()
    ref = tv_resnet18(num_classes=10).eval()
    ref.load_state_dict(ours.state_dict())  # same keys and shapes, or this raises
    x = torch.randn(2, 3, 112, 112)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_small_stem_keeps_resolution():
    model = build_model("resnet18", (1, 16, 8), 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, torch.nn.Identity)
    feats = torch.nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)(torch.zeros(1, 1, 16, 8))
    assert feats.shape == (1, 64, 16, 8)


def test_unknown_stem_is_a_config_error():
    with pytest.raises(ConfigError, match="stem must be"):
        build_model("resnet18", (3, 32, 32), 10, stem="huge")
