"""fastroar: do the pixels an attribution ranks highest really carry the label? (DiffROAR at scale)."""
from __future__ import annotations

__version__ = "0.1.0"

from fastroar.kernels import rank, rank_and_mask, unmask  # noqa: E402
from fastroar.attribution import attribute  # noqa: E402

__all__ = ["rank", "rank_and_mask", "unmask", "attribute", "__version__"]
