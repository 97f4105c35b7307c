"""The Python API for notebooks: evaluate an attribution on a model (trained here, or your own) and get the
results as pandas DataFrames.

    >>> import fastroar
    >>> res = fastroar.evaluate("mine.pt", "blockdigits", attributions=["gradient", "random"],
    ...                         levels=[0.1, 0.3], workdir="api-work", seeds=2)
    >>> res.summary          # one row per (model, attribution, k): acc_top, acc_bottom, diffroar, ci_low, ci_high, ...
    >>> res.runs             # one row per retraining: model, attribution, k, direction, seed, accuracy, ...
    >>> runs, summary = res  # a Results unpacks as a pair

``evaluate`` opens the workdir's context (``fastroar.stages.contract.open_context``: the dataset's
shipped config, else the workdir's saved one, with this call's settings as overrides) and runs the
stages that are missing (prepare, train or register, precompute, retrain, report), each skipping
finished work, exactly as ``fastroar run`` does. ``load_results(workdir)`` reads any workdir's results
the same way. Progress bars are tqdm's auto kind: widgets in a notebook, text in a terminal.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fastroar.engine.workspace import Workdir, atomic_write
from fastroar.errors import ConfigError, MissingInputError, StoreMismatchError
from fastroar.keys import file_sha256
from fastroar.metrics.diffroar import diffroar_rows
from fastroar.stages.artifacts import checkpoint_path, load_prepared, model_families, sweep_records
from fastroar.stages.contract import Context, open_context
from fastroar.stages.mask_control import mask_controls, with_mask_columns
from fastroar.stages.report import explain
from fastroar.stages.run import run

RUN_COLUMNS = ("model", "attribution", "k", "direction", "seed", "accuracy", "train_acc", "loss", "recipe_name",
               "fill", "arch", "model_hash", "dataset_key", "seconds", "loader", "key")
SUMMARY_COLUMNS = ("model", "attribution", "k", "acc_top", "acc_bottom", "diffroar", "ci_low", "ci_high", "se",
                   "p_positive", "std", "runs", "bases", "interval", "mask_top", "mask_bottom")


@dataclass
class Results:
    """What ``evaluate`` and ``load_results`` return.

    runs: one row per retraining (model, attribution, k, direction, seed, accuracy, ...);
    summary: one row per (model, attribution, k): mean acc_top, acc_bottom, DiffROAR = their difference
    (paired by seed), its 95% interval (ci_low, ci_high: over retraining seeds and test images, and base
    models for replicated models; `interval` says which), its standard error, the one-sided p-value of
    DiffROAR > 0, the std over runs, the number of runs, and the mask-only control mask_top / mask_bottom
    (test accuracy of a probe on the keep-mask alone, fastroar.metrics.mask_probe); workdir: where
    everything is.
    Unpacks as ``runs, summary = results``.
    """

    runs: Any      # pandas.DataFrame
    summary: Any   # pandas.DataFrame
    workdir: Path

    def __iter__(self) -> Iterator[Any]:
        return iter((self.runs, self.summary))


def _set(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: strings, lists and dicts come back as they were


def _model_file(model: nn.Module, workdir: Path, name: str) -> Path:
    """The module's state dict saved under <workdir>/inputs/<name>.pt (rewritten only when it changed, so
    that a second evaluate of the same model finds its registration unchanged). Another model where `name`
    is already registered and trained on is refused before anything is written: its file is what the
    workdir's checkpoint, rank maps and records were made from."""
    import hashlib
    import io

    path = workdir / "inputs" / f"{name}.pt"
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    data = buffer.getvalue()
    if path.exists() and file_sha256(path) == hashlib.sha256(data).hexdigest():
        return path
    registered = checkpoint_path(Workdir(workdir), name).with_name("model.json")
    if path.exists() and registered.exists():
        raise StoreMismatchError(f"{workdir} already holds base model {name!r}, registered from another model "
                                 f"({path}); pass another workdir= (or name=) for this model, or delete "
                                 f"{registered.parent} and {path} to replace it")
    atomic_write(path, lambda f: f.write(data))
    return path


def _check_arguments(attributions: Any, levels: Any, seeds: Any) -> None:
    """ConfigError for the arguments a Python caller can get subtly wrong: a string where a list belongs
    (iterated letter by letter: "unknown attribution 'g'"), a seeds count that is not a whole number."""
    for name, value, example in (("attributions", attributions, "['gradient']"), ("levels", levels, "[0.1, 0.3]")):
        if value is not None and (isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")):
            raise ConfigError(f"{name} must be a list, e.g. {name}={example}, got {value!r}")
    for k in levels if levels is not None else ():
        if isinstance(k, bool) or not isinstance(k, (int, float, np.floating, np.integer)):
            raise ConfigError(f"levels must be numbers in (0, 1), e.g. levels=[0.1, 0.3], got {k!r} in {levels!r}")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int)):
        raise ConfigError(f"seeds must be a whole number of runs (e.g. seeds=2), got {seeds!r}")


