"""Bounded Levenberg-Marquardt over flattened cluster masks.

One cluster per ``prange`` iteration, each writing only its own slice of the
outputs, so results are identical for any number of threads. The unknowns of
a cluster are its 'cluster'-mode parameters (one value each, background
among them) followed by the 'var'-mode parameters of each feature.

Small clusters solve the damped normal equations densely (Cholesky). Large
clusters (more than ``dense_limit`` unknowns) never form J^T J: conjugate
gradients run on J^T (J v) with a block-Jacobi preconditioner (one block per
feature plus the cluster block), which follows the sparsity of overlapping
masks: each feature couples only to its neighbours.

Bounds: variables at a bound whose gradient points outwards are held fixed
for the step; trial points are clipped to the box. Signals and sizes change
by at most 50% per step: far from the optimum a Gauss-Newton step can send
one feature's signal to its floor, where its position gradient vanishes.
"""
import math

import numba
import numpy as np
from numba import prange

from .codes import (
    BLANK,
    CONVERGED,
    MAX_ITER,
    MODE_CLUSTER,
    MODE_VAR,
    NO_PIXELS,
    NOT_FINITE,
)
from .jit import Specialized, kernel, parallel_kernel
from .linalg import cholesky_inplace, cholesky_solve, inverse_diagonal
from .terms import feature_term

_LAMBDA_START = 1e-3
_LAMBDA_MAX = 1e16
_CG_TOL = 1e-10
_MAX_RELATIVE_STEP = 0.5  # signal and sizes change by at most 50% a step


@kernel
def _layout(modes):
    """Slot of each parameter within the cluster block or a feature block."""
    slot = np.full(modes.shape[0], -1, dtype=np.int64)
    n_cl = 0
    for j in range(modes.shape[0]):
        if modes[j] == MODE_CLUSTER:
            slot[j] = n_cl
            n_cl += 1
    n_var = 0
    for j in range(modes.shape[0]):
        if modes[j] == MODE_VAR:
            slot[j] = n_var
            n_var += 1
    return slot, n_cl, n_var


@kernel
def _column(modes, slot, n_cl, n_var, k, j):
    if modes[j] == MODE_CLUSTER:
        return slot[j]
    if modes[j] == MODE_VAR:
        return n_cl + k * n_var + slot[j]
    return -1


@kernel
def _column_table(modes, slot, n_cl, n_var, n_feat):
    """Unknown index of every (feature, parameter); -1 for constants."""
    cols = np.empty((n_feat, modes.shape[0]), dtype=np.int64)
    for k in range(n_feat):
        for j in range(modes.shape[0]):
            cols[k, j] = _column(modes, slot, n_cl, n_var, k, j)
    return cols


@kernel
def _unpack(x, work, cols):
    for k in range(work.shape[0]):
        for j in range(work.shape[1]):
            if cols[k, j] >= 0:
                work[k, j] = x[cols[k, j]]


