"""Feature attributions: a score per input coordinate (larger = more important), same shape as x.
The methods and their registry are in methods.py."""
from fastroar.attribution.methods import (
                                          METHODS,
                                          attribute,
                                          check_attribution,
                                          edge_scores,
                                          input_gradient,
                                          loss_gradient,
                                          margin_gradient,
                                          random_scores,
                                          signed_gradient,
)

__all__ = ["attribute", "check_attribution", "input_gradient", "margin_gradient", "loss_gradient",
           "signed_gradient", "random_scores", "edge_scores", "METHODS"]
