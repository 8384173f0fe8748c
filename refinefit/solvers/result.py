"""What a solve returns: one named result for every solver."""
from typing import NamedTuple

import numpy as np

from ..kernels.codes import CONVERGED, NOT_FINITE, RMS_TOO_HIGH


class Solution(NamedTuple):
    """How the fits of a set of clusters ended.

    Rows of ``params`` and ``std`` are features (sorted by cluster, see
    :func:`refinefit.solvers.engine.refine_sorted`); ``cost``, ``status`` and
    ``iterations`` are per cluster.

    Attributes
    ----------
    params : ndarray (features x parameters)
        Refined parameters; a failed cluster keeps its start values.
    cost : ndarray
        For a batch solve (:func:`refinefit.solvers.backend.solve_batch`)
        the sum of squared residuals over the cluster's mask pixels; for a
        refinement (``refine_*``) the rms residual in units of the frame's
        maximum. NaN where the fit failed.
    status : ndarray of int64
        A code of :data:`refinefit.kernels.codes.STATUS_MESSAGES`.
    std : ndarray (features x parameters)
        Standard errors of the fitted parameters; NaN for constants, failed
        fits and when errors were not asked for.
    iterations : ndarray of int64
        Model evaluations spent (summed over re-centring rounds).
    deviance : ndarray or None
        Under the Poisson estimator, each cluster's deviance per degree of
        freedom (valid pixels minus unknowns; NaN where the fit failed);
        None under least squares.
    """

    params: np.ndarray
    cost: np.ndarray
    status: np.ndarray
    std: np.ndarray
    iterations: np.ndarray
    deviance: np.ndarray = None


def empty_solution(params, n_clusters, status):
    """The solution of clusters not (yet) solved: start values, NaN cost
    and errors, ``status`` everywhere, no iterations."""
    return Solution(params.copy(), np.full(n_clusters, np.nan),
                    np.full(n_clusters, status, dtype=np.int64),
                    np.full_like(params, np.nan),
                    np.zeros(n_clusters, dtype=np.int64),
                    np.full(n_clusters, np.nan))


def store(result, part, clusters, features):
    """Write ``part`` (a :class:`Solution` of clusters ``clusters``, slices
    or indices) into ``result`` in place."""
    result.params[features] = part.params
    result.std[features] = part.std
    result.cost[clusters] = part.cost
    result.status[clusters] = part.status
    result.iterations[clusters] = part.iterations
    if result.deviance is not None and part.deviance is not None:
        result.deviance[clusters] = part.deviance


def judge(cost, status, max_rms_dev):
    """The cost and status of fits as reported: a converged fit whose cost
    is not finite or exceeds ``max_rms_dev`` failed (``NOT_FINITE``,
    ``RMS_TOO_HIGH``), and every fit but a converged one has a NaN cost."""
    status = status.copy()
    converged = status == CONVERGED
    finite = np.isfinite(cost)
    status[converged & ~finite] = NOT_FINITE
    with np.errstate(invalid="ignore"):
        status[converged & finite & (cost > max_rms_dev)] = RMS_TOO_HIGH
    return np.where(status == CONVERGED, cost, np.nan), status
