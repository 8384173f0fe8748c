"""Sum of squared residuals (or the Poisson deviance) and its gradient per
cluster, for general optimisers.

``scipy.optimize.minimize`` (constraints, ``method=``) evaluates its objective
and gradient through this kernel, one call per cluster batch: no Python runs
per cluster or per pixel. The kernel runs on the calling thread: it is
called once per optimiser step on a few clusters, where handing chunks to
other threads costs more than the work.
"""
import math

import numba
import numpy as np

from .jit import LITERALS, Specialized, kernel
from .terms import feature_term


@kernel(entry=True)
def _cost_and_gradient(cluster_ids, pix_val, pix_extra, pix_coord,
                       cluster_pix_off, entry_pix, feat_entry_off,
                       cluster_feat_off, params, ndim, n_size, model_id,
                       continuous, poisson, cost_out, grad_out):
    """For the clusters ``cluster_ids``: ``cost_out[c]`` = sum of squared
    residuals over the cluster's mask, ``grad_out[f, j]`` = its derivative
    with respect to ``params[f, j]``. With ``poisson``, the Poisson
    deviance of the photons ``pix_val`` instead (``pix_extra``: expected
    photons added at each pixel, or empty; infinite where the expectation
    is not positive), as ``residuals._evaluate_poisson``.

    The model's background is the cluster's first feature's, so only that
    feature's background has a nonzero derivative.
    """
    numba.literally(ndim)  # specialise: see kernels/jit.py
    numba.literally(n_size)
    numba.literally(model_id)
    numba.literally(continuous)
    numba.literally(poisson)
    n_params = params.shape[1]
    n_extra = max(n_params - 2 - ndim - n_size, 1)
    for i in range(cluster_ids.shape[0]):
        c = cluster_ids[i]
        f0 = cluster_feat_off[c]
        f1 = cluster_feat_off[c + 1]
        p0 = cluster_pix_off[c]
        n_pix = cluster_pix_off[c + 1] - p0
        deriv = np.empty(n_params)
        dextra = np.empty(n_extra)
        model = np.full(n_pix, params[f0, 0])
        excluded = np.zeros(n_pix, dtype=np.bool_)
        for feat in range(f0, f1):
            for e in range(feat_entry_off[feat], feat_entry_off[feat + 1]):
                q = entry_pix[e]
                value = feature_term(pix_coord, q, params, feat, ndim, n_size,
                                     model_id, continuous, deriv, dextra)
                if math.isnan(value):
                    excluded[q - p0] = True
                else:
                    model[q - p0] += value
        cost = 0.0
        if poisson:  # model becomes the deviance's derivative by mu
            for q in range(n_pix):
                mu = model[q] + (pix_extra[p0 + q] if pix_extra.shape[0]
                                 else 0.0)
                n = pix_val[p0 + q]
                if excluded[q]:
                    model[q] = 0.0
                elif not mu > 0.0:
                    cost = math.inf
                    model[q] = 0.0
                else:
                    cost += 2.0 * (mu - n - (n * math.log(mu / n)
                                             if n > 0.0 else 0.0))
                    model[q] = 1.0 - n / mu
        else:  # model becomes the residual
            for q in range(n_pix):
                model[q] = 0.0 if excluded[q] else model[q] - pix_val[p0 + q]
        # sums over the kernel's own array, whose alignment is fixed (see
        # residuals.evaluate)
        bg_grad = 0.0
        for q in range(n_pix):
            if not poisson:
                cost += model[q] * model[q]
            bg_grad += 2.0 * model[q]
        cost_out[c] = cost
        for feat in range(f0, f1):
            grad_out[feat, :] = 0.0
            for e in range(feat_entry_off[feat], feat_entry_off[feat + 1]):
                q = entry_pix[e]
                r = model[q - p0]
                if r == 0.0:
                    continue
                feature_term(pix_coord, q, params, feat, ndim, n_size,
                             model_id, continuous, deriv, dextra)
                for j in range(1, n_params):
                    grad_out[feat, j] += 2.0 * r * deriv[j]
        grad_out[f0, 0] = bg_grad


cost_and_gradient = Specialized(_cost_and_gradient,
                                LITERALS + ("poisson",))
