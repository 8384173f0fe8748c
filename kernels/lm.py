"""Bounded Levenberg-Marquardt over flattened cluster masks.

One cluster after another, each writing only its own slice of the outputs;
:mod:`.threads` runs chunks of clusters in parallel, so results are
identical for any number of threads. The unknowns
and the normal equations of a cluster are those of :mod:`.residuals`.

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
from numba import types
from numba.extending import overload

from .arena import flags, floats, ints, new_arena, reset
from .codes import (
    BLANK,
    CONVERGED,
    MAX_ITER,
    MODE_CLUSTER,
    MODE_VAR,
    NO_PIXELS,
    NOT_FINITE,
    SINGULAR,
)
from .covariance import (
    dense_sandwich_std,
    fisher_rows,
    inverse_from_factor,
    jacobian_by_unknown,
    jacobian_rows,
    normal_from_rows,
    row_count,
    sandwich_std,
    valid_pixels,
)
from .custom import CUSTOM_BASE
from .jit import (
    LITERALS,
    SERIAL,
    Specialized,
    inline_kernel,
    kernel,
    leaf_kernel,
)
from .linalg import (
    block_cholesky,
    block_cholesky_solve,
    cholesky_inplace,
    cholesky_solve,
    dot,
    inverse_diagonal,
)
from .models import BUILTIN_MODELS
from .residuals import (
    cluster_pairs,
    cluster_workspace,
    column,
    column_table,
    diag_scale,
    evaluate_work,
    evaluation_buffers,
    layout,
    longest_pair,
    mode_counts,
    n_sums,
    no_pairs,
    sparse_matvec,
    start_values,
    unpack,
)
from .threads import OverChunks

_LAMBDA_START = 1e-3
_LAMBDA_MAX = 1e16
_CG_TOL = 1e-10
_MAX_RELATIVE_STEP = 0.5  # signal and sizes change by at most 50% a step
_MAX_RATE = 0.9  # largest linear convergence rate the stop tests allow for
_INLINE = dict(SERIAL, inline="always")


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
    for i in range(step.shape[0]):
        step[i] = 0.0
    for a in range(n_free):
        step[index[a]] = rhs[a]
    return True


@kernel
def _factor_block(blocks, k, at, lam, scale, free, out):
    """Damped diagonal block ``blocks[k]`` (unknowns from ``at``) with fixed
    variables replaced by identity, Cholesky-factored into ``out[k]``."""
    n = blocks.shape[1]
    for i in range(n):
        for j in range(n):
            if free[at + i] and free[at + j]:
                out[k, i, j] = blocks[k, i, j]
            else:
                out[k, i, j] = 0.0
        out[k, i, i] = (out[k, i, i] + lam * scale[at + i] if free[at + i]
                        else 1.0)
    return block_cholesky(out, k, n)


@kernel
def _apply_precond(r, z, fac_cl, fac_blocks, n_cl, n_var, n_feat):
    for i in range(r.shape[0]):
        z[i] = r[i]
    if n_cl > 0:
        block_cholesky_solve(fac_cl, 0, n_cl, z, 0)
    for k in range(n_feat):
        block_cholesky_solve(fac_blocks, k, n_var, z, n_cl + k * n_var)


@kernel
def _solve_sparse(grad, lam, scale, free, modes, slot, n_cl, n_var,
                  entry_pix, feat_entry_off, f0, n_feat, pix_base, excluded,
                  entry_deriv, jac_cl, blocks, block_cl, fac_cl, fac_blocks,
                  pix_scratch, step):
    """Damped step by preconditioned conjugate gradients."""
    n = grad.shape[0]
    if n_cl > 0 and not _factor_block(block_cl, 0, 0, lam, scale, free,
                                      fac_cl):
        return False
    for k in range(n_feat):
        if not _factor_block(blocks, k, n_cl + k * n_var, lam, scale, free,
                             fac_blocks):
            return False
    r = np.empty(n)
    for i in range(n):
        r[i] = -grad[i] if free[i] else 0.0
    z = np.empty(n)
    _apply_precond(r, z, fac_cl, fac_blocks, n_cl, n_var, n_feat)
    p = np.empty(n)
    ap = np.empty(n)
    for i in range(n):
        p[i] = z[i]
        step[i] = 0.0
    rz = dot(r, z)
    r0 = math.sqrt(dot(r, r))
    if r0 == 0.0:
        return True
    for _ in range(4 * n + 10):
        sparse_matvec(p, ap, pix_scratch, modes, slot, n_cl, n_var,
                       entry_pix, feat_entry_off, f0, n_feat, pix_base,
                       excluded, entry_deriv, jac_cl)
        for i in range(n):
            ap[i] = ap[i] + lam * scale[i] * p[i] if free[i] else 0.0
        pap = dot(p, ap)
        if not pap > 0.0:
            return False
        alpha = rz / pap
        for i in range(n):
            step[i] += alpha * p[i]
            r[i] -= alpha * ap[i]
        if math.sqrt(dot(r, r)) <= _CG_TOL * r0:
            break
        _apply_precond(r, z, fac_cl, fac_blocks, n_cl, n_var, n_feat)
        rz_new = dot(r, z)
        beta = rz_new / rz
        for i in range(n):
            p[i] = z[i] + beta * p[i]
        rz = rz_new
    return True


@leaf_kernel
def _value_range(values, start, n):
    """The least and the greatest of ``values[start:start + n]`` (no NaN):
    in four lanes each, so that each comparison does not wait for the one
    before (exact in any order)."""
    lo0 = lo1 = lo2 = lo3 = np.inf
    hi0 = hi1 = hi2 = hi3 = -np.inf
    at = np.uint64(start)
    n_full = np.uint64(n // 4 * 4)
    for i in range(np.uint64(0), n_full, np.uint64(4)):
        v0 = values[at + i]
        v1 = values[at + i + np.uint64(1)]
        v2 = values[at + i + np.uint64(2)]
        v3 = values[at + i + np.uint64(3)]
        lo0 = min(lo0, v0)
        lo1 = min(lo1, v1)
        lo2 = min(lo2, v2)
        lo3 = min(lo3, v3)
        hi0 = max(hi0, v0)
        hi1 = max(hi1, v1)
        hi2 = max(hi2, v2)
        hi3 = max(hi3, v3)
    for i in range(n_full, np.uint64(n)):
        lo0 = min(lo0, values[at + i])
        hi0 = max(hi0, values[at + i])
    return min(min(lo0, lo1), min(lo2, lo3)), max(max(hi0, hi1), max(hi2, hi3))


@inline_kernel
def _relative_steps(modes, slot, n_cl, n_var, n_feat, ndim, n_size, arena):
    """Unknowns whose steps are limited relative to their value: signals and
    sizes."""
    relative = flags(arena, n_cl + n_feat * n_var)
    for i in range(relative.shape[0]):
        relative[i] = False
    for j in range(1, 2 + ndim + n_size):
        if 2 <= j < 2 + ndim:
            continue
        for k in range(n_feat if modes[j] == MODE_VAR else 1):
            col = column(modes, slot, n_cl, n_var, k, j)
            if col >= 0:
                relative[col] = True
    return relative


def solve_cluster(c, pix_val, pix_extra, pix_coord, cluster_pix_off,
                  entry_pix, feat_entry_off, cluster_feat_off, params, lower,
                  upper, modes, ndim, n_size, model_id, continuous, tol,
                  max_eval, dense, poisson, params_out, sumsq_out,
                  deviance_out, status_out, n_eval_out, with_error, std_out,
                  pairs, arena):
    """Refine cluster ``c`` (Levenberg-Marquardt, :func:`_lm_loop`);
    write its parameters, cost and status, and with ``with_error`` the
    standard errors of its fitted parameters. With ``poisson`` it
    maximises the Poisson likelihood of the photons ``pix_val`` (see
    :func:`.residuals._evaluate_poisson`; ``pix_extra`` adds expected
    photons at each pixel, or is empty), writes the deviance to
    ``deviance_out`` (per degree of freedom: valid pixels minus unknowns)
    and the sum of squared residuals still to ``sumsq_out``; its errors
    are the Cramer-Rao bound at the fit.
    ``pairs`` are the cluster's (:func:`.residuals.cluster_pairs`); its
    arrays come from ``arena`` (:mod:`.arena`), from the beginning, sized
    by :func:`cluster_needs`."""
    reset(arena)
    f0 = cluster_feat_off[c]
    n_feat = cluster_feat_off[c + 1] - f0
    pix_base = cluster_pix_off[c]
    n_pix = cluster_pix_off[c + 1] - pix_base
    n_params = modes.shape[0]
    for k in range(n_feat):
        for j in range(n_params):
            params_out[f0 + k, j] = params[f0 + k, j]
            if with_error:
                std_out[f0 + k, j] = math.nan
    sumsq_out[c] = math.nan
    n_eval_out[c] = 0

    for k in range(n_feat):
        if feat_entry_off[f0 + k + 1] == feat_entry_off[f0 + k]:
            status_out[c] = NO_PIXELS
            return
    vmin, vmax = _value_range(pix_val, pix_base, n_pix)
    if not vmax > vmin:
        status_out[c] = BLANK
        return

    # (the counts from a compiled function: through the inlined layout they
    # would reach the kernels below as constants where a cluster has none,
    # and compile them once more)
    n_cl, n_var = mode_counts(modes)
    slot = layout(modes, arena)[0]
    n_unk = n_cl + n_feat * n_var
    x, lo, hi = start_values(params, lower, upper, f0, n_feat, modes, slot,
                             n_cl, n_var, arena)
    relative = _relative_steps(modes, slot, n_cl, n_var, n_feat, ndim,
                               n_size, arena)

    work = floats(arena, (n_feat, n_params))
    for k in range(n_feat):
        for j in range(n_params):
            work[k, j] = params[f0 + k, j]
    deriv = floats(arena, n_params)
    dextra = floats(arena, max(n_params - 2 - ndim - n_size, 1))
    n_dense = n_unk if dense else 1
    n_sparse_f = 1 if dense else n_feat
    ws = cluster_workspace(pix_coord, entry_pix, feat_entry_off, f0, n_feat,
                           pix_base, n_pix, n_params, n_unk, dense, pairs,
                           poisson, pix_extra, arena)
    n_entries = feat_entry_off[f0 + n_feat] - feat_entry_off[f0]
    b0 = evaluation_buffers(n_pix, n_entries, n_params, n_cl, n_var, n_feat,
                            n_unk, dense, arena)
    b1 = evaluation_buffers(n_pix, n_entries, n_params, n_cl, n_var, n_feat,
                            n_unk, dense, arena)
    cols = column_table(modes, slot, n_cl, n_var, n_feat, arena)
    # (a maximum, not a sum: exact in any order)
    tiny = 1e-26 * n_pix * max(vmin * vmin, vmax * vmax)

    free = flags(arena, n_unk)
    scale = floats(arena, n_unk)
    step = floats(arena, n_unk)
    trial = floats(arena, n_unk)
    mat = floats(arena, (n_dense, n_dense))
    rhs = floats(arena, n_dense)
    index = ints(arena, n_dense)
    fac_cl = floats(arena, (1, n_cl, n_cl))
    fac_blocks = floats(arena, (n_sparse_f, n_var, n_var))
    pix_scratch = floats(arena, n_pix)

    cost, status, n_eval, cur = _lm_loop_inline(
        (x, lo, hi, relative), tiny, tol, max_eval, work, cols, modes, slot,
        n_cl, n_var, n_unk, pix_val, pix_coord, entry_pix, feat_entry_off, f0,
        n_feat, pix_base, ndim, n_size, model_id, continuous, dense, poisson,
        ws, b0, b1, (deriv, dextra, free, scale, step, trial, mat, rhs, index, fac_cl,
             fac_blocks, pix_scratch))
    unpack(x, work, cols)
    for k in range(n_feat):
        for j in range(n_params):
            params_out[f0 + k, j] = work[k, j]
    sumsq_out[c] = cost
    if poisson:  # the sum of squares at the fit; deviance per dof
        stats = b0.stats if cur == 0 else b1.stats
        sumsq_out[c] = stats[0]
        dof = stats[1] - n_unk
        deviance_out[c] = cost / dof if dof > 0 else math.nan
    status_out[c] = status if math.isfinite(cost) else NOT_FINITE
    n_eval_out[c] = n_eval
    if with_error and status_out[c] == CONVERGED:
        _standard_errors(dense, poisson, work, cols, modes, slot, n_cl, n_unk,
                         pix_val, pix_coord, entry_pix, feat_entry_off, f0,
                         n_feat, pix_base, n_pix, ndim, n_size, model_id,
                         continuous, deriv, dextra, ws, b1 if cur == 0 else b0,
                         std_out, arena)


# One cluster's solve, compiled twice: without reference counting (see
# jit.leaf_kernel) for the dense path of the built-in models, whose arrays
# all come from the arena (every array taken from an Evaluation or a
# Workspace on its way to the per-pixel kernels would cost two atomic
# updates), and with it where the solve allocates (conjugate gradients,
# custom code). The two are compiled for different literal arguments (dense,
# model id), so that they never share a cache entry.
_solve_one_leaf = leaf_kernel(solve_cluster)
_solve_one_counted = kernel(solve_cluster)


@kernel
def cluster_scratch(entry_pix, feat_entry_off, f0, n_feat, pix_base, n_pix,
                    modes, ndim, n_size, dense, poisson):
    """The pairs of a cluster and an arena with room for what
    :func:`solve_cluster` takes, for kernels that evaluate a cluster outside
    the solver (they take less)."""
    n_cl, n_var = mode_counts(modes)
    n_entries = feat_entry_off[f0 + n_feat] - feat_entry_off[f0]
    pairs = cluster_pairs(entry_pix, feat_entry_off, f0, n_feat, pix_base,
                          n_pix, dense)
    n_f64, n_i64, n_flags = cluster_needs(
        n_pix, n_entries, n_feat, modes.shape[0], n_cl, n_var, ndim, n_size,
        dense, poisson, False, longest_pair(pairs))
    return pairs, new_arena(n_f64, n_i64, n_flags)


@kernel
def cluster_needs(n_pix, n_entries, n_feat, n_params, n_cl, n_var, ndim,
                  n_size, dense, poisson, with_error, longest):
    """Elements :func:`solve_cluster` takes from its arena: (float64, int64,
    bool), in the order it takes them. ``longest`` is the
    :func:`.residuals.longest_pair` of the cluster's pairs."""
    n_unk = n_cl + n_feat * n_var
    n_dense = n_unk if dense else 1
    n_sparse_f = 1 if dense else n_feat
    n_coord = n_entries if dense else 1
    n_rows = n_params if dense else 1
    n_deriv = 1 if dense else n_entries
    n_jac = 1 if dense else n_pix
    n_jac_cl = 1 if dense else max(n_cl, 1)
    n_blocks = 1 if dense else n_feat
    n_f64 = (3 * n_unk                                 # start values, bounds
             + n_feat * n_params + n_params            # work, deriv
             + max(n_params - 2 - ndim - n_size, 1)    # dextra
             # workspace
             + ndim * n_coord + 2 * n_pix + n_rows * n_coord + n_coord
             + 2 * n_params * longest + n_dense * n_dense
             + n_sums(n_params, dense, poisson, n_unk)
             # two evaluations
             + 2 * (n_deriv * n_params + n_jac * n_jac_cl + n_dense * n_dense
                    + n_blocks * n_var * n_var + n_cl * n_cl + n_unk + 2)
             # the steps
             + 3 * n_unk + n_dense * n_dense + n_dense + n_cl * n_cl
             + n_sparse_f * n_var * n_var + n_pix)
    # the workspace's Poisson arrays
    n_f64 += (n_unk + 1) * n_pix if poisson and dense else 1
    n_f64 += 2 * n_pix if poisson else 2
    n_i64 = n_params + n_feat * n_params + n_dense  # slots, columns, index
    n_i64 += n_unk + 1 if poisson and dense else 1  # the workspace's unit_cols
    n_flags = n_unk + 2 * n_pix + n_unk  # relative, excluded x 2, free
    if with_error and dense:  # _standard_errors
        n_f64 += 2 * n_unk * n_pix + 2 * n_unk * n_unk + n_unk + 2 * n_pix
    elif with_error:
        n_rows = row_count(n_pix, n_entries, n_cl, n_var)
        n_f64 += 2 * n_pix + n_rows + 2 * n_unk * n_unk + n_unk + n_unk
        n_i64 += 2 * n_pix + 1 + n_rows
        n_flags += n_pix
    return n_f64, n_i64, n_flags


