"""Content keys: short hashes that name data, models, jobs and stores by what they depend on."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(obj: Any, length: int = 12) -> str:
    """Short content hash of a JSON-able object (keys of datasets, jobs, ...)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_sha256(path: Any, block: int = 1 << 22) -> str:
    """SHA-256 (hex) of a file's bytes, read in blocks (.beton sidecars, users' checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()
