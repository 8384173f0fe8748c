"""A cluster's unknowns, residuals and normal equations (shared by solvers).

The unknowns of a cluster are its 'cluster'-mode parameters (one value
each, background among them) followed by the 'var'-mode parameters of each
feature (see :func:`layout`). :func:`evaluate` fills an :data:`Evaluation`:
the model and residuals over the cluster's mask pixels (in the cluster's
:data:`Workspace`) and, on request, the
Jacobian and J^T J: J^T J whole (small clusters) or (large clusters) J as
per-entry derivatives with the diagonal blocks of J^T J.
"""
import math
from collections import namedtuple

import numpy as np
from numba import types
from numba.extending import overload

from . import vlog
from .arena import flags, floats, ints
from .codes import MODE_CLUSTER, MODE_VAR
from .covariance import jacobian_by_unknown
from .jit import SERIAL, inline_kernel, kernel, leaf_kernel
from .sums import cross_products, dot, n_products, products, total
from .terms import feature_term, model_terms

# arrays of a cluster that do not depend on the point evaluated: its
# geometry, and scratch space any evaluation overwrites
Workspace = namedtuple("Workspace", [
    "model",        # model value at each mask pixel
    "resid",        # model - data, 0 where excluded
    "entry_coord",  # dense: coordinates of each entry's pixel (ndim x n)
    "terms",        # dense: per entry (columns), its term (row 0) and the
                    # term's derivatives by parameter (rows 1..)
    "entry_resid",  # dense: the residual at each entry's pixel
    "pair_feat",    # dense: pairs of features whose masks share pixels (p x 2)
    "pair_off",     # dense: CSR offsets of each pair's shared pixels into
    "pair_entry",   # dense: the two features' entries there (2 x m)
    "pair_terms",   # dense: derivatives of a pair at those pixels
    "cross",        # dense: J^T J between features
    "sums",         # dense: a feature's products (_feature_products), or
                    # a pair's (_pair_products)
    "in_order",     # dense: one feature whose entries are the pixels in
                    # order (entry i at pixel i: no scatter, no gather)
    "jac",          # dense Poisson: J by unknown, weighted (row 1 + i: unknown i,
                    # as ``terms``; 1 + unknowns x pixels)
    "unit_cols",    # dense Poisson: row j of ``jac`` is unknown j - 1 (1 x rows),
                    # as ``column_table`` for _feature_products
    "weight",       # Poisson: 1 / expected photons at each pixel (row 0),
                    # scratch (row 1; sparse: the weighted residuals)
    "extra",        # Poisson: expected photons added at each pixel (the
                    # read noise's variance), or empty
])

# derivatives (rows of ``Workspace.terms`` after the term) up to which a
# feature's products take one pass (:func:`_feature_products`)
FUSED_ROWS = 8
# and up to which a pair's take one pass (:func:`_pair_products`): n^2 sums,
# each in a vector register, and no more than ``Workspace.sums`` holds
# (n_products(n) >= n^2 up to 4)
FUSED_CROSS_ROWS = 4

# what an evaluation leaves for the solver at its point (a solver keeps two:
# the accepted point's, and a trial's)
Evaluation = namedtuple("Evaluation", [
    "excluded",     # pixels where a term is NaN (outside a finite model)
    "entry_deriv",  # sparse: derivatives of each feature at its entries
    "jac_cl",       # sparse: derivatives of the cluster unknowns per pixel
    "normal",       # dense: J^T J
    "blocks",       # sparse: diagonal blocks of J^T J, one per feature
    "block_cl",     # sparse: the cluster unknowns' block of J^T J (1 x n x n)
    "grad",         # J^T r
    "stats",        # Poisson: the sum of squared residuals and the number
                    # of valid pixels at the point
])

@inline_kernel
def layout(modes, arena):
    """Slot of each parameter within the cluster block or a feature block
    (arrays here and below from ``arena``: see :mod:`.arena`)."""
    slot = ints(arena, modes.shape[0])
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
def mode_counts(modes):
    """The numbers of 'cluster' and of 'var' parameters (as :func:`layout`
    counts them, without its slots)."""
    n_cl = 0
    n_var = 0
    for j in range(modes.shape[0]):
        n_cl += 1 if modes[j] == MODE_CLUSTER else 0
        n_var += 1 if modes[j] == MODE_VAR else 0
    return n_cl, n_var

@kernel
def column(modes, slot, n_cl, n_var, k, j):
    if modes[j] == MODE_CLUSTER:
        return slot[j]
    if modes[j] == MODE_VAR:
        return n_cl + k * n_var + slot[j]
    return -1

@inline_kernel
def column_table(modes, slot, n_cl, n_var, n_feat, arena):
    """Unknown index of every (feature, parameter); -1 for constants."""
    cols = ints(arena, (n_feat, modes.shape[0]))
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