def _lm_loop(unknowns, tiny, tol, max_eval, work, cols, modes, slot, n_cl,
             n_var, n_unk, pix_val, pix_coord, entry_pix, feat_entry_off, f0,
             n_feat, pix_base, ndim, n_size, model_id, continuous, dense,
             poisson, ws, b0, b1, scratch):
    """The Levenberg-Marquardt iterations of one cluster from ``x`` (updated
    in place; ``unknowns`` is ``(x, lo, hi, relative)``). ``b0`` and ``b1``
    take the evaluations of the current and the trial point, in turn;
    ``scratch`` holds the arrays of the steps. Returns the cost, the status,
    the number of evaluations and which of ``b0``/``b1`` holds the final
    point's evaluation (0 or 1).

    (Fewer than 30 arguments: Python passes more as one tuple, and Numba
    inlines no call made that way.)"""
    x, lo, hi, relative = unknowns
    (deriv, dextra, free, scale, step, trial, mat, rhs, index, fac_cl,
     fac_blocks, pix_scratch) = scratch
    n_eval = 0
    cur = 0
    cost = math.nan
    lam = _LAMBDA_START
    nu = 2.0
    rate = 0.0  # linear convergence rate estimated from the last step
    shrink = 1.0
    predicted = 0.0
    status = MAX_ITER
    n_iter = 0
    while True:
        # One call site evaluates the start, then each trial point: the
        # evaluation is inlined here (inlined at two sites, it made Numba's
        # SSA pass warn of a variable out of scope). The start goes to b0,
        # a trial to the evaluation not holding the current point.
        into = b0 if n_eval == 0 or cur == 1 else b1
        unpack(x if n_eval == 0 else trial, work, cols)
        value = evaluate_work(dense, poisson, work, cols, modes, slot, n_cl,
                              n_var, pix_val, pix_coord, entry_pix,
                              feat_entry_off, f0, pix_base, ndim, n_size,
                              model_id, continuous, True, deriv, dextra, ws,
                              into)
        n_eval += 1
        if n_eval == 1:
            cost = value
        elif value < cost:
            actual = cost - value
            rho = actual / predicted if predicted > 0.0 else 0.0
            old_cost = cost
            cost = value
            for i in range(n_unk):
                x[i] = trial[i]
            cur = 1 - cur
            lam *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
            # a fit whose residuals stay large (a faint feature in noise)
            # converges linearly: each Gauss-Newton step reduces the cost by
            # (1 + rate) times the prediction, the next prediction is about
            # rate^2 of this one, and the cost still to go is about
            # predicted / (1 - rate): the stop tests allow for it
            rate = 0.0
            if shrink == 1.0 and predicted > 0.0:
                rate = min(max(actual / predicted - 1.0, 0.0), _MAX_RATE)
            if (actual <= tol * (1.0 - rate) * old_cost
                    and predicted <= tol * (1.0 - rate) * old_cost):
                status = CONVERGED
                break
        else:
            lam *= nu
            nu *= 2.0
            if lam > _LAMBDA_MAX:
                status = CONVERGED
                break
        # the next trial point: a damped step from x (a step whose system is
        # not positive definite is retried with more damping)
        found = False
        while n_eval < max_eval and n_iter < 4 * max_eval:
            n_iter += 1
            if not math.isfinite(cost):
                status = NOT_FINITE
                break
            if cost <= tiny:
                status = CONVERGED
                break
            b = b0 if cur == 0 else b1
            grad = b.grad
            for i in range(n_unk):
                free[i] = not ((x[i] <= lo[i] and grad[i] > 0.0)
                               or (x[i] >= hi[i] and grad[i] < 0.0))
            diag_scale(b.normal, b.blocks, b.block_cl, dense, n_cl, n_var,
                       scale)
            ok = _damped_step(dense, b, grad, lam, scale, free, mat, rhs,
                              index, step, modes, slot, n_cl, n_var,
                              entry_pix, feat_entry_off, f0, n_feat, pix_base,
                              fac_cl, fac_blocks, pix_scratch)
            if not ok:
                lam *= nu
                nu *= 2.0
                if lam > _LAMBDA_MAX:
                    status = SINGULAR
                    break
                continue
            # far from the optimum the linear model is poor: a Gauss-Newton
            # step may send one signal to zero and another to double, a
            # basin it never leaves; scale the step so signal and size
            # change by <= 50%
            shrink = 1.0
            for i in range(n_unk):
                if relative[i] and x[i] > 0.0:
                    limit = _MAX_RELATIVE_STEP * x[i]
                    if abs(step[i]) > limit:
                        shrink = min(shrink, limit / abs(step[i]))
            if shrink < 1.0:
                for i in range(n_unk):
                    step[i] *= shrink
            # linear-model reduction of the cost for the (possibly shrunk)
            # step
            predicted = 0.0
            for i in range(n_unk):
                predicted += (-(2.0 - shrink) * grad[i] * step[i]
                              + lam * scale[i] * step[i] * step[i])
            if predicted <= tol * (1.0 - rate) * cost and lam < 1.0:
                # the steps to come would change the cost by less than tol
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
            found = True
            break
        if not found:
            break
    return cost, status, n_eval, cur


