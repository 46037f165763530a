"""A vectorisable ``exp`` for float32 and float64 kernels.

LLVM vectorises loops only over arithmetic it can see; a call to libm's ``exp``
(what ``np.exp`` compiles to without Intel SVML) stays scalar and dominates the cost of
gated cells. This ``exp`` is arithmetic only: Cody-Waite range reduction
``x = k ln2 + r``, ``|r| <= ln2/2``, a Taylor polynomial for ``e^r`` (degree 7 in float32,
13 in float64: truncation error below half an ulp) and ``2^k`` assembled from its bits.
Its accuracy against ``np.exp`` is pinned in ``tests/test_invariants.py``: within 2 ulp,
0 where the result would be below the smallest normal number (absolute error under
1e-38 in float32, 1e-308 in float64), inf above overflow, nan for nan.
"""
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


@intrinsic
def _float_from_bits(typingctx, bits):
    """Reinterpret an int32 (int64) as the float32 (float64) with those bits."""
    if bits == types.int32:
        return types.float32(bits), lambda ctx, builder, sig, args: builder.bitcast(
            args[0], ir.FloatType())
    if bits == types.int64:
        return types.float64(bits), lambda ctx, builder, sig, args: builder.bitcast(
            args[0], ir.DoubleType())
    return None


def _constants(bitwidth):
    """Typed constants of the float32 or float64 algorithm."""
    if bitwidth == 32:
        f, i, degree, mantissa, bias = np.float32, np.int32, 7, 23, 127
        ln2_hi, ln2_lo = 0.693359375, -2.12194440e-4        # Cephes split of ln 2
        lo, hi = -87.33654, 88.72283                          # ~ ln(FLT_MIN), ln(FLT_MAX)
    else:
        f, i, degree, mantissa, bias = np.float64, np.int64, 13, 52, 1023
        ln2_hi, ln2_lo = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # fdlibm
        lo, hi = -708.3964185322641, 709.782712893384
    coefficients = tuple(f(1.0 / math.factorial(n)) for n in range(degree, -1, -1))
    return (f, i, mantissa, bias, coefficients, f(1.0 / math.log(2.0)), f(ln2_hi),
            f(ln2_lo), f(lo), f(hi))


def exp(x):
    """e**x; compiled code gets the vectorisable version, Python gets ``np.exp``."""
    return np.exp(x)


@overload(exp)
def _exp(x):
    if not isinstance(x, types.Float):
        return None
    f, i, mantissa, bias, coefficients, log2e, ln2_hi, ln2_lo, lo, hi = _constants(x.bitwidth)
    half, one, two, zero, inf = f(0.5), f(1.0), f(2.0), f(0.0), f(np.inf)
    int_bias, shift, int_one = i(bias), i(mantissa), i(1)

    def impl(x):
        k = np.floor(x * log2e + half)
        r = (x - k * ln2_hi) - k * ln2_lo
        poly = coefficients[0]
        for c in coefficients[1:]:
            poly = poly * r + c
        # 2^k as 2 * 2^(k-1) for k > 0, so that k = bias + 1 (just below overflow) is
        # still a normal number's exponent
        k_int = i(k)
        positive = k_int > 0
        # numba widens int32 arithmetic to int64: cast back before reinterpreting
        scale = _float_from_bits(i((k_int - (int_one if positive else i(0)) + int_bias) << shift))
        y = poly * scale * (two if positive else one)
        y = inf if x > hi else y
        return zero if x < lo else y

    return impl
