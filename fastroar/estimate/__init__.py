"""Retraining-free estimates beside DiffROAR: ROAD (noisy linear imputation, original model)."""
from fastroar.estimate.road import estimate_stage, impute, impute_ranked, road_levels

__all__ = ["estimate_stage", "impute", "impute_ranked", "road_levels"]
