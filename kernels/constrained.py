"""Damped Gauss-Newton steps under linearised equality constraints.

For each cluster: minimise |J d + r|^2 + lam |D d|^2 subject to
A d = -h, with J, r the model Jacobian and residuals at the current
unknowns x, A and h the constraint Jacobian and values. Solved through the
Schur complement on the constraints:
``M = J^T J + lam D``, ``y = -M^-1 J^T r``, ``Y = M^-1 A^T``,
``(A Y) mu = A y + h``, ``d = y - Y mu``.
One cluster after another (chunks in parallel, see :mod:`.threads`); the
constraint values and Jacobian come
from Python, evaluated for the whole batch at once.
"""
import math

import numba
import numpy as np

from .covariance import (
    inverse_from_factor,
    jacobian_rows,
    row_count,
    sandwich_std,
    valid_pixels,
)
from .jit import LITERALS, Specialized, inline_kernel, kernel
from .linalg import cholesky_inplace, cholesky_solve
from .lm import cluster_scratch
from .residuals import (
    cluster_workspace,
    column_table,
    diag_scale,
    evaluate,
    evaluate_work,
    evaluation_buffers,
    layout,
    unpack,
)
from .threads import OverChunks


@inline_kernel
def _constrained_step(c, g, pix_val, pix_extra, pix_coord, cluster_pix_off,
                      entry_pix, feat_entry_off, cluster_feat_off, params,
                      modes, ndim, n_size, model_id, continuous, poisson, x,
                      jac_con, con, lam, step, cost_out, with_error, std_out):
    f0 = cluster_feat_off[c]
    n_feat = cluster_feat_off[c + 1] - f0
    pix_base = cluster_pix_off[c]
    n_pix = cluster_pix_off[c + 1] - pix_base
    n_params = modes.shape[0]
    n_entries = feat_entry_off[f0 + n_feat] - feat_entry_off[f0]
    pairs, arena = cluster_scratch(entry_pix, feat_entry_off, f0, n_feat,
                                   pix_base, n_pix, modes, ndim, n_size, True,
                                   poisson)
    slot, n_cl, n_var = layout(modes, arena)
    n_unk = n_cl + n_feat * n_var
    n_con = con.shape[1]
    work = params[f0:f0 + n_feat].copy()
    cols = column_table(modes, slot, n_cl, n_var, n_feat, arena)
    ws = cluster_workspace(pix_coord, entry_pix, feat_entry_off, f0, n_feat,
                           pix_base, n_pix, n_params, n_unk, True,
                           pairs, poisson, pix_extra, arena)
    b = evaluation_buffers(n_pix, n_entries, n_params, n_cl, n_var, n_feat,
                           n_unk, True, arena)
    deriv = np.empty(n_params)
    dextra = np.empty(max(n_params - 2 - ndim - n_size, 1))
    if poisson:  # (the deviance; its Fisher information as J^T J)
        unpack(x[g], work, cols)
        cost_out[g] = evaluate_work(True, True, work, cols, modes, slot, n_cl,
                                    n_var, pix_val, pix_coord, entry_pix,
                                    feat_entry_off, f0, pix_base, ndim,
                                    n_size, model_id, continuous, True, deriv,
                                    dextra, ws, b)
    else:
        cost_out[g] = evaluate(x[g], work, cols, modes, slot, n_cl, n_var,
                               pix_val, pix_coord, entry_pix, feat_entry_off,
                               f0, pix_base, ndim, n_size, model_id,
                               continuous, True, True, deriv, dextra, ws, b)
    normal = b.normal
    grad = b.grad
    scale = np.empty(n_unk)
    diag_scale(normal, b.blocks, b.block_cl, True, n_cl, n_var, scale)
    m = normal.copy()
    for i in range(n_unk):
        m[i, i] += lam[g] * scale[i]
    step[g, :] = math.nan
    if not cholesky_inplace(m, n_unk):
        return
    y = -grad.copy()
    cholesky_solve(m, n_unk, y)
    big_y = np.empty((n_con, n_unk))  # rows: M^-1 a_i
    for i in range(n_con):
        big_y[i] = jac_con[g, i]
        cholesky_solve(m, n_unk, big_y[i])
    schur = np.empty((n_con, n_con))
    rhs = np.empty(n_con)
    for i in range(n_con):
        acc = con[g, i]
        for u in range(n_unk):
            acc += jac_con[g, i, u] * y[u]
        rhs[i] = acc
        for k in range(n_con):
            acc = 0.0
            for u in range(n_unk):
                acc += jac_con[g, i, u] * big_y[k, u]
            schur[i, k] = acc
    # a tiny ridge keeps redundant constraints (e.g. a 2D square) solvable
    top = 0.0
    for i in range(n_con):
        top = max(top, schur[i, i])
    for i in range(n_con):
        schur[i, i] += 1e-12 * top + 1e-300
    if not cholesky_inplace(schur, n_con):
        return
    cholesky_solve(schur, n_con, rhs)
    for u in range(n_unk):
        acc = y[u]
        for i in range(n_con):
            acc -= big_y[i, u] * rhs[i]
        step[g, u] = acc
    if with_error:
        n_rows = row_count(n_pix, n_entries, n_cl, n_var)
        rows = (np.empty(n_pix), np.empty(n_pix), np.empty(n_pix, np.bool_),
                np.empty(n_pix + 1, np.int64), np.empty(n_pix, np.int64),
                np.empty(n_rows, np.int64), np.empty(n_rows))
        jacobian_rows(work, cols, n_cl, pix_val, pix_coord, entry_pix,
                      feat_entry_off, f0, n_feat, pix_base, n_pix, ndim,
                      n_size, model_id, continuous, deriv, dextra, rows)
        _constrained_std(m, big_y, schur, n_unk, n_con, rows, poisson,
                         std_out[g])