@inline_kernel
def start_values(params, lower, upper, f0, n_feat, modes, slot, n_cl, n_var,
                 arena):
    """Start values and bounds of the unknowns of one cluster.

    A 'cluster' unknown starts at the mean over its features and may range
    from the lowest lower bound to the highest upper bound, as in trackpy.
    """
    n_unk = n_cl + n_feat * n_var
    x = floats(arena, n_unk)
    lo = floats(arena, n_unk)
    hi = floats(arena, n_unk)
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

@inline_kernel
def cluster_workspace(pix_coord, entry_pix, feat_entry_off, f0, n_feat,
                      pix_base, n_pix, n_params, n_unk, dense, pairs, poisson,
                      pix_extra, arena):
    """The :data:`Workspace` of a cluster: for the dense path its entries'
    coordinates and the pixels that several features' masks share
    (``pairs``, from :func:`cluster_pairs`), which couple those features in
    J^T J; scratch arrays sized for it. With ``poisson``, J's rows and the
    pixels' weights, and the cluster's part of ``pix_extra`` (all pixels'
    extra expected photons, or empty)."""
    e0 = feat_entry_off[f0]
    n_entries = feat_entry_off[f0 + n_feat] - e0
    n_coord = n_entries if dense else 1
    n_dim = pix_coord.shape[1]
    entry_coord = floats(arena, (n_dim, n_coord))
    # (unsigned indices: no negative-index wraparound per access; no early
    # exit from the test, which then vectorises)
    at = np.uint64(e0)
    in_order = dense and n_feat == 1 and n_entries == n_pix
    if in_order:
        n_apart = 0
        for el in range(np.uint64(n_entries)):
            n_apart += entry_pix[at + el] - pix_base != np.int64(el)
        in_order = n_apart == 0
    if in_order:  # the pixels' coordinates, transposed
        base = np.uint64(pix_base)
        if n_dim == 2:  # (a known row length: LLVM vectorises it)
            for el in range(np.uint64(n_entries)):
                entry_coord[0, el] = pix_coord[base + el, 0]
                entry_coord[1, el] = pix_coord[base + el, 1]
        else:
            for d in range(np.uint64(n_dim)):
                for el in range(np.uint64(n_entries)):
                    entry_coord[d, el] = pix_coord[base + el, d]
    elif dense:
        for d in range(np.uint64(n_dim)):
            for el in range(np.uint64(n_entries)):
                entry_coord[d, el] = pix_coord[np.uint64(entry_pix[at + el]),
                                               d]
    longest = longest_pair(pairs)
    # (sizes and views set here: conditional expressions among the
    # namedtuple's keyword arguments stop Numba's bytecode analysis)
    jac = floats(arena, (n_unk + 1, n_pix) if poisson and dense else (1, 1))
    unit_cols = _unit_cols(n_unk if poisson and dense else 0, arena)
    weight = floats(arena, (2, n_pix) if poisson else (2, 1))
    extra = pix_extra[pix_base:pix_base + n_pix] if pix_extra.shape[0] \
        else pix_extra
    n_rows = n_params if dense else 1
    n_dense = n_unk if dense else 1
    return Workspace(
        model=floats(arena, n_pix),
        resid=floats(arena, n_pix),
        entry_coord=entry_coord,
        terms=floats(arena, (n_rows, n_coord)),
        entry_resid=floats(arena, n_coord),
        pair_feat=pairs[0],
        pair_off=pairs[1],
        pair_entry=pairs[2],
        pair_terms=floats(arena, (2, n_params, longest)),
        cross=floats(arena, (n_dense, n_dense)),
        sums=floats(arena, n_sums(n_params, dense, poisson, n_unk)),
        in_order=in_order,
        jac=jac,
        unit_cols=unit_cols,
        weight=weight,
        extra=extra)


@kernel
def n_sums(n_params, dense, poisson, n_unk):
    """Length of :data:`Workspace` ``sums`` (under ``poisson``, room for a
    cluster's whole J^T J in one pass, up to :data:`FUSED_ROWS` unknowns)."""
    if poisson:
        return n_products(max(n_params - 1, min(n_unk, FUSED_ROWS)))
    return n_products(n_params - 1) if dense else 1


@inline_kernel
def _unit_cols(n_unk, arena):
    """Row j of a J held as ``terms`` is unknown j - 1 (see Workspace)."""
    cols = ints(arena, (1, n_unk + 1))
    for j in range(n_unk + 1):
        cols[0, j] = j - 1
    return cols


