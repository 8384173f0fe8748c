"""Equality-constrained clusters on the Numba engine, in lockstep.

All constrained clusters of one size in a batch advance together: each
iteration calls the user's constraint functions once on the stacked
(cluster, feature, parameter) array - the grouping axis of trackpy's
constraint convention - and once per local unknown to difference them (one
unknown of every cluster moves at a time, so the columns of all clusters come
from the same call). A Numba kernel then takes one damped Gauss-Newton step
per cluster under the linearised constraints. Iterates are kept on the
constraints (each step is projected back onto them) and accepted per cluster
on the cost alone (:func:`_feasible_descent`); clusters that descent cannot
finish start again on the merit ``cost + rho * |h|_1``
(:func:`_penalty_descent`), and those left go to scipy.

Constraint values must be laid out as trackpy's helpers lay them out: blocks
of one value per cluster (``h.reshape(n_values, n_clusters)``); this is
checked once per batch, and batches whose constraints do not follow it (or
that have inequality constraints) go to scipy instead.
"""
import numpy as np

from ..kernels import constrained_steps, cost_and_gradient
from ..kernels.codes import (
    CONSTRAINT_UNMET,
    CONVERGED,
    MAX_ITER,
    MODE_CLUSTER,
    MODE_VAR,
)
from ..problem.camera import pixel_noise
from .result import Solution

_LAMBDA_START = 1e-3
_LAMBDA_MAX = 1e16
_LAMBDA_CONVERGED = 1.0
_FD_STEP = 1e-7
# projections aim at this violation (a distance right to ~1e-13 of itself)
_CONSTRAINT_TOL = 1e-12
_PROJECTION_STEPS = 20
# and must reach this one: constraints whose values are sorted (trackpy's 2D
# tetramer) have kinks at the solution, where Gauss-Newton stalls near 1e-7
_HELD_TOL = 1e-6
# the penalty descent converges with the constraints held to this
_PENALTY_TOL = 1e-9
# a cost below this fraction of the cluster's sum of squared pixel values is
# zero to rounding
_EXACT_FLOOR = 1e-24
_NO_STD = np.empty((0, 0))


class Unsupported(Exception):
    """The batch cannot use this solver (the caller falls back to scipy)."""


class _Layout:
    """Unknowns of a cluster of ``size`` features: 'cluster' parameters,
    then each feature's 'var' parameters (the engine's layout)."""

    def __init__(self, modes, size, ndim):
        cl = [j for j, m in enumerate(modes) if m == MODE_CLUSTER]
        var = [j for j, m in enumerate(modes) if m == MODE_VAR]
        self.cl = np.array(cl, dtype=np.int64)
        self.var = np.array(var, dtype=np.int64)
        self.size = size
        self.n = len(cl) + size * len(var)
        column = np.concatenate([self.cl, np.tile(self.var, size)])
        # positions: constraints depend on their differences, so their
        # difference steps must not grow with the distance from the origin
        self.is_position = (column >= 2) & (column < 2 + ndim)

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
    eps = _FD_STEP * np.where(layout.is_position, 1.0,
                              np.maximum(np.abs(x), 1.0))
    jac = np.empty((len(x), h.shape[1], layout.n))
    for u in range(layout.n):
        shifted = x.copy()
        shifted[:, u] += eps[:, u]
        moved = _constraint_values(constraints, layout.to_params(shifted, base))
        jac[:, :, u] = (moved - h) / eps[:, u:u + 1]
    return jac


def _violation(h):
    """Largest constraint violation of every cluster."""
    return np.max(np.abs(h), axis=1, initial=0.0)


