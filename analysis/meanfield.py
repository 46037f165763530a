r"""Mean-field theory of random recurrent networks.

The network is ``h_t = phi(a_t)``, ``a_t = W h_{t-1} + x_t + b`` with
``W_ij ~ N(0, g^2/N)``, white input ``x`` of variance ``sigma_x^2`` (independent over
units and steps), a quenched bias ``b`` of variance ``sigma_b^2`` and ``phi`` = tanh
or relu. For large N the pre-activations ``a_t`` are Gaussian, and their variance
follows the map

    q -> F(q) = g^2 E[phi(sqrt(q) z)^2] + sigma_x^2 + sigma_b^2,    z ~ N(0, 1),

whose stable fixed point is ``q*``. A small perturbation of the state, and the
gradient sent back through one step, have their mean squared norm multiplied by

    chi_1 = g^2 E[phi'(sqrt(q*) z)^2]

per step. So ``lambda_max = ln(chi_1) / 2`` is the largest Lyapunov exponent (nats per
step), ``chi_1 = 1`` is the edge of chaos (``critical_gain``), and squared gradient
norms over a lag of ``l`` steps scale as ``chi_1^l = exp(-l / xi)`` with
``xi = -1 / ln(chi_1)`` (``lag_scale``). For relu, ``E[phi(sqrt(q) z)^2] = q/2`` and
``chi_1 = g^2/2`` in closed form; for tanh the Gaussian integrals are computed to
1e-10 or better (see ``_even_gaussian_mean``).

References
----------
L. Molgedey, J. Schuchhardt and H. G. Schuster, "Suppressing chaos in neural networks
by noise", Phys. Rev. Lett. 69, 3717 (1992).
B. Poole, S. Lahiri, M. Raghu, J. Sohl-Dickstein and S. Ganguli, "Exponential
expressivity in deep neural networks through transient chaos", NeurIPS (2016).
S. S. Schoenholz, J. Gilmer, S. Ganguli and J. Sohl-Dickstein, "Deep information
propagation", ICLR (2017).
"""
import inspect
import math
import textwrap
from fractions import Fraction

import numpy as np
import xarray as xr
from scipy.optimize import brentq
from scipy.special import erfc

from analysis._common import provenance

NONLINEARITIES = ("tanh", "relu")

# Gaussian integrals (tanh). E[f(sqrt(q) z)] for an even f is twice the integral over
# z >= 0. tanh(sqrt(q) z) has complex poles at distance pi / (2 sqrt(q)) from the real
# axis, so a global rule such as Gauss-Hermite converges slowly once q is large (201
# nodes err by 1e-5 in E[sech^4] at q* = 6.3, the fixed point of g = 3). Instead:
# composite Gauss-Legendre on
# [0, end] in panels no wider than min(1, 0.5 / sqrt(q)), a quarter of the pole
# distance or less, where 16 nodes are exact to far below 1e-16. The integral stops
# at z = _Z, past which the Gaussian weighs < 8e-24, or earlier, at u = sqrt(q) z = _U,
# past which tanh^2 and sech^4 equal their limits 1 and 0 within 4 exp(-2 _U) < 4e-26:
# the rest is then f(inf) * P(z > _U / sqrt(q)). (Adding that term when stopping at
# _Z would spoil the relative accuracy for small q, where E[tanh^2] ~ q.)
_Z = 10.0
_U = 30.0
_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(16)
_SQRT_2PI = math.sqrt(2.0 * math.pi)

# brentq's settings: every root bracketed below is > 0, so the tolerance is relative
# (rtol is the smallest brentq accepts, 4 machine epsilons; xtol the smallest normal
# float). A root far below its bracket's width (q* ~ 1e-200 for sigma ~ 1e-100) can
# need hundreds of halvings, hence the generous maxiter.
_BRENT = dict(xtol=np.finfo(float).tiny, rtol=4.0 * np.finfo(float).eps, maxiter=2000)


def _even_gaussian_mean(f, f_inf, q):
    """E[f(sqrt(q) z)] for z ~ N(0, 1), an even f that equals ``f_inf`` beyond
    ``|u| = _U`` (to 4e-26) and a float ``q >= 0``: accurate to a few rounding errors
    of the result."""
    if q == 0.0:
        return float(f(0.0))
    root = math.sqrt(q)
    end = min(_Z, _U / root)
    panels = math.ceil(end * max(1.0, 2.0 * root))
    half = 0.5 * end / panels
    z = (2.0 * half * np.arange(panels)[:, None] + half * (1.0 + _NODES)).ravel()
    integrand = f(root * z) * np.exp(-0.5 * z * z) / _SQRT_2PI
    integral = half * np.dot(np.tile(_WEIGHTS, panels), integrand)
    tail = f_inf * 0.5 * erfc(end / math.sqrt(2.0)) if end < _Z else 0.0
    return 2.0 * (integral + tail)