@kernel
def _constrained_std(factor, big_y, schur_factor, n_unk, n_con, rows, fisher,
                     std):
    """Standard errors of the unknowns under linearised equality
    constraints: the sandwich of :mod:`.covariance` with
    ``P = M^-1 - Y^T S^-1 Y`` (M = L L^T factored, Y = M^-1 A^T by rows,
    S = A Y factored), J's rows from :func:`.covariance.jacobian_rows`.
    With ``fisher`` (M the Fisher information), ``P`` itself: the
    Cramer-Rao bound under the constraints."""
    resid, excluded, row_off, row_col, row_val = (rows[1], rows[2], rows[3],
                                                  rows[5], rows[6])
    std[:] = math.nan
    if valid_pixels(excluded, excluded.shape[0]) - n_unk + n_con <= 0:
        return
    inverse = np.empty((n_unk, n_unk))
    inverse_from_factor(factor, n_unk, inverse)
    w = np.empty(n_con)
    for u in range(n_unk):
        for i in range(n_con):
            w[i] = big_y[i, u]
        cholesky_solve(schur_factor, n_con, w)  # S^-1 Y e_u
        for v in range(n_unk):
            total = 0.0
            for i in range(n_con):
                total += big_y[i, v] * w[i]
            inverse[v, u] -= total
    if fisher:
        for u in range(n_unk):
            std[u] = math.sqrt(inverse[u, u]) if inverse[u, u] >= 0.0 \
                else math.nan
        return
    sandwich_std(inverse, n_unk, resid, excluded, row_off, row_col, row_val,
                 np.empty(n_unk), std)


@kernel(entry=True)
def _constrained_steps(cluster_ids, pix_val, pix_extra, pix_coord,
                       cluster_pix_off, entry_pix, feat_entry_off,
                       cluster_feat_off, params, modes, ndim, n_size,
                       model_id, continuous, poisson, x, jac_con, con, lam,
                       step, cost_out, with_error, std_out):
    """One damped constrained step for every cluster in ``cluster_ids``.

    ``x[g]`` holds the unknowns of cluster ``cluster_ids[g]`` in the engine's
    layout ('cluster' parameters, then each feature's 'var' parameters);
    ``jac_con[g]`` and ``con[g]`` its constraint Jacobian and values;
    ``step[g]`` receives the step (NaN if the system is singular) and
    ``cost_out[g]`` the sum of squared residuals at ``x[g]``. With
    ``with_error`` (and ``lam`` 0 at the optimum), ``std_out[g]`` receives
    the standard errors of the unknowns under the linearised constraints.
    With ``poisson`` the cost is the Poisson deviance of the photons
    ``pix_val`` (``pix_extra`` as in ``lm.solve_cluster``) and the steps
    and errors come from its Fisher information.
    """
    numba.literally(ndim)  # specialise: see kernels/jit.py
    numba.literally(n_size)
    numba.literally(model_id)
    numba.literally(continuous)
    numba.literally(poisson)
    for g in range(cluster_ids.shape[0]):
        _constrained_step(cluster_ids[g], g, pix_val, pix_extra, pix_coord,
                          cluster_pix_off, entry_pix, feat_entry_off,
                          cluster_feat_off, params, modes, ndim, n_size,
                          model_id, continuous, poisson, x, jac_con, con, lam,
                          step, cost_out, with_error, std_out)


constrained_steps = OverChunks(
    Specialized(_constrained_steps, LITERALS + ("poisson",)), min_chunk=16,
    rows=("x", "jac_con", "con", "lam", "step", "cost_out", "std_out"))