# inlined into each compiled solve_cluster (_solve_one_leaf and
# _solve_one_counted), whose reference counting it takes: compiled on its
# own, it would be one more level that optimises everything below it again
_lm_loop_inline = inline_kernel(_lm_loop)


def _damped_step(dense, b, grad, lam, scale, free, mat, rhs, index, step,
                 modes, slot, n_cl, n_var, entry_pix, feat_entry_off, f0,
                 n_feat, pix_base, fac_cl, fac_blocks, pix_scratch):
    """The damped step of a dense or a sparse cluster (see the overload)."""
    raise NotImplementedError("callable only from kernels")


@overload(_damped_step, prefer_literal=True, jit_options=_INLINE)
def _damped_step_overload(dense, b, grad, lam, scale, free, mat, rhs, index,
                          step, modes, slot, n_cl, n_var, entry_pix,
                          feat_entry_off, f0, n_feat, pix_base, fac_cl,
                          fac_blocks, pix_scratch):
    # with a literal ``dense`` only one path is compiled: a batch of small
    # clusters never compiles the conjugate gradients
    def dense_step(dense, b, grad, lam, scale, free, mat, rhs, index, step,
                   modes, slot, n_cl, n_var, entry_pix, feat_entry_off, f0,
                   n_feat, pix_base, fac_cl, fac_blocks, pix_scratch):
        return _solve_dense(b.normal, grad, lam, scale, free, mat, rhs, index,
                            step)

    def sparse_step(dense, b, grad, lam, scale, free, mat, rhs, index, step,
                    modes, slot, n_cl, n_var, entry_pix, feat_entry_off, f0,
                    n_feat, pix_base, fac_cl, fac_blocks, pix_scratch):
        return _solve_sparse(grad, lam, scale, free, modes, slot, n_cl, n_var,
                             entry_pix, feat_entry_off, f0, n_feat, pix_base,
                             b.excluded, b.entry_deriv, b.jac_cl, b.blocks,
                             b.block_cl, fac_cl, fac_blocks, pix_scratch, step)

    if not isinstance(dense, types.BooleanLiteral):
        raise TypeError("_damped_step needs a literal 'dense'")
    return dense_step if dense.literal_value else sparse_step


