"""What a study measures: DiffROAR from retraining records, signal-block localization from rank maps,
and ROAD's retraining-free estimate (noisy linear imputation)."""
from fastroar.metrics.diffroar import diffroar_rows
from fastroar.metrics.localization import localization
from fastroar.metrics.road import impute, impute_ranked, road_levels

__all__ = ["diffroar_rows", "localization", "impute", "impute_ranked", "road_levels"]