@inline_kernel
def evaluation_buffers(n_pix, n_entries, n_params, n_cl, n_var, n_feat,
                       n_unk, dense, arena):
    """Arrays one evaluation leaves (see :func:`evaluate`); the unused
    path's arrays get a minimal size."""
    n_dense = n_unk if dense else 1
    n_deriv = 1 if dense else n_entries
    entry_deriv = floats(arena, (n_deriv, n_params))
    for e in range(n_deriv):
        for j in range(n_params):
            entry_deriv[e, j] = 0.0
    n_jac = 1 if dense else n_pix
    n_jac_cl = 1 if dense else max(n_cl, 1)
    n_blocks = 1 if dense else n_feat
    return Evaluation(
        excluded=flags(arena, n_pix),
        entry_deriv=entry_deriv,
        jac_cl=floats(arena, (n_jac, n_jac_cl)),
        normal=floats(arena, (n_dense, n_dense)),
        blocks=floats(arena, (n_blocks, n_var, n_var)),
        block_cl=floats(arena, (1, n_cl, n_cl)),
        grad=floats(arena, n_unk),
        stats=floats(arena, 2))


@kernel
def cluster_pairs(entry_pix, feat_entry_off, f0, n_feat, pix_base, n_pix,
                  dense):
    """The pairs of features of a cluster whose masks share pixels, for
    :func:`cluster_workspace`: :func:`_feature_pairs` on the dense path,
    none on the sparse path (which does not use them)."""
    if dense and n_feat > 1:
        return _feature_pairs(entry_pix, feat_entry_off, f0, n_feat, pix_base,
                              n_pix)
    return no_pairs()


@kernel
def no_pairs():
    """:func:`_feature_pairs` of a single feature."""
    return (np.empty((0, 2), dtype=np.int64), np.zeros(1, dtype=np.int64),
            np.empty((2, 0), dtype=np.int64))


@kernel
def longest_pair(pairs):
    """The most shared pixels of any pair of ``pairs``."""
    pair_off = pairs[1]
    longest = 0
    for i in range(pair_off.shape[0] - 1):
        longest = max(longest, pair_off[i + 1] - pair_off[i])
    return longest


@kernel
def _two_feature_pairs(entry_pix, e0, n_first, n_entries, pix_base):
    """:func:`_feature_pairs` of two features, the most common cluster,
    without its linked lists, where the first mask's pixels are the
    cluster's first pixels in order (as the masks number them: entry ``i``
    at pixel ``i``). The second mask's entries at those pixels pair with
    the first's there. Returns a ``pair_off`` of ``[-1]`` if the first mask
    is not in order."""
    for i in range(n_first):
        if entry_pix[e0 + i] - pix_base != i:
            return (np.empty((0, 2), dtype=np.int64),
                    np.full(1, -1, dtype=np.int64),
                    np.empty((2, 0), dtype=np.int64))
    m = 0
    for el in range(n_first, n_entries):
        m += entry_pix[e0 + el] - pix_base < n_first
    if m == 0:
        return (np.empty((0, 2), dtype=np.int64), np.zeros(1, dtype=np.int64),
                np.empty((2, 0), dtype=np.int64))
    pair_feat = np.zeros((1, 2), dtype=np.int64)
    pair_feat[0, 1] = 1
    pair_off = np.zeros(2, dtype=np.int64)
    pair_off[1] = m
    pair_entry = np.empty((2, m), dtype=np.int64)
    at = 0
    for el in range(n_first, n_entries):
        q = entry_pix[e0 + el] - pix_base
        if q < n_first:
            pair_entry[0, at] = q
            pair_entry[1, at] = el
            at += 1
    return pair_feat, pair_off, pair_entry


@kernel
def _feature_pairs(entry_pix, feat_entry_off, f0, n_feat, pix_base, n_pix):
    """The pairs of features (k < k') whose masks share pixels, and for each
    the entries of both at those pixels (counted from the cluster's first
    entry), grouped by pair (CSR)."""
    if n_feat == 1:
        return (np.empty((0, 2), dtype=np.int64), np.zeros(1, dtype=np.int64),
                np.empty((2, 0), dtype=np.int64))
    if n_feat == 2:
        e0 = feat_entry_off[f0]
        pairs = _two_feature_pairs(entry_pix, e0, feat_entry_off[f0 + 1] - e0,
                                   feat_entry_off[f0 + 2] - e0, pix_base)
        if pairs[1][0] == 0:  # (else the first mask's pixels are not 0, 1..)
            return pairs
    return _linked_pairs(entry_pix, feat_entry_off, f0, n_feat, pix_base,
                         n_pix)


