"""An ``exp`` that LLVM can vectorise.

``math.exp`` compiles to a call into the C library, one value at a time,
and stops the loop around it from vectorising: on the models' per-pixel
loops it costs as much as the rest of the arithmetic. This one is plain
arithmetic: ``exp(x) = 2**n * exp(f)`` with ``n = round(x / ln 2)`` and
``|f| <= ln(2) / 2``, ``exp(f)`` by its Taylor series to degree 12 (error
below 2e-16 relative), and ``2**n`` put together from its exponent bits.
Relative error within about 1e-14 of the C library's. Below -708 it
returns 0 (the C library gives a denormal down to -745, then 0), above 709
infinity; NaN stays NaN.

Two choices keep a vector of values in vector registers from start to end
(the per-pixel loops are bound by this function's instructions and their
latency):

- ``2**n`` comes from ``n`` as a double (:func:`_two_to`): converting a
  double to a 64-bit integer has no vector instruction before AVX-512, and
  LLVM did it one lane at a time.
- The polynomial is evaluated by Estrin's scheme, in pairs, pairs of pairs
  and so on: a chain of 5 dependent multiply-adds rather than Horner's 12.
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .jit import inline_kernel

_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split in two: n * _LN2_HI is exact
_LN2_LO = 1.9082149292705877e-10
_LOWEST = -708.0  # exp(-708) is still a normal double
_HIGHEST = 709.0
# n + _SHIFT is exact for |n| <= 1023, and its low bits are n + 1023, the
# biased exponent of 2**n
_SHIFT = 2.0 ** 52 + 1023.0
# 1 / k! for k = 0..12
_C = [1.0 / math.factorial(k) for k in range(13)]
_C0, _C1, _C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12 = _C


@intrinsic
def _two_to(typingctx, n):
    """``2.0 ** n`` for an integer-valued double ``n`` in [-1022, 1023],
    from its bits: the low bits of ``n + 2**52 + 1023`` moved to the
    exponent field."""
    def codegen(context, builder, signature, args):
        shifted = builder.fadd(args[0], ir.Constant(ir.DoubleType(), _SHIFT))
        bits = builder.bitcast(shifted, ir.IntType(64))
        bits = builder.shl(bits, ir.Constant(ir.IntType(64), 52))
        return builder.bitcast(bits, ir.DoubleType())
    return types.float64(types.float64), codegen


@inline_kernel
def exp(x):
    """``e ** x`` (see the module docstring)."""
    xc = min(max(x, _LOWEST), _HIGHEST)
    # (np.floor keeps a double: math.floor gives an integer in Numba)
    n = np.floor(xc * _LOG2E + 0.5)
    f = xc - n * _LN2_HI - n * _LN2_LO
    f2 = f * f
    f4 = f2 * f2
    f8 = f4 * f4
    low = ((_C0 + _C1 * f) + (_C2 + _C3 * f) * f2) \
        + ((_C4 + _C5 * f) + (_C6 + _C7 * f) * f2) * f4
    high = ((_C8 + _C9 * f) + (_C10 + _C11 * f) * f2) + _C12 * f4
    value = (low + high * f8) * _two_to(n)
    # beyond the range, what the C library gives (0 in place of its
    # denormals): a clipped value would not decay, and r2 * f, which the
    # size derivative holds, would not vanish for a huge r2
    value = 0.0 if x < _LOWEST else value
    value = math.inf if x > _HIGHEST else value
    return value if x == x else x
