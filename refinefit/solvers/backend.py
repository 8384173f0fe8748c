"""The solver backend boundary: one batch of flattened clusters in, one
:class:`~refinefit.solvers.result.Solution` out.

Everything above this function (clustering, bounds, chunking, re-centring,
constraints, shared parameters) is the same for every backend. A backend
sees only arrays:

- ``batch``: a :class:`~refinefit.solvers.engine.FlatBatch`, the mask pixels
  of every cluster concatenated (values, coordinates, which feature covers
  which pixel);
- ``start``, ``lower``, ``upper``: float64 C-contiguous (batch features x
  parameters), the start values clipped into the bounds;
- ``cluster_ids``: the batch clusters to solve (int64); the others keep
  their start values, a NaN cost and status ``BLANK``;
- ``settings``: the model (``model_id``, ``continuous``, ``ndim``,
  ``n_size``, ``modes``) and solver options (``tol``, ``max_eval``,
  ``dense_limit``, ``with_error``) of
  :class:`~refinefit.solvers.engine.Settings`.

It returns the least-squares optimum of each cluster within its bounds, its
sum of squared residuals (``cost``), a status code of
:mod:`refinefit.kernels.codes`, with ``settings.solver.with_error`` the standard
errors (the sandwich covariance of ``kernels/covariance.py``), and the model
evaluations spent. A cluster's result must depend only on that cluster's
arrays, bit for bit, whatever the batch, its order or the number of
threads: chunking and Dask rely on it. A backend never raises for a failed
fit; it reports a status.

:data:`BACKENDS` names the implementations; a new objective (Poisson) or
device (CUDA) is one module here plus its kernels, registered in the table.
"""
import numpy as np

from ..kernels import BLANK, solve_clusters
from ..problem.camera import pixel_noise
from .result import Solution, empty_solution


def solve_batch_numba(batch, start, lower, upper, cluster_ids, settings):
    """Bounded Levenberg-Marquardt on the CPU (``kernels.lm``), the
    clusters in parallel (kernels.threads)."""
    n_clusters = len(batch.cluster_feat_off) - 1
    result = empty_solution(start, n_clusters, BLANK)
    solver = settings.solver
    if len(cluster_ids):
        std = result.std if solver.with_error else start[:0]
        poisson, extra = pixel_noise(settings.noise, batch)
        solve_clusters(cluster_ids, batch.pix_val, batch.pix_coord,
                       batch.cluster_pix_off, batch.entry_pix,
                       batch.feat_entry_off, batch.cluster_feat_off, start,
                       lower, upper, settings.model.modes,
                       *settings.model.literals, solver.tol, solver.max_eval,
                       solver.dense_limit, result.params, result.cost,
                       result.status, result.iterations, solver.with_error,
                       std, poisson=poisson, pix_extra=extra,
                       deviance_out=result.deviance)
    return result


def solve_batch_cuda(batch, start, lower, upper, cluster_ids, settings):
    """On an NVIDIA GPU (:mod:`refinefit.solvers.cuda_backend`, imported
    only when asked for: numba-cuda is optional)."""
    from .cuda_backend import solve_batch_cuda as solve

    return solve(batch, start, lower, upper, cluster_ids, settings)


BACKENDS = {"numba": solve_batch_numba, "cuda": solve_batch_cuda}


def solve_batch(batch, start, lower, upper, cluster_ids, settings):
    """Solve clusters ``cluster_ids`` of ``batch`` on the backend that
    ``settings.solver.backend`` names (see the module docstring for the contract).

    Returns
    -------
    Solution
        ``cost`` is the sum of squared residuals of each cluster.
    """
    return BACKENDS[settings.solver.backend](
        batch, start, lower, upper, np.asarray(cluster_ids, dtype=np.int64),
        settings)


__all__ = ["BACKENDS", "Solution", "solve_batch"]