def _mean_tanh_sq(q):
    """E[tanh(sqrt(q) z)^2]."""
    return _even_gaussian_mean(lambda u: np.tanh(u) ** 2, 1.0, q)


def _mean_sech_4(q):
    """E[tanh'(sqrt(q) z)^2] = E[sech(sqrt(q) z)^4]."""
    return _even_gaussian_mean(lambda u: np.cosh(u) ** -4, 0.0, q)


def _tanh_series(n_terms):
    """a_0..a_(n-1) of tanh(u) = sum_k a_k u^(2k+1), exactly: tanh' = 1 - tanh^2 gives
    a_0 = 1 and (2k + 1) a_k = -sum_(i+j=k-1) a_i a_j."""
    a = [Fraction(1)]
    for k in range(1, n_terms):
        a.append(-sum(a[i] * a[k - 1 - i] for i in range(k)) / (2 * k + 1))
    return a


# u - tanh(u) = -sum_(k >= 1) a_k u^(2k+1) = u^3 (1/3 - 2 u^2/15 + ...): 18 terms reach
# 1e-17 of the first below |u| = 0.5 (each term about (2u/pi)^2 times the one before)
_SERIES = [-float(a) for a in _tanh_series(19)[1:]]


def _u_minus_tanh(u):
    """u - tanh(u), without the cancellation of the difference for small |u|."""
    u2 = u * u
    return np.where(np.abs(u) < 0.5, u * u2 * np.polynomial.polynomial.polyval(u2, _SERIES),
                    u - np.tanh(u))


def _mean_sq_excess(q):
    """D(q) = E[u^2 - tanh(u)^2] = q - E[tanh(u)^2], u = sqrt(q) z: about 2 q^2 for small
    q, where the difference would cancel, so there it is integrated as
    (u - tanh u)(u + tanh u). (Below q = 1/4, u stays below _U up to z = _Z.)"""
    if q >= 0.25:
        return q - _mean_tanh_sq(q)
    return _even_gaussian_mean(lambda u: _u_minus_tanh(u) * (u + np.tanh(u)), None, q)


def _variance_map(q, gain, s, nonlinearity):
    """F(q) for scalars; ``s = sigma_x^2 + sigma_b^2``."""
    mean_sq = _mean_tanh_sq(q) if nonlinearity == "tanh" else 0.5 * q
    return gain * gain * mean_sq + s


def _fixed_point(gain, s, nonlinearity):
    """Stable fixed point q* of F for scalars; ``s = sigma_x^2 + sigma_b^2``."""
    g2 = gain * gain
    if nonlinearity == "relu":
        # F(q) = (g^2/2) q + s: a line of slope g^2/2.
        if s == 0.0 and g2 <= 2.0:
            return 0.0
        return s / (1.0 - 0.5 * g2) if g2 < 2.0 else math.inf
    # Below q = 1/4, F(q) - q is taken as (g^2 - 1) q - g^2 D(q) + s with
    # D(q) = q - E[tanh^2] ~ 2 q^2: so it keeps its relative accuracy near g = 1 and
    # q = 0, where q* ~ sqrt(s/2) or (g^2 - 1)/2 and g^2 E[tanh^2] - q would lose it all
    # ((g - 1)(g + 1) is exact there). Above, as g^2 E[tanh^2] + s - q (no cancellation,
    # and no g^2 q to overflow for large g).
    excess_gain = (gain - 1.0) * (gain + 1.0)

    def excess(q):   # F(q) - q
        if q < 0.25:
            return excess_gain * q - g2 * _mean_sq_excess(q) + s
        return g2 * _mean_tanh_sq(q) + s - q

    if s == 0.0:
        # q = 0 is a fixed point, stable iff F'(0) = g^2 <= 1. Otherwise the stable one
        # is the root of F(q)/q - 1, which tends to g^2 - 1 > 0 as q -> 0 and is
        # E[tanh^2] - 1 < 0 at q = g^2.
        if g2 <= 1.0:
            return 0.0
        return brentq(lambda q: excess(q) / q if q > 0.0 else excess_gain, 0.0, g2, **_BRENT)
    # F(0) - 0 = s > 0 and F(q) - q = g^2 (E[tanh^2] - 1) < 0 at q = g^2 + s.
    return brentq(excess, 0.0, g2 + s, **_BRENT)


