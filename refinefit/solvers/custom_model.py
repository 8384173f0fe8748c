"""A custom fit function that Numba cannot compile, with NumPy over a batch.

``cost_and_gradient`` has the contract of ``kernels.objective.
cost_and_gradient`` (per cluster the sum of squared residuals or the
Poisson deviance, per feature and parameter its derivative), ``evaluate`` that of
``kernels.evaluate_model``; both build on one per-entry evaluation.
``fun``/``dfun`` are called once per distinct
vector of extra shape parameters over all entries that share it (usually
once per call: shape parameters are mostly constant). Without ``dfun`` the
derivatives with respect to r2 and the shape parameters are central finite
differences.
"""
import numpy as np

_FD_RELATIVE = 1e-6


def _shape(model, r2, extra, ndim):
    """f and its derivatives (w.r.t. r2, then each extra parameter)."""
    if model.dfun is not None:
        value, derivs = model.dfun(r2, extra, ndim)
        return (np.asarray(value, float),
                [np.asarray(d, float) * np.ones_like(r2) for d in derivs])
    value = np.asarray(model.fun(r2, extra, ndim), float)
    h = _FD_RELATIVE * np.maximum(r2, 1.0)
    derivs = [(np.asarray(model.fun(r2 + h, extra, ndim), float)
               - np.asarray(model.fun(r2 - h, extra, ndim), float)) / (2 * h)]
    for k in range(len(extra)):
        step = _FD_RELATIVE * max(abs(extra[k]), 1.0)
        up, down = extra.copy(), extra.copy()
        up[k] += step
        down[k] -= step
        derivs.append((np.asarray(model.fun(r2, up, ndim), float)
                       - np.asarray(model.fun(r2, down, ndim), float))
                      / (2 * step))
    return value, derivs


def _entry_terms(model, feats, batch, params, ndim, n_size):
    """Per entry of the features ``feats``: the pixel, the feature, the
    shape value and the derivatives of ``signal * f`` with respect to every
    parameter (column 0, the background, is 1); and the pixels a
    non-continuous model ignores."""
    counts = batch.feat_entry_off[feats + 1] - batch.feat_entry_off[feats]
    entries = np.repeat(batch.feat_entry_off[feats] - np.r_[0, np.cumsum(
        counts)[:-1]], counts) + np.arange(counts.sum())
    entry_feat = np.repeat(feats, counts)
    pix = batch.entry_pix[entries]
    p = params[entry_feat]
    size_at = 2 + ndim
    extra_at = size_at + n_size
    delta = batch.pix_coord[pix] - p[:, 2:size_at]
    sizes = p[:, size_at:extra_at]
    r2 = np.sum(delta ** 2 / sizes ** 2, axis=1)
    n_extra = params.shape[1] - extra_at
    f = np.empty(len(entries))
    df_dr2 = np.empty(len(entries))
    df_dextra = np.empty((len(entries), n_extra))
    extras, which = np.unique(p[:, extra_at:], axis=0, return_inverse=True)
    which = which.ravel()
    for k, extra in enumerate(extras):
        sel = which == k
        value, derivs = _shape(model, r2[sel], extra.copy(), ndim)
        f[sel] = value
        df_dr2[sel] = derivs[0]
        for j in range(n_extra):
            df_dextra[sel, j] = derivs[1 + j]
    excluded = np.zeros(len(batch.pix_val), dtype=bool)
    if not model.continuous:
        excluded[pix[np.sum(delta ** 2, axis=1) < 1.0]] = True
    slope = p[:, 1] * df_dr2
    deriv = np.zeros((len(entries), params.shape[1]))
    deriv[:, 0] = 1.0
    deriv[:, 1] = f
    deriv[:, 2:size_at] = -2.0 * slope[:, None] * delta / sizes ** 2
    if n_size == 1:
        deriv[:, size_at] = -2.0 * slope * r2 / sizes[:, 0]
    else:
        deriv[:, size_at:extra_at] = -2.0 * slope[:, None] * delta ** 2 / sizes ** 3
    deriv[:, extra_at:] = p[:, 1:2] * df_dextra
    return pix, entry_feat, p[:, 1] * f, deriv, excluded


def _model_image(batch, params, pix, terms):
    """Background of each cluster's first feature plus the terms."""
    offsets = batch.cluster_feat_off
    cluster_of_pix = np.repeat(np.arange(len(offsets) - 1),
                               np.diff(batch.cluster_pix_off))
    image = params[offsets[cluster_of_pix], 0].copy()
    np.add.at(image, pix, terms)
    return image, cluster_of_pix


def cost_and_gradient(model, ids, batch, params, ndim, n_size, cost_out,
                      grad_out, poisson=False, extra=None):
    """Fill ``cost_out[ids]`` and the rows of ``grad_out`` of their
    features. With ``poisson`` the cost is the Poisson deviance of the
    photons ``batch.pix_val`` (``extra``: expected photons added at each
    pixel, or empty), infinite where the expected photons are not positive,
    as ``kernels.objective.cost_and_gradient`` has it."""
    offsets = batch.cluster_feat_off
    feats = np.concatenate([np.arange(offsets[c], offsets[c + 1]) for c in ids])
    pix, entry_feat, terms, deriv, excluded = _entry_terms(
        model, feats, batch, params, ndim, n_size)
    image, cluster_of_pix = _model_image(batch, params, pix, terms)
    used = np.zeros(len(batch.pix_val), dtype=bool)
    used[pix] = True
    valid = used & ~excluded
    n_clusters = len(offsets) - 1
    if poisson:
        # slope: the cost's derivative by the model at each pixel, halved
        mu = image + (extra if extra is not None and len(extra) else 0.0)
        counts = batch.pix_val
        positive = valid & (mu > 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms_q = np.where(counts > 0.0,
                               mu - counts - counts * np.log(mu / counts), mu)
            slope = np.where(positive, 1.0 - counts / mu, 0.0)
        cost = np.bincount(cluster_of_pix,
                           weights=np.where(positive, 2.0 * terms_q, 0.0),
                           minlength=n_clusters)
        bad = np.bincount(cluster_of_pix, weights=valid & ~positive,
                          minlength=n_clusters)
        cost[bad > 0] = np.inf
    else:
        slope = np.where(valid, image - batch.pix_val, 0.0)
        cost = np.bincount(cluster_of_pix, weights=slope ** 2,
                           minlength=n_clusters)
    cost_out[ids] = cost[ids]
    deriv[:, 0] = 0.0  # the background enters once per pixel, below
    grad_out[feats] = 0.0
    np.add.at(grad_out, entry_feat, 2.0 * slope[pix][:, None] * deriv)
    bg_grad = np.bincount(cluster_of_pix, weights=2.0 * slope,
                          minlength=n_clusters)
    grad_out[offsets[ids], 0] = bg_grad[ids]


def evaluate(model, batch, params, ndim, n_size):
    """Model image, excluded pixels and per-entry derivatives over the whole
    batch, with the contract of ``kernels.evaluate_model``."""
    feats = np.arange(batch.cluster_feat_off[-1])
    pix, _, terms, deriv, excluded = _entry_terms(model, feats, batch, params,
                                                  ndim, n_size)
    image, _ = _model_image(batch, params, pix, terms)
    return image, excluded, deriv
