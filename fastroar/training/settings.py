"""What a training run is configured by, checked without importing torch: the optimisation Recipe (with the
fast and airbench schedules derived from it) and the PGD Adversary of a robust model. Config checks and job
keys use these; the loops that run them are in loop.py and pgd.py."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from fastroar.errors import ConfigError
from fastroar.method import RECIPES, STEP_DECAY

if TYPE_CHECKING:
    import torch

SCHEDULES = ("cosine", "onecycle", "step")


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings: SGD with (Nesterov) momentum and a per-step learning-rate schedule.

    schedule "cosine": linear warm-up over warmup_epochs, then cosine decay to 0 (the paper's recipe);
    "onecycle": linear rise to lr over warmup_epochs, then linear decay to 0; "step": after warm-up,
    lr * max(decay_floor, decay_factor ** (epoch // decay_every)), constant within an epoch (torch's
    LambdaLR stepped once per epoch, as the reference notebook's synthetic check). autocast (bf16) and
    channels_last take effect on CUDA only; compile wraps the model in torch.compile for training.
    collapse_duplicates trains each batch on its distinct (x, y) rows, each weighted by its count (the same
    update in real arithmetic; fastroar.training.loop.collapsed); train_model honours it, the stacked
    retrain (fastroar.training.batched) trains whole batches.
    The fields after label_smoothing were added later: to_dict leaves them out while they hold their
    defaults, so the keys of models and jobs made before them are unchanged.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    name: str = "paper"
    schedule: str = "cosine"
    autocast: bool = False
    channels_last: bool = False
    compile: bool = False
    decay_every: int = STEP_DECAY["decay_every"]
    decay_factor: float = STEP_DECAY["decay_factor"]
    decay_floor: float = STEP_DECAY["decay_floor"]
    collapse_duplicates: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.name not in RECIPES:
            raise ConfigError(f"recipe must be one of {', '.join(RECIPES)}, got {self.name!r}")
        for flag in ("autocast", "channels_last", "compile", "collapse_duplicates"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.decay_every < 1:
            raise ConfigError(f"decay_every must be >= 1 epoch, got {self.decay_every}")
        if not 0.0 < self.decay_factor <= 1.0 or not 0.0 <= self.decay_floor <= 1.0:
            raise ConfigError(f"decay_factor must lie in (0, 1] and decay_floor in [0, 1], got "
                              f"{self.decay_factor} and {self.decay_floor}")

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in _LATER_FIELDS:
            if out[key] == _DEFAULTS[key]:
                del out[key]
        return out

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        total = self.epochs * steps_per_epoch
        warmup = int(self.warmup_epochs * steps_per_epoch)
        if self.schedule == "step" and not (warmup and step < warmup):
            epoch = step // max(1, steps_per_epoch)
            return self.lr * max(self.decay_floor, self.decay_factor ** (epoch // self.decay_every))
        return self.lr * lr_factor(step, total, warmup, self.schedule)

    def uses_autocast(self, device: torch.device) -> bool:
        return self.autocast and device.type == "cuda"

    def uses_channels_last(self, device: torch.device) -> bool:
        return self.channels_last and device.type == "cuda"


_LATER_FIELDS = ("name", "schedule", "autocast", "channels_last", "compile", "decay_every", "decay_factor",
                 "decay_floor", "collapse_duplicates")
_DEFAULTS = {f: Recipe.__dataclass_fields__[f].default for f in _LATER_FIELDS}


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


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "onecycle":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


NORMS = ("linf", "l2")


@dataclass(frozen=True)
class Adversary:
    """A PGD threat model. step_size defaults to 2.5 * eps / steps (Madry et al.)."""

    norm: str
    eps: float
    steps: int = 7
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"adversary norm must be one of {NORMS}, got {self.norm!r}")
        if not self.eps > 0:
            raise ConfigError(f"adversary eps must be > 0, got {self.eps}")
        if self.steps < 1:
            raise ConfigError(f"adversary steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ConfigError(f"adversary step_size must be > 0, got {self.step_size}")

    @property
    def alpha(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def to_dict(self) -> dict:
        return asdict(self)
