"""What a study measures: DiffROAR from retraining records, signal-block localization and attribution
quality (AQ) from rank maps, chance levels, and ROAD's retraining-free estimate (noisy linear imputation)."""
from fastroar.metrics.aq import attribution_quality, leakage_diffroar_expectation, majority_rate
from fastroar.metrics.diffroar import diffroar_rows
from fastroar.metrics.localization import localization
from fastroar.metrics.road import impute, impute_ranked, road_levels

__all__ = ["diffroar_rows", "localization", "attribution_quality", "majority_rate", "leakage_diffroar_expectation",
           "impute", "impute_ranked", "road_levels"]
