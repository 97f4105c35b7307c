"""The prepare stage: a dataset's splits written once as FFCV .beton files, plus signal locations.

Completion marker: meta.json is written last; a data dir with meta.json and .beton files that pass
their size/checksum check is complete and skipped on the next run. A .beton (or its sidecar) that was
deleted, as the message for a damaged one says to, is written again.
"""
from __future__ import annotations

import io
import json

import numpy as np

from fastroar.datasets import build_dataset
from fastroar.engine.beton import verify_beton, write_beton
from fastroar.engine.workspace import SPLITS, atomic_save, atomic_write_text
from fastroar.stages.artifacts import Prepared, dataset_key
from fastroar.stages.contract import Context, stage


def _np_save(arr: np.ndarray, f: io.BufferedWriter) -> None:
    np.save(f, arr)


@stage("prepare", saves_config=True)
def prepare(ctx: Context) -> tuple[Prepared, bool]:
    """Builds and writes the config's dataset unless already complete. Returns (prepared, did_work).
    The workdir's config is saved only once its data exist: a failed prepare leaves it as it was."""
    cfg, workdir, progress = ctx.cfg, ctx.wd, ctx.progress
    out = workdir.data_dir(dataset_key(cfg))
    gone = [f.name for split in SPLITS for f in (out / f"{split}.beton", out / f"{split}.beton.json")
            if not f.exists()]
    if (out / "meta.json").exists() and gone:  # deleted as a damage message told: write the data again
        ctx.log(f"[prepare] {', '.join(gone)} missing in {out}: writing the dataset again")
        (out / "meta.json").unlink()
    if (out / "meta.json").exists():
        prepared = Prepared(out, json.loads((out / "meta.json").read_text()))
        for split in SPLITS:
            verify_beton(str(prepared.beton(split)))
        _log_prepared(ctx, prepared, did=False)
        return prepared, False
    ds = build_dataset(cfg.dataset.name, **cfg.dataset.params)
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        data = getattr(ds, split)
        write_beton(str(out / f"{split}.beton"), data.images, data.labels, progress=progress)
        if data.signal is not None:
            atomic_save(data.signal, out / f"signal_{split}.npy", saver=_np_save)
    meta = {
        "name": ds.name, "params": ds.params, "key": out.name, "shape": list(ds.shape),
        "dtype": str(ds.train.images.dtype), "num_classes": ds.num_classes,
        "bounds": None if ds.bounds is None else list(ds.bounds),
        "sizes": {split: len(getattr(ds, split)) for split in SPLITS},
    }
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2))
    prepared = Prepared(out, meta)
    _log_prepared(ctx, prepared, did=True)
    return prepared, True


def _log_prepared(ctx: Context, prepared: Prepared, did: bool) -> None:
    sizes = ", ".join(f"{s} {n}" for s, n in prepared.meta["sizes"].items())
    ctx.log(f"[prepare] {prepared.meta['name']}: {sizes} images of shape {tuple(prepared.shape)} "
            f"{'written to' if did else 'already in'} {prepared.dir}")