def _standard_errors(dense, poisson, work, cols, modes, slot, n_cl, n_unk,
                     pix_val,
                     pix_coord, entry_pix, feat_entry_off, f0, n_feat,
                     pix_base, n_pix, ndim, n_size, model_id, continuous,
                     deriv, dextra, ws, b, std_out, arena):
    """Standard errors of a converged cluster's fitted parameters (at the
    parameters in ``work``) into ``std_out``: the sandwich covariance of
    :mod:`.covariance` with ``P = (J^T J)^-1``; NaN where J^T J is singular
    or there are no more valid pixels than unknowns. With ``poisson``, the
    Cramer-Rao bound at the fit: the inverse of the Fisher information
    ``sum J^T J / mu``. (See the overload; ``ws`` and ``b`` are
    overwritten.)"""
    raise NotImplementedError("callable only from kernels")


@overload(_standard_errors, prefer_literal=True, jit_options=_INLINE)
def _standard_errors_overload(dense, poisson, work, cols, modes, slot, n_cl,
                              n_unk,
                              pix_val, pix_coord, entry_pix, feat_entry_off,
                              f0, n_feat, pix_base, n_pix, ndim, n_size,
                              model_id, continuous, deriv, dextra, ws, b,
                              std_out, arena):
    # a dense cluster holds J whole, by unknown (every sum over pixels a
    # vectorised loop), from its workspace's derivatives; a sparse one,
    # which may be too large for that, takes J by pixel, compressed
    def dense_errors(dense, poisson, work, cols, modes, slot, n_cl, n_unk,
                     pix_val,
                     pix_coord, entry_pix, feat_entry_off, f0, n_feat,
                     pix_base, n_pix, ndim, n_size, model_id, continuous,
                     deriv, dextra, ws, b, std_out, arena):
        evaluate_work(True, poisson, work, cols, modes, slot, n_cl,
                      (n_unk - n_cl) // n_feat, pix_val, pix_coord,
                      entry_pix, feat_entry_off, f0, pix_base, ndim, n_size,
                      model_id, continuous, poisson, deriv, dextra, ws, b)
        if valid_pixels(b.excluded, n_pix) <= n_unk:
            return
        if poisson:
            factor = floats(arena, (n_unk, n_unk))
            for i in range(n_unk):
                for j in range(n_unk):
                    factor[i, j] = b.normal[i, j]
            if cholesky_inplace(factor, n_unk):
                _write_bound(factor, cols, f0, std_out, arena)
            return
        std = floats(arena, n_unk)
        jac = floats(arena, (n_unk, n_pix))
        jacobian_by_unknown(ws.terms, cols, entry_pix, feat_entry_off, f0,
                            n_feat, pix_base, ws.in_order, b.excluded, jac, 0)
        if dense_sandwich_std(jac, ws.resid, b.excluded,
                              floats(arena, (n_unk, n_unk)),
                              floats(arena, (n_unk, n_unk)),
                              floats(arena, (n_unk, n_pix)),
                              floats(arena, n_pix), floats(arena, n_pix),
                              std):
            _write_std(std, cols, f0, std_out)

    def sparse_errors(dense, poisson, work, cols, modes, slot, n_cl, n_unk,
                      pix_val,
                      pix_coord, entry_pix, feat_entry_off, f0, n_feat,
                      pix_base, n_pix, ndim, n_size, model_id, continuous,
                      deriv, dextra, ws, b, std_out, arena):
        n_entries = feat_entry_off[f0 + n_feat] - feat_entry_off[f0]
        n_var = (n_unk - n_cl) // n_feat
        n_rows = row_count(n_pix, n_entries, n_cl, n_var)
        rows = (floats(arena, n_pix), floats(arena, n_pix),
                flags(arena, n_pix), ints(arena, n_pix + 1),
                ints(arena, n_pix), ints(arena, n_rows),
                floats(arena, n_rows))
        jacobian_rows(work, cols, n_cl, pix_val, pix_coord, entry_pix,
                      feat_entry_off, f0, n_feat, pix_base, n_pix, ndim,
                      n_size, model_id, continuous, deriv, dextra, rows)
        resid, excluded, row_off, row_col, row_val = (rows[1], rows[2],
                                                      rows[3], rows[5],
                                                      rows[6])
        if valid_pixels(excluded, n_pix) <= n_unk:
            return
        if poisson:
            fisher_rows(rows, ws.extra)
        factor = floats(arena, (n_unk, n_unk))
        normal_from_rows(n_unk, excluded, row_off, row_col, row_val, factor)
        if not cholesky_inplace(factor, n_unk):
            return
        if poisson:
            _write_bound(factor, cols, f0, std_out, arena)
            return
        std = floats(arena, n_unk)
        inverse = floats(arena, (n_unk, n_unk))
        inverse_from_factor(factor, n_unk, inverse)
        sandwich_std(inverse, n_unk, resid, excluded, row_off, row_col,
                     row_val, floats(arena, n_unk), std)
        _write_std(std, cols, f0, std_out)

    if not isinstance(dense, types.BooleanLiteral):
        raise TypeError("_standard_errors needs a literal 'dense'")
    return dense_errors if dense.literal_value else sparse_errors