@kernel
def _linked_pairs(entry_pix, feat_entry_off, f0, n_feat, pix_base, n_pix):
    """:func:`_feature_pairs` of any cluster, from linked lists of the
    entries at each pixel."""
    e0 = feat_entry_off[f0]
    n_entries = feat_entry_off[f0 + n_feat] - e0
    # (loops rather than np.full: see linalg)
    feat_of = np.empty(n_entries, dtype=np.int64)
    for k in range(n_feat):
        for e in range(feat_entry_off[f0 + k], feat_entry_off[f0 + k + 1]):
            feat_of[e - e0] = k
    # the entries at each pixel, as linked lists (latest first)
    first = np.empty(n_pix, dtype=np.int64)
    for q in range(n_pix):
        first[q] = -1
    later = np.empty(n_entries, dtype=np.int64)
    for el in range(n_entries):
        q = entry_pix[e0 + el] - pix_base
        later[el] = first[q]
        first[q] = el
    # every entry pairs with each earlier entry at its pixel (a pixel in
    # three masks counts once for each of its three pairs)
    pair_of = np.empty(n_feat * n_feat, dtype=np.int64)
    for i in range(n_feat * n_feat):
        pair_of[i] = -1
    count = np.zeros(n_feat * n_feat, dtype=np.int64)
    n_pairs = 0
    for el in range(n_entries):
        other = later[el]
        while other >= 0:
            i = feat_of[other] * n_feat + feat_of[el]
            if pair_of[i] < 0:
                pair_of[i] = n_pairs
                n_pairs += 1
            count[pair_of[i]] += 1
            other = later[other]
    pair_feat = np.empty((n_pairs, 2), dtype=np.int64)
    pair_off = np.zeros(n_pairs + 1, dtype=np.int64)
    for i in range(n_feat * n_feat):
        if pair_of[i] >= 0:
            pair_feat[pair_of[i], 0] = i // n_feat
            pair_feat[pair_of[i], 1] = i % n_feat
    for p in range(n_pairs):
        pair_off[p + 1] = pair_off[p] + count[pair_of[pair_feat[p, 0] * n_feat
                                                      + pair_feat[p, 1]]]
    at = np.empty(n_pairs, dtype=np.int64)
    for p in range(n_pairs):
        at[p] = pair_off[p]
    pair_entry = np.empty((2, pair_off[n_pairs]), dtype=np.int64)
    for el in range(n_entries):
        other = later[el]
        while other >= 0:
            p = pair_of[feat_of[other] * n_feat + feat_of[el]]
            pair_entry[0, at[p]] = other
            pair_entry[1, at[p]] = el
            at[p] += 1
            other = later[other]
    return pair_feat, pair_off, pair_entry


@kernel
def evaluate(x, work, cols, modes, slot, n_cl, n_var, pix_val, pix_coord,
             entry_pix, feat_entry_off, f0, pix_base, ndim, n_size,
             model_id, continuous, with_jac, dense, deriv, dextra, ws, buf):
    """Sum of squared residuals at ``x``; with ``with_jac`` also J^T J, J^T r.

    ``ws`` is the cluster's :data:`Workspace` (:func:`cluster_workspace`),
    ``buf`` an :data:`Evaluation` (:func:`evaluation_buffers`) whose arrays
    are filled in place. Dense: ``normal`` receives J^T J (see
    :func:`_evaluate_dense`). Sparse: ``entry_deriv`` and ``jac_cl`` keep J
    for matrix-vector products, ``blocks``/``block_cl`` the diagonal blocks
    of J^T J.
    """
    unpack(x, work, cols)
    return evaluate_work(dense, False, work, cols, modes, slot, n_cl, n_var,
                         pix_val, pix_coord, entry_pix, feat_entry_off, f0,
                         pix_base, ndim, n_size, model_id, continuous,
                         with_jac, deriv, dextra, ws, buf)


def evaluate_work(dense, poisson, work, cols, modes, slot, n_cl, n_var,
                  pix_val, pix_coord, entry_pix, feat_entry_off, f0, pix_base,
                  ndim, n_size, model_id, continuous, with_jac, deriv, dextra,
                  ws, buf):
    """:func:`evaluate` at the parameters already in ``work``:
    :func:`_evaluate_dense` or :func:`_evaluate_sparse` (see the overload),
    or with ``poisson`` (dense only) :func:`_evaluate_poisson`,
    inlined where it is called (the solver's loop calls it once, and passing
    its arrays to a call cost as much as a small cluster's arithmetic)."""
    raise NotImplementedError("callable only from kernels")


@overload(evaluate_work, prefer_literal=True, inline="always",
          jit_options=SERIAL)
