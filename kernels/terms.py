"""One feature's contribution to one pixel, with its parameter derivatives.

Per-feature parameter layout: ``[background, signal, pos (ndim),
size (1 or ndim), extra shape parameters]``.
"""
import math

import numba
import numpy as np
from numba import types
from numba.extending import overload

from .jit import SERIAL, Specialized, inline_kernel, kernel
from .models import DISC, GAUSS, INV_SERIES, RING, shape_at
from .threads import OverChunks


@inline_kernel
def feature_term(pix_coord, q, params, k, ndim, n_size, model_id, continuous,
                 deriv, dextra):
    """Return ``signal * f(r2)`` of feature ``params[k]`` at pixel
    ``pix_coord[q]``, and its derivatives.

    Arrays are passed whole with row indices: a view per pixel would cost
    two atomic reference-count updates. (The solvers' dense path evaluates a
    whole feature at once with :func:`feature_terms`.)

    ``deriv[j]`` receives d(value)/d(p[j]) for every parameter except the
    background (``deriv[0]`` is set to 0: background enters once per pixel,
    not once per feature). Returns NaN, leaving ``deriv`` untouched, when the
    model is not continuous at r = 0 and the pixel lies closer than 1 px to
    the centre: such pixels are ignored by the fit.
    """
    size_at = 2 + ndim
    extra_at = size_at + n_size
    dist2 = 0.0
    r2 = 0.0
    for d in range(ndim):
        delta = pix_coord[q, d] - params[k, 2 + d]
        size = params[k, size_at + d] if n_size > 1 else params[k, size_at]
        dist2 += delta * delta
        r2 += delta * delta / (size * size)
    if not continuous and dist2 < 1.0:
        return math.nan
    signal = params[k, 1]
    f, df_dr2 = shape_at(model_id, r2, params, k, extra_at, ndim, dextra)
    slope = signal * df_dr2
    deriv[0] = 0.0
    deriv[1] = f
    for d in range(ndim):
        delta = pix_coord[q, d] - params[k, 2 + d]
        size = params[k, size_at + d] if n_size > 1 else params[k, size_at]
        deriv[2 + d] = -2.0 * slope * delta / (size * size)
        if n_size > 1:
            deriv[size_at + d] = -2.0 * slope * delta * delta / (size * size * size)
    if n_size == 1:
        deriv[size_at] = -2.0 * slope * r2 / params[k, size_at]
    for j in range(params.shape[1] - extra_at):
        deriv[extra_at + j] = signal * dextra[j]
    return signal * f