def _project(constraints, layout, x, h, base, lo, hi, jac=None):
    """Move ``x`` onto the constraints: Gauss-Newton steps of least norm,
    ``x -= A^T (A A^T)^-1 h``, with ``A`` the constraint Jacobian (``jac``
    if given, else recomputed at every step). Returns the new ``x``, its
    constraint values and where they hold to ``_HELD_TOL``."""
    x = x.copy()
    h = h.copy()
    for _ in range(_PROJECTION_STEPS):
        held = _violation(h) <= _CONSTRAINT_TOL
        if held.all():
            break
        moving = np.nonzero(~held)[0]
        a = jac[moving] if jac is not None else _constraint_jacobian(
            constraints, layout, x[moving], h[moving], base[moving])
        gram = a @ np.swapaxes(a, 1, 2)
        # a tiny ridge keeps redundant constraints (a 2D square) solvable
        ridge = 1e-12 * np.trace(gram, axis1=1, axis2=2) + 1e-300
        gram += ridge[:, None, None] * np.eye(gram.shape[1])
        with np.errstate(all="ignore"):
            try:
                mu = np.linalg.solve(gram, h[moving][:, :, None])[:, :, 0]
            except np.linalg.LinAlgError:
                break
            x[moving] = np.clip(
                x[moving] - np.einsum("gcu,gc->gu", a, mu),
                lo[moving], hi[moving])
        h[moving] = _constraint_values(
            constraints, layout.to_params(x[moving], base[moving]))
    held = _violation(h) <= _HELD_TOL
    return x, h, held & np.all(np.isfinite(x), axis=1)


