"""Scalar nonlinearities and their derivatives, shared by every kernel.

Each function takes and returns one float32 or float64 scalar and keeps its dtype
(constants are made with ``type(x)``). ``tanh`` and ``sigmoid`` go through the
arithmetic-only ``kernels.fastexp.exp``, which LLVM vectorises, instead of ``np.tanh`` or
libm's ``exp``, which it does not without Intel SVML; ``tests/test_invariants.py``
pins their accuracy against NumPy (a few ulp absolute).
Derivatives are written in terms of the function's output ``y``, which is what the
forward pass saves.
"""
import math

from kernels._jit import jit
from kernels.fastexp import exp, exp_parts, power_of_two
from kernels.registers import multiply_add


@jit
def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x))."""
    one = type(x)(1.0)
    return one / (one + exp(-x))


#: |x| beyond which tanh(x) is +-1 to float64 rounding (and float32's): e^-40 < 2^-57.
TANH_SATURATION = 20.0


@jit
def tanh(x):
    """Hyperbolic tangent as -u / (2 + u) with u = e^(-2|x|) - 1, and the sign of x.
    u comes from ``kernels.fastexp.exp_parts`` (e^m = 2^k (1 + s), so e^m - 1 =
    2^k s + (2^k - 1)) with no cancellation near 0, so the relative error stays a few
    eps everywhere, subnormal x included. One exp and one division, no branch:
    loops over tanh vectorise. Exact at +-inf, nan-preserving."""
    one = type(x)(1.0)
    two = type(x)(2.0)
    m = -two * abs(x)
    limit = type(x)(-2.0 * TANH_SATURATION)
    m = limit if m < limit else m  # (nan stays nan)
    k, s = exp_parts(m)
    scale = power_of_two(k)  # k in [-58, 0]
    u = multiply_add(scale, s, scale - one)
    return math.copysign(-u / (two + u), x)


@jit
def relu(x):
    """max(x, 0); nan stays nan."""
    return type(x)(0.0) if x <= 0 else x


@jit
def dsigmoid(y):
    """Derivative of the sigmoid, given its output y."""
    return y * (type(y)(1.0) - y)


@jit
def dtanh(y):
    """Derivative of tanh, given its output y."""
    return type(y)(1.0) - y * y


@jit
def drelu(y):
    """Derivative of relu, given its output y (0 at the kink, as torch)."""
    return type(y)(1.0) if y > 0 else type(y)(0.0)