@inline_kernel
def _write_bound(factor, cols, f0, std_out, arena):
    """The Cramer-Rao bound of a Poisson fit, sqrt(diag I^-1), from the
    Cholesky factor of its Fisher information I, into ``std_out``."""
    n_unk = factor.shape[0]
    std = floats(arena, n_unk)
    inverse_diagonal(factor, n_unk, std, floats(arena, n_unk))
    for i in range(n_unk):
        std[i] = math.sqrt(std[i])
    _write_std(std, cols, f0, std_out)


@kernel
def _write_std(std, cols, f0, std_out):
    for k in range(cols.shape[0]):
        for j in range(cols.shape[1]):
            if cols[k, j] >= 0:
                std_out[f0 + k, j] = std[cols[k, j]]


@inline_kernel
def _solve_clusters(cluster_ids, pix_val, pix_extra, pix_coord,
                    cluster_pix_off, entry_pix, feat_entry_off,
                    cluster_feat_off, params, lower, upper, modes, ndim,
                    n_size, model_id, continuous, tol, max_eval, dense,
                    poisson, params_out, sumsq_out, deviance_out, status_out,
                    n_eval_out, with_error, std_out, solve):
    """:func:`solve_clusters` for clusters that are all dense or all sparse
    (``dense``): each by ``solve`` (a compiled :func:`solve_cluster`). The
    clusters' arrays come from one arena, enlarged when a cluster needs
    more; the pairs of a single feature's cluster from one set."""
    n_params = modes.shape[0]
    n_cl, n_var = mode_counts(modes)
    single = no_pairs()
    arena = new_arena(0, 0, 0)
    for i in range(cluster_ids.shape[0]):
        c = cluster_ids[i]
        f0 = cluster_feat_off[c]
        n_feat = cluster_feat_off[c + 1] - f0
        pix_base = cluster_pix_off[c]
        n_pix = cluster_pix_off[c + 1] - pix_base
        n_entries = feat_entry_off[f0 + n_feat] - feat_entry_off[f0]
        pairs = single if n_feat == 1 else cluster_pairs(
            entry_pix, feat_entry_off, f0, n_feat, pix_base, n_pix, dense)
        n_f64, n_i64, n_flags = cluster_needs(
            n_pix, n_entries, n_feat, n_params, n_cl, n_var, ndim, n_size,
            dense, poisson, with_error, longest_pair(pairs))
        if n_f64 > arena.f64.shape[0] or n_i64 > arena.i64.shape[0] \
                or n_flags > arena.flags.shape[0]:
            arena = new_arena(max(2 * n_f64, arena.f64.shape[0]),
                              max(2 * n_i64, arena.i64.shape[0]),
                              max(2 * n_flags, arena.flags.shape[0]))
        solve(c, pix_val, pix_extra, pix_coord, cluster_pix_off, entry_pix,
              feat_entry_off, cluster_feat_off, params, lower, upper, modes,
              ndim, n_size, model_id, continuous, tol, max_eval, dense,
              poisson, params_out, sumsq_out, deviance_out, status_out,
              n_eval_out, with_error, std_out, pairs, arena)
        if arena.used[0] > n_f64 or arena.used[1] > n_i64 \
                or arena.used[2] > n_flags:
            raise AssertionError("solve_cluster took more from its arena "
                                 "than cluster_needs counts")


