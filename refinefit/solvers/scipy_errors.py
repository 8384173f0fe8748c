"""Standard errors of fits made by ``scipy.optimize.minimize``.

For a group of clusters solved as one vector ``v`` (see ``scipy_path.py``),
at the optimum:

- the Jacobian of the residuals with respect to ``v`` is the per-entry
  model derivatives (``kernels.evaluate_model``, or the NumPy evaluation of
  a custom model) times the linear map from ``v`` to the per-feature
  parameters (``vect_to_params``), assembled sparse;
- with ``N = J^T J``, ``P = N^-1``; equality constraints, and inequality
  constraints that are active (|value| <= 1e-6), enter linearised: with
  ``A`` their finite-difference Jacobian,
  ``P = N^-1 - N^-1 A^T (A N^-1 A^T)^-1 A N^-1``;
- the covariance is the sandwich ``P J^T diag(w) J P`` of
  ``kernels/covariance.py`` (:func:`sandwich_std`);
- the standard error of every unknown is mapped back to the features.

This path is the slow one (a Python loop over groups); the engine's own
solvers compute their errors inside the kernels.
"""
import numpy as np
from scipy import sparse

from ..kernels.covariance import MIN_ONE_MINUS_H
from ..problem.params import vect_to_params

_ACTIVE = 1e-6
_FD_STEP = 1e-7


def group_errors(batch, params, evaluation, solved, poisson_extra=None):
    """Standard errors (features x parameters, NaN elsewhere) of ``solved``.

    Parameters
    ----------
    batch : engine.FlatBatch
    params : ndarray (batch features x parameters), the fitted values
    evaluation : (model, excluded, entry_deriv) over the whole batch at
        ``params``, as ``kernels.evaluate_model`` fills them
    solved : list of (ids, members, x, modes, spec, constraints)
        Every group scipy solved: its cluster ids, feature rows, optimum,
        modes, groups spec and wrapped constraints.
    poisson_extra : ndarray, optional
        Under the Poisson estimator, the extra expected photons at each
        pixel of the batch (empty for none): the errors are then the
        Cramer-Rao bound, from the Fisher information ``J^T diag(1/mu) J``
        in place of ``J^T J`` (with the constraints as above).
    """
    model, excluded, entry_deriv = evaluation
    std = np.full(params.shape, np.nan)
    for ids, members, x, modes, spec, constraints in solved:
        try:
            std[members] = _one_group(batch, params, model, excluded,
                                      entry_deriv, ids, members, x, modes,
                                      spec, constraints, poisson_extra)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError):
            continue
    return std


def _one_group(batch, params, model, excluded, entry_deriv, ids, members, x,
               modes, spec, constraints, poisson_extra):
    n_params = params.shape[1]
    n_v = len(x)
    base = np.zeros((len(members), n_params))
    # the linear map v -> per-feature parameters, one column per unknown
    columns = [vect_to_params(unit, base, modes, spec).ravel()
               for unit in np.eye(n_v)]
    vmap = sparse.csr_matrix(np.array(columns).T)  # (features*params, n_v)

    local_feat = np.full(len(params), -1, dtype=np.int64)
    local_feat[members] = np.arange(len(members))
    pix = np.concatenate([np.arange(batch.cluster_pix_off[c],
                                    batch.cluster_pix_off[c + 1]) for c in ids])
    local_pix = np.full(len(batch.pix_val), -1, dtype=np.int64)
    local_pix[pix] = np.arange(len(pix))
    valid = ~excluded[pix]

    entries = np.concatenate([np.arange(batch.feat_entry_off[f],
                                        batch.feat_entry_off[f + 1])
                              for f in members])
    entry_feat = np.repeat(members, batch.feat_entry_off[members + 1]
                           - batch.feat_entry_off[members])
    rows = np.repeat(local_pix[batch.entry_pix[entries]], n_params - 1)
    cols = (local_feat[entry_feat][:, None] * n_params
            + np.arange(1, n_params)).ravel()
    vals = entry_deriv[entries, 1:].ravel()
    # the background: once per pixel, the cluster's first feature's value
    pix_cluster = np.repeat(ids, batch.cluster_pix_off[ids + 1]
                            - batch.cluster_pix_off[ids])
    first = local_feat[batch.cluster_feat_off[pix_cluster]]
    rows = np.concatenate([rows, np.arange(len(pix))])
    cols = np.concatenate([cols, first * n_params])
    vals = np.concatenate([vals, np.ones(len(pix))])
    keep = valid[rows]
    jac_params = sparse.csr_matrix((vals[keep], (rows[keep], cols[keep])),
                                   shape=(len(pix), len(members) * n_params))
    jac = (jac_params @ vmap).toarray()
    jac = jac[valid]
    resid = (model[pix] - batch.pix_val[pix])[valid]
    if len(resid) <= n_v:
        return np.full((len(members), n_params), np.nan)
    if poisson_extra is not None:  # rows of the Fisher information
        mu = model[pix][valid] + (poisson_extra[pix][valid]
                                  if len(poisson_extra) else 0.0)
        if not np.all(mu > 0):
            return np.full((len(members), n_params), np.nan)
        jac = jac / np.sqrt(mu)[:, None]
    inverse = np.linalg.inv(jac.T @ jac)
    active = _active_constraint_jacobian(constraints, x)
    if len(active):
        middle = active @ inverse @ active.T
        inverse = inverse - inverse @ active.T @ np.linalg.solve(
            middle, active @ inverse)
    if poisson_extra is not None:
        with np.errstate(invalid="ignore"):
            std_v = np.sqrt(np.diag(inverse))
    else:
        std_v = sandwich_std(inverse, jac, resid)
    nan_base = np.full((len(members), n_params), np.nan)
    return vect_to_params(std_v, nan_base, modes, spec)


def sandwich_std(inverse, jac, resid):
    """Standard errors from the sandwich covariance
    ``P (sum_q w_q J_q^T J_q) P`` with ``w_q = r_q^2 / (1 - h_q)^2`` and
    ``h_q = J_q P J_q^T`` (``kernels/covariance.py``, which the engine
    uses); NaN where ``P``'s diagonal is negative."""
    phi = jac @ inverse  # row q: (P J_q^T)^T
    leverage = np.einsum("ij,ij->i", phi, jac)
    weight = (resid / np.maximum(1.0 - leverage, MIN_ONE_MINUS_H)) ** 2
    variance = weight @ phi ** 2
    return np.where(np.diag(inverse) >= 0, np.sqrt(variance), np.nan)


def _active_constraint_jacobian(constraints, x):
    """Finite-difference Jacobian rows of the equality constraints and the
    active inequality constraints at ``x``."""
    rows = []
    for cons in constraints:
        fun, args = cons["fun"], cons.get("args", ())
        value = np.atleast_1d(np.asarray(fun(x, *args), dtype=np.float64))
        if value.size == 0:
            continue
        use = np.ones(value.size, dtype=bool) if cons["type"] == "eq" \
            else np.abs(value) <= _ACTIVE
        if not use.any():
            continue
        jac = np.empty((value.size, len(x)))
        for i in range(len(x)):
            step = _FD_STEP * max(abs(x[i]), 1.0)
            shifted = x.copy()
            shifted[i] += step
            jac[:, i] = (np.atleast_1d(fun(shifted, *args)) - value) / step
        rows.append(jac[use])
    if not rows:
        return np.empty((0, len(x)))
    return np.concatenate(rows)