@kernel
def feature_terms(entry_coord, start, end, params, k, ndim, n_size, model_id,
                  continuous, terms, dextra):
    """:func:`feature_term` for the entries ``start..end`` of feature
    ``params[k]``, whose coordinates are ``entry_coord[:, start:end]``, into
    the same columns of ``terms``: row 0 the term, rows 1.. its derivatives
    (row 0 NaN marks an excluded pixel, its derivatives then undefined).

    What is constant over the feature (centre, 1 / size^2) is computed once,
    each dimension is a scalar (``ndim`` is a compile-time constant, 1 to 3)
    and the coordinates are contiguous: the loop is the model's arithmetic
    alone, and vectorises.
    """
    size_at = 2 + ndim
    extra_at = size_at + n_size
    signal = params[k, 1]
    c0 = params[k, 2]
    c1 = params[k, 3] if ndim > 1 else 0.0
    c2 = params[k, 4] if ndim > 2 else 0.0
    s0 = params[k, size_at]
    s1 = params[k, size_at + 1] if n_size > 1 else s0
    s2 = params[k, size_at + 2] if n_size > 2 else s0
    inv0 = 1.0 / (s0 * s0)
    inv1 = 1.0 / (s1 * s1)
    inv2 = 1.0 / (s2 * s2)
    # What keeps this loop vectorisable: the feature's constants are
    # scalars (loaded inside, LLVM could not tell that the stores into
    # ``terms`` leave them unchanged); an unsigned index (a signed one gets
    # Numba's negative-index wraparound, which makes the accesses look
    # non-contiguous); no loop inside (the extra parameters' derivatives
    # come in a second pass); no inlined helper that takes arrays (Numba's
    # inlining of one stopped LLVM from vectorising it).
    for el in range(np.uint64(start), np.uint64(end)):
        d0 = entry_coord[0, el] - c0
        d1 = entry_coord[1, el] - c1 if ndim > 1 else 0.0
        d2 = entry_coord[2, el] - c2 if ndim > 2 else 0.0
        if not continuous and d0 * d0 + d1 * d1 + d2 * d2 < 1.0:
            terms[0, el] = math.nan
            continue
        r2 = _reduced_r2(d0, d1, d2, inv0, inv1, inv2, ndim)
        f, df_dr2 = shape_at(model_id, r2, params, k, extra_at, ndim, dextra)
        slope2 = -2.0 * signal * df_dr2
        terms[0, el] = signal * f
        terms[1, el] = f
        terms[2, el] = slope2 * d0 * inv0
        if ndim > 1:
            terms[3, el] = slope2 * d1 * inv1
        if ndim > 2:
            terms[4, el] = slope2 * d2 * inv2
        if n_size == 1:
            terms[size_at, el] = slope2 * r2 / s0
        else:
            terms[size_at, el] = slope2 * d0 * d0 * inv0 / s0
            if ndim > 1:
                terms[size_at + 1, el] = slope2 * d1 * d1 * inv1 / s1
            if ndim > 2:
                terms[size_at + 2, el] = slope2 * d2 * d2 * inv2 / s2
    if params.shape[1] == extra_at:
        return
    # the extra shape parameters' derivatives (disc, ring, series, custom)
    for el in range(np.uint64(start), np.uint64(end)):
        if math.isnan(terms[0, el]):
            continue
        d0 = entry_coord[0, el] - c0
        d1 = entry_coord[1, el] - c1 if ndim > 1 else 0.0
        d2 = entry_coord[2, el] - c2 if ndim > 2 else 0.0
        r2 = _reduced_r2(d0, d1, d2, inv0, inv1, inv2, ndim)
        shape_at(model_id, r2, params, k, extra_at, ndim, dextra)
        for j in range(params.shape[1] - extra_at):
            terms[extra_at + j, el] = signal * dextra[j]


def model_terms(entry_coord, start, end, params, k, ndim, n_size, model_id,
                continuous, terms, dextra):
    """:func:`feature_terms`, for a geometry and model given as literals or,
    for the built-in models, as run-time values (see the overload)."""
    raise NotImplementedError("model_terms is only callable from kernels")


@overload(model_terms, prefer_literal=True,
          jit_options=dict(SERIAL, inline="always"))
def _model_terms(entry_coord, start, end, params, k, ndim, n_size, model_id,
                 continuous, terms, dextra):
    # Literal: the one version of feature_terms (custom models need it, their
    # shape is found by its literal id). Run-time values: a switch over every
    # built-in version, so that the solver around it compiles once for all
    # of them rather than once per geometry and model; the switch runs once
    # per feature and evaluation, and each per-pixel loop stays specialised.
    if all(isinstance(a, types.Literal)
           for a in (ndim, n_size, model_id, continuous)):
        return _literal_terms
    return _builtin_terms


def _literal_terms(entry_coord, start, end, params, k, ndim, n_size, model_id,
                   continuous, terms, dextra):
    feature_terms(entry_coord, start, end, params, k, ndim, n_size, model_id,
                  continuous, terms, dextra)


def _builtin_terms(entry_coord, start, end, params, k, ndim, n_size, model_id,
                   continuous, terms, dextra):
    # (each built-in model's continuity is its own: refinefit.problem.models)
    if model_id == GAUSS:
        _geometry_terms(entry_coord, start, end, params, k, ndim, n_size,
                        GAUSS, True, terms, dextra)
    elif model_id == DISC:
        _geometry_terms(entry_coord, start, end, params, k, ndim, n_size,
                        DISC, True, terms, dextra)
    elif model_id == RING:
        _geometry_terms(entry_coord, start, end, params, k, ndim, n_size,
                        RING, False, terms, dextra)
    else:  # INV_SERIES (lm.solve_clusters lets no other id through)
        _geometry_terms(entry_coord, start, end, params, k, ndim, n_size,
                        INV_SERIES, True, terms, dextra)


