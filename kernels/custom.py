"""Custom fit functions compiled into the kernels.

A custom shape that Numba can compile gets a model id of its own, at least
``CUSTOM_BASE``, derived from a hash of its code: the kernels specialise on
the model id (``numba.literally``), so each compiled shape gets its own
machine code, and the same function gets the same id (and the cached code)
in every process. ``shape_at`` calls :func:`custom_shape`, whose overload
picks the registered shape for the literal id at typing time.

A registered shape has the signature of the built-in ones:
``shape(r2, params, row, at, ndim, dextra) -> (f, df/dr2)``, with the extra
parameters at ``params[row, at:]`` and their derivatives written to
``dextra``.
"""
import math

import numba
from numba import types
from numba.extending import overload

CUSTOM_BASE = 1 << 20
_REGISTRY = {}


def register(model_id, shape):
    """Make ``shape`` (an njit function) the shape of ``model_id``."""
    _REGISTRY[int(model_id)] = shape


def is_registered(model_id):
    return int(model_id) in _REGISTRY


def custom_shape(model_id, r2, params, row, at, ndim, dextra):
    """Placeholder resolved by its overload inside kernels."""
    raise NotImplementedError("custom_shape is only callable from kernels")


@overload(custom_shape, prefer_literal=True,
          jit_options=dict(inline="always"))
def _custom_shape(model_id, r2, params, row, at, ndim, dextra):
    shape = None
    if isinstance(model_id, types.IntegerLiteral):
        shape = _REGISTRY.get(int(model_id.literal_value))
    if shape is None:
        def unknown(model_id, r2, params, row, at, ndim, dextra):
            return math.nan, math.nan
        return unknown

    def registered(model_id, r2, params, row, at, ndim, dextra):
        return shape(r2, params, row, at, ndim, dextra)
    return registered


def make_shape(fun, dfun, n_extra, fd_relative=1e-6):
    """Compile trackpy's ``fun(r2, p, ndim)`` (and ``dfun``, returning
    ``(f, [df/dr2, df/dp...])``) into a kernel shape; without ``dfun`` the
    derivatives are central differences. Raises whatever Numba raises when
    the functions cannot be compiled."""
    fun_jit = numba.njit(fun)
    if dfun is not None:
        dfun_jit = numba.njit(dfun)

        @numba.njit
        def shape(r2, params, row, at, ndim, dextra):
            p = params[row, at:at + n_extra]  # a view: no allocation
            f, derivs = dfun_jit(r2, p, ndim)
            for j in range(n_extra):
                dextra[j] = derivs[1 + j]
            return float(f), float(derivs[0])
        return shape

    @numba.njit
    def shape_fd(r2, params, row, at, ndim, dextra):
        p = params[row, at:at + n_extra]  # a view: no allocation
        f = float(fun_jit(r2, p, ndim))
        h = fd_relative * max(r2, 1.0)
        df_dr2 = (float(fun_jit(r2 + h, p, ndim))
                  - float(fun_jit(r2 - h, p, ndim))) / (2.0 * h)
        if n_extra > 0:
            p = p.copy()  # varied below
        for j in range(n_extra):
            step = fd_relative * max(abs(p[j]), 1.0)
            keep = p[j]
            p[j] = keep + step
            up = float(fun_jit(r2, p, ndim))
            p[j] = keep - step
            down = float(fun_jit(r2, p, ndim))
            p[j] = keep
            dextra[j] = (up - down) / (2.0 * step)
        return f, df_dr2
    return shape_fd
