"""Per-image outcomes of an evaluation, bit-packed for the results log.

A record's ``hits`` field says which test images (in the split's order) a model classified correctly:
``{"n": N, "bits": base64(np.packbits(correct, bitorder="little"))}``, about N/6 characters (1,700
bytes for 10,000 images). Any statistic over test images (intervals, paired tests) is recomputed from
these without retraining.
"""
from __future__ import annotations

import base64
from typing import Any

import numpy as np


def pack_hits(correct: Any) -> dict[str, Any]:
    """{"n", "bits"} of a 1-D boolean array (or anything np.asarray(bool) reads)."""
    arr = np.asarray(correct, dtype=bool).reshape(-1)
    return {"n": int(arr.size), "bits": base64.b64encode(np.packbits(arr, bitorder="little").tobytes()).decode()}


def unpack_hits(field: Any) -> np.ndarray | None:
    """The boolean array of a record's ``hits`` field; None where the field is absent or malformed (records
    written before per-image outcomes, or damaged ones)."""
    if not isinstance(field, dict) or not isinstance(field.get("n"), int) or not isinstance(field.get("bits"), str):
        return None
    n = field["n"]
    try:
        raw = np.frombuffer(base64.b64decode(field["bits"], validate=True), dtype=np.uint8)
    except (ValueError, TypeError):
        return None
    if n < 0 or raw.size != (n + 7) // 8:
        return None
    return np.unpackbits(raw, bitorder="little", count=n).astype(bool)
