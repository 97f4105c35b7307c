"""Retraining inputs whose removed coordinates are imputed, not zeroed (retrain.fill road).

Zero (or any constant) fill lets the retrained model read the keep-mask's shape, which the attribution
chose from the base model and which can itself carry the label (fastroar.metrics.mask_probe). ROAD's
remedy (Rong et al., ICML 2022) replaces each removed coordinate by noisy linear imputation from its
neighbours, so a removed pixel looks like its surroundings: fastroar.metrics.road.impute, the same
neighbourhood weights (1/6 direct, 1/12 diagonal) and Gaussian noise as `fastroar estimate`.

A (k, direction, split) is imputed once and stored in <workdir>/imputed/<key>.npz (written atomically,
with the CRC32 of its values): every seed and epoch reads the same images, a rerun or a resumed sweep
reads the file, and a damaged file is recomputed. The key holds everything the images depend on: the
rank map's content (SHA-256 of its bytes), the data, the split, k, direction and the imputation's
settings (method, noise, seed). Noise for (k, direction, split) is seeded by
[seed, round(k * 1e6), 0 top / 1 bottom, 0 train / 1 test]; sigma = noise x the data's value range
(its bounds, else the train split's span), as in the estimate stage.
"""
from __future__ import annotations

import hashlib
import io
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from fastroar.engine.faults import fault_point
from fastroar.engine.workspace import Workdir, atomic_write
from fastroar.keys import digest
from fastroar.method import check_direction, model_input_array
from fastroar.metrics.road import impute_ranked, value_range
from fastroar.stages.artifacts import Prepared

SPLIT_CODES = {"train": 0, "test": 1}


def imputed_dir(workdir: Workdir) -> Path:
    return workdir.root / "imputed"


def sigma_of(prepared: Prepared, noise: float) -> float:
    """The noise's standard deviation in model-input units: noise x the data's value range."""
    if prepared.bounds is not None:
        return float(noise) * value_range(prepared, np.zeros(1))
    return float(noise) * value_range(prepared, model_input_array(prepared.arrays("train")[0]))


BANDED_MAX_WIDTH = 64   # image widths up to which the banded solve beats the sparse one on the CPU


def solver_for(width: int, device: Any = None) -> str:
    """fastroar.metrics.road.impute's solver: conjugate gradients on a CUDA device, else the banded
    Cholesky solve for narrow images (cost grows with width^2) and the sparse direct solve for wide ones."""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        return "torch"
    return "banded" if width <= BANDED_MAX_WIDTH else "scipy"


def imputed_key(ranks: np.ndarray, prepared: Prepared, split: str, k: float, direction: str,
                impute: dict[str, Any]) -> str:
    ranks = np.ascontiguousarray(ranks)
    return digest({"ranks_sha256": hashlib.sha256(ranks.data).hexdigest(), "dtype": str(ranks.dtype),
                   "dataset_key": prepared.meta["key"], "split": split, "k": float(k),
                   "direction": check_direction(direction), "impute": impute}, 20)


def imputed_inputs(workdir: Workdir, prepared: Prepared, split: str, ranks: np.ndarray, k: float, direction: str,
                   impute: dict[str, Any], device: Any = None) -> np.ndarray:
    """(N, d) float32 model input of `split`: the (k, direction) scheme's kept coordinates as they are, the
    removed ones imputed (read from the workdir when already computed, else computed and stored)."""
    path = imputed_dir(workdir) / f"{imputed_key(ranks, prepared, split, k, direction, impute)}.npz"
    cached = _read(path)
    if cached is not None:
        return cached
    images = prepared.arrays(split)[0]
    x = model_input_array(images)
    sigma = sigma_of(prepared, impute["noise"])
    seed = [int(impute["seed"]), int(round(float(k) * 1e6)), 0 if direction == "top" else 1, SPLIT_CODES[split]]
    solver = solver_for(prepared.shape[-1], device)
    out = impute_ranked(x, np.asarray(ranks), float(k), direction, sigma, seed=seed, solver=solver, device=device)
    out = np.ascontiguousarray(out.reshape(len(x), -1), dtype=np.float32)
    buf = io.BytesIO()
    np.savez(buf, x=out, crc=np.uint32(zlib.crc32(out.data)))
    fault_point("imputed.before_write")
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    fault_point("imputed.after_write")
    return out


def _read(path: Path) -> np.ndarray | None:
    """The stored inputs, or None when absent or damaged (then they are recomputed and rewritten)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            x, crc = z["x"], int(z["crc"])
    except Exception:  # a damaged file fails in np.load or the zip layer, with various errors
        return None
    return x if zlib.crc32(np.ascontiguousarray(x).data) == crc else None