# Two entry kernels, one per compiled _lm_loop: the choice is made in Python,
# where it costs nothing. Chosen inside a kernel (an overload on the literal
# arguments), it would be one more compiled level, and each level optimises
# and turns into machine code everything below it again. Written out twice
# rather than made by one factory: Numba's cache files a compiled function
# under its source line, and two functions from one line would share them.
@kernel(entry=True)
def _solve_leaf(cluster_ids, pix_val, pix_extra, pix_coord,
                cluster_pix_off, entry_pix, feat_entry_off, cluster_feat_off,
                params, lower, upper, modes, ndim, n_size, model_id,
                continuous, tol, max_eval, dense, poisson, params_out,
                sumsq_out, deviance_out, status_out, n_eval_out, with_error,
                std_out):
    """:func:`_solve_clusters` with :func:`_solve_one_leaf`: the dense path
    of a built-in model. Compiled once for every geometry and built-in
    model: they are run-time values here, and the per-pixel kernels are
    chosen by them (:func:`.terms.model_terms`)."""
    numba.literally(dense)
    numba.literally(poisson)
    _solve_clusters(cluster_ids, pix_val, pix_extra, pix_coord,
                    cluster_pix_off, entry_pix, feat_entry_off,
                    cluster_feat_off, params, lower, upper, modes, ndim,
                    n_size, model_id, continuous, tol, max_eval, dense,
                    poisson, params_out, sumsq_out, deviance_out, status_out,
                    n_eval_out, with_error, std_out, _solve_one_leaf)


