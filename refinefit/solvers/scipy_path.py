"""Cluster batches solved by ``scipy.optimize.minimize``.

Used for constrained clusters that the lockstep solver cannot take, for
every cluster when a ``method`` is named or the fit function is a custom
dict (SLSQP by default, as trackpy). The objective and its gradient are
evaluated by a Numba kernel over the flattened masks, one call per batch.
The objective is trackpy's: per cluster the mean squared residual over its
mask, divided by ``frame_max**2 / residual_factor``, summed over the batch.
"""
import numpy as np

from ..kernels import CONVERGED, MAX_ITER, cost_and_gradient, evaluate_model
from ..problem.camera import pixel_noise
from ..problem.constraints import wrap_constraint
from ..problem.params import vect_from_params, vect_to_params
from . import custom_model
from .result import Solution

# minimize methods that take bounds and use a gradient
BOUNDED_GRADIENT_METHODS = ("L-BFGS-B", "TNC", "SLSQP", "trust-constr")
CONSTRAINED_METHODS = ("SLSQP", "trust-constr")
_SCIPY_METHODS = ("Nelder-Mead", "Powell", "CG", "BFGS", "Newton-CG",
                  "L-BFGS-B", "TNC", "COBYLA", "COBYQA", "SLSQP",
                  "trust-constr", "dogleg", "trust-ncg", "trust-exact",
                  "trust-krylov")
# Clusters stacked in one minimize call: SLSQP's dense quasi-Newton needs
# more iterations as stacked problems grow, so that stacking is slower;
# clusters go one per call (trackpy's per-cluster semantics as well).
MAX_GROUP = 1


