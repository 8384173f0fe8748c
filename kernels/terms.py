"""One feature's contribution to one pixel, with its parameter derivatives.

Per-feature parameter layout: ``[background, signal, pos (ndim),
size (1 or ndim), extra shape parameters]``.
"""
import math

import numba
import numpy as np

from .jit import Specialized, inline_kernel, kernel
from .models import shape_at
from .threads import OverChunks


@inline_kernel
def feature_term(pix_coord, q, params, k, ndim, n_size, model_id, continuous,
                 deriv, dextra):
    """Return ``signal * f(r2)`` of feature ``params[k]`` at pixel
    ``pix_coord[q]``, and its derivatives.

    Arrays are passed whole with row indices: a view per pixel would cost
    two atomic reference-count updates.

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
