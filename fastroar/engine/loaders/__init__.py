"""Loaders: FFCV streaming with the mask applied while decoding (masked), the split held whole on the
device (resident), and the one rule that picks between them (plan)."""
from fastroar.engine.loaders.masked import MaskedLoader, make_loader
from fastroar.engine.loaders.plan import choose_path, open_loader
from fastroar.engine.loaders.resident import ResidentLoader

__all__ = ["MaskedLoader", "make_loader", "ResidentLoader", "choose_path", "open_loader"]
