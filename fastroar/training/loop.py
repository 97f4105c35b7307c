"""Training and evaluation loops shared by `train` (base models) and `retrain` (DiffROAR jobs)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fastroar.engine import cancel, ticks
from fastroar.errors import ConfigError
from fastroar.training import mlp_steps
from fastroar.training.mlp_steps import mlp_params
from fastroar.training.pgd import pgd_attack
from fastroar.training.settings import Adversary, Recipe
from fastroar.training.sgd import SGD


def _prepare_input(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def collapsed(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct (x, y) rows of a batch (bitwise equal inputs up to signs of zeros, same label) and each
    one's count, as (x_distinct, y_distinct, counts); the rows come in sorted order of their bits.

    Why: the batch-mean loss (1/B) sum_i l(x_i, y_i) equals sum_u (count_u / B) l(x_u, y_u) over the distinct
    rows, so the gradient, and the SGD update, is the same in real arithmetic (float sums run in another
    order); and a PGD attack without random start sends equal rows to equal adversarial rows (each row's
    ascent reads only its own gradient, whose sign or direction the batch size does not change). On data with
    few distinct points (the leakage data with eta = 0 have 2d) a step then costs a fraction of the batch."""
    b = x.shape[0]
    flat = x.reshape(b, -1) + 0.0   # -0.0 + 0.0 = +0.0: rows that differ only in signs of zeros compute alike
    bits = flat.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[flat.element_size()])
    key = torch.cat([bits.to(torch.int64), y.reshape(b, 1).to(torch.int64)], 1)
    _, inverse, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    first = torch.empty(len(counts), dtype=torch.long, device=x.device).scatter_(
        0, inverse, torch.arange(b, device=x.device))   # a row of each group (any: they are equal)
    return x[first], y[first], counts


def check_collapsible(model: nn.Module, adversary: Adversary | None) -> None:
    """ConfigError unless training on collapsed batches (Recipe.collapse_duplicates) gives the update of the
    full batch: no module whose output mixes rows (batch norm's batch statistics) or draws per row (dropout),
    and no adversary whose random start perturbs equal rows differently."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)):
            why = "its batch statistics mix the rows" if isinstance(m, nn.modules.batchnorm._BatchNorm) else \
                "it draws a mask per row"
            raise ConfigError(f"train.collapse_duplicates needs a model whose rows do not interact, but module "
                              f"{name or 'model'!r} is {type(m).__name__} ({why}); set collapse_duplicates: false")
    if adversary is not None and adversary.random_start:
        raise ConfigError("train.collapse_duplicates needs an adversary without random start (equal rows must stay "
                          "equal): set the model's adversary random_start: false, or collapse_duplicates: false")


def train_model(model: nn.Module, loader: Iterable, recipe: Recipe, *, adversary: Adversary | None = None,
                bounds: tuple[float, float] | None = None, desc: str = "train", progress: bool = True,
                generator: torch.Generator | None = None) -> dict:
    """Trains `model` in place on batches (x, y) already on the model's device; returns final-epoch stats.
    The adversary's random starts draw from `generator` (default: torch's global one). With the recipe's
    collapse_duplicates each batch trains on its distinct rows weighted by their counts (`collapsed`)."""
    collapse = recipe.collapse_duplicates
    if collapse:
        check_collapsible(model, adversary)
    device = next(model.parameters()).device
    channels_last = recipe.uses_channels_last(device)
    # an MLP on the CPU trains through the compiled step (same ops as autograd's, fastroar.training.mlp_steps);
    # it flattens its input, so the CPU's memory format changes nothing it computes and does not turn it off
    plain = not ((channels_last and device.type != "cpu") or recipe.compile or recipe.uses_autocast(device)
                 or recipe.label_smoothing)
    compiled = mlp_params(model, torch.empty(0, device=device)) if plain else None
    channels_last = channels_last and compiled is None
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if recipe.compile else model
    opt = SGD(model.parameters(), momentum=recipe.momentum, weight_decay=recipe.weight_decay,
              nesterov=recipe.momentum > 0)
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
            rows = len(y)
            counts = None
            if collapse:
                x, y, counts = collapsed(x, y)
            x = _prepare_input(x, channels_last)
            if adversary is not None:
                x = pgd_attack(model, x, y, adversary, bounds, generator)
            if compiled is not None and x.dtype == torch.float32 and counts is None:
                loss, hits = mlp_steps.grads(x, y, compiled)
            else:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=recipe.uses_autocast(device)):
                    logits = forward(x)
                    if counts is None:
                        loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
                    else:   # the batch mean, as a count-weighted sum over the distinct rows
                        loss = F.cross_entropy(logits.float(), y, reduction="none",
                                               label_smoothing=recipe.label_smoothing).mul(counts / rows).sum()
                opt.zero_grad()
                loss.backward()
                right = logits.detach().argmax(1) == y
                hits = right.sum() if counts is None else (right * counts).sum()
            opt.step(recipe.lr_at(step, steps_per_epoch))
            step += 1
            loss_sum += loss.detach() * rows
            correct += hits
            seen += rows
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
