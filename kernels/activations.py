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


@jit
def tanh(x):
    """Hyperbolic tangent, as 1 - 2 / (exp(2x) + 1) (exact at +-inf, nan-preserving)."""
    one = type(x)(1.0)
    two = type(x)(2.0)
    return one - two / (exp(two * x) + one)


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
