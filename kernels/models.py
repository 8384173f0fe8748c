"""Radial model shapes f(r2, p) and their derivatives, selected by integer id.

Every shape takes the squared reduced radius ``r2`` and its extra shape
parameters, stored at ``params[row, at:]``; it returns ``f`` and ``df/dr2``
and writes ``df/dextra`` into ``dextra``. Ids are mapped to names in
``refinefit.problem.models``. One small inlined function per shape keeps the runtime
dispatch free: a single large function with every branch stopped LLVM from
optimising the per-pixel loop, which then ran many times slower.
"""
import math

from numba import types
from numba.extending import overload

from .custom import CUSTOM_BASE, custom_shape
from .jit import SERIAL, inline_kernel, kernel
from .vexp import exp

GAUSS = 0
DISC = 1
RING = 2
INV_SERIES = 3
BUILTIN_MODELS = (GAUSS, DISC, RING, INV_SERIES)


@inline_kernel
def _gauss(r2, ndim):
    f = exp(-0.5 * ndim * r2)
    return f, -0.5 * ndim * f


@inline_kernel
def _disc(r2, disc_size, ndim, dextra):
    dextra[0] = 0.0
    if disc_size <= 0.0:
        return _gauss(r2, ndim)
    size_is_free = disc_size < 1.0
    if not size_is_free:
        disc_size = 0.999
    if r2 <= disc_size * disc_size:
        return 1.0, 0.0
    r = math.sqrt(r2)
    width = 1.0 - disc_size
    u = (r - disc_size) / width
    f = exp(-0.5 * ndim * u * u)
    df_du = -ndim * u * f
    if size_is_free:
        dextra[0] = df_du * (r - 1.0) / (width * width)
    return f, df_du / (2.0 * r * width)


@inline_kernel
def _ring(r2, thickness, ndim, dextra):
    r = math.sqrt(r2)
    u = (r - 1.0 + thickness) / thickness
    f = exp(-0.5 * ndim * u * u)
    df_du = -ndim * u * f
    dextra[0] = df_du * (1.0 - r) / (thickness * thickness)
    if r == 0.0:
        return f, 0.0
    return f, df_du / (2.0 * r * thickness)


@kernel
def _inv_series(r2, params, row, at, dextra):
    # f = mult / P(r2), P = polyval([1, a_1, ..., a_n], r2), as trackpy
    n = params.shape[1] - at - 1
    poly = 1.0
    dpoly = 0.0
    for k in range(1, n + 1):
        dpoly = dpoly * r2 + poly
        poly = poly * r2 + params[row, at + k]
    mult = params[row, at]
    inv = 1.0 / poly
    dextra[0] = inv
    power = 1.0
    for k in range(n, 0, -1):  # a_k multiplies r2 ** (n - k)
        dextra[k] = -mult * power * inv * inv
        power *= r2
    return mult * inv, -mult * dpoly * inv * inv


def shape_at(model_id, r2, params, row, at, ndim, dextra):
    """``(f, df/dr2)`` with the extra parameters at ``params[row, at:]``.

    Indices rather than a view: a view per pixel would cost two atomic
    reference-count updates. Resolved by its overload inside kernels: for a
    literal ``model_id`` (the entry kernels specialise on it) only that
    shape is compiled; otherwise a runtime switch over every shape.
    """
    raise NotImplementedError("shape_at is only callable from kernels")


def _switch(model_id, r2, params, row, at, ndim, dextra):
    if model_id == GAUSS:
        return _gauss(r2, ndim)
    if model_id == DISC:
        return _disc(r2, params[row, at], ndim, dextra)
    if model_id == RING:
        return _ring(r2, params[row, at], ndim, dextra)
    if model_id == INV_SERIES:
        return _inv_series(r2, params, row, at, dextra)
    if model_id >= CUSTOM_BASE:
        return custom_shape(model_id, r2, params, row, at, ndim, dextra)
    return math.nan, math.nan


def _gauss_at(model_id, r2, params, row, at, ndim, dextra):
    return _gauss(r2, ndim)


def _disc_at(model_id, r2, params, row, at, ndim, dextra):
    return _disc(r2, params[row, at], ndim, dextra)


def _ring_at(model_id, r2, params, row, at, ndim, dextra):
    return _ring(r2, params[row, at], ndim, dextra)


def _inv_series_at(model_id, r2, params, row, at, ndim, dextra):
    return _inv_series(r2, params, row, at, dextra)


def _custom_at(model_id, r2, params, row, at, ndim, dextra):
    return custom_shape(model_id, r2, params, row, at, ndim, dextra)


@overload(shape_at, prefer_literal=True,
          jit_options=dict(SERIAL, inline="always"))
def _shape_at(model_id, r2, params, row, at, ndim, dextra):
    if not isinstance(model_id, types.IntegerLiteral):
        return _switch
    value = model_id.literal_value
    if value >= CUSTOM_BASE:
        return _custom_at
    return {GAUSS: _gauss_at, DISC: _disc_at, RING: _ring_at,
            INV_SERIES: _inv_series_at}.get(value, _switch)


@kernel(entry=True)
def shape_value(model_id, r2, extra, ndim, dextra):
    """Return ``(f, df/dr2)`` at ``r2`` and fill ``dextra`` with df/dextra."""
    return shape_at(model_id, r2, extra.reshape((1, extra.shape[0])), 0, 0,
                    ndim, dextra)