def _evaluate_work_overload(dense, poisson, work, cols, modes, slot, n_cl,
                            n_var, pix_val, pix_coord, entry_pix,
                            feat_entry_off, f0, pix_base, ndim, n_size,
                            model_id, continuous, with_jac, deriv, dextra, ws,
                            buf):
    # with a literal ``dense`` (the solver's entry kernel specialises on it)
    # only that path is compiled; ``poisson`` is literal wherever it is true
    by_likelihood = (isinstance(poisson, types.BooleanLiteral)
                     and poisson.literal_value)
    small = _evaluate_poisson if by_likelihood else _evaluate_dense

    def dense_path(dense, poisson, work, cols, modes, slot, n_cl, n_var,
                   pix_val, pix_coord, entry_pix, feat_entry_off, f0, pix_base,
                   ndim, n_size, model_id, continuous, with_jac, deriv, dextra,
                   ws, buf):
        return small(work, cols, pix_val, entry_pix, feat_entry_off, f0,
                     pix_base, ndim, n_size, model_id, continuous, with_jac,
                     dextra, ws, buf)

    def sparse_path(dense, poisson, work, cols, modes, slot, n_cl, n_var,
                    pix_val, pix_coord, entry_pix, feat_entry_off, f0,
                    pix_base, ndim, n_size, model_id, continuous, with_jac,
                    deriv, dextra, ws, buf):
        return _evaluate_sparse(work, cols, modes, slot, n_cl, n_var,
                                pix_val, pix_coord, entry_pix, feat_entry_off,
                                f0, pix_base, ndim, n_size, model_id,
                                continuous, by_likelihood, with_jac, deriv,
                                dextra, ws, buf)

    def either_path(dense, poisson, work, cols, modes, slot, n_cl, n_var,
                    pix_val, pix_coord, entry_pix, feat_entry_off, f0,
                    pix_base, ndim, n_size, model_id, continuous, with_jac,
                    deriv, dextra, ws, buf):
        if dense:
            return small(work, cols, pix_val, entry_pix, feat_entry_off, f0,
                         pix_base, ndim, n_size, model_id, continuous,
                         with_jac, dextra, ws, buf)
        return _evaluate_sparse(work, cols, modes, slot, n_cl, n_var,
                                pix_val, pix_coord, entry_pix, feat_entry_off,
                                f0, pix_base, ndim, n_size, model_id,
                                continuous, by_likelihood, with_jac, deriv,
                                dextra, ws, buf)

    if isinstance(dense, types.BooleanLiteral):
        return dense_path if dense.literal_value else sparse_path
    return either_path


@inline_kernel
def _evaluate_dense(work, cols, pix_val, entry_pix, feat_entry_off, f0,
                    pix_base, ndim, n_size, model_id, continuous, with_jac,
                    dextra, ws, buf):
    """Model, residuals and cost of a dense cluster; J^T J and J^T r.

    A feature's terms and derivatives are computed for all its entries at
    once (:func:`feature_terms`). J^T J then follows the masks: a pixel that
    one mask holds adds to the feature's own block (one pass over the
    feature's entries), and only pixels that several masks share add
    products between features. Background enters once per pixel, with
    derivative 1. Each per-pixel loop is a small kernel of its own: inlined
    into this one, LLVM no longer vectorised them.
    """
    terms = ws.terms
    n_feat = work.shape[0]
    e0 = feat_entry_off[f0]
    cost, any_excluded = _terms_and_model(work, pix_val, entry_pix,
                                          feat_entry_off, f0, pix_base, ndim,
                                          n_size, model_id, continuous,
                                          dextra, ws, buf)
    if not with_jac:
        return cost
    normal = buf.normal
    grad = buf.grad
    bg = cols[0, 0]
    _start_normal(terms, ws.resid, buf.excluded, entry_pix, e0, pix_base,
                  any_excluded, ws.in_order, bg, ws.entry_resid, normal, grad)
    entry_resid = ws.resid if ws.in_order else ws.entry_resid
    for k in range(n_feat):
        _feature_products(terms, entry_resid,
                          feat_entry_off[f0 + k] - e0,
                          feat_entry_off[f0 + k + 1] - e0, cols, k, bg,
                          normal, grad, ws.sums)
    if ws.pair_feat.shape[0] > 0:
        _pair_products(terms, ws.pair_feat, ws.pair_off, ws.pair_entry,
                       ws.pair_terms, cols, ws.cross, normal, ws.sums)
    _mirror(normal)
    return cost


@inline_kernel
def _terms_and_model(work, pix_val, entry_pix, feat_entry_off, f0, pix_base,
                     ndim, n_size, model_id, continuous, dextra, ws, buf):
    """Every feature's terms and derivatives into ``ws.terms``, the model
    and residuals at the cluster's pixels (:func:`_model_and_cost`): the
    sum of squared residuals and whether a pixel is excluded."""
    e0 = feat_entry_off[f0]
    for k in range(work.shape[0]):
        model_terms(ws.entry_coord, feat_entry_off[f0 + k] - e0,
                    feat_entry_off[f0 + k + 1] - e0, work, k, ndim, n_size,
                    model_id, continuous, ws.terms, dextra)
    return _model_and_cost(ws.terms, work[0, 0], pix_val, entry_pix, e0,
                           pix_base, ws.in_order, ws.model, buf.excluded,
                           ws.resid)


