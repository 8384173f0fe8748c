"""Per-cluster reduced normal equations for parameters shared between
clusters ('global', 'frame', 'particle').

With the shared values fixed, every cluster is an independent least-squares
problem in its local unknowns. Its Gauss-Newton normal equations split into
blocks: ``A`` (local x local), ``B`` (local x shared), ``C`` (shared x
shared) and gradients ``g_l``, ``g_s``. Eliminating the locals gives the
cluster's contribution to the shared system (a Schur complement)::

    S = C - B^T A^-1 B        h = g_s - B^T A^-1 g_l

Summed over clusters, ``S dtheta = -h`` is the Gauss-Newton step of the whole
problem in the shared parameters, with the locals following at their optimum.

The standard errors at the optimum follow the same split (:func:`_pixel_sums`).

Within a cluster a shared parameter is a 'cluster' unknown when it takes one
value per cluster (global, frame) and a 'var' unknown when it takes one value
per feature (particle); ``kernel_modes`` gives that mapping and
``shared_index`` the shared unknown each (feature, parameter) belongs to.
"""
import math

import numba
import numpy as np

from .covariance import MIN_ONE_MINUS_H, fisher_rows, jacobian_rows, row_count
from .jit import LITERALS, Specialized, inline_kernel, kernel
from .linalg import cholesky_inplace, cholesky_solve
from .lm import cluster_scratch
from .residuals import (
    cluster_workspace,
    column_table,
    dense_normal,
    evaluate_work,
    evaluation_buffers,
    layout,
    mode_counts,
    start_values,
    unpack,
)
from .threads import OverChunks

STAGE_SYSTEM = 0
STAGE_STD = 1
STAGE_MEAT = 2


