"""Numba kernels of refinefit: they see only arrays and scalars.

Installed as ``refinefit.kernels``. Every kernel works on a batch of
clusters flattened into contiguous arrays (see ``masks``) and loops over the
clusters it is given, each writing only its own slice of the outputs;
``threads`` runs chunks of clusters in parallel.

- ``codes``: parameter modes and fit status codes (shared with Python);
- ``masks``: flatten the masks of clusters into pixel and entry arrays;
- ``models``, ``custom``, ``terms``: radial model shapes and one feature's
  term at one pixel, with derivatives;
- ``residuals``: a cluster's unknowns, residuals and normal equations;
- ``lm``: the bounded Levenberg-Marquardt solver, one cluster per iteration;
- ``covariance``: standard errors that hold under shot noise (sandwich);
- ``constrained``, ``shared``, ``objective``: steps under equality
  constraints, reduced normal equations of shared parameters, cost and
  gradient for general optimisers;
- ``clustering``, ``linalg``, ``jit``, ``threads``: helpers, compile flags
  and the thread pool.
"""
from .codes import (
    BLANK,
    CONVERGED,
    MAX_ITER,
    MODE_CLUSTER,
    MODE_CONST,
    MODE_VAR,
    NO_PIXELS,
    NOT_FINITE,
)
from .constrained import constrained_steps
from .lm import solve_clusters
from .masks import count_mask_pixels, fill_mask_pixels
from .models import DISC, GAUSS, INV_SERIES, RING, shape_value
from .objective import cost_and_gradient
from .shared import reduce_clusters
from .terms import evaluate_model, feature_term

__all__ = [
    "BLANK", "CONVERGED", "MAX_ITER", "MODE_CLUSTER", "MODE_CONST", "MODE_VAR",
    "NO_PIXELS", "NOT_FINITE", "DISC", "GAUSS", "INV_SERIES", "RING",
    "solve_clusters", "count_mask_pixels", "fill_mask_pixels",
    "constrained_steps", "reduce_clusters", "cost_and_gradient",
    "shape_value", "evaluate_model", "feature_term",
]