def solve_constrained(ids, batch, params, lower, upper, settings,
                      constraints):
    """Refine clusters ``ids`` (all of one size) under equality constraints.

    Returns
    -------
    Solution
        ``params`` and ``std`` over the batch's features; ``cost`` (sum of
        squared residuals), ``status`` and ``iterations`` per entry of
        ``ids``.

    retry : ndarray of bool
        Per entry of ``ids``: the fit could not reach the constraints from
        its start, or stalled away from a minimum; the caller hands these
        to scipy.

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
    layout = _Layout(settings.model.modes, size, settings.model.ndim)
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

    problem = _Problem(ids, batch, params, settings, constraints, layout,
                       base, lo, hi)
    x0, h0 = x.copy(), h.copy()
    x, h, current, success, retry, iterations = _feasible_descent(
        problem, x, h)
    if retry.any():
        # kinked constraints: steps on the merit cost + rho |h| from the
        # start, which do not need the constraints' tangent to be right
        again = np.nonzero(retry)[0]
        xr, hr, cr, ok, its = _penalty_descent(problem, again, x0[again],
                                               h0[again])
        # keep the lower of the two costs where the constraints hold; a
        # stall of the feasible descent below what the merit's descent
        # calls converged is a minimum too
        held = _violation(h[again]) <= _HELD_TOL
        stay = held & (current[again] <= cr)
        take = again[~stay]
        x[take], h[take], current[take] = xr[~stay], hr[~stay], cr[~stay]
        success[again] = ok
        retry[again] = ~ok
        iterations[again] += its
    feasible = _violation(h) <= _HELD_TOL
    out = params.copy()
    out[members] = layout.to_params(x, base).reshape(-1, n_params)
    std = np.full_like(params, np.nan)
    if settings.solver.with_error and success.any():
        std[members] = _standard_errors(
            x, h, base, layout, constraints, ids, batch, problem.work,
            settings, success).reshape(-1, n_params)
    status = np.where(success, CONVERGED,
                      np.where(feasible, MAX_ITER, CONSTRAINT_UNMET))
    return Solution(out, current, status, std, iterations), retry


class _Problem:
    """What both descents share: the clusters, their unknowns' layout and
    bounds, and evaluations of their cost and constrained steps."""

    def __init__(self, ids, batch, params, settings, constraints, layout,
                 base, lo, hi):
        self.ids, self.batch, self.settings = ids, batch, settings
        self.constraints, self.layout = constraints, layout
        self.base, self.lo, self.hi = base, lo, hi
        self.starts = batch.cluster_feat_off[ids]
        self.work = params.copy()
        self._grad = np.zeros_like(params)
        self._cost = np.empty(len(batch.cluster_feat_off) - 1)
        self.poisson, self.extra = pixel_noise(settings.noise, batch)

    def _put(self, rows, xs):
        members = (self.starts[rows, None]
                   + np.arange(self.layout.size)).ravel()
        self.work[members] = self.layout.to_params(
            xs, self.base[rows]).reshape(-1, self.work.shape[1])

    def values(self, rows, xs):
        return _constraint_values(self.constraints,
                                  self.layout.to_params(xs, self.base[rows]))

    def costs(self, rows, xs):
        """Sums of squared residuals of clusters ``ids[rows]`` at ``xs``."""
        self._put(rows, xs)
        b = self.batch
        cost_and_gradient(self.ids[rows], b.pix_val, self.extra, b.pix_coord,
                          b.cluster_pix_off, b.entry_pix, b.feat_entry_off,
                          b.cluster_feat_off, self.work,
                          *self.settings.model.literals, self.poisson,
                          self._cost, self._grad)
        return self._cost[self.ids[rows]].copy()

    def step(self, rows, xs, hs, lam):
        """Damped Gauss-Newton steps under the linearised constraints, and
        the constraint Jacobian they used."""
        jac = _constraint_jacobian(self.constraints, self.layout, xs, hs,
                                   self.base[rows])
        self._put(rows, xs)
        step = np.empty_like(xs)
        cost = np.empty(len(rows))
        b = self.batch
        constrained_steps(self.ids[rows], b.pix_val, self.extra, b.pix_coord,
                          b.cluster_pix_off, b.entry_pix, b.feat_entry_off,
                          b.cluster_feat_off, self.work,
                          self.settings.model.modes,
                          *self.settings.model.literals, self.poisson, xs,
                          jac, hs, lam, step, cost, False, _NO_STD)
        ok = np.all(np.isfinite(step), axis=1)
        trial = np.where(ok[:, None],
                         np.clip(xs + step, self.lo[rows], self.hi[rows]), xs)
        return trial, ok, jac


def _feasible_descent(problem, x, h):
    """Levenberg-Marquardt through points that satisfy the constraints.

    The start is projected onto the constraints, and so is every trial
    step; trial and current point are then compared on the cost alone. (A
    penalty on the violation would reject the steps along a curved
    constraint - a dimer turning - whose violation is only of second order,
    and stall short of the minimum.)
    Returns x, h, cost, success, retry and iterations per cluster.
    """
    settings, n = problem.settings, len(x)
    rows = np.arange(n)
    lam = np.full(n, _LAMBDA_START)
    iterations = np.ones(n, dtype=np.int64)
    x, h, feasible = _project(problem.constraints, problem.layout, x, h,
                              problem.base, problem.lo, problem.hi)
    current = problem.costs(rows, x)
    active = feasible & np.isfinite(current)
    success = np.zeros(n, dtype=bool)
    retry = ~active
    # sum of squared pixel values per cluster (only a threshold is taken
    # from it, so a running sum's rounding does not matter)
    batch = problem.batch
    running = np.concatenate([[0.0], np.cumsum(np.square(batch.pix_val))])
    signal_sumsq = (running[batch.cluster_pix_off[problem.ids + 1]]
                    - running[batch.cluster_pix_off[problem.ids]])
    for _ in range(settings.solver.max_eval):
        # only clusters still iterating take part (constraints are checked
        # to act per cluster, so a subset can be evaluated on its own)
        a = np.nonzero(active)[0]
        if len(a) == 0:
            break
        trial, ok, jac = problem.step(a, x[a], h[a], lam[a])
        trial, h_trial, held = _project(
            problem.constraints, problem.layout, trial, problem.values(a, trial),
            problem.base[a], problem.lo[a], problem.hi[a], jac)
        c_trial = problem.costs(a, trial)
        iterations[a] += 1
        better = ok & held & (c_trial < current[a])
        # a small decrease shows a minimum only for a step close to Gauss-
        # Newton's; a heavily damped one is short whatever the slope
        small = ((current[a] - c_trial) <= settings.solver.tol * current[a]) \
            & (lam[a] <= _LAMBDA_CONVERGED)
        _accept(a, better, (x, h, current), (trial, h_trial, c_trial), lam)
        done = better & small
        # no step, however short, lowers the cost: a minimum if the cost is
        # at its rounding floor (an exact image); else the linearised
        # constraints point the steps the wrong way (values that are
        # sorted, as trackpy's 2D tetramer, have kinks at the solution)
        stalled = (lam[a] > _LAMBDA_MAX) & ~done
        exact = current[a] <= _EXACT_FLOOR * signal_sumsq[a]
        success[a[done | (stalled & exact)]] = True
        retry[a[stalled & ~exact]] = True
        active[a[done | stalled]] = False
    retry |= active  # the evaluation limit: the other descent may do better
    return x, h, current, success, retry, iterations


def _accept(a, better, state, trial, lam):
    """Move clusters ``a[better]`` of ``state`` (x, h, cost) to their
    ``trial`` values and lower their damping; raise the others'."""
    take = a[better]
    for now, new in zip(state, trial):
        now[take] = new[better]
    lam[take] = np.maximum(lam[take] / 3.0, 1e-12)
    lam[a[~better]] *= 4.0