@inline_kernel
def _reduce_cluster(c, pix_val, pix_extra, pix_coord, cluster_pix_off,
                    entry_pix, feat_entry_off, cluster_feat_off, params,
                    lower, upper, kernel_modes, shared_index, ndim, n_size,
                    model_id, continuous, poisson, dense_limit, stage,
                    shared_off, block_off, index_out, system_out, grad_out,
                    sumsq_out, n_valid_out, n_local_out, errors):
    # (the arrays of the errors in one tuple: Python passes thirty
    # arguments or more as one, and Numba inlines no call made that way)
    sinv_blocks, cov_blocks, std_out = errors
    f0 = cluster_feat_off[c]
    n_feat = cluster_feat_off[c + 1] - f0
    pix_base = cluster_pix_off[c]
    n_pix = cluster_pix_off[c + 1] - pix_base
    n_params = kernel_modes.shape[0]
    s0 = shared_off[c]
    n_sh = shared_off[c + 1] - s0
    b0 = block_off[c]
    sumsq_out[c] = math.nan
    n_valid_out[c] = 0
    n_local_out[c] = 0
    for i in range(n_sh):
        index_out[s0 + i] = -1
        grad_out[s0 + i] = 0.0
    for i in range(n_sh * n_sh):
        system_out[b0 + i] = 0.0
    if n_pix == 0:
        return
    for k in range(n_feat):
        if feat_entry_off[f0 + k + 1] == feat_entry_off[f0 + k]:
            return

    n_cl, n_var = mode_counts(kernel_modes)
    n_unk = n_cl + n_feat * n_var
    dense = n_unk <= dense_limit
    n_entries = feat_entry_off[f0 + n_feat] - feat_entry_off[f0]
    pairs, arena = cluster_scratch(entry_pix, feat_entry_off, f0, n_feat,
                                   pix_base, n_pix, kernel_modes, ndim, n_size,
                                   dense, poisson)
    slot, n_cl, n_var = layout(kernel_modes, arena)
    x, lo, hi = start_values(params, lower, upper, f0, n_feat, kernel_modes, slot,
                       n_cl, n_var, arena)
    cols = column_table(kernel_modes, slot, n_cl, n_var, n_feat, arena)
    work = params[f0:f0 + n_feat].copy()
    deriv = np.empty(n_params)
    dextra = np.empty(max(n_params - 2 - ndim - n_size, 1))
    ws = cluster_workspace(pix_coord, entry_pix, feat_entry_off, f0, n_feat,
                           pix_base, n_pix, n_params, n_unk, dense,
                           pairs, poisson, pix_extra, arena)
    b = evaluation_buffers(n_pix, n_entries, n_params, n_cl, n_var, n_feat,
                           n_unk, dense, arena)
    # (under Poisson: the deviance, and the Fisher information as J^T J)
    unpack(x, work, cols)
    cost = evaluate_work(dense, poisson, work, cols, kernel_modes, slot, n_cl,
                         n_var, pix_val, pix_coord, entry_pix, feat_entry_off,
                         f0, pix_base, ndim, n_size, model_id, continuous,
                         True, deriv, dextra, ws, b)
    if not math.isfinite(cost):
        return
    if dense:
        normal = b.normal
    else:
        normal = dense_normal(n_unk, kernel_modes, slot, n_cl, n_var,
                              entry_pix, feat_entry_off, f0, n_feat,
                              pix_base, b.excluded, b.entry_deriv,
                              b.jac_cl, n_pix)
    grad = b.grad

    # shared unknowns of the cluster, in column order, and their indices
    shared_of = np.full(n_unk, -1, dtype=np.int64)
    for k in range(n_feat):
        for j in range(n_params):
            if cols[k, j] >= 0 and shared_index[f0 + k, j] >= 0:
                shared_of[cols[k, j]] = shared_index[f0 + k, j]
    sh_cols = np.empty(n_sh, dtype=np.int64)
    loc_cols = np.empty(n_unk, dtype=np.int64)
    n_s = 0
    n_l = 0
    for i in range(n_unk):
        if shared_of[i] >= 0:
            if n_s < n_sh:
                sh_cols[n_s] = i
            n_s += 1
        elif not ((x[i] <= lo[i] and grad[i] > 0.0)
                  or (x[i] >= hi[i] and grad[i] < 0.0)):
            # locals held at a bound do not respond to the shared values
            loc_cols[n_l] = i
            n_l += 1
    if n_s != n_sh:
        return
    n_valid = 0
    for q in range(n_pix):
        n_valid += 0 if b.excluded[q] else 1

    # A = L L^T over the free locals; W = A^-1 B
    factor = np.empty((n_l, n_l))
    for a in range(n_l):
        for a2 in range(n_l):
            factor[a, a2] = normal[loc_cols[a], loc_cols[a2]]
    if not cholesky_inplace(factor, n_l):
        return
    w = np.empty((n_sh, n_l))
    for s in range(n_sh):
        for a in range(n_l):
            w[s, a] = normal[loc_cols[a], sh_cols[s]]
        cholesky_solve(factor, n_l, w[s])
    if stage == STAGE_SYSTEM:
        local_grad = np.empty(n_l)
        for a in range(n_l):
            local_grad[a] = grad[loc_cols[a]]
        cholesky_solve(factor, n_l, local_grad)
        for s in range(n_sh):
            index_out[s0 + s] = shared_of[sh_cols[s]]
            total = grad[sh_cols[s]]
            for a in range(n_l):
                total -= normal[loc_cols[a], sh_cols[s]] * local_grad[a]
            grad_out[s0 + s] = total
            for s2 in range(n_sh):
                total = normal[sh_cols[s], sh_cols[s2]]
                for a in range(n_l):
                    total -= normal[loc_cols[a], sh_cols[s]] * w[s2, a]
                system_out[b0 + s * n_sh + s2] = total
        sumsq_out[c] = cost
        n_valid_out[c] = n_valid
        n_local_out[c] = n_l
        return
    # STAGE_MEAT and STAGE_STD: the sandwich covariance (see _pixel_sums)
    n_entries = feat_entry_off[f0 + n_feat] - feat_entry_off[f0]
    n_rows = row_count(n_pix, n_entries, n_cl, n_var)
    rows = (np.empty(n_pix), np.empty(n_pix), np.empty(n_pix, np.bool_),
            np.empty(n_pix + 1, np.int64), np.empty(n_pix, np.int64),
            np.empty(n_rows, np.int64), np.empty(n_rows))
    jacobian_rows(work, cols, n_cl, pix_val, pix_coord, entry_pix,
                  feat_entry_off, f0, n_feat, pix_base, n_pix, ndim, n_size,
                  model_id, continuous, deriv, dextra, rows)
    if poisson:
        fisher_rows(rows, ws.extra)
    sinv = np.empty((n_sh, n_sh))
    for s in range(n_sh):
        for s2 in range(n_sh):
            sinv[s, s2] = sinv_blocks[b0 + s * n_sh + s2]
    meat, local_var = _pixel_sums(rows, factor, w, sinv, loc_cols, n_l,
                                  sh_cols, n_sh, n_unk, poisson)
    if stage == STAGE_MEAT:
        for s in range(n_sh):
            index_out[s0 + s] = shared_of[sh_cols[s]]
            for s2 in range(n_sh):
                system_out[b0 + s * n_sh + s2] = meat[s, s2]
        return
    # STAGE_STD: add W Cov(shared) W^T, the shared values' share
    col_std = np.full(n_unk, math.nan)
    for a in range(n_l):
        total = local_var[a]
        for s in range(n_sh):
            for s2 in range(n_sh):
                total += w[s, a] * cov_blocks[b0 + s * n_sh + s2] * w[s2, a]
        col_std[loc_cols[a]] = math.sqrt(total) if total >= 0.0 else math.nan
    for k in range(n_feat):
        for j in range(n_params):
            if cols[k, j] >= 0 and shared_of[cols[k, j]] < 0:
                std_out[f0 + k, j] = col_std[cols[k, j]]


