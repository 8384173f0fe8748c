"""Radial model shapes f(r2, p) and their derivatives, selected by integer id.

Every shape takes the squared reduced radius ``r2`` and the extra shape
parameters ``extra``; it returns ``f`` and ``df/dr2`` and writes ``df/dextra``
into ``dextra``. Ids are assigned in ``refinefit.models``.
"""
import math

from ._jit import kernel

GAUSS = 0
DISC = 1
RING = 2
INV_SERIES = 3


@kernel
def shape_value(model_id, r2, extra, ndim, dextra):
    """Return ``(f, df/dr2)`` at ``r2`` and fill ``dextra`` with df/dp."""
    half_ndim = 0.5 * ndim
    if model_id == GAUSS:
        f = math.exp(-half_ndim * r2)
        return f, -half_ndim * f
    if model_id == DISC:
        disc_size = extra[0]
        dextra[0] = 0.0
        if disc_size <= 0.0:
            f = math.exp(-half_ndim * r2)
            return f, -half_ndim * f
        size_is_free = True
        if disc_size >= 1.0:
            disc_size = 0.999
            size_is_free = False
        if r2 <= disc_size * disc_size:
            return 1.0, 0.0
        r = math.sqrt(r2)
        width = 1.0 - disc_size
        u = (r - disc_size) / width
        f = math.exp(-half_ndim * u * u)
        df_du = -2.0 * half_ndim * u * f
        if size_is_free:
            dextra[0] = df_du * (r - 1.0) / (width * width)
        return f, df_du / (2.0 * r * width)
    if model_id == RING:
        thickness = extra[0]
        r = math.sqrt(r2)
        u = (r - 1.0 + thickness) / thickness
        f = math.exp(-half_ndim * u * u)
        df_du = -2.0 * half_ndim * u * f
        dextra[0] = df_du * (1.0 - r) / (thickness * thickness)
        if r == 0.0:
            return f, 0.0
        return f, df_du / (2.0 * r * thickness)
    if model_id == INV_SERIES:
        # f = mult / P(r2), P = polyval([1, a_1, ..., a_n], r2), as trackpy
        n = extra.shape[0] - 1
        poly = 1.0
        dpoly = 0.0
        for k in range(1, n + 1):
            dpoly = dpoly * r2 + poly
            poly = poly * r2 + extra[k]
        mult = extra[0]
        inv = 1.0 / poly
        dextra[0] = inv
        power = 1.0
        for k in range(n, 0, -1):  # a_k multiplies r2 ** (n - k)
            dextra[k] = -mult * power * inv * inv
            power *= r2
        return mult * inv, -mult * dpoly * inv * inv
    return math.nan, math.nan
