"""A cluster's unknowns, residuals and normal equations (shared by solvers).

The unknowns of a cluster are its 'cluster'-mode parameters (one value
each, background among them) followed by the 'var'-mode parameters of each
feature (see :func:`layout`). :func:`evaluate` fills an :data:`Evaluation`:
the model and residuals over the cluster's mask pixels and, on request, the
Jacobian and J^T J, densely or (large clusters) as per-entry derivatives with
the diagonal blocks of J^T J.
"""
import math
from collections import namedtuple

import numpy as np

from .codes import MODE_CLUSTER, MODE_VAR
from .jit import kernel
from .terms import feature_term

# arrays one evaluation fills; the unused path's arrays (dense or sparse)
# get a minimal size
Evaluation = namedtuple("Evaluation", [
    "model",        # model value at each mask pixel
    "excluded",     # pixels where a term is NaN (outside a finite model)
    "resid",        # model - data, 0 where excluded
    "jac_dense",    # dense: J transposed (unknowns x pixels)
    "entry_deriv",  # sparse: derivatives of each feature at its entries
    "jac_cl",       # sparse: derivatives of the cluster unknowns per pixel
    "normal",       # dense: J^T J
    "blocks",       # sparse: diagonal blocks of J^T J, one per feature
    "block_cl",     # sparse: the cluster unknowns' block of J^T J (1 x n x n)
    "grad",         # J^T r
])

@kernel
def layout(modes):
    """Slot of each parameter within the cluster block or a feature block."""
    slot = np.empty(modes.shape[0], dtype=np.int64)
    n_cl = 0
    for j in range(modes.shape[0]):
        slot[j] = -1
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
def column(modes, slot, n_cl, n_var, k, j):
    if modes[j] == MODE_CLUSTER:
        return slot[j]
    if modes[j] == MODE_VAR:
        return n_cl + k * n_var + slot[j]
    return -1

@kernel
def column_table(modes, slot, n_cl, n_var, n_feat):
    """Unknown index of every (feature, parameter); -1 for constants."""
    cols = np.empty((n_feat, modes.shape[0]), dtype=np.int64)
    for k in range(n_feat):
        for j in range(modes.shape[0]):
            cols[k, j] = column(modes, slot, n_cl, n_var, k, j)
    return cols

@kernel
def unpack(x, work, cols):
    for k in range(work.shape[0]):
        for j in range(work.shape[1]):
            if cols[k, j] >= 0:
                work[k, j] = x[cols[k, j]]

@kernel
def start_values(params, lower, upper, f0, n_feat, modes, slot, n_cl, n_var):
    """Start values and bounds of the unknowns of one cluster.

    A 'cluster' unknown starts at the mean over its features and may range
    from the lowest lower bound to the highest upper bound, as in trackpy.
    """
    n_unk = n_cl + n_feat * n_var
    x = np.empty(n_unk)
    lo = np.empty(n_unk)
    hi = np.empty(n_unk)
    for i in range(n_unk):
        x[i] = 0.0
        lo[i] = -np.inf
        hi[i] = np.inf
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
def evaluation_buffers(n_pix, n_entries, n_params, n_cl, n_var, n_feat,
                        n_unk, dense):
    """Arrays one evaluation fills (see :func:`_evaluate`); the unused path's
    arrays get a minimal size."""
    n_dense = n_unk if dense else 1
    return Evaluation(
        model=np.empty(n_pix),
        excluded=np.empty(n_pix, dtype=np.bool_),
        resid=np.empty(n_pix),
        jac_dense=np.empty((n_dense, n_pix if dense else 1)),
        entry_deriv=np.zeros((1 if dense else n_entries, n_params)),
        jac_cl=np.empty((1 if dense else n_pix, 1 if dense else max(n_cl, 1))),
        normal=np.empty((n_dense, n_dense)),
        blocks=np.empty((1 if dense else n_feat, n_var, n_var)),
        block_cl=np.empty((1, n_cl, n_cl)),
        grad=np.empty(n_unk))

