"""Model registry: the paper's architectures, sized from the data (builders.py)."""
from fastroar.models.builders import BUILDERS, build_model, build_seeded, check_arch, seeded_global_rng, state_hash

__all__ = ["build_model", "build_seeded", "seeded_global_rng", "check_arch", "state_hash", "BUILDERS"]
