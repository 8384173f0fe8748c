"""An ``exp`` that LLVM can vectorise.

``math.exp`` compiles to a call into the C library, one value at a time,
and stops the loop around it from vectorising: on the models' per-pixel
loops it costs as much as the rest of the arithmetic. This one is plain
arithmetic: ``exp(x) = 2**n * exp(f)`` with ``n = round(x / ln 2)`` and
``|f| <= ln(2) / 2``, ``exp(f)`` by its Taylor series to degree 13 (error
below 1e-16 relative), and ``2**n`` put together from its exponent bits.
Relative error within about 1e-14 of the C library's. Below -708 it
returns 0 (the C library gives a denormal down to -745, then 0), above 709
infinity; NaN stays NaN.
"""
import math

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .jit import inline_kernel

_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split in two: n * _LN2_HI is exact
_LN2_LO = 1.9082149292705877e-10
_LOWEST = -708.0  # exp(-708) is still a normal double
_HIGHEST = 709.0


@intrinsic
def _two_to(typingctx, n):
    """``2.0 ** n`` for an integer ``n`` in [-1022, 1023], from its bits."""
    def codegen(context, builder, signature, args):
        biased = builder.add(args[0], ir.Constant(ir.IntType(64), 1023))
        bits = builder.shl(biased, ir.Constant(ir.IntType(64), 52))
        return builder.bitcast(bits, ir.DoubleType())
    return types.float64(types.int64), codegen


@inline_kernel
def exp(x):
    """``e ** x`` (see the module docstring)."""
    xc = min(max(x, _LOWEST), _HIGHEST)
    n = math.floor(xc * _LOG2E + 0.5)
    f = xc - n * _LN2_HI - n * _LN2_LO
    p = 1.0 + f * (1.0 + f * (1.0 / 2 + f * (1.0 / 6 + f * (
        1.0 / 24 + f * (1.0 / 120 + f * (1.0 / 720 + f * (1.0 / 5040 + f * (
            1.0 / 40320 + f * (1.0 / 362880 + f * (1.0 / 3628800 + f * (
                1.0 / 39916800 + f * (1.0 / 479001600 + f * (
                    1.0 / 6227020800)))))))))))))
    value = p * _two_to(int(n))
    # beyond the range, what the C library gives (0 in place of its
    # denormals): a clipped value would not decay, and r2 * f, which the
    # size derivative holds, would not vanish for a huge r2
    value = 0.0 if x < _LOWEST else value
    value = math.inf if x > _HIGHEST else value
    return value if x == x else x