@inline_kernel
def _evaluate_poisson(work, cols, pix_val, entry_pix, feat_entry_off, f0,
                      pix_base, ndim, n_size, model_id, continuous, with_jac,
                      dextra, ws, buf):
    """:func:`_evaluate_dense` for Poisson maximum likelihood: returns the
    deviance ``2 sum(mu - n - n log(mu / n))`` of the expected photons
    ``mu`` (the model, plus ``ws.extra``) against the photons ``n``; with
    ``with_jac``, into ``buf`` the Fisher information ``sum J^T J / mu``
    (as ``normal``) and ``sum J^T (mu - n) / mu`` (as ``grad``): with the
    deviance as the cost they are what J^T J and J^T r are to a sum of
    squares (Laurence & Chromy, Nat. Methods 7:338, 2010). The deviance is
    infinite where ``mu`` is not positive at a pixel: no step goes there.
    """
    terms = ws.terms
    n_feat = work.shape[0]
    _terms_and_model(work, pix_val, entry_pix, feat_entry_off, f0, pix_base,
                     ndim, n_size, model_id, continuous, dextra, ws, buf)
    deviance = _deviance(ws.model, ws.extra, pix_val, pix_base, buf.excluded,
                         ws.resid, ws.weight, buf.stats)
    if not with_jac or not math.isfinite(deviance):
        return deviance
    # weighted least squares in one pass: rows J_i sqrt(w), residuals
    # r sqrt(w), all sums of J^T W J and J^T W r as a feature's
    jac = ws.jac
    jacobian_by_unknown(terms, cols, entry_pix, feat_entry_off, f0, n_feat,
                        pix_base, ws.in_order, buf.excluded, jac, 1)
    _weigh(jac, ws.weight, ws.resid)
    normal = buf.normal
    grad = buf.grad
    for i in range(grad.shape[0]):
        grad[i] = 0.0
        for j in range(grad.shape[0]):
            normal[i, j] = 0.0
    _feature_products(jac, ws.weight[1], 0, jac.shape[1], ws.unit_cols, 0,
                      -1, normal, grad, ws.sums)
    _mirror(normal)
    return deviance


@leaf_kernel
def _deviance(model, extra, pix_val, pix_base, excluded, resid, weight,
              stats):
    """The Poisson deviance over a cluster's valid pixels (see
    :func:`_evaluate_poisson`); ``resid`` receives mu - n, ``weight[0]``
    1 / mu, ``weight[1]`` each pixel's term (all 0 at excluded pixels),
    ``stats`` the sum of squared residuals and the valid pixels. Infinite
    if mu <= 0 at a valid pixel."""
    n_pix = np.uint64(model.shape[0])
    base = np.uint64(pix_base)
    mu = weight[0]
    if extra.shape[0] > 0:
        for q in range(n_pix):
            mu[q] = model[q] + extra[q]
    else:
        for q in range(n_pix):
            mu[q] = model[q]
    # (no branch in the loop, and none around the logarithm: it vectorises,
    # with the logarithm's vector version)
    n_bad = 0
    n_valid = 0
    for q in range(n_pix):
        m = mu[q]
        n = pix_val[base + q]
        valid = not excluded[q]
        n_valid += 1 if valid else 0
        n_bad += 1 if valid and not m > 0.0 else 0
        ratio = m / n if n > 0.0 else 1.0
        term = m - n - n * vlog.log(ratio)
        resid[q] = m - n if valid else 0.0
        weight[1, q] = 2.0 * term if valid else 0.0
        mu[q] = 1.0 / m if valid else 0.0
    stats[0] = dot(resid, resid, 0, n_pix)
    stats[1] = n_valid
    if n_bad > 0:
        return math.inf
    return total(weight[1], 0, n_pix)


@leaf_kernel
def _weigh(jac, weight, resid):
    """Rows 1.. of ``jac`` times ``sqrt(weight[0])``; ``weight[1]`` the
    residuals times it."""
    n_pix = jac.shape[1]
    for q in range(n_pix):
        weight[1, q] = math.sqrt(weight[0, q])
    for i in range(1, jac.shape[0]):
        for q in range(n_pix):
            jac[i, q] *= weight[1, q]
    for q in range(n_pix):
        weight[1, q] *= resid[q]


@leaf_kernel
def _model_and_cost(terms, background, pix_val, entry_pix, e0, pix_base,
                    in_order, model, excluded, resid):
    """Sum the entries' terms (row 0 of ``terms``) into the model at their
    pixels; residuals and their sum of squares. A NaN term excludes its
    pixel. Returns the cost and whether any pixel is excluded.

    Indices are unsigned (as in :func:`.terms.feature_terms`: a signed one
    costs Numba's negative-index wraparound per access). Without NaN terms
    (always, for a continuous model) the residuals take one vectorised
    loop, and with ``in_order`` (see :data:`Workspace`) the model too; the
    model's sums are the same in every case.
    """
    n_pix = np.uint64(model.shape[0])
    n_entries = np.uint64(terms.shape[1])
    base = np.uint64(pix_base)
    at = np.uint64(e0)
    any_excluded = False
    for el in range(n_entries):
        any_excluded |= math.isnan(terms[0, el])
    for q in range(n_pix):
        excluded[q] = False
    if not any_excluded:
        if in_order:
            for q in range(n_pix):
                model[q] = background + terms[0, q]
        else:
            for q in range(n_pix):
                model[q] = background
            for el in range(n_entries):
                model[np.uint64(entry_pix[at + el]) - base] += terms[0, el]
        for q in range(n_pix):
            resid[q] = model[q] - pix_val[base + q]
        return dot(resid, resid, 0, n_pix), False
    for q in range(n_pix):
        model[q] = background
    for el in range(n_entries):
        q = np.uint64(entry_pix[at + el]) - base
        value = terms[0, el]
        if math.isnan(value):
            excluded[q] = True
        else:
            model[q] += value
    for q in range(n_pix):
        resid[q] = 0.0 if excluded[q] else model[q] - pix_val[base + q]
    return dot(resid, resid, 0, n_pix), True


