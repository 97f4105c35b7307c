"""Training and evaluation loops shared by `train` (base models) and `retrain` (DiffROAR jobs)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fastroar.engine import cancel, ticks
from fastroar.training import mlp_steps
from fastroar.training.mlp_steps import mlp_params
from fastroar.training.pgd import pgd_attack
from fastroar.training.settings import Adversary, Recipe
from fastroar.training.sgd import SGD


def _prepare_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def train_model(model: nn.Module, loader: Iterable, recipe: Recipe, *, adversary: Adversary | None = None,
                bounds: tuple[float, float] | None = None, desc: str = "train", progress: bool = True,
                generator: torch.Generator | None = None) -> dict:
    """Trains `model` in place on batches (x, y) already on the model's device; returns final-epoch stats.
    The adversary's random starts draw from `generator` (default: torch's global one)."""
    device = next(model.parameters()).device
    channels_last = recipe.uses_channels_last(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if recipe.compile else model
    opt = SGD(model.parameters(), momentum=recipe.momentum, weight_decay=recipe.weight_decay,
              nesterov=recipe.momentum > 0)
    # an MLP on the CPU trains through the compiled step (same ops as autograd's, fastroar.training.mlp_steps)
    plain = not (channels_last or recipe.compile or recipe.uses_autocast(device) or recipe.label_smoothing)
    compiled = mlp_params(model, torch.empty(0, device=device)) if plain else None
    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    step = 0
    stats = {"loss": float("nan"), "train_acc": float("nan")}
    bar = tqdm(range(recipe.epochs), desc=desc, disable=not progress, leave=False, unit="epoch")
    for _ in bar:
        model.train()
        # Accumulated on the device: no host sync per step.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        for x, y in loader:
            cancel.check()   # between steps: an interrupted run stops here (fastroar.engine.cancel)
            x = _prepare_input(x, channels_last)
            if adversary is not None:
                x = pgd_attack(model, x, y, adversary, bounds, generator)
            if compiled is not None and x.dtype == torch.float32:
                loss, hits = mlp_steps.grads(x, y, compiled)
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.uses_autocast(device)):
                    logits = forward(x)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
                opt.zero_grad()
                loss.backward()
                hits = (logits.detach().argmax(1) == y).sum()
            opt.step(recipe.lr_at(step, steps_per_epoch))
            step += 1
            loss_sum += loss.detach() * len(y)
            correct += hits
            seen += len(y)
        stats = {"loss": float(loss_sum) / max(1, seen), "train_acc": int(correct) / max(1, seen)}
        ticks.tick(1 / recipe.epochs)   # inside a retrain task: its caller's bar moves per epoch
        bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['train_acc']:.3f}")
    return stats


@torch.no_grad()
def test_hits(model: nn.Module, loader: Iterable, recipe: Recipe | None = None) -> torch.Tensor:
    """Which samples of `loader` (in its order) `model` classifies correctly, as a (N,) bool tensor on the CPU
    (under the recipe's autocast / memory format, if given)."""
    model.eval()
    device = next(model.parameters()).device
    amp = recipe is not None and recipe.uses_autocast(device)
    channels_last = recipe is not None and recipe.uses_channels_last(device)
    hits = []
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(_prepare_input(x, channels_last))
        hits.append(logits.argmax(1) == y)
    return torch.cat(hits).cpu() if hits else torch.zeros(0, dtype=torch.bool)


def accuracy_of(hits: torch.Tensor) -> float:
    """Top-1 accuracy of per-sample outcomes: correct / N (0.0 for no samples)."""
    return int(hits.sum()) / max(1, int(hits.numel()))


def evaluate(model: nn.Module, loader: Iterable, recipe: Recipe | None = None) -> float:
    """Top-1 accuracy of `model` over `loader` (under the recipe's autocast / memory format, if given)."""
    return accuracy_of(test_hits(model, loader, recipe))


def robust_accuracy(model: nn.Module, loader: Iterable, adversary: Adversary,
                    bounds: tuple[float, float] | None = None, generator: torch.Generator | None = None) -> float:
    """Accuracy under the PGD adversary (random starts from `generator`, default torch's global one)."""
    model.eval()
    correct, seen = 0, 0
    for x, y in loader:
        x_adv = pgd_attack(model, x, y, adversary, bounds, generator)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == y).sum())
        seen += len(y)
    return correct / max(1, seen)