@kernel
def _evaluate(x, work, cols, modes, slot, n_cl, n_var, pix_val, pix_coord,
              entry_pix, feat_entry_off, f0, pix_base, ndim, n_size,
              model_id, continuous, with_jac, dense, deriv, dextra,
              model, excluded, resid, jac_dense, entry_deriv, jac_cl,
              normal, blocks, block_cl, grad):
    """Sum of squared residuals at ``x``; with ``with_jac`` also J^T J, J^T r.

    Dense: J is kept transposed (unknowns x pixels) so that J^T J and J^T r
    are contiguous dot products, which vectorise; ``normal`` receives J^T J.
    Sparse: ``entry_deriv`` and ``jac_cl``
    keep J for matrix-vector products, ``blocks``/``block_cl`` the diagonal
    blocks of J^T J.
    """
    _unpack(x, work, cols)
    n_feat = work.shape[0]
    n_params = work.shape[1]
    n_pix = model.shape[0]
    n_unk = grad.shape[0]
    e_base = feat_entry_off[f0]
    model[:] = work[0, 0]
    excluded[:] = False
    if with_jac:
        if dense:
            jac_dense[:, :] = 0.0
        else:
            jac_cl[:, :] = 0.0
    for k in range(n_feat):
        feat = f0 + k
        for e in range(feat_entry_off[feat], feat_entry_off[feat + 1]):
            q = entry_pix[e] - pix_base
            value = feature_term(pix_coord, entry_pix[e], work, k, ndim,
                                 n_size, model_id, continuous, deriv, dextra)
            if math.isnan(value):
                excluded[q] = True
                continue
            model[q] += value
            if not with_jac:
                continue
            if dense:
                for j in range(1, n_params):
                    if cols[k, j] >= 0:
                        jac_dense[cols[k, j], q] += deriv[j]
            else:
                for j in range(1, n_params):
                    entry_deriv[e - e_base, j] = deriv[j]
                    if modes[j] == MODE_CLUSTER:
                        jac_cl[q, slot[j]] += deriv[j]
    for q in range(n_pix):
        resid[q] = 0.0 if excluded[q] else model[q] - pix_val[pix_base + q]
    # summed over the kernel's own array: a vectorised sum over pix_val
    # would start at an alignment that depends on the cluster's place in
    # the batch, and its last bit on how the movie was chunked
    cost = 0.0
    for q in range(n_pix):
        cost += resid[q] * resid[q]
    if not with_jac:
        return cost
    bg_col = cols[0, 0]
    grad[:] = 0.0
    if dense:
        for q in range(n_pix):
            if excluded[q]:
                for i in range(n_unk):
                    jac_dense[i, q] = 0.0
            elif bg_col >= 0:
                jac_dense[bg_col, q] = 1.0
        for i in range(n_unk):
            acc = 0.0
            for q in range(n_pix):
                acc += jac_dense[i, q] * resid[q]
            grad[i] = acc
            for j in range(i, n_unk):
                acc = 0.0
                for q in range(n_pix):
                    acc += jac_dense[i, q] * jac_dense[j, q]
                normal[i, j] = acc
                normal[j, i] = acc
        return cost
    block_cl[:, :] = 0.0
    blocks[:, :, :] = 0.0
    for q in range(n_pix):
        if excluded[q]:
            continue
        if bg_col >= 0:
            jac_cl[q, bg_col] = 1.0
        r = resid[q]
        for i in range(n_cl):
            grad[i] += jac_cl[q, i] * r
            for j in range(n_cl):
                block_cl[i, j] += jac_cl[q, i] * jac_cl[q, j]
    for k in range(n_feat):
        feat = f0 + k
        at = n_cl + k * n_var
        for e in range(feat_entry_off[feat], feat_entry_off[feat + 1]):
            q = entry_pix[e] - pix_base
            if excluded[q]:
                continue
            ee = e - e_base
            r = resid[q]
            for j in range(1, n_params):
                if modes[j] != MODE_VAR:
                    continue
                grad[at + slot[j]] += entry_deriv[ee, j] * r
                for j2 in range(1, n_params):
                    if modes[j2] == MODE_VAR:
                        blocks[k, slot[j], slot[j2]] += (entry_deriv[ee, j]
                                                         * entry_deriv[ee, j2])
    return cost


@kernel
def _sparse_matvec(v, out, w, modes, slot, n_cl, n_var, entry_pix,
                   feat_entry_off, f0, n_feat, pix_base, excluded,
                   entry_deriv, jac_cl):
    """out = J^T (J v) using the per-entry derivatives."""
    n_params = modes.shape[0]
    e_base = feat_entry_off[f0]
    for q in range(w.shape[0]):
        s = 0.0
        if not excluded[q]:
            for i in range(n_cl):
                s += jac_cl[q, i] * v[i]
        w[q] = s
    for k in range(n_feat):
        at = n_cl + k * n_var
        for e in range(feat_entry_off[f0 + k], feat_entry_off[f0 + k + 1]):
            q = entry_pix[e] - pix_base
            if excluded[q]:
                continue
            s = 0.0
            for j in range(1, n_params):
                if modes[j] == MODE_VAR:
                    s += entry_deriv[e - e_base, j] * v[at + slot[j]]
            w[q] += s
    out[:] = 0.0
    for q in range(w.shape[0]):
        if excluded[q]:
            continue
        for i in range(n_cl):
            out[i] += jac_cl[q, i] * w[q]
    for k in range(n_feat):
        at = n_cl + k * n_var
        for e in range(feat_entry_off[f0 + k], feat_entry_off[f0 + k + 1]):
            q = entry_pix[e] - pix_base
            if excluded[q]:
                continue
            for j in range(1, n_params):
                if modes[j] == MODE_VAR:
                    out[at + slot[j]] += entry_deriv[e - e_base, j] * w[q]