@inline_kernel
def _geometry_terms(entry_coord, start, end, params, k, ndim, n_size,
                    model_id, continuous, terms, dextra):
    """:func:`feature_terms` of a literal model for a run-time geometry:
    2D or 3D (refinement takes no other), isotropic or not."""
    if ndim == 2:
        _size_terms(entry_coord, start, end, params, k, 2, n_size, model_id,
                    continuous, terms, dextra)
    else:
        _size_terms(entry_coord, start, end, params, k, 3, n_size, model_id,
                    continuous, terms, dextra)


@inline_kernel
def _size_terms(entry_coord, start, end, params, k, ndim, n_size, model_id,
                continuous, terms, dextra):
    """:func:`feature_terms` of a literal model and dimensionality, for one
    size or one per axis."""
    if n_size == 1:
        feature_terms(entry_coord, start, end, params, k, ndim, 1, model_id,
                      continuous, terms, dextra)
    else:
        feature_terms(entry_coord, start, end, params, k, ndim, ndim,
                      model_id, continuous, terms, dextra)


@inline_kernel
def _reduced_r2(d0, d1, d2, inv0, inv1, inv2, ndim):
    r2 = d0 * d0 * inv0
    if ndim > 1:
        r2 += d1 * d1 * inv1
    if ndim > 2:
        r2 += d2 * d2 * inv2
    return r2


@kernel(entry=True)
def _evaluate_model(cluster_ids, pix_coord, cluster_pix_off, entry_pix,
                    feat_entry_off, cluster_feat_off, params, ndim, n_size,
                    model_id, continuous, model, excluded, entry_deriv):
    """:func:`evaluate_model` for the clusters ``cluster_ids``."""
    numba.literally(ndim)  # specialise: see kernels/jit.py
    numba.literally(n_size)
    numba.literally(model_id)
    numba.literally(continuous)
    n_extra = max(params.shape[1] - 2 - ndim - n_size, 1)
    for i in range(cluster_ids.shape[0]):
        c = cluster_ids[i]
        dextra = np.empty(n_extra)
        deriv = np.empty(params.shape[1])
        f0 = cluster_feat_off[c]
        for q in range(cluster_pix_off[c], cluster_pix_off[c + 1]):
            model[q] = params[f0, 0]
            excluded[q] = False
        for feat in range(f0, cluster_feat_off[c + 1]):
            for e in range(feat_entry_off[feat], feat_entry_off[feat + 1]):
                q = entry_pix[e]
                value = feature_term(pix_coord, q, params, feat, ndim, n_size,
                                     model_id, continuous, deriv, dextra)
                if math.isnan(value):
                    excluded[q] = True
                    for j in range(params.shape[1]):
                        entry_deriv[e, j] = 0.0
                else:
                    model[q] += value
                    entry_deriv[e, 0] = 1.0
                    for j in range(1, params.shape[1]):
                        entry_deriv[e, j] = deriv[j]


_evaluate_clusters = OverChunks(Specialized(_evaluate_model), min_chunk=256)


def evaluate_model(pix_coord, cluster_pix_off, entry_pix, feat_entry_off,
                   cluster_feat_off, params, ndim, n_size, model_id,
                   continuous, model, excluded, entry_deriv):
    """Model image and per-entry derivatives over a flattened batch.

    ``model[p]`` = background of the cluster's first feature + the sum of the
    terms of the features whose mask holds pixel ``p``; ``excluded[p]`` marks
    pixels ignored by a non-continuous model; ``entry_deriv[e]`` holds the
    derivatives of entry ``e``'s term (background column 0 is 1).
    """
    cluster_ids = np.arange(len(cluster_feat_off) - 1, dtype=np.int64)
    _evaluate_clusters(cluster_ids, pix_coord, cluster_pix_off, entry_pix,
                       feat_entry_off, cluster_feat_off, params, ndim, n_size,
                       model_id, continuous, model, excluded, entry_deriv)