@kernel(entry=True)
def _solve_counted(cluster_ids, pix_val, pix_extra, pix_coord,
                   cluster_pix_off, entry_pix, feat_entry_off, cluster_feat_off,
                   params, lower, upper, modes, ndim, n_size, model_id,
                   continuous, tol, max_eval, dense, poisson, params_out,
                   sumsq_out, deviance_out, status_out, n_eval_out, with_error,
                   std_out):
    """:func:`_solve_clusters` with :func:`_solve_one_counted`: custom
    models and the sparse path."""
    numba.literally(ndim)
    numba.literally(n_size)
    numba.literally(model_id)
    numba.literally(continuous)
    numba.literally(dense)
    numba.literally(poisson)
    _solve_clusters(cluster_ids, pix_val, pix_extra, pix_coord,
                    cluster_pix_off, entry_pix, feat_entry_off,
                    cluster_feat_off, params, lower, upper, modes, ndim,
                    n_size, model_id, continuous, tol, max_eval, dense,
                    poisson, params_out, sumsq_out, deviance_out, status_out,
                    n_eval_out, with_error, std_out, _solve_one_counted)


# (_solve_clusters is inlined into both entries)
# (not on with_error: the errors are a branch per cluster, and the
# refinements with and without them share one compiled solver)
_SPECIALISE = LITERALS + ("dense", "poisson")
_solve_leaf_in_parallel = OverChunks(
    Specialized(_solve_leaf, ("dense", "poisson")), min_chunk=16)