def _penalty_descent(problem, rows, x, h):
    """Steps accepted on the merit ``cost + rho * |h|_1``, from infeasible
    points too: for constraints whose linearisation misleads the feasible
    descent. Returns x, h, cost, success and iterations of ``rows``."""
    settings, n = problem.settings, len(rows)
    lam = np.full(n, _LAMBDA_START)
    active = np.ones(n, dtype=bool)
    success = np.zeros(n, dtype=bool)
    iterations = np.zeros(n, dtype=np.int64)
    current = problem.costs(rows, x)
    # above the Lagrange multipliers (cost per unit of constraint value)
    rho = 1e4 * np.maximum(current, 1e-300)
    for _ in range(settings.solver.max_eval):
        a = np.nonzero(active)[0]
        if len(a) == 0:
            break
        trial, ok, _ = problem.step(rows[a], x[a], h[a], lam[a])
        h_trial = problem.values(rows[a], trial)
        c_trial = problem.costs(rows[a], trial)
        iterations[a] += 1
        merit = current[a] + rho[a] * np.sum(np.abs(h[a]), axis=1)
        merit_trial = c_trial + rho[a] * np.sum(np.abs(h_trial), axis=1)
        better = ok & (merit_trial < merit)
        _accept(a, better, (x, h, current), (trial, h_trial, c_trial), lam)
        violation = _violation(h[a])
        small = (merit - merit_trial) <= settings.solver.tol * merit
        done = (better & small & (violation <= _PENALTY_TOL)) | (
            (lam[a] > _LAMBDA_MAX) & (violation <= _HELD_TOL))
        stuck = (lam[a] > _LAMBDA_MAX) & ~done
        success[a[done]] = True
        active[a[done | stuck]] = False
    else:
        # the merit's steps along kinked constraints shrink without end;
        # where the constraints hold, that is at the minimum (tested on
        # 2D tetramers, tests/test_constraint_stress.py)
        success |= active & (_violation(h) <= _HELD_TOL)
    return x, h, current, success, iterations


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
    poisson, extra = pixel_noise(settings.noise, batch)
    constrained_steps(ids, batch.pix_val, extra, batch.pix_coord,
                      batch.cluster_pix_off, batch.entry_pix,
                      batch.feat_entry_off, batch.cluster_feat_off, work,
                      settings.model.modes, *settings.model.literals, poisson,
                      x, jac, h, np.zeros(len(x)), step, cost, True, std)
    std[~success] = np.nan
    return layout.to_params(std, np.full_like(base, np.nan))
