"""Numba kernels of refinefit: they see only arrays and scalars.

Installed as ``refinefit.kernels``.
"""
from .lm import (BLANK, CONVERGED, MAX_ITER, MODE_CLUSTER, MODE_CONST,
                 MODE_VAR, NO_PIXELS, NOT_FINITE, solve_clusters)
from .masks import count_mask_pixels, fill_mask_pixels
from .constrained import constrained_steps
from .shared import reduce_clusters
from .objective import cost_and_gradient
from .models import DISC, GAUSS, INV_SERIES, RING, shape_value
from .terms import evaluate_model, feature_term

__all__ = [
    "BLANK", "CONVERGED", "MAX_ITER", "MODE_CLUSTER", "MODE_CONST", "MODE_VAR",
    "NO_PIXELS", "NOT_FINITE", "DISC", "GAUSS", "INV_SERIES", "RING",
    "solve_clusters", "count_mask_pixels", "fill_mask_pixels",
    "constrained_steps", "reduce_clusters", "cost_and_gradient", "shape_value", "evaluate_model",
    "feature_term",
]