@kernel
def _solve_dense(normal, grad, lam, scale, free, mat, rhs, index, step):
    """Damped step on the free variables; False when not positive definite."""
    n_free = 0
    for i in range(grad.shape[0]):
        if free[i]:
            index[n_free] = i
            n_free += 1
    for a in range(n_free):
        for b in range(n_free):
            mat[a, b] = normal[index[a], index[b]]
        mat[a, a] += lam * scale[index[a]]
        rhs[a] = -grad[index[a]]
    if not cholesky_inplace(mat, n_free):
        return False
    cholesky_solve(mat, n_free, rhs)
    step[:] = 0.0
    for a in range(n_free):
        step[index[a]] = rhs[a]
    return True


@kernel
def _factor_block(block, at, lam, scale, free, out):
    """Damped diagonal block with fixed variables replaced by identity."""
    n = block.shape[0]
    for i in range(n):
        for j in range(n):
            if free[at + i] and free[at + j]:
                out[i, j] = block[i, j]
            else:
                out[i, j] = 0.0
        out[i, i] = out[i, i] + lam * scale[at + i] if free[at + i] else 1.0
    return cholesky_inplace(out, n)


@kernel
def _apply_precond(r, z, fac_cl, fac_blocks, n_cl, n_var, n_feat):
    z[:] = r
    if n_cl > 0:
        cholesky_solve(fac_cl, n_cl, z[:n_cl])
    for k in range(n_feat):
        at = n_cl + k * n_var
        cholesky_solve(fac_blocks[k], n_var, z[at:at + n_var])


@kernel
def _solve_sparse(grad, lam, scale, free, modes, slot, n_cl, n_var,
                  entry_pix, feat_entry_off, f0, n_feat, pix_base, excluded,
                  entry_deriv, jac_cl, blocks, block_cl, fac_cl, fac_blocks,
                  pix_scratch, step):
    """Damped step by preconditioned conjugate gradients."""
    n = grad.shape[0]
    if n_cl > 0 and not _factor_block(block_cl, 0, lam, scale, free, fac_cl):
        return False
    for k in range(n_feat):
        if not _factor_block(blocks[k], n_cl + k * n_var, lam, scale, free,
                             fac_blocks[k]):
            return False
    r = np.empty(n)
    for i in range(n):
        r[i] = -grad[i] if free[i] else 0.0
    z = np.empty(n)
    _apply_precond(r, z, fac_cl, fac_blocks, n_cl, n_var, n_feat)
    p = z.copy()
    ap = np.empty(n)
    step[:] = 0.0
    rz = np.dot(r, z)
    r0 = math.sqrt(np.dot(r, r))
    if r0 == 0.0:
        return True
    for _ in range(4 * n + 10):
        _sparse_matvec(p, ap, pix_scratch, modes, slot, n_cl, n_var,
                       entry_pix, feat_entry_off, f0, n_feat, pix_base,
                       excluded, entry_deriv, jac_cl)
        for i in range(n):
            ap[i] = ap[i] + lam * scale[i] * p[i] if free[i] else 0.0
        pap = np.dot(p, ap)
        if not pap > 0.0:
            return False
        alpha = rz / pap
        step += alpha * p
        r -= alpha * ap
        if math.sqrt(np.dot(r, r)) <= _CG_TOL * r0:
            break
        _apply_precond(r, z, fac_cl, fac_blocks, n_cl, n_var, n_feat)
        rz_new = np.dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return True


@kernel
def _diag_scale(normal, blocks, block_cl, dense, n_cl, n_var, scale):
    n = scale.shape[0]
    for i in range(n):
        if dense:
            scale[i] = normal[i, i]
        elif i < n_cl:
            scale[i] = block_cl[i, i]
        else:
            k = (i - n_cl) // n_var
            s = (i - n_cl) - k * n_var
            scale[i] = blocks[k, s, s]
    top = 0.0
    for i in range(n):
        top = max(top, scale[i])
    floor = 1e-12 * top if top > 0.0 else 1.0
    for i in range(n):
        scale[i] = max(scale[i], floor)