@leaf_kernel
def _start_normal(terms, resid, excluded, entry_pix, e0, pix_base,
                  any_excluded, in_order, bg, entry_resid, normal, grad):
    """Each entry's residual (but ``in_order``: ``resid`` itself);
    derivatives at excluded pixels set to 0 (they add nothing to J);
    ``normal`` and ``grad`` zeroed but for the background's own terms."""
    n_entries = np.uint64(terms.shape[1])
    base = np.uint64(pix_base)
    at = np.uint64(e0)
    if not in_order:
        for el in range(n_entries):
            entry_resid[el] = resid[np.uint64(entry_pix[at + el]) - base]
    if any_excluded:
        for el in range(n_entries):
            if excluded[np.uint64(entry_pix[at + el]) - base]:
                for j in range(1, terms.shape[0]):
                    terms[j, el] = 0.0
    n_unk = grad.shape[0]
    for i in range(n_unk):
        grad[i] = 0.0
        for j in range(n_unk):
            normal[i, j] = 0.0
    if bg >= 0:
        n_valid = resid.shape[0]
        if any_excluded:
            for q in range(resid.shape[0]):
                n_valid -= 1 if excluded[q] else 0
        grad[bg] = total(resid, 0, resid.shape[0])
        normal[bg, bg] = n_valid


@leaf_kernel
def _feature_products(terms, entry_resid, start, end, cols, k, bg, normal,
                      grad, sums):
    """Add the products of feature ``k``'s derivatives over its own entries
    (columns ``start..end`` of ``terms``) to ``grad`` and the upper
    triangle of ``normal``, and their sums to the background's row.

    Up to :data:`FUSED_ROWS` derivatives, all the sums come from one pass
    (:func:`.sums.products`, into ``sums``), one version per count; more,
    one dot product per sum."""
    n_rows = terms.shape[0] - 1
    if n_rows > FUSED_ROWS:
        _products_by_dots(terms, entry_resid, start, end, cols, k, bg,
                          normal, grad)
        return
    if n_rows == 1:
        products(terms, entry_resid, start, end, 1, sums)
    elif n_rows == 2:
        products(terms, entry_resid, start, end, 2, sums)
    elif n_rows == 3:
        products(terms, entry_resid, start, end, 3, sums)
    elif n_rows == 4:
        products(terms, entry_resid, start, end, 4, sums)
    elif n_rows == 5:
        products(terms, entry_resid, start, end, 5, sums)
    elif n_rows == 6:
        products(terms, entry_resid, start, end, 6, sums)
    elif n_rows == 7:
        products(terms, entry_resid, start, end, 7, sums)
    else:
        products(terms, entry_resid, start, end, 8, sums)
    at = 2 * n_rows
    for j in range(1, n_rows + 1):
        a = cols[k, j]
        if a >= 0:
            grad[a] += sums[j - 1]
            if bg >= 0:
                normal[min(a, bg), max(a, bg)] += sums[n_rows + j - 1]
        for j2 in range(j, n_rows + 1):
            b = cols[k, j2]
            if a >= 0 and b >= 0:
                normal[min(a, b), max(a, b)] += sums[at]
            at += 1


@inline_kernel
def _products_by_dots(terms, entry_resid, start, end, cols, k, bg, normal,
                      grad):
    """:func:`_feature_products` with one dot product per sum."""
    n_params = terms.shape[0]
    for j in range(1, n_params):
        a = cols[k, j]
        if a < 0:
            continue
        grad[a] += dot(terms[j], entry_resid, start, end)
        if bg >= 0:
            normal[min(a, bg), max(a, bg)] += total(terms[j], start, end)
        for j2 in range(j, n_params):
            b = cols[k, j2]
            if b < 0:
                continue
            normal[min(a, b), max(a, b)] += dot(terms[j], terms[j2], start,
                                                end)