def _chi_1(gain, q_star, nonlinearity):
    """chi_1 for scalars, at the fixed point ``q_star``."""
    mean_slope_sq = _mean_sech_4(q_star) if nonlinearity == "tanh" else 0.5
    return gain * gain * mean_slope_sq


def _scalar_chi_1(gain, s, nonlinearity):
    return _chi_1(gain, _fixed_point(gain, s, nonlinearity), nonlinearity)


def _lag_scale(chi):
    """xi = -1 / ln(chi_1), +inf at chi_1 = 1."""
    log_chi = np.log(chi)
    with np.errstate(divide="ignore"):
        return np.where(log_chi == 0.0, np.inf, -1.0 / log_chi)


def _critical_gain(s, nonlinearity):
    """The gain where chi_1 = 1, for scalars."""
    if nonlinearity == "relu":
        return math.sqrt(2.0)

    def excess(gain):
        return _scalar_chi_1(gain, s, "tanh") - 1.0

    # chi_1 <= 1 at g = 1 (equality only for s = 0: brentq then returns 1 exactly) and
    # chi_1 grows like g for large g.
    upper = 2.0
    while excess(upper) <= 0.0:
        upper *= 2.0
    return brentq(excess, 1.0, upper, **_BRENT)


# --- argument checks and broadcasting --------------------------------------------


_LARGEST = 1e150  # squares, as the variances take them, stay finite


