"""What a training run is configured by, checked without importing torch: the optimisation Recipe and the PGD
Adversary of a robust model (the config's own models, fastroar.config.schema, re-exported here), and the fast
and airbench recipes derived from a Recipe. Job keys use these; the loops that run them are in loop.py and
pgd.py."""
from __future__ import annotations

import math

from fastroar.config.schema import NORMS, SCHEDULES, Adversary, Recipe, lr_factor

__all__ = ["NORMS", "SCHEDULES", "Adversary", "Recipe", "lr_factor", "fast_recipe", "airbench_recipe"]


FAST_LABEL_SMOOTHING = 0.2
FAST_WARMUP_FRACTION = 0.25
FAST_MAX_EPOCHS = 8
FAST_MAX_BATCH = 512
FAST_MIN_STEPS = 64        # steps per epoch the fast recipe keeps when it grows the batch


def fast_recipe(paper: Recipe, epochs: int | None = None, n_train: int | None = None,
                compile: bool | None = None) -> Recipe:
    """The short schedule beside the paper's (in the spirit of airbench): a third of the paper's epochs,
    at most 8 (or `epochs`); one-cycle learning rate (linear up over the first quarter, linear down to 0);
    label smoothing 0.2; bf16 autocast and channels_last (CUDA only); torch.compile when asked. Given the
    train split's size, the batch grows (to at most 512, keeping >= 64 steps per epoch) with the learning
    rate scaled in proportion."""
    n = int(epochs) if epochs else max(1, min(FAST_MAX_EPOCHS, math.ceil(paper.epochs / 3)))
    batch = paper.batch_size
    if n_train:
        steps_fit = int(n_train) // FAST_MIN_STEPS
        fit = 1 << (steps_fit.bit_length() - 1) if steps_fit else 1   # a power of two <= n_train / 64
        batch = max(paper.batch_size, min(FAST_MAX_BATCH, fit))
    fields = paper.to_dict() | {
        "name": "fast", "epochs": n, "batch_size": batch, "lr": paper.lr * batch / paper.batch_size,
        "schedule": "onecycle", "warmup_epochs": FAST_WARMUP_FRACTION * n,
        "label_smoothing": FAST_LABEL_SMOOTHING, "autocast": True, "channels_last": True,
    }
    if compile is not None:
        fields["compile"] = bool(compile)
    return Recipe(**fields)


AIRBENCH_EPOCHS = 10          # airbench94 trains 9.9 epochs; whole epochs here
AIRBENCH_BATCH = 1024
AIRBENCH_MOMENTUM = 0.85
AIRBENCH_LR = 11.5            # per 1024 examples, summed loss, before the Nesterov kilostep scaling
AIRBENCH_WD = 0.0153          # per 1024 examples, decoupled from the learning rate
AIRBENCH_WARMUP_FRACTION = 0.2
AIRBENCH_LABEL_SMOOTHING = 0.2


def airbench_recipe(paper: Recipe, epochs: int | None = None, n_train: int | None = None,
                    compile: bool | None = None) -> Recipe:
    """airbench94's optimisation (Keller Jordan 2024, github.com/KellerJordan/airbench), for model.arch
    airbench, in this Recipe's terms: 10 epochs (or `epochs`), batch 1024 (smaller for small train splits,
    as fast_recipe: a power of two keeping >= 64 steps per epoch), Nesterov SGD with momentum 0.85,
    label smoothing 0.2, bf16 autocast and channels_last (CUDA only).

    airbench's loss is summed over the batch and its learning rate divided by the Nesterov step scale
    1024 * (1 + 1 / (1 - momentum)); for the batch-mean loss used here that is
    lr = 11.5 / (1 + 1 / 0.15) * batch / 1024 = 1.5 at batch 1024, and its decoupled weight decay 0.0153
    becomes torch's coupled weight_decay = 0.0153 / 11.5 (the same decay per step at any batch size).
    Its triangular schedule (0.2 -> 1 -> 0.07 of the peak, peak at 20 %) becomes the one-cycle schedule
    with the peak at 20 % of training. Not carried over (one learning rate per Recipe, no augmentation in
    masked retraining): the 64x learning rate of BatchNorm biases, the whitening layer's frozen weights,
    Lookahead, flip / translate augmentation and test-time augmentation."""
    n = int(epochs) if epochs else AIRBENCH_EPOCHS
    batch = AIRBENCH_BATCH
    if n_train:
        steps_fit = int(n_train) // FAST_MIN_STEPS
        fit = 1 << (steps_fit.bit_length() - 1) if steps_fit else 1
        batch = max(1, min(AIRBENCH_BATCH, fit))
    fields = paper.to_dict() | {
        "name": "airbench", "epochs": n, "batch_size": batch,
        "lr": AIRBENCH_LR / (1 + 1 / (1 - AIRBENCH_MOMENTUM)) * batch / AIRBENCH_BATCH,
        "momentum": AIRBENCH_MOMENTUM, "weight_decay": AIRBENCH_WD / AIRBENCH_LR,
        "schedule": "onecycle", "warmup_epochs": AIRBENCH_WARMUP_FRACTION * n,
        "label_smoothing": AIRBENCH_LABEL_SMOOTHING, "autocast": True, "channels_last": True,
    }
    if compile is not None:
        fields["compile"] = bool(compile)
    return Recipe(**fields)
