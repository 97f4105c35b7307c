"""The train stage: the config's base models (standard and PGD-robust), checkpointed with a content hash.

A model with ``checkpoint: PATH`` in the config (``fastroar train --checkpoint NAME=PATH``) is the user's
own trained model: it is registered instead of trained, fitted to the config's architecture and the
data (fastroar.models.checkpoint), and written in the same model.pt format with its state hash, so that
everything downstream is keyed by it exactly as by a trained model."""
from __future__ import annotations

import json
import time
from typing import Any

import torch

from fastroar.config import Config
from fastroar.config.schema import BaseModelSpec
from fastroar.cpu import capability
from fastroar.engine.executors import thread_map, usable_cores
from fastroar.engine.hits import pack_hits
from fastroar.engine.workspace import Workdir, atomic_save, atomic_write_text
from fastroar.errors import StoreMismatchError
from fastroar.metrics.aq import majority_rate
from fastroar.models import BUILDERS, build_model, seeded_global_rng, state_hash
from fastroar.models.checkpoint import fit_state, load_saved, read_state
from fastroar.stages.artifacts import (
    Prepared,
    checkpoint_file,
    checkpoint_path,
    config_diff,
    load_model,
    load_prepared,
    model_config,
    resolve_device,
)
from fastroar.stages.contract import Context, save_config, stage
from fastroar.training.loop import accuracy_of, robust_accuracy, test_hits, train_model
from fastroar.training.settings import Adversary, Recipe


@stage("train")
def train(ctx: Context) -> list[dict[str, Any]]:
    """Trains each model of cfg.models that has no checkpoint yet; returns their summaries."""
    cfg, workdir, progress, log = ctx.cfg, ctx.wd, ctx.progress, ctx.log
    prepared = load_prepared(cfg, workdir)
    device = resolve_device(cfg.device)
    summaries, to_train = untrained(ctx, prepared, device)
    threads = side_by_side(to_train, cfg, prepared, device)
    if threads > 1:
        log(f"[train] {len(to_train)} models on {threads} threads")
    for summary in thread_map(lambda mcfg: train_one(mcfg, prepared, cfg, workdir, device, progress, log),
                              to_train, threads):
        summaries[summary["name"]] = summary
    if any(spec.checkpoint for spec in cfg.models) and ctx.save_config:
        save_config(ctx)  # later stages learn the registered models' names from it
    return [summaries[spec.name] for spec in cfg.models]


