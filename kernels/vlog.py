"""A natural logarithm that LLVM can vectorise (as :mod:`.vexp` is for
``exp``): ``math.log`` is a call into the C library, one value at a time,
and on the Poisson deviance's per-pixel loop it cost more than the rest.

``log(x) = e ln 2 + log(m)`` with ``x = 2**e m``, ``m`` in
``[sqrt(1/2), sqrt(2))`` taken from the bits of ``x``, and
``log(m) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...)`` with
``s = (m - 1) / (m + 1)``, ``|s| <= 0.172``: eleven terms leave an error
below 1e-18 relative, so the result is within a few units in the last
place of the C library's. The exponent becomes a double through its bits
(no integer-to-double conversion, which has no vector instruction before
AVX-512). Zero gives -inf, infinity inf, a negative number or NaN NaN;
subnormal numbers are scaled into the normal range first.
"""
import math

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from .jit import inline_kernel

_LN2_HI = 0.6931471803691238  # ln 2 split in two: e * _LN2_HI is exact
_LN2_LO = 1.9082149292705877e-10
_SQRT2 = math.sqrt(2.0)
_TINY = 2.2250738585072014e-308  # the least normal double
_SCALE = 2.0 ** 54  # brings a subnormal number into the normal range
_MANTISSA = (1 << 52) - 1
_ONE_BITS = 1023 << 52  # the bits of 1.0
_MAGIC = 0x4330000000000000  # the bits of 2**52: low bits added exactly
# 1 / (2k + 1) for k = 0..10
_D0, _D1, _D2, _D3, _D4, _D5, _D6, _D7, _D8, _D9, _D10 = [
    1.0 / (2 * k + 1) for k in range(11)]


@intrinsic
def _exponent(typingctx, x):
    """The biased exponent field of a positive double, as a double."""
    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        bits = builder.bitcast(args[0], i64)
        field = builder.lshr(bits, ir.Constant(i64, 52))
        # 2**52 + field, exactly, then 2**52 taken away
        as_double = builder.bitcast(builder.or_(field, ir.Constant(i64, _MAGIC)),
                                    ir.DoubleType())
        return builder.fsub(as_double, ir.Constant(ir.DoubleType(), 2.0 ** 52))
    return types.float64(types.float64), codegen


@intrinsic
def _mantissa(typingctx, x):
    """A positive double's mantissa as a double in [1, 2)."""
    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        bits = builder.bitcast(args[0], i64)
        bits = builder.or_(builder.and_(bits, ir.Constant(i64, _MANTISSA)),
                           ir.Constant(i64, _ONE_BITS))
        return builder.bitcast(bits, ir.DoubleType())
    return types.float64(types.float64), codegen


@inline_kernel
def log(x):
    """The natural logarithm of ``x`` (see the module docstring)."""
    small = x < _TINY
    y = x * _SCALE if small else x
    e = _exponent(y) - (1023.0 + 54.0 if small else 1023.0)
    m = _mantissa(y)
    high = m > _SQRT2
    m = 0.5 * m if high else m
    e = e + 1.0 if high else e
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    s4 = s2 * s2
    s8 = s4 * s4
    # Estrin's scheme in s2, degree 10
    low = (_D0 + _D1 * s2) + (_D2 + _D3 * s2) * s4
    mid = (_D4 + _D5 * s2) + (_D6 + _D7 * s2) * s4
    top = (_D8 + _D9 * s2) + _D10 * s4
    series = low + (mid + top * s8) * s8
    value = e * _LN2_HI + (e * _LN2_LO + 2.0 * s * series)
    value = -math.inf if x == 0.0 else value
    value = math.inf if x == math.inf else value
    return value if x > 0.0 else (math.nan if x != 0.0 else value)