_solve_counted_in_parallel = OverChunks(
    Specialized(_solve_counted, _SPECIALISE), min_chunk=16)


def solve_clusters(cluster_ids, pix_val, pix_coord, cluster_pix_off,
                   entry_pix, feat_entry_off, cluster_feat_off, params, lower,
                   upper, modes, ndim, n_size, model_id, continuous, tol,
                   max_eval, dense_limit, params_out, sumsq_out, status_out,
                   n_eval_out, with_error, std_out, poisson=False,
                   pix_extra=None, deviance_out=None):
    """Refine the clusters ``cluster_ids`` of a flattened batch.

    Parameters are read from ``params`` (features x parameters) and written
    to ``params_out``; ``sumsq_out`` receives the final sum of squared
    residuals, ``status_out`` a status code (0 converged), ``n_eval_out`` the
    number of model evaluations. With ``with_error``, ``std_out`` (features x
    parameters) receives the standard error of every fitted parameter
    (the sandwich covariance of :mod:`.covariance` at the optimum), NaN
    for constants and failed fits. Clusters with more than ``dense_limit``
    unknowns take the sparse path (see the module docstring); each path is
    compiled when a batch first needs it.

    With ``poisson``, the fit maximises the Poisson likelihood of photon
    counts ``pix_val`` (``pix_extra``: expected photons added at each
    pixel, optional); ``deviance_out`` receives each cluster's deviance and
    ``std_out`` the Cramer-Rao bound.
    """
    if model_id < CUSTOM_BASE and model_id not in BUILTIN_MODELS:
        # (the dense solver takes any other id for the last built-in)
        raise ValueError(f"model_id {model_id} is neither a built-in model "
                         "nor a compiled custom one")
    n_cl = int(np.count_nonzero(modes == MODE_CLUSTER))
    n_var = int(np.count_nonzero(modes == MODE_VAR))
    n_feat = cluster_feat_off[cluster_ids + 1] - cluster_feat_off[cluster_ids]
    dense = n_cl + n_feat * n_var <= dense_limit
    poisson = bool(poisson)
    if pix_extra is None:
        pix_extra = pix_val[:0]
    if deviance_out is None:
        deviance_out = sumsq_out[:0]
    with_error = bool(with_error)
    for path, ids in ((True, cluster_ids[dense]), (False, cluster_ids[~dense])):
        if len(ids):
            solve = _solve_leaf_in_parallel if path and model_id < CUSTOM_BASE \
                else _solve_counted_in_parallel
            solve(
                np.ascontiguousarray(ids), pix_val, pix_extra, pix_coord,
                cluster_pix_off, entry_pix, feat_entry_off, cluster_feat_off,
                params, lower, upper, modes, ndim, n_size, model_id,
                continuous, tol, max_eval, path, poisson, params_out,
                sumsq_out, deviance_out, status_out, n_eval_out, with_error,
                std_out)
