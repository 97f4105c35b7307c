"""Training and evaluation loops shared by `train` (base models) and `retrain` (DiffROAR jobs)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fastroar.errors import ConfigError
from fastroar.training.pgd import Adversary, pgd_attack


@dataclass(frozen=True)
class Recipe:
    """Optimisation settings: SGD with momentum, linear warm-up then cosine decay, per step."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)


def lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_model(model: nn.Module, loader: Iterable, recipe: Recipe, *, adversary: Adversary | None = None,
                bounds: tuple[float, float] | None = None, desc: str = "train", progress: bool = True) -> dict:
    """Trains `model` in place on batches (x, y) already on the model's device; returns final-epoch stats."""
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          weight_decay=recipe.weight_decay, nesterov=recipe.momentum > 0)
    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    total = recipe.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, int(recipe.warmup_epochs * steps_per_epoch)))
    stats = {"loss": float("nan"), "train_acc": float("nan")}
    bar = tqdm(range(recipe.epochs), desc=desc, disable=not progress, leave=False, unit="epoch")
    for _ in bar:
        model.train()
        # Accumulated on the device: no host sync per step.
        loss_sum = torch.zeros((), device=next(model.parameters()).device)
        correct = torch.zeros((), dtype=torch.long, device=loss_sum.device)
        seen = 0
        for x, y in loader:
            if adversary is not None:
                x = pgd_attack(model, x, y, adversary, bounds)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        stats = {"loss": float(loss_sum) / max(1, seen), "train_acc": int(correct) / max(1, seen)}
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['train_acc']:.3f}")
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy of `model` over `loader`."""
    model.eval()
    correct, seen = 0, 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        seen += len(y)
    return correct / max(1, seen)


def robust_accuracy(model: nn.Module, loader: Iterable, adversary: Adversary,
                    bounds: tuple[float, float] | None = None) -> float:
    """Accuracy under the PGD adversary."""
    model.eval()
    correct, seen = 0, 0
    for x, y in loader:
        x_adv = pgd_attack(model, x, y, adversary, bounds)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == y).sum())
        seen += len(y)
    return correct / max(1, seen)