@kernel
def _dense_normal(n_unk, modes, slot, n_cl, n_var, entry_pix, feat_entry_off,
                  f0, n_feat, pix_base, excluded, entry_deriv, jac_cl, n_pix):
    """J^T J of a sparse-path cluster as a dense matrix, column by column."""
    normal = np.empty((n_unk, n_unk))
    unit = np.zeros(n_unk)
    column = np.empty(n_unk)
    scratch = np.empty(n_pix)
    for i in range(n_unk):
        unit[i] = 1.0
        _sparse_matvec(unit, column, scratch, modes, slot, n_cl, n_var,
                       entry_pix, feat_entry_off, f0, n_feat, pix_base,
                       excluded, entry_deriv, jac_cl)
        normal[:, i] = column
        unit[i] = 0.0
    return normal


@kernel
def _unknown_std(normal, variance, std):
    """sqrt(variance * diag(normal^-1)); NaN when normal is singular."""
    n = std.shape[0]
    factor = normal[:n, :n].copy()
    if not cholesky_inplace(factor, n):
        std[:] = math.nan
        return
    inverse_diagonal(factor, n, std)
    for i in range(n):
        std[i] = math.sqrt(variance * std[i])


@kernel
def _start(params, lower, upper, f0, n_feat, modes, slot, n_cl, n_var):
    """Start values and bounds of the unknowns of one cluster.

    A 'cluster' unknown starts at the mean over its features and may range
    from the lowest lower bound to the highest upper bound, as in trackpy.
    """
    n_unk = n_cl + n_feat * n_var
    x = np.zeros(n_unk)
    lo = np.full(n_unk, -np.inf)
    hi = np.full(n_unk, np.inf)
    for j in range(modes.shape[0]):
        if modes[j] == MODE_CLUSTER:
            col = slot[j]
            total = 0.0
            lo[col] = lower[f0, j]
            hi[col] = upper[f0, j]
            for k in range(n_feat):
                total += params[f0 + k, j]
                lo[col] = min(lo[col], lower[f0 + k, j])
                hi[col] = max(hi[col], upper[f0 + k, j])
            x[col] = total / n_feat
        elif modes[j] == MODE_VAR:
            for k in range(n_feat):
                col = n_cl + k * n_var + slot[j]
                x[col] = params[f0 + k, j]
                lo[col] = lower[f0 + k, j]
                hi[col] = upper[f0 + k, j]
    for i in range(n_unk):
        x[i] = min(max(x[i], lo[i]), hi[i])
    return x, lo, hi


@kernel
def _relative_steps(modes, slot, n_cl, n_var, n_feat, ndim, n_size):
    """Unknowns whose steps are limited relative to their value: signals and
    sizes."""
    relative = np.zeros(n_cl + n_feat * n_var, dtype=np.bool_)
    for j in range(1, 2 + ndim + n_size):
        if 2 <= j < 2 + ndim:
            continue
        for k in range(n_feat if modes[j] == MODE_VAR else 1):
            col = _column(modes, slot, n_cl, n_var, k, j)
            if col >= 0:
                relative[col] = True
    return relative


@kernel
def _evaluation_buffers(n_pix, n_entries, n_params, n_cl, n_var, n_feat,
                        n_unk, dense):
    """Arrays one evaluation fills (see :func:`_evaluate`); the unused path's
    arrays get a minimal size."""
    n_dense = n_unk if dense else 1
    return (np.empty(n_pix), np.empty(n_pix, dtype=np.bool_),
            np.empty(n_pix), np.empty((n_dense, n_pix if dense else 1)),
            np.zeros((1 if dense else n_entries, n_params)),
            np.empty((1 if dense else n_pix, 1 if dense else max(n_cl, 1))),
            np.empty((n_dense, n_dense)),
            np.empty((1 if dense else n_feat, n_var, n_var)),
            np.empty((n_cl, n_cl)), np.empty(n_unk))


