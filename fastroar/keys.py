"""Content keys: short hashes that name data, models, jobs and stores by what they depend on."""
from __future__ import annotations

import hashlib
import json
from typing import Any


def digest(obj: Any, length: int = 12) -> str:
    """Short content hash of a JSON-able object (keys of datasets, jobs, ...)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]
