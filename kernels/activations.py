"""Scalar nonlinearities and their derivatives, shared by every kernel.

Each function takes and returns one float32 or float64 scalar and keeps its dtype
(constants are made with ``type(x)``). ``tanh`` and ``sigmoid`` go through the
arithmetic-only ``kernels.fastexp.exp``, which LLVM vectorises, instead of ``np.tanh`` or
libm's ``exp``, which it does not without Intel SVML; ``tests/test_invariants.py``
pins their accuracy against NumPy (a few ulp absolute).
Derivatives are written in terms of the function's output ``y``, which is what the
forward pass saves.
"""
from kernels._jit import jit
from kernels.fastexp import exp


@jit
def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x))."""
    one = type(x)(1.0)
    return one / (one + exp(-x))


#: Cephes' rational approximation of tanh(x) = x + x^3 P(x^2) / Q(x^2) for |x| < 0.625,
#: accurate to float64 rounding (Moshier, Cephes Mathematical Library, tanh.c).
TANH_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
TANH_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


@jit
def tanh(x):
    """Hyperbolic tangent with a small relative error everywhere: Cephes' rational form
    for |x| < 0.625, where 1 - 2 / (exp(2x) + 1) would lose its relative accuracy to
    cancellation, and that form beyond (exact at +-inf, nan-preserving). Both are
    computed and one is selected, so loops over tanh still vectorise."""
    one = type(x)(1.0)
    two = type(x)(2.0)
    z = x * x
    p = (type(x)(TANH_P[0]) * z + type(x)(TANH_P[1])) * z + type(x)(TANH_P[2])
    q = ((z + type(x)(TANH_Q[0])) * z + type(x)(TANH_Q[1])) * z + type(x)(TANH_Q[2])
    small = x + x * z * (p / q)
    large = one - two / (exp(two * x) + one)
    return small if abs(x) < type(x)(0.625) else large


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