@kernel
def solve_cluster(c, pix_val, pix_coord, cluster_pix_off, entry_pix,
                  feat_entry_off, cluster_feat_off, params, lower, upper,
                  modes, ndim, n_size, model_id, continuous, tol, max_eval,
                  dense_limit, params_out, sumsq_out, status_out, n_eval_out,
                  with_error, std_out):
    """Refine cluster ``c``; write its parameters, cost and status, and with
    ``with_error`` the standard errors of its fitted parameters."""
    f0 = cluster_feat_off[c]
    n_feat = cluster_feat_off[c + 1] - f0
    pix_base = cluster_pix_off[c]
    n_pix = cluster_pix_off[c + 1] - pix_base
    n_params = modes.shape[0]
    e_base = feat_entry_off[f0]
    n_entries = feat_entry_off[f0 + n_feat] - e_base
    for k in range(n_feat):
        params_out[f0 + k] = params[f0 + k]
        if with_error:
            std_out[f0 + k] = math.nan
    sumsq_out[c] = math.nan
    n_eval_out[c] = 0

    for k in range(n_feat):
        if feat_entry_off[f0 + k + 1] == feat_entry_off[f0 + k]:
            status_out[c] = NO_PIXELS
            return
    vmin = np.inf
    vmax = -np.inf
    for q in range(pix_base, pix_base + n_pix):
        vmin = min(vmin, pix_val[q])
        vmax = max(vmax, pix_val[q])
    if not vmax > vmin:
        status_out[c] = BLANK
        return

    slot, n_cl, n_var = _layout(modes)
    n_unk = n_cl + n_feat * n_var
    dense = n_unk <= dense_limit
    x, lo, hi = _start(params, lower, upper, f0, n_feat, modes, slot, n_cl,
                       n_var)
    relative = _relative_steps(modes, slot, n_cl, n_var, n_feat, ndim,
                               n_size)

    work = params[f0:f0 + n_feat].copy()
    deriv = np.empty(n_params)
    dextra = np.empty(max(n_params - 2 - ndim - n_size, 1))
    n_dense = n_unk if dense else 1
    n_sparse_f = 1 if dense else n_feat
    bufs = [_evaluation_buffers(n_pix, n_entries, n_params, n_cl, n_var,
                                n_feat, n_unk, dense) for _ in range(2)]
    cur = 0
    b = bufs[cur]
    cols = _column_table(modes, slot, n_cl, n_var, n_feat)
    cost = _evaluate(x, work, cols, modes, slot, n_cl, n_var, pix_val,
                     pix_coord, entry_pix, feat_entry_off, f0, pix_base, ndim,
                     n_size, model_id, continuous, True, dense, deriv, dextra,
                     b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8],
                     b[9])
    n_eval = 1
    # (a maximum, not a sum: exact in any order)
    tiny = 1e-26 * n_pix * max(vmin * vmin, vmax * vmax)

    free = np.empty(n_unk, dtype=np.bool_)
    scale = np.empty(n_unk)
    step = np.empty(n_unk)
    trial = np.empty(n_unk)
    mat = np.empty((n_dense, n_dense))
    rhs = np.empty(n_dense)
    index = np.empty(n_dense, dtype=np.int64)
    fac_cl = np.empty((n_cl, n_cl))
    fac_blocks = np.empty((n_sparse_f, n_var, n_var))
    pix_scratch = np.empty(n_pix)

    lam = _LAMBDA_START
    nu = 2.0
    status = MAX_ITER
    n_iter = 0
    while n_eval < max_eval and n_iter < 4 * max_eval:
        n_iter += 1
        if not math.isfinite(cost):
            status = NOT_FINITE
            break
        if cost <= tiny:
            status = CONVERGED
            break
        b = bufs[cur]
        grad = b[9]
        for i in range(n_unk):
            free[i] = not ((x[i] <= lo[i] and grad[i] > 0.0)
                           or (x[i] >= hi[i] and grad[i] < 0.0))
        _diag_scale(b[6], b[7], b[8], dense, n_cl, n_var, scale)
        if dense:
            ok = _solve_dense(b[6], grad, lam, scale, free, mat, rhs, index,
                              step)
        else:
            ok = _solve_sparse(grad, lam, scale, free, modes, slot, n_cl,
                               n_var, entry_pix, feat_entry_off, f0, n_feat,
                               pix_base, b[1], b[4], b[5], b[7], b[8],
                               fac_cl, fac_blocks, pix_scratch, step)
        if not ok:
            lam *= nu
            nu *= 2.0
            if lam > _LAMBDA_MAX:
                status = CONVERGED
                break
            continue
        # far from the optimum the linear model is poor: a Gauss-Newton step
        # may send one signal to zero and another to double, a basin it
        # never leaves; scale the step so signal and size change by <= 50%
        shrink = 1.0
        for i in range(n_unk):
            if relative[i] and x[i] > 0.0:
                limit = _MAX_RELATIVE_STEP * x[i]
                if abs(step[i]) > limit:
                    shrink = min(shrink, limit / abs(step[i]))
        if shrink < 1.0:
            for i in range(n_unk):
                step[i] *= shrink
        # linear-model reduction of the cost for the (possibly shrunk) step
        predicted = 0.0
        for i in range(n_unk):
            predicted += (-(2.0 - shrink) * grad[i] * step[i]
                          + lam * scale[i] * step[i] * step[i])
        if predicted <= tol * cost and lam < 1.0:
            # the next step would change the cost by less than tol: done
            status = CONVERGED
            break
        step_norm = 0.0
        x_norm = 0.0
        for i in range(n_unk):
            trial[i] = min(max(x[i] + step[i], lo[i]), hi[i])
            step_norm += (trial[i] - x[i]) ** 2
            x_norm += x[i] * x[i]
        if math.sqrt(step_norm) <= 1e-12 * (math.sqrt(x_norm) + 1e-12):
            status = CONVERGED
            break
        nb = bufs[1 - cur]
        trial_cost = _evaluate(
                trial, work, cols, modes, slot, n_cl, n_var, pix_val, pix_coord,
            entry_pix, feat_entry_off, f0, pix_base, ndim, n_size, model_id,
            continuous, True, dense, deriv, dextra,
            nb[0], nb[1], nb[2], nb[3], nb[4], nb[5], nb[6], nb[7], nb[8],
            nb[9])
        n_eval += 1
        if trial_cost < cost:
            actual = cost - trial_cost
            rho = actual / predicted if predicted > 0.0 else 0.0
            old_cost = cost
            cost = trial_cost
            x[:] = trial
            cur = 1 - cur
            lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
            if actual <= tol * old_cost and predicted <= tol * old_cost:
                status = CONVERGED
                break
        else:
            lam *= nu
            nu *= 2.0
            if lam > _LAMBDA_MAX:
                status = CONVERGED
                break
    _unpack(x, work, cols)
    for k in range(n_feat):
        params_out[f0 + k] = work[k]
    sumsq_out[c] = cost
    status_out[c] = status if math.isfinite(cost) else NOT_FINITE
    n_eval_out[c] = n_eval
    if with_error and status_out[c] == CONVERGED:
        b = bufs[cur]
        n_valid = 0
        for q in range(n_pix):
            n_valid += 0 if b[1][q] else 1
        if n_valid > n_unk:
            # covariance s^2 (J^T J)^-1 with s^2 the residual variance
            if dense:
                normal = b[6]
            else:
                normal = _dense_normal(n_unk, modes, slot, n_cl, n_var,
                                       entry_pix, feat_entry_off, f0, n_feat,
                                       pix_base, b[1], b[4], b[5], n_pix)
            unknown_std = np.empty(n_unk)
            _unknown_std(normal, cost / (n_valid - n_unk), unknown_std)
            for k in range(n_feat):
                for j in range(n_params):
                    if cols[k, j] >= 0:
                        std_out[f0 + k, j] = unknown_std[cols[k, j]]


