"""The precompute stage: attribution scores on the device, ranked there, rank maps and masks to Zarr.

Scores are ranked by ``fastroar.rank_and_mask`` on the device they were computed on, right after the
backward pass, so only ranks and mask bits cross to the host. The first batch of each entry is also
ranked by the NumPy reference and must agree exactly (a cheap guard on the fast path).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from fastroar.attribution import attribute
from fastroar.datasets.base import to_model_input
from fastroar.datasets.prepare import Prepared, load_prepared
from fastroar.kernels import rank_and_mask
from fastroar.kernels.reference import rank_reference
from fastroar.store import RankStore
from fastroar.training.stage import load_model
from fastroar.workspace import SPLITS, Workdir, resolve_device


def attribution_params(cfg: dict[str, Any], attribution: str) -> dict[str, Any]:
    """Parameters an attribution's scores depend on (recorded in the store's identity)."""
    return {"seed": int(cfg.get("attribution_seed", 0))} if attribution == "random" else {}


def identity(cfg: dict[str, Any], prepared: Prepared, model_hash: str, attribution: str) -> dict[str, Any]:
    return {
        "model_hash": model_hash, "dataset_key": prepared.meta["key"], "attribution": attribution,
        "attribution_params": attribution_params(cfg, attribution), "levels": list(cfg["levels"]),
        "shape": list(prepared.shape),
    }


def rank_batch(model: torch.nn.Module, x: torch.Tensor, attribution: str, params: dict[str, Any],
               indices: Sequence[int], levels: Sequence[float]):
    """Scores of one batch ranked on its device: (ranks, top, bottom) as host numpy arrays."""
    scores = attribute(model, x, attribution, indices=indices, **params).reshape(len(x), -1)
    ranks, top, bottom = rank_and_mask(scores, list(levels))
    return ranks.cpu().numpy(), top.cpu().numpy(), bottom.cpu().numpy(), scores


def precompute_stage(cfg: dict[str, Any], workdir: Workdir, progress: bool = True, log=print,
                     models: Sequence[str] | None = None, attributions: Sequence[str] | None = None) -> int:
    """Fills every missing chunk of every (model, attribution) entry; returns the chunks computed."""
    prepared = load_prepared(cfg, workdir)
    device = resolve_device(cfg["device"])
    store = RankStore(str(workdir.store_path))
    batch_size = int(cfg["precompute"]["batch_size"])
    computed = 0
    for name in models or [m["name"] for m in cfg["models"]]:
        model, ckpt = load_model(workdir, name, prepared)
        model.to(device)
        for attribution in attributions or cfg["attributions"]:
            ident = identity(cfg, prepared, ckpt["hash"], attribution)
            entry = store.open_entry(name, attribution, ident,
                                     {s: prepared.size(s) for s in SPLITS},
                                     chunk_size=cfg["precompute"].get("chunk_size"))
            params = ident["attribution_params"]
            checked = False
            for split in SPLITS:
                arrays = entry.split(split)
                missing = arrays.missing_chunks()
                if not missing:
                    continue
                images, _ = prepared.arrays(split)
                bar = tqdm(missing, desc=f"precompute {name}/{attribution}/{split}", disable=not progress,
                           leave=False, unit="chunk")
                for c in bar:
                    start, stop = arrays.chunk_range(c)
                    parts = []
                    for b0 in range(start, stop, batch_size):
                        b1 = min(stop, b0 + batch_size)
                        x = to_model_input(images[b0:b1]).to(device)
                        *out, scores = rank_batch(model, x, attribution, params, range(b0, b1), ident["levels"])
                        if not checked:
                            reference = rank_reference(scores.float().cpu().numpy())
                            if not np.array_equal(out[0], reference):
                                raise RuntimeError("the rank kernel disagrees with the NumPy reference; "
                                                   "set FASTROAR_BACKEND=numpy and report this bug")
                            checked = True
                        parts.append(out)
                    arrays.write_chunk(c, *(np.concatenate(p) for p in zip(*parts)))
                    computed += 1
            log(f"[precompute] {name}/{attribution}: {'complete' if entry.is_complete() else 'INCOMPLETE'} "
                f"in {store.path}")
    return computed