@kernel
def _pixel_sums(rows, factor, w, sinv, loc_cols, n_l, sh_cols, n_sh, n_unk,
                fisher):
    """A cluster's sums over its pixels for the sandwich covariance of the
    whole problem (:mod:`.covariance`), whose inverse ``P`` has the blocks
    ``P_ll = A^-1 + W Sinv W^T``, ``P_ls = -W Sinv``, ``P_ss = Sinv`` (locals
    l, shared s; ``W = A^-1 B``; ``Sinv`` the inverse of the summed reduced
    system). With J_q split into its locals' and shared parts and
    ``z_q = J_q,s - W^T J_q,l`` (pixel q's row of the reduced problem):

    - leverage ``h_q = J_q,l A^-1 J_q,l^T + z_q Sinv z_q^T``, weight
      ``w_q = r_q^2 / (1 - h_q)^2``;
    - ``meat = sum_q w_q z_q^T z_q`` (shared x shared): summed over all
      clusters, ``Cov(shared) = Sinv meat Sinv``;
    - ``local_var[a] = sum_q w_q (t_a^2 - 2 t_a u_a)`` with
      ``t = A^-1 J_q,l^T`` and ``u = W Sinv z_q^T``: a local's variance is
      this plus ``(W Cov(shared) W^T)_aa`` (a pixel of another cluster
      moves a local only through the shared values).

    ``factor`` is A's Cholesky factor, ``w`` holds W^T by rows (n_sh x
    n_l). With ``fisher`` (rows of the Fisher information, see
    :func:`.covariance.fisher_rows`) every weight is 1: the sums then give
    the inverse of the Fisher information, the Cramer-Rao bound."""
    resid, excluded, row_off, row_col, row_val = (rows[1], rows[2], rows[3],
                                                  rows[5], rows[6])
    where = np.full(n_unk, -1, dtype=np.int64)  # local a, or n_l + shared s
    for a in range(n_l):
        where[loc_cols[a]] = a
    for s in range(n_sh):
        where[sh_cols[s]] = n_l + s
    jl = np.empty(n_l)
    t = np.empty(n_l)
    z = np.empty(n_sh)
    sz = np.empty(n_sh)
    meat = np.zeros((n_sh, n_sh))
    local_var = np.zeros(n_l)
    for q in range(resid.shape[0]):
        if excluded[q]:
            continue
        for a in range(n_l):
            jl[a] = 0.0
        for s in range(n_sh):
            z[s] = 0.0
        for e in range(row_off[q], row_off[q + 1]):
            at = where[row_col[e]]
            if 0 <= at < n_l:
                jl[at] += row_val[e]
            elif at >= n_l:
                z[at - n_l] += row_val[e]
        leverage = 0.0
        for a in range(n_l):
            t[a] = jl[a]
        cholesky_solve(factor, n_l, t)
        for a in range(n_l):
            leverage += jl[a] * t[a]
        for s in range(n_sh):
            for a in range(n_l):
                z[s] -= w[s, a] * jl[a]
        for s in range(n_sh):
            total = 0.0
            for s2 in range(n_sh):
                total += sinv[s, s2] * z[s2]
            sz[s] = total
            leverage += z[s] * total
        weight = resid[q] / max(1.0 - leverage, MIN_ONE_MINUS_H)
        weight = 1.0 if fisher else weight * weight
        for s in range(n_sh):
            for s2 in range(n_sh):
                meat[s, s2] += weight * z[s] * z[s2]
        for a in range(n_l):
            u = 0.0
            for s in range(n_sh):
                u += w[s, a] * sz[s]
            local_var[a] += weight * (t[a] * t[a] - 2.0 * t[a] * u)
    return meat, local_var


