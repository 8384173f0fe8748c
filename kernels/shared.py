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

Within a cluster a shared parameter is a 'cluster' unknown when it takes one
value per cluster (global, frame) and a 'var' unknown when it takes one value
per feature (particle); ``kernel_modes`` gives that mapping and
``shared_index`` the shared unknown each (feature, parameter) belongs to.
"""
import math

import numba
import numpy as np

from .jit import Specialized, inline_kernel, kernel
from .linalg import cholesky_inplace, cholesky_solve, inverse_diagonal
from .lm import cluster_scratch
from .residuals import (
    cluster_workspace,
    column_table,
    dense_normal,
    evaluate,
    evaluation_buffers,
    layout,
    mode_counts,
    start_values,
)
from .threads import OverChunks

STAGE_SYSTEM = 0
STAGE_STD = 1


@inline_kernel
def _reduce_cluster(c, pix_val, pix_coord, cluster_pix_off, entry_pix,
                    feat_entry_off, cluster_feat_off, params, lower, upper,
                    kernel_modes, shared_index, ndim, n_size, model_id,
                    continuous, dense_limit, stage, shared_off, block_off,
                    index_out, system_out, grad_out, sumsq_out, n_valid_out,
                    n_local_out, sinv_blocks, variance, std_out):
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
                                   dense)
    slot, n_cl, n_var = layout(kernel_modes, arena)
    x, lo, hi = start_values(params, lower, upper, f0, n_feat, kernel_modes, slot,
                       n_cl, n_var, arena)
    cols = column_table(kernel_modes, slot, n_cl, n_var, n_feat, arena)
    work = params[f0:f0 + n_feat].copy()
    deriv = np.empty(n_params)
    dextra = np.empty(max(n_params - 2 - ndim - n_size, 1))
    ws = cluster_workspace(pix_coord, entry_pix, feat_entry_off, f0, n_feat,
                           pix_base, n_pix, n_params, n_unk, dense,
                           pairs, arena)
    b = evaluation_buffers(n_pix, n_entries, n_params, n_cl, n_var, n_feat,
                           n_unk, dense, arena)
    cost = evaluate(x, work, cols, kernel_modes, slot, n_cl, n_var, pix_val,
                    pix_coord, entry_pix, feat_entry_off, f0, pix_base, ndim,
                    n_size, model_id, continuous, True, dense, deriv, dextra,
                    ws, b)
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
    # STAGE_STD: Cov(locals) = A^-1 + W^T Sinv W, scaled by the variance
    diag = np.empty(n_l)
    inverse_diagonal(factor, n_l, diag, np.empty(n_l))
    for a in range(n_l):
        total = diag[a]
        for s in range(n_sh):
            for s2 in range(n_sh):
                total += w[s, a] * sinv_blocks[b0 + s * n_sh + s2] * w[s2, a]
        diag[a] = math.sqrt(variance[c] * total) if total >= 0.0 else math.nan
    col_std = np.full(n_unk, math.nan)
    for a in range(n_l):
        col_std[loc_cols[a]] = diag[a]
    for k in range(n_feat):
        for j in range(n_params):
            if cols[k, j] >= 0 and shared_of[cols[k, j]] < 0:
                std_out[f0 + k, j] = col_std[cols[k, j]]


@kernel(entry=True)
def _reduce_clusters(cluster_ids, pix_val, pix_coord, cluster_pix_off,
                     entry_pix, feat_entry_off, cluster_feat_off, params,
                     lower, upper, kernel_modes, shared_index, ndim, n_size,
                     model_id, continuous, dense_limit, stage, shared_off,
                     block_off, index_out, system_out, grad_out, sumsq_out,
                     n_valid_out, n_local_out, sinv_blocks, variance,
                     std_out):
    """Reduced normal equations of the shared parameters, per cluster.

    Stage 0 (``STAGE_SYSTEM``) writes, for cluster ``c``, the global indices
    of its shared unknowns to ``index_out[shared_off[c]:shared_off[c+1]]``,
    the reduced gradient ``h`` beside them in ``grad_out`` and the reduced
    matrix ``S`` (row-major) to ``system_out[block_off[c]:block_off[c+1]]``,
    with the sum of squares, the number of valid pixels and the number of
    free local unknowns. A cluster that cannot be evaluated keeps index -1,
    zero contributions and a NaN sum of squares.

    Stage 1 (``STAGE_STD``) reads the matching blocks of the inverse of the
    summed shared system from ``sinv_blocks`` and writes the standard errors
    of the local unknowns to ``std_out`` (features x parameters):
    ``sqrt(variance[c] * diag(A^-1 + W^T Sinv W))`` with ``W = A^-1 B``
    (``variance`` holds one residual variance per cluster). Without shared
    unknowns this is the plain ``s^2 A^-1`` of a per-cluster fit.
    """
    numba.literally(ndim)  # specialise: see kernels/jit.py
    numba.literally(n_size)
    numba.literally(model_id)
    numba.literally(continuous)
    for i in range(cluster_ids.shape[0]):
        _reduce_cluster(cluster_ids[i], pix_val, pix_coord, cluster_pix_off,
                        entry_pix, feat_entry_off, cluster_feat_off, params,
                        lower, upper, kernel_modes, shared_index, ndim, n_size,
                        model_id, continuous, dense_limit, stage, shared_off,
                        block_off, index_out, system_out, grad_out, sumsq_out,
                        n_valid_out, n_local_out, sinv_blocks, variance,
                        std_out)


reduce_clusters = OverChunks(Specialized(_reduce_clusters), min_chunk=16)
