"""Equality-constrained clusters on the Numba engine, in lockstep.

All constrained clusters of one size in a batch advance together: each
iteration calls the user's constraint functions once on the stacked
(cluster, feature, parameter) array - the grouping axis of trackpy's
constraint convention - and once per local unknown to difference them (one
unknown of every cluster moves at a time, so the columns of all clusters come
from the same call). A Numba kernel then takes one damped Gauss-Newton step
per cluster under the linearised constraints. Steps are accepted per cluster
on the merit ``cost + rho * |h|^2``.

Constraint values must be laid out as trackpy's helpers lay them out: blocks
of one value per cluster (``h.reshape(n_values, n_clusters)``); this is
checked once per batch, and batches whose constraints do not follow it (or
that have inequality constraints) go to scipy instead.
"""
import numpy as np

from ..kernels import constrained_steps, cost_and_gradient
from ..kernels.codes import CONVERGED, MAX_ITER, MODE_CLUSTER, MODE_VAR
from .result import Solution

_LAMBDA_START = 1e-3
_LAMBDA_MAX = 1e16
_FD_STEP = 1e-7
_CONSTRAINT_TOL = 1e-9
# a cluster whose steps no longer lower the merit is converged if its
# constraints hold to this (a distance off by ~1e-6 of itself)
_STALLED_TOL = 1e-6
_NO_STD = np.empty((0, 0))


class Unsupported(Exception):
    """The batch cannot use this solver (the caller falls back to scipy)."""


class _Layout:
    """Unknowns of a cluster of ``size`` features: 'cluster' parameters,
    then each feature's 'var' parameters (the engine's layout)."""

    def __init__(self, modes, size):
        cl = [j for j, m in enumerate(modes) if m == MODE_CLUSTER]
        var = [j for j, m in enumerate(modes) if m == MODE_VAR]
        self.cl = np.array(cl, dtype=np.int64)
        self.var = np.array(var, dtype=np.int64)
        self.size = size
        self.n = len(cl) + size * len(var)

    def to_unknowns(self, p):
        """(G, size, n_params) -> (G, n): means for 'cluster' parameters."""
        return np.concatenate([p[:, :, self.cl].mean(axis=1),
                               p[:, :, self.var].reshape(len(p), -1)], axis=1)

    def reduce(self, p, op):
        return np.concatenate([op(p[:, :, self.cl], axis=1),
                               p[:, :, self.var].reshape(len(p), -1)], axis=1)

    def to_params(self, x, base):
        p = base.copy()
        n_cl = len(self.cl)
        p[:, :, self.cl] = x[:, None, :n_cl]
        p[:, :, self.var] = x[:, n_cl:].reshape(len(x), self.size, -1)
        return p


def _constraint_values(constraints, p):
    """Stacked values of every constraint, as (G, values per cluster)."""
    n_groups = len(p)
    blocks = []
    for cons in constraints:
        values = np.asarray(cons["fun"](p, *cons["args"]), dtype=np.float64)
        values = values.ravel()
        if values.size % n_groups:
            raise Unsupported("constraint values do not split per cluster")
        blocks.append(values.reshape(-1, n_groups).T)
    return np.concatenate(blocks, axis=1)


def _constraint_jacobian(constraints, layout, x, h, base):
    """Forward differences of the constraint values, (G, values, unknowns):
    one call per local unknown, moving it in every cluster at once."""
    eps = _FD_STEP * np.maximum(np.abs(x), 1.0)
    jac = np.empty((len(x), h.shape[1], layout.n))
    for u in range(layout.n):
        shifted = x.copy()
        shifted[:, u] += eps[:, u]
        moved = _constraint_values(constraints, layout.to_params(shifted, base))
        jac[:, :, u] = (moved - h) / eps[:, u:u + 1]
    return jac