@kernel(entry=True)
def _reduce_clusters(cluster_ids, pix_val, pix_extra, pix_coord,
                     cluster_pix_off, entry_pix, feat_entry_off,
                     cluster_feat_off, params, lower, upper, kernel_modes,
                     shared_index, ndim, n_size, model_id, continuous,
                     poisson, dense_limit, stage, shared_off, block_off,
                     index_out, system_out, grad_out, sumsq_out, n_valid_out,
                     n_local_out, sinv_blocks, cov_blocks, std_out):
    """Reduced normal equations of the shared parameters, per cluster.

    Stage 0 (``STAGE_SYSTEM``) writes, for cluster ``c``, the global indices
    of its shared unknowns to ``index_out[shared_off[c]:shared_off[c+1]]``,
    the reduced gradient ``h`` beside them in ``grad_out`` and the reduced
    matrix ``S`` (row-major) to ``system_out[block_off[c]:block_off[c+1]]``,
    with the sum of squares, the number of valid pixels and the number of
    free local unknowns. A cluster that cannot be evaluated keeps index -1,
    zero contributions and a NaN sum of squares.

    The standard errors at the optimum are the sandwich covariance of
    :mod:`.covariance` for the whole problem (see :func:`_pixel_sums`), in
    two stages that read the matching blocks of the inverse ``Sinv`` of the
    summed reduced system from ``sinv_blocks``:

    Stage 2 (``STAGE_MEAT``) writes the cluster's share of the meat of the
    shared unknowns' covariance to ``system_out`` (layout and indices as in
    stage 0); summed over clusters, ``Cov(shared) = Sinv meat Sinv``.

    Stage 1 (``STAGE_STD``) reads the blocks of ``Cov(shared)`` from
    ``cov_blocks`` and writes the standard errors of the local unknowns to
    ``std_out`` (features x parameters). Without shared unknowns this is
    the sandwich of a per-cluster fit.

    With ``poisson`` the cost is the Poisson deviance
    of the photons ``pix_val`` (``pix_extra``: expected photons added at
    each pixel, or empty), J^T J the Fisher information, and the errors its
    inverse, the Cramer-Rao bound.
    """
    numba.literally(ndim)  # specialise: see kernels/jit.py
    numba.literally(n_size)
    numba.literally(model_id)
    numba.literally(continuous)
    numba.literally(poisson)
    for i in range(cluster_ids.shape[0]):
        _reduce_cluster(cluster_ids[i], pix_val, pix_extra, pix_coord,
                        cluster_pix_off, entry_pix, feat_entry_off,
                        cluster_feat_off, params, lower, upper, kernel_modes,
                        shared_index, ndim, n_size, model_id, continuous,
                        poisson, dense_limit, stage, shared_off, block_off,
                        index_out, system_out, grad_out, sumsq_out,
                        n_valid_out, n_local_out,
                        (sinv_blocks, cov_blocks, std_out))


reduce_clusters = OverChunks(
    Specialized(_reduce_clusters, LITERALS + ("poisson",)), min_chunk=16)
