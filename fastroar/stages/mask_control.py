"""The mask-only control of every DiffROAR cell (fastroar.metrics.mask_probe), computed from the rank
store and cached.

One record per (model, attribution, k, direction) in <workdir>/controls/mask_probe.jsonl, keyed by the
store entry's identity (base-model hash, data, attribution and its parameters, levels, shape), k,
direction and the probe's settings: `report` computes only what is missing (about 0.1 s a cell at
d = 128) and otherwise reads the file. The records sit outside results/, so adding the control leaves a
workdir's results as they were. A model-independent attribution's ranks are the same for every base model
(fastroar.training.jobs.MODEL_INDEPENDENT), so its cells are keyed without the model, as its retraining
jobs are: one probe per (attribution, k, direction) serves every model.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

from fastroar import __version__
from fastroar.config import Config
from fastroar.engine.results import append_result, read_results
from fastroar.engine.store import RankStore
from fastroar.engine.workspace import Workdir
from fastroar.errors import MissingInputError
from fastroar.keys import digest
from fastroar.metrics.aq import majority_rate
from fastroar.metrics.mask_probe import mask_only_accuracy, probe_settings
from fastroar.stages.artifacts import Prepared, reading_identity
from fastroar.training.jobs import MODEL_INDEPENDENT, SHARED_MODEL

Cell = tuple[str, str, float, str]   # (model, attribution, k, direction)


def mask_probe_path(workdir: Workdir) -> Path:
    return workdir.root / "controls" / "mask_probe.jsonl"


def entry_identity(cfg: Config, workdir: Workdir, prepared: Prepared, model: str, model_hash: str,
                   attribution: str) -> dict[str, Any]:
    """The identity a cell's store entry is read with: the config's, or for the user's function that cannot be
    imported here (or whose source changed) the stored one, as the report reads its ranks
    (fastroar.stages.artifacts.reading_identity; the report prints its warning)."""
    try:
        stored = RankStore(str(workdir.store_path), mode="r").stored_identity(model, attribution)
    except MissingInputError:
        stored = None
    return reading_identity(cfg, prepared, model_hash, attribution, stored)[0]


def shared_identity(ident: dict[str, Any]) -> dict[str, Any]:
    """The entry identity a cell's key holds: a model-independent attribution's with SHARED_MODEL in place of
    the base model's hash (its ranks are every model's), any other's as it is."""
    return {**ident, "model_hash": SHARED_MODEL} if ident["attribution"] in MODEL_INDEPENDENT else ident


def mask_controls(cfg: Config, workdir: Workdir, prepared: Prepared, cells: Iterable[Cell],
                  hashes: dict[str, str], log: Callable[[str], None] | None = None) -> dict[Cell, float]:
    """Mask-only test accuracy of each cell (model, attribution, k, direction), the base models given by
    hash; cached cells are read, the rest computed from the rank store (checksums verified) and appended.
    A cell whose ranks are no longer in the store is left out (named through `log`); a damaged store
    raises, as everywhere."""
    path = mask_probe_path(workdir)
    done = read_results(path)
    probe = probe_settings()
    by_entry: dict[tuple[str, str], list[tuple[Cell, str, dict[str, Any]]]] = {}
    out: dict[Cell, float] = {}
    identities: dict[tuple[str, str], dict[str, Any]] = {}
    pending: dict[str, list[Cell]] = {}   # key -> the cells its one probe serves
    for cell in sorted(set(cells)):
        model, attribution, k, direction = cell
        if (model, attribution) not in identities:
            identities[(model, attribution)] = entry_identity(cfg, workdir, prepared, model, hashes[model], attribution)
        ident = identities[(model, attribution)]
        keyed = {"entry": shared_identity(ident), "k": float(k), "direction": direction, "probe": probe}
        key = digest(keyed, 16)
        if key in done:
            out[cell] = float(done[key]["mask_acc"])
        elif key in pending:   # a model-independent cell another model's entry computes
            pending[key].append(cell)
        else:
            pending[key] = [cell]
            by_entry.setdefault((model, attribution), []).append((cell, key, ident))
    if not by_entry:
        return out
    labels = {s: prepared.arrays(s)[1] for s in ("train", "test")}
    chance = majority_rate(labels["test"])
    queue, tried = list(by_entry.items()), set()
    while queue:
        (model, attribution), todo = queue.pop(0)
        tried.add((model, attribution))
        try:
            store = RankStore(str(workdir.store_path), mode="r")
            entry = store.open_entry(model, attribution, todo[0][2])   # identity checked: ranks of this model
            ranks = {s: entry.split(s).read("ranks") for s in ("train", "test")}
        except MissingInputError as e:   # e.g. a store deleted after retraining: the rest of the report stands
            other = next((m for m, a in identities if a == attribution and (m, a) not in tried), None)
            if attribution in MODEL_INDEPENDENT and other is not None:   # the same ranks in another model's entry
                queue.append(((other, attribution), [(c, key, identities[(other, attribution)]) for c, key, _ in todo]))
                continue
            if log is not None:
                log(f"[report] no mask-only control for {model}/{attribution}: {e}")
            continue
        for cell, key, ident in todo:
            t0 = time.perf_counter()
            acc = mask_only_accuracy(ranks["train"], labels["train"], ranks["test"], labels["test"], cell[2], cell[3])
            shared = attribution in MODEL_INDEPENDENT
            append_result(path, {
                "key": key, "model": SHARED_MODEL if shared else model, "attribution": attribution,
                "model_hash": SHARED_MODEL if shared else ident["model_hash"],
                "dataset_key": ident["dataset_key"], "k": float(cell[2]), "direction": cell[3], "mask_acc": acc,
                "chance": chance, "n_test": int(len(labels["test"])), "probe": probe,
                "seconds": round(time.perf_counter() - t0, 3), "fastroar_version": __version__,
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
            out.update(dict.fromkeys(pending[key], acc))
    return out


def with_mask_columns(rows: list[dict[str, Any]], controls: dict[Cell, float]) -> list[dict[str, Any]]:
    """rows (one per (model, attribution, k)) with mask_top and mask_bottom set from `controls` (None where
    a cell has no control)."""
    for r in rows:
        for direction in ("top", "bottom"):
            r[f"mask_{direction}"] = controls.get((r["model"], r["attribution"], float(r["k"]), direction))
    return rows