def untrained(ctx: Context, prepared: Prepared, device: torch.device
              ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """(the summaries of the config's models that exist: checkpoints found, the user's registered now; the
    model configs still to train). A checkpoint trained with another config is refused."""
    cfg, workdir, log = ctx.cfg, ctx.wd, ctx.log
    summaries: dict[str, dict[str, Any]] = {}
    to_train = []
    for spec in cfg.models:
        mcfg = model_config(cfg, spec)
        path = checkpoint_path(workdir, spec.name)
        if path.exists():
            ckpt = load_saved(path)
            if ckpt["config"] != json.loads(json.dumps(mcfg)):
                raise StoreMismatchError(
                    f"{path} was trained with another config ({config_diff(ckpt['config'], mcfg)}); delete "
                    f"{path.parent} to retrain it, or use another --workdir")
            load_model(workdir, spec.name, prepared)  # its weights still match their hash
            log(f"[train] {spec.name}: checkpoint exists ({ckpt['hash'][:12]}), skipped")
            summaries[spec.name] = ckpt["summary"]
        elif spec.checkpoint:
            summaries[spec.name] = register_one(mcfg, spec, prepared, cfg, workdir, device, log)
        else:
            to_train.append(mcfg)
    return summaries, to_train


def side_by_side(to_train: list[dict[str, Any]], cfg: Config, prepared: Prepared,
                 device: torch.device) -> int:
    """Threads the base models train on: one per model, up to the usable cores, when they can share this
    process and still come out as trained alone, bit for bit: on the CPU (each runs torch on its own
    thread, the stage pins torch to one), built-in architectures (their forward draws no randomness; the
    adversary's random starts come from each model's own generator), data held resident (no loader
    worker pool). Else 1: one after another."""
    if device.type != "cpu" or len(to_train) < 2 or any(m["arch"] not in BUILDERS for m in to_train):
        return 1
    if prepared.data_path(cfg.loader, device, ranks=False) != "resident":
        return 1
    return min(len(to_train), usable_cores())


def register_one(mcfg: dict[str, Any], spec: BaseModelSpec, prepared: Prepared, cfg: Config,
                 workdir: Workdir, device: torch.device, log) -> dict[str, Any]:
    """The user's checkpoint as base model mcfg['name']: fitted, tested, written as train_one writes."""
    source = checkpoint_file(spec)
    t0 = time.perf_counter()
    model = build_model(mcfg["arch"], prepared.shape, prepared.num_classes, **mcfg["params"])
    label = f"checkpoint {source} (model {mcfg['name']!r}, arch {mcfg['arch']!r})"
    fit_state(model, read_state(source), label, prepared.shape, prepared.num_classes)
    model.to(device)
    test_loader, path_name = prepared.loader("test", mode=cfg.loader, batch_size=512, seed=0, train=False,
                                             device=device)
    summary = {"name": mcfg["name"], **test_summary(model, test_loader), "registered_from": str(source),
               "seconds": round(time.perf_counter() - t0, 2), "loader": path_name}
    log(f"[train] {mcfg['name']}: registered {source} (test acc {summary['test_acc']:.3f}), not trained")
    return save_model(model, mcfg, summary, workdir)


def test_summary(model: torch.nn.Module, test_loader) -> dict[str, Any]:
    """A base model's clean test accuracy, which test images it gets right (`test_hits`, packed) and the CPU
    kernels it was trained and tested with."""
    hits = test_hits(model, test_loader)
    return {"test_acc": accuracy_of(hits), "test_hits": pack_hits(hits.numpy()), "cpu_capability": capability()}


def save_model(model: torch.nn.Module, mcfg: dict[str, Any], summary: dict[str, Any],
               workdir: Workdir) -> dict[str, Any]:
    """models/<name>/model.pt (state dict, config, state hash, summary) and model.json, atomically."""
    model_hash = state_hash(model, mcfg)
    summary["hash"] = model_hash
    model.cpu()
    out = checkpoint_path(workdir, mcfg["name"])
    atomic_save({"state_dict": model.state_dict(), "config": mcfg, "hash": model_hash, "summary": summary}, out)
    atomic_write_text(out.parent / "model.json", json.dumps(summary | {"config": mcfg}, indent=2))
    return summary


def train_one(mcfg: dict[str, Any], prepared: Prepared, cfg: Config, workdir: Workdir,
              device: torch.device, progress: bool, log) -> dict[str, Any]:
    recipe = Recipe(**mcfg["recipe"])
    adversary = Adversary(**mcfg["adversary"]) if mcfg["adversary"] else None
    with seeded_global_rng(mcfg["seed"]):
        model = build_model(mcfg["arch"], prepared.shape, prepared.num_classes, **mcfg["params"])
        # the adversary's random starts continue the stream the build left (what a run alone draws next from
        # torch's global generator), from a generator of this model's own: models may train side by side
        stream = torch.Generator().set_state(torch.get_rng_state()) if device.type == "cpu" else None
    model.to(device)
    t0 = time.perf_counter()
    train_loader, path_name = prepared.loader("train", mode=cfg.loader, batch_size=recipe.batch_size,
                                              seed=mcfg["seed"], train=True, device=device)
    test_loader, _ = prepared.loader("test", mode=cfg.loader, batch_size=512, seed=0, train=False,
                                     device=device)
    stats = train_model(model, train_loader, recipe, adversary=adversary, bounds=prepared.bounds,
                        desc=f"train {mcfg['name']}", progress=progress, generator=stream)
    summary = {"name": mcfg["name"], **test_summary(model, test_loader),
               "test_chance": majority_rate(prepared.arrays("test")[1]), **stats,
               "seconds": round(time.perf_counter() - t0, 2), "loader": path_name}
    if adversary is not None:
        summary["robust_test_acc"] = robust_accuracy(model, test_loader, adversary, prepared.bounds, stream)
    save_model(model, mcfg, summary, workdir)
    extra = f", robust acc {summary['robust_test_acc']:.3f}" if "robust_test_acc" in summary else ""
    log(f"[train] {mcfg['name']}: test acc {summary['test_acc']:.3f}{extra} (chance {summary['test_chance']:.3f}) "
        f"in {summary['seconds']:.1f}s ({path_name} loader)")
    return summary