@parallel_kernel
def _solve_clusters(cluster_ids, pix_val, pix_coord, cluster_pix_off,
                   entry_pix, feat_entry_off, cluster_feat_off, params, lower,
                   upper, modes, ndim, n_size, model_id, continuous, tol,
                   max_eval, dense_limit, params_out, sumsq_out, status_out,
                   n_eval_out, with_error, std_out):
    """Refine the clusters ``cluster_ids`` of a flattened batch in parallel.

    Parameters are read from ``params`` (features x parameters) and written
    to ``params_out``; ``sumsq_out`` receives the final sum of squared
    residuals, ``status_out`` a status code (0 converged), ``n_eval_out`` the
    number of model evaluations. With ``with_error``, ``std_out`` (features x
    parameters) receives the standard error of every fitted parameter
    (``s^2 (J^T J)^-1`` at the optimum, ``s^2`` the residual variance), NaN
    for constants and failed fits.
    """
    numba.literally(ndim)  # specialise: see kernels/_jit.py
    numba.literally(n_size)
    numba.literally(model_id)
    numba.literally(continuous)
    for i in prange(cluster_ids.shape[0]):
        solve_cluster(cluster_ids[i], pix_val, pix_coord, cluster_pix_off,
                      entry_pix, feat_entry_off, cluster_feat_off, params,
                      lower, upper, modes, ndim, n_size, model_id, continuous,
                      tol, max_eval, dense_limit, params_out, sumsq_out,
                      status_out, n_eval_out, with_error, std_out)


solve_clusters = Specialized(_solve_clusters, literal_at=(11, 12, 13, 14))
