"""Standard and PGD adversarial training."""
from fastroar.training.loop import Recipe, airbench_recipe, evaluate, fast_recipe, robust_accuracy, train_model
from fastroar.training.pgd import Adversary, pgd_attack, project

__all__ = ["Recipe", "fast_recipe", "airbench_recipe", "Adversary", "train_model", "evaluate", "robust_accuracy", "pgd_attack", "project"]
