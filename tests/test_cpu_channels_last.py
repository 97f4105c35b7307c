"""Recipe.cpu_channels_last: conv models train in the channels_last memory format on the CPU.

What must hold: the same values as the NCHW path up to float rounding (an independent run of the same
recipe without the field; the PGD random start is drawn in NCHW order), the same bits run after run (the
records' promise), the model really in channels_last after training (the fast kernels ran), no effect on
MLPs (their compiled step flattens the input: bit-identical to the field off), and no change to the keys
of recipes that leave it off.
"""
from __future__ import annotations

import torch

from fastroar.models import build_model
from fastroar.training.loop import evaluate, train_model
from fastroar.training.settings import Adversary, Recipe

SHAPE, CLASSES = (3, 12, 8), 4   # 3 channels: channels_last is another layout (1 channel: the same bytes)


def _batches(seed: int = 0, n: int = 4, b: int = 16):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(b, *SHAPE, generator=g), torch.randint(0, CLASSES, (b,), generator=g)) for _ in range(n)]


def _trained(arch: str, params: dict, recipe: Recipe, adversary: Adversary | None = None):
    torch.manual_seed(0)
    model = build_model(arch, SHAPE, CLASSES, **params)
    stats = train_model(model, _batches(), recipe, adversary=adversary, bounds=(0.0, 1.0), progress=False,
                        generator=torch.Generator().manual_seed(1))
    return model, stats


def _flat(model) -> torch.Tensor:
    return torch.cat([t.detach().contiguous().flatten() for t in model.state_dict().values() if t.is_floating_point()])


CONV = ("airbench", {"widths": [8, 16, 16], "bn_eps": 1e-5})


def test_conv_trains_in_channels_last_with_the_values_of_nchw():
    recipe = dict(epochs=2, batch_size=16, lr=0.05)
    adversary = Adversary(norm="l2", eps=0.5, steps=2)
    cl, cl_stats = _trained(*CONV, Recipe(**recipe, cpu_channels_last=True), adversary)
    nchw, nchw_stats = _trained(*CONV, Recipe(**recipe), adversary)
    convs = [m.weight for m in cl.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert all(not w.is_contiguous() for w in convs)
    assert all(m.weight.is_contiguous() for m in nchw.modules() if isinstance(m, torch.nn.Conv2d))
    torch.testing.assert_close(_flat(cl), _flat(nchw), atol=1e-4, rtol=1e-4)   # rounding apart, no more
    assert abs(cl_stats["loss"] - nchw_stats["loss"]) < 1e-4
    test = _batches(seed=5)
    recipe_cl = Recipe(**recipe, cpu_channels_last=True)
    assert evaluate(cl, test, recipe_cl) == evaluate(nchw, test, Recipe(**recipe))


def test_conv_channels_last_is_bitwise_repeatable():
    recipe = Recipe(epochs=1, batch_size=16, lr=0.05, cpu_channels_last=True)
    a, _ = _trained(*CONV, recipe)
    b, _ = _trained(*CONV, recipe)
    assert torch.equal(_flat(a), _flat(b))


def test_mlp_ignores_the_cpu_memory_format():
    recipe = dict(epochs=1, batch_size=16, lr=0.05)
    a, _ = _trained("mlp2", {"width": 16}, Recipe(**recipe, cpu_channels_last=True))
    b, _ = _trained("mlp2", {"width": 16}, Recipe(**recipe))
    assert torch.equal(_flat(a), _flat(b))


def test_field_off_leaves_keys_unchanged_and_on_enters_them():
    assert "cpu_channels_last" not in Recipe().to_dict()
    assert Recipe(cpu_channels_last=True).to_dict()["cpu_channels_last"] is True
    assert Recipe(cpu_channels_last=True).uses_channels_last(torch.device("cpu"))
    assert not Recipe(channels_last=True).uses_channels_last(torch.device("cpu"))      # CUDA-only, as before
    assert not Recipe(cpu_channels_last=True).uses_channels_last(torch.device("cuda"))