def evaluate(model_or_checkpoint: nn.Module | str | Path | None = None, dataset: str | None = "blockdigits",
             attributions: Sequence[str] | None = None, levels: Sequence[float] | None = None,
             workdir: str | Path = "fastroar-work", seeds: int | None = None, recipe: str | None = None, *,
             name: str = "mine", arch: str | None = None, arch_params: Mapping[str, Any] | None = None,
             scores: Mapping[str, str | Path] | None = None,
             attribution_params: Mapping[str, Mapping[str, Any]] | None = None, config: str | Path | None = None,
             overrides: Sequence[str] = (), progress: bool = True,
             log: Callable[[str], None] = print) -> Results:
    """DiffROAR of `attributions` on a model, as DataFrames (see Results).

    model_or_checkpoint: an ``nn.Module`` (its state dict is saved under <workdir>/inputs/<name>.pt), the
    path of a saved state dict or module, or None to train the config's base models. A given model is
    the study's only base model, registered as `name`; it must fit the architecture (`arch`, e.g.
    ``torchvision:resnet18`` or ``mypkg.nets:make``, with `arch_params`; default: the config's). The
    retrained models use the same architecture, as DiffROAR requires.
    dataset: a shipped config (``configs/<dataset>.yaml``); None uses the workdir's saved config, and
    `config` a YAML file instead. attributions: names as in the config (``gradient``, ``random``,
    ``captum:<Method>``, ``module:function``, or a `scores` name). levels: the k values. seeds: runs per
    (k, direction). recipe: ``paper`` or ``fast``. scores: {NAME: PATH} precomputed scores to import.
    attribution_params: keyword arguments per attribution. overrides: more ``key.sub=value`` settings
    (as ``--set``). The call resumes: finished work in `workdir` is reused.
    """
    root = Path(workdir)
    _check_arguments(attributions, levels, seeds)
    sets: list[str] = []
    checkpoints: dict[str, str] = {}
    if model_or_checkpoint is not None:
        if isinstance(model_or_checkpoint, nn.Module):
            path = root / "inputs" / f"{name}.pt"   # written by _model_file once the workdir is open
        elif isinstance(model_or_checkpoint, (str, Path)):
            path = Path(model_or_checkpoint).expanduser()
        else:
            raise ConfigError(f"model_or_checkpoint must be an nn.Module, a checkpoint path or None, got "
                              f"{type(model_or_checkpoint).__name__}")
        sets.append("models=[]")  # the given model is the study's only base model
        checkpoints[name] = str(path.resolve())
    if arch is not None:
        sets.append(_set("model.arch", arch))
    if arch_params is not None:
        sets.append(_set("model.params", dict(arch_params)))
    if attributions is not None:
        sets.append(_set("attributions", list(attributions)))
    if levels is not None:
        sets.append(_set("levels", [float(k) for k in levels]))
    if seeds is not None:
        sets.append(_set("retrain.seeds", int(seeds)))
    if recipe is not None:
        sets.append(_set("retrain.recipe", recipe))
    for key, path in (scores or {}).items():
        sets.append(_set(f"scores.{key}", str(Path(path).expanduser().resolve())))
    if attribution_params:
        sets.append(_set("attribution_params", {k: dict(v) for k, v in attribution_params.items()}))
    ctx = open_context(root, dataset=None if config else dataset, config_path=str(config) if config else None,
                       overrides=[*sets, *overrides], create=True, log=log, progress=progress,
                       checkpoints=checkpoints)
    if isinstance(model_or_checkpoint, nn.Module):
        _model_file(model_or_checkpoint, root, name)
    run(ctx)
    return _results(ctx)


def load_results(workdir: str | Path = "fastroar-work", *, recipe: str | None = None,
                 fill: str | float | None = None) -> Results:
    """The results in `workdir` as evaluate returns them: the records of its saved config's jobs, found
    by job key as `fastroar report` finds them (or of that config with `recipe` / `fill` when given)."""
    root = Path(workdir)
    if not (root / "config.yaml").is_file():
        raise MissingInputError(f"{root} has no config.yaml: not a fastroar workdir, or nothing has run there")
    sets = ([_set("retrain.recipe", recipe)] if recipe is not None else []) + \
           ([_set("retrain.fill", fill)] if fill is not None else [])
    return _results(open_context(root, overrides=sets, progress=False))


def _results(ctx: Context) -> Results:
    import pandas as pd

    cfg, wd = ctx.cfg, ctx.wd
    prepared = load_prepared(cfg, wd)
    jobs, mine, others, skipped = sweep_records(cfg, wd, prepared)  # by job key, as `fastroar report`
    if skipped:  # torn, damaged (checksum) or not retraining records: never used
        ctx.log(f"[fastroar] {skipped.note(wd.results_path)}")
    if not mine:
        other = f" ({len(others)} record(s) of other settings: {explain(others, jobs)})" if others else ""
        ctx.log(f"[fastroar] no retraining results of this config in {wd.results_path}{other}: the frames are "
                f"empty; run `fastroar retrain --workdir {wd.root}` with the same settings first")
    records = sorted(mine, key=lambda r: (r["model"], r["attribution"], r["k"], r["direction"] != "top", r["seed"]))
    runs = pd.DataFrame([{c: r.get(c) for c in RUN_COLUMNS} for r in records], columns=list(RUN_COLUMNS))
    hashes = {r["model"]: r["model_hash"] for r in records}
    cells = {(r["model"], r["attribution"], float(r["k"]), r["direction"]) for r in records}
    rows = with_mask_columns(diffroar_rows(records, model_families(cfg)),
                             mask_controls(cfg, wd, prepared, cells, hashes))
    summary = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return Results(runs, summary, wd.root)


__all__ = ["evaluate", "load_results", "Results"]