def solve_constrained(ids, batch, params, lower, upper, settings,
                      constraints):
    """Refine clusters ``ids`` (all of one size) under equality constraints.

    Returns
    -------
    Solution
        ``params`` and ``std`` over the batch's features; ``cost`` (sum of
        squared residuals), ``status`` and ``iterations`` per entry of
        ``ids``.

    Raises :class:`Unsupported` when the constraints do not follow trackpy's
    per-cluster layout.
    """
    if settings.model.custom is not None:
        raise Unsupported("custom fit functions are evaluated with NumPy")
    ids = np.asarray(ids, dtype=np.int64)
    starts = batch.cluster_feat_off[ids]
    size = int(batch.cluster_feat_off[ids[0] + 1] - starts[0])
    members = (starts[:, None] + np.arange(size)).ravel()
    n_groups = len(ids)
    layout = _Layout(settings.model.modes, size)
    n_params = params.shape[1]
    base = params[members].reshape(n_groups, size, n_params)
    lo = layout.reduce(lower[members].reshape(base.shape), np.min)
    hi = layout.reduce(upper[members].reshape(base.shape), np.max)
    x = np.clip(layout.to_unknowns(base), lo, hi)

    h = _constraint_values(constraints, layout.to_params(x, base))
    if n_groups > 1:  # values of cluster 0 must depend on cluster 0 only
        probe = x.copy()
        probe[1:] += _FD_STEP * np.maximum(np.abs(probe[1:]), 1.0)
        moved = _constraint_values(constraints, layout.to_params(probe, base))
        if not np.allclose(moved[0], h[0], rtol=0, atol=1e-300):
            raise Unsupported("constraint values are not laid out per cluster")

    work = params.copy()
    grad = np.zeros_like(params)
    all_cost = np.empty(len(batch.cluster_feat_off) - 1)

    def members_of(rows):
        return (starts[rows, None] + np.arange(size)).ravel()

    def costs_at(xs, cluster_ids, bases):
        work[members_of(np.searchsorted(ids, cluster_ids))] = \
            layout.to_params(xs, bases).reshape(-1, n_params)
        cost_and_gradient(cluster_ids, batch.pix_val, batch.pix_coord,
                          batch.cluster_pix_off, batch.entry_pix,
                          batch.feat_entry_off, batch.cluster_feat_off, work,
                          *settings.model.literals, all_cost, grad)
        return all_cost[cluster_ids].copy()

    lam = np.full(n_groups, _LAMBDA_START)
    active = np.ones(n_groups, dtype=bool)
    success = np.zeros(n_groups, dtype=bool)
    iterations = np.ones(n_groups, dtype=np.int64)
    current = costs_at(x, ids, base)
    # above the Lagrange multipliers (cost per unit of constraint value)
    rho = 1e4 * np.maximum(current, 1e-300)
    for _ in range(settings.solver.max_eval):
        # only clusters still iterating take part (constraints are checked
        # to act per cluster, so a subset can be evaluated on its own)
        a = np.nonzero(active)[0]
        xa, ha, base_a = x[a], h[a], base[a]
        jac = _constraint_jacobian(constraints, layout, xa, ha, base_a)
        work[members_of(a)] = layout.to_params(xa, base_a).reshape(-1, n_params)
        step = np.empty_like(xa)
        cost = np.empty(len(a))
        constrained_steps(ids[a], batch.pix_val, batch.pix_coord,
                          batch.cluster_pix_off, batch.entry_pix,
                          batch.feat_entry_off, batch.cluster_feat_off, work,
                          settings.model.modes, *settings.model.literals, xa, jac, ha,
                          lam[a], step, cost, False, _NO_STD)
        ok = np.all(np.isfinite(step), axis=1)
        trial = np.where(ok[:, None], np.clip(xa + step, lo[a], hi[a]), xa)
        h_trial = _constraint_values(constraints,
                                     layout.to_params(trial, base_a))
        c_trial = costs_at(trial, ids[a], base_a)
        iterations[a] += 1
        merit = current[a] + rho[a] * np.sum(np.abs(ha), axis=1)
        merit_trial = c_trial + rho[a] * np.sum(np.abs(h_trial), axis=1)
        better = ok & (merit_trial < merit)
        take = a[better]
        x[take] = trial[better]
        h[take] = h_trial[better]
        current[take] = c_trial[better]
        lam[take] = np.maximum(lam[take] / 3.0, 1e-12)
        lam[a[~better]] *= 4.0
        violation = np.max(np.abs(h[a]), axis=1)
        small = (merit - merit_trial) <= settings.solver.tol * merit
        done = (better & small & (violation <= _CONSTRAINT_TOL)) | (
            (lam[a] > _LAMBDA_MAX) & (violation <= _STALLED_TOL))
        stuck = (lam[a] > _LAMBDA_MAX) & ~done
        success[a[done]] = True
        active[a[done | stuck]] = False
        if not active.any():
            break
    else:  # iteration limit: keep the clusters whose constraints hold
        success |= active & (np.max(np.abs(h), axis=1) <= _STALLED_TOL)
    out = params.copy()
    out[members] = layout.to_params(x, base).reshape(-1, n_params)
    std = np.full_like(params, np.nan)
    if settings.solver.with_error and success.any():
        std[members] = _standard_errors(
            x, h, base, layout, constraints, ids, batch, work, settings,
            success).reshape(-1, n_params)
    status = np.where(success, CONVERGED, MAX_ITER)
    return Solution(out, current, status, std, iterations)


def _standard_errors(x, h, base, layout, constraints, ids, batch, work,
                     settings, success):
    """Per-feature standard errors at the optimum (NaN where failed)."""
    n_params = base.shape[2]
    jac = _constraint_jacobian(constraints, layout, x, h, base)
    starts = batch.cluster_feat_off[ids]
    members = (starts[:, None] + np.arange(layout.size)).ravel()
    work[members] = layout.to_params(x, base).reshape(-1, n_params)
    step = np.empty_like(x)
    cost = np.empty(len(x))
    std = np.empty_like(x)
    constrained_steps(ids, batch.pix_val, batch.pix_coord,
                      batch.cluster_pix_off, batch.entry_pix,
                      batch.feat_entry_off, batch.cluster_feat_off, work,
                      settings.model.modes, *settings.model.literals, x, jac, h,
                      np.zeros(len(x)), step, cost, True, std)
    std[~success] = np.nan
    return layout.to_params(std, np.full_like(base, np.nan))