def check_method(method, constrained):
    """Canonical method name; ValueError for one that cannot be used."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    known = {m.lower(): m for m in _SCIPY_METHODS}
    if method.lower() not in known:
        raise ValueError(f"method: scipy.optimize.minimize does not know "
                         f"{method!r}; use one of {list(BOUNDED_GRADIENT_METHODS)}")
    method = known[method.lower()]
    if method not in BOUNDED_GRADIENT_METHODS:
        raise ValueError(f"method: {method!r} does not take bounds and a "
                         f"gradient; use one of {list(BOUNDED_GRADIENT_METHODS)}")
    if constrained and method not in CONSTRAINED_METHODS:
        raise ValueError(f"method: {method!r} does not take constraints; use "
                         f"one of {list(CONSTRAINED_METHODS)}")
    return method


def solve_groups(groups, batch, params, lower, upper, modes, settings,
                 frame_max, extra_groups=(), normalise=False):
    """Minimise each group of clusters of ``batch`` with scipy.

    Parameters
    ----------
    groups : list of int arrays
        Batch cluster ids solved together (their features stacked).
    batch : engine.FlatBatch
    params, lower, upper : ndarray (batch features x parameters)
    modes : int array per parameter
    settings : engine.Settings
    frame_max : ndarray per batch cluster
    extra_groups : sequence of lists of index lists
        Groups of modes 4 and up ('particle', 'frame'), as feature indices
        into the features of ``groups[0]`` stacked (only with one group).
    normalise : bool
        Scale each group's objective to 1 per cluster at the start instead
        of trackpy's ``residual_factor``: large stacked problems under
        constraints then converge with SLSQP (e.g. dimers under
        ``dimer_global``, which fail with trackpy's scale).

    Returns
    -------
    Solution
        ``cost`` is the sum of squared residuals per cluster, ``status``
        CONVERGED where scipy succeeded (else MAX_ITER), ``iterations``
        scipy's objective evaluations for the cluster's group; ``std``
        holds the standard errors of the solved groups when
        ``settings.solver.with_error`` (see ``scipy_errors.py``), else NaN.
    """
    # here, not at the top: most runs never need scipy, and its import is
    # part of every new process's start-up
    from scipy.optimize import minimize

    from .scipy_errors import group_errors

    n_clusters = len(batch.cluster_feat_off) - 1
    out = params.copy()
    sumsq = np.full(n_clusters, np.nan)
    success = np.zeros(n_clusters, dtype=bool)
    iterations = np.zeros(n_clusters, dtype=np.int64)
    n_pix = np.diff(batch.cluster_pix_off)
    weight = settings.scipy.residual_factor / (np.maximum(n_pix, 1) * frame_max ** 2)
    work = params.copy()
    cost = np.empty(n_clusters)
    grad = np.zeros_like(params)
    poisson, extra = pixel_noise(settings.noise, batch)
    solved = []
    for ids in groups:
        ids = np.asarray(ids, dtype=np.int64)
        starts = batch.cluster_feat_off[ids]
        sizes = batch.cluster_feat_off[ids + 1] - starts
        members = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, sizes)])
        local = np.cumsum(np.r_[0, sizes])
        spec = [[list(range(local[i], local[i + 1])) for i in range(len(ids))]]
        spec += list(extra_groups)
        base = params[members]
        feature_weight = np.repeat(weight[ids], sizes)[:, None]

        def evaluate(vect):
            work[members] = vect_to_params(vect, base, modes, spec)
            if settings.model.custom is not None:
                custom_model.cost_and_gradient(
                    settings.model.custom, ids, batch, work, settings.model.ndim,
                    settings.model.n_size, cost, grad, poisson, extra)
            else:
                cost_and_gradient(ids, batch.pix_val, extra, batch.pix_coord,
                                  batch.cluster_pix_off, batch.entry_pix,
                                  batch.feat_entry_off,
                                  batch.cluster_feat_off, work,
                                  *settings.model.literals, poisson,
                                  cost, grad)
            value = float(np.sum(cost[ids] * weight[ids]))
            gradient = vect_from_params(grad[members] * feature_weight, modes,
                                        spec, operation=np.sum)
            return value, gradient

        x0 = vect_from_params(base, modes, spec, operation=np.mean)
        lo = vect_from_params(lower[members], modes, spec, operation=np.min)
        hi = vect_from_params(upper[members], modes, spec, operation=np.max)
        x0 = np.clip(x0, lo, hi)
        if normalise:
            start = evaluate(x0)[0]
            if np.isfinite(start) and start > 0:
                factor = len(ids) / start
                weight[ids] *= factor
                feature_weight *= factor
        bounds = [(None if not np.isfinite(a) else a,
                   None if not np.isfinite(b) else b) for a, b in zip(lo, hi)]
        constraints = [w for w in (wrap_constraint(c, base, modes, spec)
                                   for c in settings.scipy.constraints)
                       if w is not None]
        kwargs = dict(method=settings.scipy.method, tol=settings.solver.tol,
                      options=dict(settings.scipy.options))
        if normalise and str(settings.scipy.method).upper() == "SLSQP":
            # a whole movie's unknowns take more than SLSQP's 100 iterations
            kwargs["options"]["maxiter"] = max(
                kwargs["options"].get("maxiter", 100), 3 * len(x0))
        if constraints:
            kwargs["constraints"] = constraints
        try:
            with np.errstate(all="ignore"):
                result = minimize(evaluate, x0, jac=True, bounds=bounds,
                                  **kwargs)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            continue
        iterations[ids] = result.get("nfev", 0)
        if not (result.success and np.all(np.isfinite(result.x))):
            continue
        evaluate(result.x)
        out[members] = work[members]
        sumsq[ids] = cost[ids]
        success[ids] = np.isfinite(cost[ids])
        if success[ids].all():
            solved.append((ids, members, result.x, modes, spec, constraints))
    std = np.full_like(params, np.nan)
    if settings.solver.with_error and solved:
        std = group_errors(batch, out, _evaluation(batch, out, settings),
                           solved, extra if poisson else None)
    status = np.where(success, CONVERGED, MAX_ITER)
    return Solution(out, sumsq, status, std, iterations)


def model_image(batch, params, settings):
    """The model at every pixel of the batch at ``params``, and the pixels
    it excludes."""
    model, excluded, _ = _evaluation(batch, params, settings)
    return model, excluded


def _evaluation(batch, params, settings):
    """Model image, excluded pixels and entry derivatives over the batch."""
    if settings.model.custom is not None:
        return custom_model.evaluate(settings.model.custom, batch, params,
                                     settings.model.ndim, settings.model.n_size)
    n_pix, n_entries = len(batch.pix_val), len(batch.entry_pix)
    image = np.empty(n_pix)
    excluded = np.empty(n_pix, dtype=bool)
    deriv = np.empty((n_entries, params.shape[1]))
    evaluate_model(batch.pix_coord, batch.cluster_pix_off, batch.entry_pix,
                   batch.feat_entry_off, batch.cluster_feat_off,
                   np.ascontiguousarray(params), *settings.model.literals,
                   image, excluded, deriv)
    return image, excluded, deriv