@leaf_kernel
def _pair_products(terms, pair_feat, pair_off, pair_entry, pair_terms, cols,
                   cross, normal, sums):
    """Add the products between different features' derivatives at the
    pixels they share to the upper triangle of ``normal``.

    For each pair of features, their derivatives at the shared pixels are
    gathered side by side; up to :data:`FUSED_CROSS_ROWS` derivatives, all
    their products come from one pass (:func:`.sums.cross_products`, into
    ``sums``), else one dot product each. ``cross`` collects the products
    of the first feature's derivative columns with the second's; J^T J
    gains cross plus its transpose.
    """
    n_unk = normal.shape[0]
    n_params = terms.shape[0]
    n_rows = n_params - 1
    for i in range(n_unk):
        for j in range(n_unk):
            cross[i, j] = 0.0
    for p in range(pair_feat.shape[0]):
        ka = pair_feat[p, 0]
        kb = pair_feat[p, 1]
        m = pair_off[p + 1] - pair_off[p]
        # (a row at a time, unsigned: plain indexed loads, no wraparound)
        at = np.uint64(pair_off[p])
        for j in range(1, n_params):
            for i in range(np.uint64(m)):
                ea = np.uint64(pair_entry[0, at + i])
                pair_terms[0, j, i] = terms[j, ea]
            for i in range(np.uint64(m)):
                eb = np.uint64(pair_entry[1, at + i])
                pair_terms[1, j, i] = terms[j, eb]
        if n_rows > FUSED_CROSS_ROWS:
            for j in range(1, n_params):
                a = cols[ka, j]
                if a < 0:
                    continue
                for j2 in range(1, n_params):
                    b = cols[kb, j2]
                    if b >= 0:
                        cross[a, b] += dot(pair_terms[0, j],
                                           pair_terms[1, j2], 0, m)
            continue
        if n_rows == 1:
            cross_products(pair_terms, 0, m, 1, sums)
        elif n_rows == 2:
            cross_products(pair_terms, 0, m, 2, sums)
        elif n_rows == 3:
            cross_products(pair_terms, 0, m, 3, sums)
        else:
            cross_products(pair_terms, 0, m, 4, sums)
        k = 0
        for j in range(1, n_params):
            a = cols[ka, j]
            for j2 in range(1, n_params):
                b = cols[kb, j2]
                if a >= 0 and b >= 0:
                    cross[a, b] += sums[k]
                k += 1
    for i in range(n_unk):
        normal[i, i] += 2.0 * cross[i, i]
        for j in range(i + 1, n_unk):
            normal[i, j] += cross[i, j] + cross[j, i]


@inline_kernel
def _mirror(normal):
    """The lower triangle of ``normal`` from its upper triangle."""
    for i in range(normal.shape[0]):
        for j in range(i + 1, normal.shape[0]):
            normal[j, i] = normal[i, j]


@inline_kernel
def _evaluate_sparse(work, cols, modes, slot, n_cl, n_var, pix_val, pix_coord,
                     entry_pix, feat_entry_off, f0, pix_base, ndim, n_size,
                     model_id, continuous, poisson, with_jac, deriv, dextra,
                     ws, buf):
    """:func:`evaluate` for a sparse cluster. With ``poisson`` the cost is
    the deviance (:func:`_evaluate_poisson`), and the derivatives kept in
    ``buf`` are J's rows times 1/sqrt(mu): the products of
    :func:`sparse_matvec` and the blocks are then those of the Fisher
    information, and ``grad`` is J^T (mu - n) / mu."""
    model = ws.model
    excluded = buf.excluded
    resid = ws.resid
    entry_deriv = buf.entry_deriv
    jac_cl = buf.jac_cl
    blocks = buf.blocks
    block_cl = buf.block_cl
    grad = buf.grad
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
            for j in range(1, n_params):
                entry_deriv[e - e_base, j] = deriv[j]
                if modes[j] == MODE_CLUSTER:
                    jac_cl[q, slot[j]] += deriv[j]
    if poisson:
        cost = _deviance(model, ws.extra, pix_val, pix_base, excluded, resid,
                         ws.weight, buf.stats)
        if not math.isfinite(cost):
            return cost
    else:
        for q in range(n_pix):
            resid[q] = (0.0 if excluded[q]
                        else model[q] - pix_val[pix_base + q])
        # (in pixel order: the kernels never reorder a sum, see jit)
        cost = 0.0
        for q in range(n_pix):
            cost += resid[q] * resid[q]
    if not with_jac:
        return cost
    bg_col = cols[0, 0]
    if poisson:  # rows of J, and (into weight[1]) residuals, times 1/sqrt(mu)
        root_w = ws.weight[1]
        for q in range(n_pix):
            root_w[q] = math.sqrt(ws.weight[0, q])
        for e in range(feat_entry_off[f0], feat_entry_off[f0 + n_feat]):
            for j in range(1, n_params):
                entry_deriv[e - e_base, j] *= root_w[entry_pix[e] - pix_base]
        for q in range(n_pix):
            if bg_col >= 0:
                jac_cl[q, bg_col] = 1.0
            for i in range(jac_cl.shape[1]):
                jac_cl[q, i] *= root_w[q]
            root_w[q] *= resid[q]
    for i in range(n_unk):
        grad[i] = 0.0
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
        if bg_col >= 0 and not poisson:
            jac_cl[q, bg_col] = 1.0
        r = ws.weight[1, q] if poisson else resid[q]
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
            r = ws.weight[1, q] if poisson else resid[q]
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
