"""A vectorisable ``exp`` for float32 and float64 kernels.

LLVM vectorises loops only over arithmetic it can see; a call to libm's ``exp``
(what ``np.exp`` compiles to without Intel SVML) stays scalar and dominates the cost of
gated cells. This ``exp`` is arithmetic only: Cody-Waite range reduction
``x = k ln2 + r``, ``|r| <= ln2/2``, a Taylor polynomial for ``e^r`` (degree 7 in float32,
13 in float64: truncation error below half an ulp) evaluated in Estrin's manner, and
``2^k`` assembled from its bits. Products and sums are fused multiply-adds where the
CPU has them (``kernels.registers.multiply_add``): fewer instructions, one rounding.
Its accuracy against ``np.exp`` is pinned in ``tests/test_fastexp.py``: within 2 ulp,
0 where the result would be below the smallest normal number (absolute error under
1e-38 in float32, 1e-308 in float64), inf above overflow, nan for nan.
The toolkit's own ``tanh`` and ``sigmoid`` (``kernels.activations``) build on
``exp_parts``, each clamping its argument to where it needs no overflow handling;
``exp`` is for users' ``@njit`` loops.
"""
import math

import numpy as np
from llvmlite import ir
import numba
from numba import types
from numba.extending import intrinsic, overload

from kernels.registers import multiply_add


@intrinsic
def power_of_two(typingctx, k):
    """2**k for a whole float32 (float64) k in [-126, 127] ([-1022, 1023]), the exponents
    of normal numbers: k + bias is added to 2**23 (2**52), which puts it in the low bits
    of the sum, and those bits are shifted into the exponent field. Float and integer
    vector operations only (no float-to-int64 conversion, which AVX2 lacks and LLVM then
    does lane by lane)."""
    if k not in (types.float32, types.float64):
        return None
    mantissa, bias = (23, 127) if k == types.float32 else (52, 1023)

    def codegen(context, builder, signature, args):
        float_type = args[0].type
        int_type = ir.IntType(k.bitwidth)
        placed = builder.fadd(args[0], ir.Constant(float_type, float(2 ** mantissa + bias)))
        bits = builder.shl(builder.bitcast(placed, int_type), ir.Constant(int_type, mantissa))
        return builder.bitcast(bits, float_type)

    return k(k), codegen


def _constants(bitwidth):
    """Typed constants of the float32 or float64 algorithm."""
    if bitwidth == 32:
        f, degree = np.float32, 7
        ln2_hi, ln2_lo = 0.693359375, -2.12194440e-4        # Cephes split of ln 2
        lo, hi = -87.33654, 88.72283                          # ~ ln(FLT_MIN), ln(FLT_MAX)
    else:
        f, degree = np.float64, 13
        ln2_hi, ln2_lo = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # fdlibm
        lo, hi = -708.3964185322641, 709.782712893384
    coefficients = tuple(f(1.0 / math.factorial(n)) for n in range(degree + 1))
    return f, coefficients, f(1.0 / math.log(2.0)), f(ln2_hi), f(ln2_lo), f(lo), f(hi)


def _estrin(coefficients):
    """A compiled polynomial sum_n coefficients[n] r**n in Estrin's manner: split into
    even and odd parts, p(r) = E(r**2) + r O(r**2), each split again: a chain of about
    2 log2(degree) operations instead of Horner's 2 degree, so that a loop calling
    ``exp`` is not held up by one long chain (float64 LSTM cell on a Zen 3 core, with
    the power of two below: 17-20 ns per unit instead of 30). Inlined into ``exp``
    (closures are not cached on their own; their callers are)."""
    if len(coefficients) == 1:
        constant = coefficients[0]
        return numba.njit(inline="always")(lambda r: constant)
    low = _estrin(coefficients[0::2])  # in r**2: sum_j c_2j (r**2)**j ...
    high = _estrin(coefficients[1::2])  # ... and sum_j c_2j+1 (r**2)**j

    @numba.njit(inline="always")
    def polynomial(r):
        square = r * r
        return multiply_add(r, high(square), low(square))

    return polynomial


def exp_parts(x):
    """(k, s) with e**x = 2**k (1 + s): k = round(x / ln 2), a whole float, and
    s = e**r - 1 for r = x - k ln 2, |r| <= ln(2) / 2, computed without cancellation
    (so that e**x - 1 = 2**k s + (2**k - 1) is accurate too, as ``kernels.activations.tanh``
    uses). For finite x in the range of ``exp``; Python gets the same from NumPy."""
    k = np.floor(x / np.log(2.0) + 0.5)
    return k, np.expm1(x - k * np.log(2.0))


@overload(exp_parts)
def _exp_parts(x):
    if not isinstance(x, types.Float):
        return None
    f, coefficients, log2e, ln2_hi, ln2_lo, _, _ = _constants(x.bitwidth)
    half = f(0.5)
    higher = _estrin(coefficients[2:])  # e^r - 1 = r + r^2 (1/2 + r/6 + ...)

    def impl(x):
        k = np.floor(multiply_add(x, log2e, half))
        r = multiply_add(-k, ln2_lo, multiply_add(-k, ln2_hi, x))
        return k, multiply_add(r * r, higher(r), r)

    return impl


def exp(x):
    """e**x; compiled code gets the vectorisable version, Python gets ``np.exp``."""
    return np.exp(x)


@overload(exp)
def _exp(x):
    if not isinstance(x, types.Float):
        return None
    f, _, _, _, _, lo, hi = _constants(x.bitwidth)
    one, two, zero, inf = f(1.0), f(2.0), f(0.0), f(np.inf)

    def impl(x):
        k, s = exp_parts(x)
        # 2^k as 2 * 2^(k-1) for k > 0, so that k = bias + 1 (just below overflow) is
        # still a normal number's exponent; 1 + s rounded once: within an ulp (the
        # whole polynomial by Estrin's splitting: 3.1)
        positive = k > zero
        y = (one + s) * power_of_two(k - one if positive else k) * (two if positive else one)
        y = inf if x > hi else y
        return zero if x < lo else y

    return impl
