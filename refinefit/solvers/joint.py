"""Every cluster in one ``scipy.optimize.minimize`` call.

This is trackpy's 'global' level, used where the Numba engines cannot
separate the problem:

- shared parameters ('global', 'frame', 'particle') together with
  constraints, a named ``method`` or a custom fit function;
- a constraint whose values mix clusters, such as :func:`dimer_global`
  (one common, unknown distance for all dimers).

All frames that hold features are read, the masks of all clusters are
flattened into one batch, and one minimisation runs over the stacked
unknowns; the objective and its gradient come from the Numba kernel (or the
custom model) over the batch. Masks are re-centred as in the per-cluster
engine, and then the whole problem is solved again. Standard errors come
from ``scipy_errors.py`` (the covariance of the whole problem, constraints
linearised).
"""
import numpy as np

from ..kernels import CONVERGED, MAX_ITER
from .engine import deviance_outside_engine, flatten_masks, frame_maxima
from .result import Solution, judge
from .scipy_path import solve_groups


def mixes_clusters(constraint, n_params):
    """True when ``constraint`` (with a ``cluster_size``) returns values that
    do not come one block per cluster: probed on 2 and 3 stacked clusters.
    """
    size = constraint["cluster_size"]
    if size is None:
        return False
    rng = np.random.default_rng(0)
    counts = []
    for n_groups in (2, 3):
        probe = rng.uniform(1.0, 2.0, (n_groups, size, n_params))
        try:
            values = constraint["fun"](probe, *constraint["args"])
            counts.append(np.size(values))
        except Exception:  # a user function that cannot take the probe
            return False
    return counts[0] * 3 != counts[1] * 2


def refine_joint(source, cluster_frames, cluster_feat_off, params, lower,
                 upper, settings, frames, particles=None):
    """Refine all clusters as one problem.

    Arguments as :func:`engine.refine_sorted`, plus every feature's frame and
    (for the 'particle' mode) particle id. Returns a :class:`Solution`
    (standard errors NaN unless ``settings.solver.with_error``).
    """
    n_clusters = len(cluster_frames)
    frame_numbers, cluster_image = np.unique(cluster_frames,
                                             return_inverse=True)
    cluster_image = cluster_image.ravel().astype(np.int64)
    images = source.images(frame_numbers)
    frame_max = frame_maxima(images)  # NaN pixels ignored, as the engine
    groups = [_index_lists(np.repeat(np.arange(n_clusters),
                                     np.diff(cluster_feat_off))),
              _index_lists(particles) if particles is not None else [],
              _index_lists(frames)]
    pos = slice(2, 2 + settings.model.ndim)
    current = params.copy()
    centres = np.ascontiguousarray(params[:, pos])
    ids = np.arange(n_clusters, dtype=np.int64)
    sumsq = np.full(n_clusters, np.nan)
    success = np.zeros(n_clusters, dtype=bool)
    n_pix = np.zeros(n_clusters, dtype=np.int64)
    std = np.full_like(params, np.nan)
    iterations = np.zeros(n_clusters, dtype=np.int64)
    for _ in range(max(settings.solver.max_iter, 1)):
        batch = flatten_masks(images, cluster_image, cluster_feat_off,
                              centres, settings.model.radius)
        n_pix = np.diff(batch.cluster_pix_off)
        solved = solve_groups(
            [ids], batch, current, lower, upper, settings.model.modes, settings,
            frame_max[cluster_image], extra_groups=groups[1:],
            normalise=True)
        sumsq, std = solved.cost, solved.std
        success = solved.status == CONVERGED
        iterations += solved.iterations
        if not success.all():
            break
        current = solved.params
        shift2 = np.sum((current[:, pos] - centres) ** 2, axis=1)
        if np.all(shift2 < settings.solver.max_shift ** 2):
            break
        centres = np.ascontiguousarray(current[:, pos])
    deviance = None
    if settings.noise.estimator == "poisson":  # (sumsq: the deviance)
        solved = solved._replace(cost=sumsq.copy(),
                                 deviance=np.full(n_clusters, np.nan))
        deviance_outside_engine(batch, solved, ids, settings)
        sumsq, deviance = solved.cost, solved.deviance
    status = np.where(success, CONVERGED, MAX_ITER)
    with np.errstate(invalid="ignore", divide="ignore"):
        cost = np.sqrt(sumsq / n_pix) / frame_max[cluster_image]
    cost, status = judge(cost, status, settings.solver.max_rms_dev)
    failed = status != CONVERGED
    std[np.repeat(failed, np.diff(cluster_feat_off))] = np.nan
    if deviance is not None:
        deviance[failed] = np.nan
    return Solution(current, cost, status, std, iterations, deviance)


def _index_lists(keys):
    """Feature indices of each distinct key, as lists (trackpy's groups)."""
    _, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(inverse.max() + 2)) \
        if len(inverse) else np.zeros(1, dtype=np.int64)
    return [order[bounds[i]:bounds[i + 1]].tolist()
            for i in range(len(bounds) - 1)]
