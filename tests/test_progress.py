"""Progress a user can watch: a retrain task moves its caller's bar per epoch, by what it is worth in jobs,
never more (fastroar.engine.ticks); the bar's total is the sweep's job count from the start."""
from __future__ import annotations

import numpy as np
import pytest

from fastroar.engine import ticks


def test_ticks_go_to_the_sink_only_inside_a_task_and_never_past_its_worth():
    got = []
    ticks.tick(1.0)                      # no sink, no task: nothing
    with ticks.sink(got.append):
        ticks.tick(1.0)                  # a sink but no task (a base model's training): nothing
        with ticks.task(2) as share:
            for _ in range(3):
                ticks.tick(0.75)
        assert share.done == 2.0
    assert got == [0.75, 0.75, 0.5]
    with ticks.task(3) as share:         # no sink: a task elsewhere (another process) ticks nothing
        ticks.tick(1.0)
    assert share is None and got == [0.75, 0.75, 0.5]


def test_a_stack_of_models_ticks_once_per_epoch():
    from fastroar.training.batched import Spec, train_stacked
    from fastroar.training.settings import Recipe

    rng = np.random.default_rng(0)
    d, n = 16, 40
    split = (rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8), rng.integers(0, 2, n),
             np.stack([rng.permutation(d) for _ in range(n)]).astype(np.uint16))
    got = []
    specs = [Spec(0.5, "top", 0), Spec(0.5, "bottom", 0), Spec(0.5, "top", 1)]
    with ticks.sink(got.append), ticks.task(len(specs)) as share:
        train_stacked("mlp1", {"width": 4}, (1, 4, 4), 2, split, split, specs, Recipe(epochs=4, batch_size=16))
    assert got == pytest.approx([0.75] * 4) and share.done == pytest.approx(3.0)


def test_the_bar_total_is_the_sweeps_distinct_jobs():
    from fastroar.config import validate
    from fastroar.stages.retrain import sweep_size

    cfg = validate({"dataset": {"name": "blockdigits"}, "model": {"arch": "mlp2"}, "levels": [0.1, 0.5, 0.9],
                    "retrain": {"directions": ["top", "bottom"], "seeds": 5},
                    "models": [{"name": "standard"}, {"name": "robust"}],
                    "attributions": ["gradient", "random", "edge"]})
    assert sweep_size(cfg) == 3 * 2 * 5 * (2 * 1 + 2)   # gradient per model, random and edge once