@kernel
def evaluate(x, work, cols, modes, slot, n_cl, n_var, pix_val, pix_coord,
              entry_pix, feat_entry_off, f0, pix_base, ndim, n_size,
              model_id, continuous, with_jac, dense, deriv, dextra, buf):
    """Sum of squared residuals at ``x``; with ``with_jac`` also J^T J, J^T r.

    Dense: J is kept transposed (unknowns x pixels) so that J^T J and J^T r
    are contiguous dot products, which vectorise; ``normal`` receives J^T J.
    Sparse: ``entry_deriv`` and ``jac_cl``
    keep J for matrix-vector products, ``blocks``/``block_cl`` the diagonal
    blocks of J^T J. ``buf`` is an :data:`Evaluation` (see
    :func:`evaluation_buffers`); its arrays are filled in place.
    """
    model = buf.model
    excluded = buf.excluded
    resid = buf.resid
    jac_dense = buf.jac_dense
    entry_deriv = buf.entry_deriv
    jac_cl = buf.jac_cl
    normal = buf.normal
    blocks = buf.blocks
    block_cl = buf.block_cl
    grad = buf.grad
    unpack(x, work, cols)
    n_feat = work.shape[0]
    n_params = work.shape[1]
    n_pix = model.shape[0]
    n_unk = grad.shape[0]
    e_base = feat_entry_off[f0]
    # (loops rather than slice assignments: see linalg)
    for q in range(n_pix):
        model[q] = work[0, 0]
        excluded[q] = False
    if with_jac:
        if dense:
            for i in range(jac_dense.shape[0]):
                for q in range(jac_dense.shape[1]):
                    jac_dense[i, q] = 0.0
        else:
            for q in range(jac_cl.shape[0]):
                for i in range(jac_cl.shape[1]):
                    jac_cl[q, i] = 0.0
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
    for i in range(n_unk):
        grad[i] = 0.0
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
    for i in range(n_cl):
        for j in range(n_cl):
            block_cl[0, i, j] = 0.0
    for k in range(blocks.shape[0]):
        for i in range(n_var):
            for j in range(n_var):
                blocks[k, i, j] = 0.0
    for q in range(n_pix):
        if excluded[q]:
            continue
        if bg_col >= 0:
            jac_cl[q, bg_col] = 1.0
        r = resid[q]
        for i in range(n_cl):
            grad[i] += jac_cl[q, i] * r
            for j in range(n_cl):
                block_cl[0, i, j] += jac_cl[q, i] * jac_cl[q, j]
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
def sparse_matvec(v, out, w, modes, slot, n_cl, n_var, entry_pix,
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
    for i in range(out.shape[0]):
        out[i] = 0.0
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
def diag_scale(normal, blocks, block_cl, dense, n_cl, n_var, scale):
    n = scale.shape[0]
    for i in range(n):
        if dense:
            scale[i] = normal[i, i]
        elif i < n_cl:
            scale[i] = block_cl[0, i, i]
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
def dense_normal(n_unk, modes, slot, n_cl, n_var, entry_pix, feat_entry_off,
                  f0, n_feat, pix_base, excluded, entry_deriv, jac_cl, n_pix):
    """J^T J of a sparse-path cluster as a dense matrix, column by column."""
    normal = np.empty((n_unk, n_unk))
    unit = np.empty(n_unk)
    for i in range(n_unk):
        unit[i] = 0.0
    column = np.empty(n_unk)
    scratch = np.empty(n_pix)
    for i in range(n_unk):
        unit[i] = 1.0
        sparse_matvec(unit, column, scratch, modes, slot, n_cl, n_var,
                       entry_pix, feat_entry_off, f0, n_feat, pix_base,
                       excluded, entry_deriv, jac_cl)
        for j in range(n_unk):
            normal[j, i] = column[j]
        unit[i] = 0.0
    return normal
