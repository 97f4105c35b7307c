"""The train stage: the config's base models (standard and PGD-robust), checkpointed with a content hash."""
from __future__ import annotations

import json
import time
from typing import Any

import torch
from torch import nn

from fastroar.datasets.prepare import Prepared, load_prepared
from fastroar.errors import MissingInputError, StoreMismatchError
from fastroar.loaders.select import split_loader
from fastroar.models import build_model, state_hash
from fastroar.training.loop import Recipe, evaluate, robust_accuracy, train_model
from fastroar.training.pgd import Adversary
from fastroar.workspace import Workdir, atomic_save, atomic_write_text, dataset_key, resolve_device


def model_config(cfg: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Everything a base model depends on (its checkpoint is reused only when this matches)."""
    return {
        "name": spec["name"], "arch": cfg["model"]["arch"], "params": cfg["model"]["params"],
        "dataset_key": dataset_key(cfg), "recipe": Recipe(**cfg["train"]).to_dict(),
        "adversary": spec.get("adversary"), "seed": int(spec.get("seed", 0)),
    }


def _checkpoint(workdir: Workdir, name: str):
    return workdir.model_dir(name) / "model.pt"


def train_stage(cfg: dict[str, Any], workdir: Workdir, progress: bool = True, log=print) -> list[dict[str, Any]]:
    """Trains each model of cfg['models'] that has no checkpoint yet; returns their summaries."""
    prepared = load_prepared(cfg, workdir)
    device = resolve_device(cfg["device"])
    summaries = []
    for spec in cfg["models"]:
        mcfg = model_config(cfg, spec)
        path = _checkpoint(workdir, spec["name"])
        if path.exists():
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            if ckpt["config"] != json.loads(json.dumps(mcfg)):
                raise StoreMismatchError(
                    f"{path} was trained with another config ({_diff(ckpt['config'], mcfg)}); delete "
                    f"{path.parent} to retrain it, or use another --workdir")
            log(f"[train] {spec['name']}: checkpoint exists ({ckpt['hash'][:12]}), skipped")
            summaries.append(ckpt["summary"])
            continue
        summaries.append(train_one(mcfg, prepared, cfg, workdir, device, progress, log))
    return summaries


def train_one(mcfg: dict[str, Any], prepared: Prepared, cfg: dict[str, Any], workdir: Workdir,
              device: torch.device, progress: bool, log) -> dict[str, Any]:
    recipe = Recipe(**mcfg["recipe"])
    adversary = Adversary(**mcfg["adversary"]) if mcfg["adversary"] else None
    torch.manual_seed(mcfg["seed"])
    model = build_model(mcfg["arch"], prepared.shape, prepared.num_classes, **mcfg["params"]).to(device)
    t0 = time.perf_counter()
    train_loader, path_name = split_loader(prepared, "train", cfg, batch_size=recipe.batch_size,
                                           seed=mcfg["seed"], train=True, device=device)
    test_loader, _ = split_loader(prepared, "test", cfg, batch_size=512, seed=0, train=False, device=device)
    stats = train_model(model, train_loader, recipe, adversary=adversary, bounds=prepared.bounds,
                        desc=f"train {mcfg['name']}", progress=progress)
    summary = {"name": mcfg["name"], "test_acc": evaluate(model, test_loader), **stats,
               "seconds": round(time.perf_counter() - t0, 2), "loader": path_name}
    if adversary is not None:
        summary["robust_test_acc"] = robust_accuracy(model, test_loader, adversary, prepared.bounds)
    model_hash = state_hash(model, mcfg)
    summary["hash"] = model_hash
    model.cpu()
    out = _checkpoint(workdir, mcfg["name"])
    atomic_save({"state_dict": model.state_dict(), "config": mcfg, "hash": model_hash, "summary": summary}, out)
    atomic_write_text(out.parent / "model.json", json.dumps(summary | {"config": mcfg}, indent=2))
    extra = f", robust acc {summary['robust_test_acc']:.3f}" if "robust_test_acc" in summary else ""
    log(f"[train] {mcfg['name']}: test acc {summary['test_acc']:.3f}{extra} "
        f"in {summary['seconds']:.1f}s ({path_name} loader)")
    return summary


def load_model(workdir: Workdir, name: str, prepared: Prepared) -> tuple[nn.Module, dict[str, Any]]:
    """A trained base model (eval mode, CPU) and its checkpoint dict."""
    path = _checkpoint(workdir, name)
    if not path.exists():
        raise MissingInputError(f"no trained model {name!r} in {workdir.root}; run `fastroar train "
                                f"--workdir {workdir.root}` first")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    mcfg = ckpt["config"]
    model = build_model(mcfg["arch"], prepared.shape, prepared.num_classes, **mcfg["params"])
    model.load_state_dict(ckpt["state_dict"])
    if state_hash(model, mcfg) != ckpt["hash"]:
        raise StoreMismatchError(f"{path} is corrupted (its weights do not match their recorded hash); "
                                 f"delete {path.parent} and rerun `fastroar train`")
    return model.eval(), ckpt


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if json.dumps(old.get(k), sort_keys=True, default=str)
            != json.dumps(new.get(k), sort_keys=True, default=str)]
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "unknown difference"