def _check_real(name, value, positive=False):
    """``value`` as a float64 array, refusing non-real entries and those outside
    [0, 1e150] (or, with ``positive``, (0, 1e150])."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real number or an array of them, "
                        f"got dtype {array.dtype}")
    array = array.astype(np.float64)
    bad = ~(array <= _LARGEST) | ((array <= 0.0) if positive else (array < 0.0))
    if bad.any():
        expected = f"finite and {'>' if positive else '>='} 0, at most {_LARGEST:.0e}"
        raise ValueError(f"{name} must be {expected}, got {float(array[bad].flat[0])!r}")
    return array


def _check_ndim(name, array, ndim):
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {'1-D' if ndim else 'a scalar'}, "
                         f"got shape {array.shape}")
    return array


def _check_nonlinearity(nonlinearity):
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, "
                         f"got {nonlinearity!r}")
    return nonlinearity


def _input_variance(sigma_x, sigma_b):
    return _check_real("sigma_x", sigma_x) ** 2 + _check_real("sigma_b", sigma_b) ** 2


def _check_network(gain, sigma_x, sigma_b, nonlinearity):
    """The checked network arguments as ``(gain, s, nonlinearity)``, with
    ``s = sigma_x^2 + sigma_b^2``."""
    return (_check_real("gain", gain, positive=True), _input_variance(sigma_x, sigma_b),
            _check_nonlinearity(nonlinearity))


def _result(array):
    """A 0-d result as a Python float, anything else as a float64 ndarray."""
    array = np.asarray(array, dtype=np.float64)
    return float(array) if array.ndim == 0 else array


def _elementwise(function, *arrays):
    """Apply a scalar ``function`` over broadcast float64 ``arrays``, element by
    element, so an array gives exactly what a loop over its elements gives."""
    return np.vectorize(function, otypes=[np.float64])(*arrays)


# --- docstrings ------------------------------------------------------------------

# The public functions share their parameters, each described once here; sigma_x
# stands for the pair (sigma_x, sigma_b).
_NETWORK_PARAMETERS = {
    "q": """q : float or array_like
    Pre-activation variance, >= 0 and at most 1e150.""",
    "gain": """gain : float or array_like
    Gain g of the recurrent weights, ``W_ij ~ N(0, g^2/N)``; > 0 and at most 1e150.""",
    "sigma_x": """sigma_x, sigma_b : float or array_like
    Standard deviations of the input and of the bias per unit; >= 0 and at most 1e150.""",
    "nonlinearity": """nonlinearity : {"tanh", "relu"}""",
}


def _network_docstring(result):
    """Decorator: complete a public function's docstring with its numpydoc Parameters
    section, one entry per argument of its signature from ``_NETWORK_PARAMETERS``, and
    a Returns section, ``result`` broadcast over the array arguments, both put just
    before the Examples section."""
    def document(function):
        if function.__doc__ is None:  # stripped by python -OO
            return function
        names = [name for name in inspect.signature(function).parameters
                 if name != "sigma_b"]
        sections = textwrap.indent("\n".join([
            "Parameters", "----------", *(_NETWORK_PARAMETERS[name] for name in names),
            "", "Returns", "-------", "float or ndarray",
            f"    {result}, broadcast over the array arguments.", "", ""]), "    ")
        summary, examples = function.__doc__.split("    Examples\n")
        function.__doc__ = f"{summary}{sections}    Examples\n{examples}"
        return function
    return document


# --- public API ------------------------------------------------------------------


@_network_docstring("F(q)")
def variance_map(q, gain, sigma_x=0.0, sigma_b=0.0, nonlinearity="tanh"):
    """The pre-activation variance map ``F(q) = g^2 E[phi(sqrt(q) z)^2] + sigma_x^2 +
    sigma_b^2``, z ~ N(0, 1).

    Examples
    --------
    >>> variance_map(2.0, 1.0, nonlinearity="relu")
    1.0
    >>> round(variance_map(1.0, 1.0), 10)
    0.3942944904
    """
    q = _check_real("q", q)
    gain, s, nonlinearity = _check_network(gain, sigma_x, sigma_b, nonlinearity)
    return _result(_elementwise(
        lambda q, g, s: _variance_map(q, g, s, nonlinearity), q, gain, s))


@_network_docstring("q*")
def fixed_point_variance(gain, sigma_x=0.0, sigma_b=0.0, nonlinearity="tanh"):
    """The stable fixed point ``q*`` of the pre-activation variance map.

    For tanh, ``q* = 0`` when ``sigma_x = sigma_b = 0`` and ``g <= 1``; otherwise the
    positive root of ``F(q) = q``, found by bracketing (Brent's method) to a relative
    4 machine epsilons. For relu, ``q* = (sigma_x^2 + sigma_b^2) / (1 - g^2/2)`` when
    ``g^2 < 2``; ``0`` when both sigmas are 0 and ``g^2 <= 2``; otherwise ``inf``
    (the variance diverges).

    Examples
    --------
    >>> fixed_point_variance(0.9)
    0.0
    >>> q = fixed_point_variance(3.0)
    >>> abs(variance_map(q, 3.0) - q) < 1e-14
    True
    >>> fixed_point_variance(1.0, sigma_x=1.0, nonlinearity="relu")
    2.0
    >>> fixed_point_variance([1.0, 2.0], sigma_x=1.0, nonlinearity="relu")
    array([ 2., inf])
    """
    gain, s, nonlinearity = _check_network(gain, sigma_x, sigma_b, nonlinearity)
    return _result(_elementwise(lambda g, s: _fixed_point(g, s, nonlinearity), gain, s))


@_network_docstring("chi_1 (dimensionless)")
def chi_1(gain, sigma_x=0.0, sigma_b=0.0, nonlinearity="tanh"):
    """The mean squared slope ``chi_1 = g^2 E[phi'(sqrt(q*) z)^2]``.

    The factor by which one step multiplies the mean squared norm of a small state
    perturbation, or of a gradient sent back in time. For relu, ``chi_1 = g^2/2``.

    Examples
    --------
    >>> chi_1(0.5)
    0.25
    >>> chi_1(2.0, nonlinearity="relu")
    2.0
    >>> bool(chi_1(1.0, sigma_x=0.5) < 1.0)
    True
    """
    gain, s, nonlinearity = _check_network(gain, sigma_x, sigma_b, nonlinearity)
    return _result(_elementwise(lambda g, s: _scalar_chi_1(g, s, nonlinearity), gain, s))


@_network_docstring("lambda_max in nats/step")
def lyapunov_max(gain, sigma_x=0.0, sigma_b=0.0, nonlinearity="tanh"):
    """The mean-field largest Lyapunov exponent ``ln(chi_1) / 2``, in nats per step.

    Negative in the ordered phase, positive in the chaotic one, zero at
    ``critical_gain``. For autonomous tanh networks with ``g < 1`` it is ``ln g``.

    Examples
    --------
    >>> round(lyapunov_max(0.5), 12) == round(math.log(0.5), 12)
    True
    >>> lyapunov_max(1.0)
    0.0
    >>> bool(lyapunov_max(2.0) > 0 > lyapunov_max(2.0, sigma_x=2.0))
    True
    """
    return _result(0.5 * np.log(chi_1(gain, sigma_x, sigma_b, nonlinearity)))


@_network_docstring("xi in steps")
def lag_scale(gain, sigma_x=0.0, sigma_b=0.0, nonlinearity="tanh"):
    """The lag scale ``xi = -1 / ln(chi_1)``, in steps.

    Squared gradient norms over a lag of ``l`` steps scale as
    ``chi_1^l = exp(-l / xi)``. ``xi`` is positive in the ordered phase (the decay
    length), ``+inf`` at the edge of chaos (``chi_1 = 1``) and negative in the chaotic
    phase, where ``-xi`` is the growth length; the formula's value is returned as is.

    Examples
    --------
    >>> round(lag_scale(np.exp(-0.5)), 12)
    1.0
    >>> lag_scale(1.0)
    inf
    >>> round(lag_scale(2.0, nonlinearity="relu"), 6)
    -1.442695
    """
    return _result(_lag_scale(chi_1(gain, sigma_x, sigma_b, nonlinearity)))


@_network_docstring("The critical gain")
def critical_gain(sigma_x=0.0, sigma_b=0.0, nonlinearity="tanh"):
    """The gain at the edge of chaos, where ``chi_1 = 1``.

    For tanh it is 1 without input or bias, and grows with ``sigma_x`` and ``sigma_b``:
    input noise suppresses chaos (Molgedey et al. 1992). It is found by Brent's method
    on ``chi_1(g) - 1`` over ``g >= 1``. For relu it is ``sqrt(2)`` always.

    Examples
    --------
    >>> critical_gain()
    1.0
    >>> round(critical_gain(sigma_x=1.0), 6)
    1.855589
    >>> critical_gain([0.0, 1.0], nonlinearity="relu")
    array([1.41421356, 1.41421356])
    """
    s = _input_variance(sigma_x, sigma_b)
    nonlinearity = _check_nonlinearity(nonlinearity)
    return _result(_elementwise(lambda s: _critical_gain(s, nonlinearity), s))


def dataset(gain, sigma_x=(0.0,), sigma_b=0.0, nonlinearity="tanh"):
    """The mean-field quantities over a grid of gains and input strengths.

    Parameters
    ----------
    gain : array_like
        1-D gains g of the recurrent weights; finite and > 0.
    sigma_x : array_like
        1-D input standard deviations; finite and >= 0.
    sigma_b : float
        Bias standard deviation, shared by the whole grid; finite and >= 0.
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    xarray.Dataset
        Dims ``(sigma_x, gain)``: ``q_star``, ``chi_1``, ``lyapunov_max`` (nats/step),
        ``lag_scale`` (steps); dim ``(sigma_x,)``: ``critical_gain``. Attrs
        ``nonlinearity`` and ``sigma_b``.

    Examples
    --------
    >>> ds = dataset([0.5, 1.0, 2.0], sigma_x=[0.0, 0.5])
    >>> dict(ds.sizes)
    {'sigma_x': 2, 'gain': 3}
    >>> ds.lyapunov_max.attrs["units"]
    'nats/step'
    >>> bool(ds.lyapunov_max.sel(sigma_x=0.0, gain=0.5) == np.log(0.5))
    True
    """
    gain = _check_ndim("gain", _check_real("gain", gain, positive=True), 1)
    sigma_x = _check_ndim("sigma_x", _check_real("sigma_x", sigma_x), 1)
    sigma_b = float(_check_ndim("sigma_b", _check_real("sigma_b", sigma_b), 0))
    nonlinearity = _check_nonlinearity(nonlinearity)
    s = sigma_x[:, None] ** 2 + sigma_b ** 2
    q_star = _elementwise(lambda g, s: _fixed_point(g, s, nonlinearity), gain, s)
    chi = _elementwise(lambda g, q: _chi_1(g, q, nonlinearity), gain, q_star)
    grid = ("sigma_x", "gain")

    def variable(dims, values, long_name, units):
        return xr.Variable(dims, values, {"long_name": long_name, "units": units})

    return xr.Dataset(
        {
            "q_star": variable(grid, q_star, "fixed-point pre-activation variance q*", "1"),
            "chi_1": variable(grid, chi, "mean squared slope chi_1 at q*", "1"),
            "lyapunov_max": variable(grid, 0.5 * np.log(chi),
                                     "mean-field largest Lyapunov exponent", "nats/step"),
            "lag_scale": variable(grid, _lag_scale(chi),
                                  "lag scale xi = -1/ln(chi_1)", "steps"),
            "critical_gain": variable(
                ("sigma_x",), _elementwise(lambda s: _critical_gain(s, nonlinearity),
                                           s[:, 0]),
                "gain at the edge of chaos (chi_1 = 1)", "1"),
        },
        coords={
            "sigma_x": variable(("sigma_x",), sigma_x,
                                "input standard deviation per unit", "1"),
            "gain": variable(("gain",), gain,
                             "recurrent weight gain g, W_ij ~ N(0, g^2/N)", "1"),
        },
        attrs={"nonlinearity": nonlinearity, "sigma_b": sigma_b,
               **provenance("meanfield.dataset", {"nonlinearity": nonlinearity,
                                                  "sigma_b": sigma_b}, np.float64)},
    )
