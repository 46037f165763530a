"""Mean-field theory of random recurrent networks (analysis/meanfield.py).

The oracle for the Gaussian integrals is scipy's adaptive quadrature (QUADPACK), on
z >= 0 and doubled (the integrands are even), with sech written through exp(-|u|) so
that it never overflows. The fixed point, the edge of chaos and the exponent are
checked against their defining equations and against closed forms (relu; autonomous
tanh below g = 1; the small-q expansion just above g = 1).
"""
import math

import numpy as np
import pytest
import xarray as xr
from hypothesis import assume, example, given
from hypothesis import strategies as st
from numpy.polynomial.hermite_e import hermegauss
from scipy.integrate import quad

from analysis import meanfield
from analysis.meanfield import (chi_1, critical_gain, dataset, fixed_point_variance,
                                lag_scale, lyapunov_max, variance_map)
from conftest import examples

Q_STAR_G3 = fixed_point_variance(3.0)  # about 6.3: tanh's poles 0.63 from the real axis


def tanh_sq(u):
    return math.tanh(u) ** 2


def sech_sq(u):
    e = math.exp(-2.0 * abs(u))
    return 4.0 * e / (1.0 + e) ** 2


def sech_4(u):
    return sech_sq(u) ** 2


def gaussian_mean_quad(f, q):
    """E[f(sqrt(q) z)], z ~ N(0, 1), for an even f, by QUADPACK over z >= 0."""
    root = math.sqrt(q)
    value, _ = quad(lambda z: f(root * z) * math.exp(-0.5 * z * z), 0.0, math.inf,
                    epsabs=1e-13, limit=200)
    return 2.0 * value / math.sqrt(2.0 * math.pi)


def slope_of_variance_map(q, gain):
    """F'(q) for tanh: d/dq g^2 E[tanh^2(sqrt(q) z)] = g^2 E[3 sech^4 - 2 sech^2]."""
    return gain ** 2 * (3.0 * gaussian_mean_quad(sech_4, q) - 2.0 * gaussian_mean_quad(sech_sq, q))


variances = st.floats(-8.0, 2.0).map(lambda e: 10.0 ** e)  # q in [1e-8, 100], log-uniform
gains = st.floats(0.1, 3.0)
# sigma >= 1e-100 keeps q* ~ sigma^2 and the integrands around it normal floats
sigmas = st.one_of(st.just(0.0), st.floats(1e-100, 2.0))


# --- Gaussian integrals ----------------------------------------------------------

@examples(30)
@given(q=variances)
@example(q=Q_STAR_G3)
@example(q=100.0)
def test_gaussian_means_match_quad(q):
    assert abs(meanfield._mean_tanh_sq(q) - gaussian_mean_quad(tanh_sq, q)) < 1e-10
    assert abs(meanfield._mean_sech_4(q) - gaussian_mean_quad(sech_4, q)) < 1e-10


@pytest.mark.skipif(np.finfo(np.longdouble).eps == np.finfo(float).eps,
                    reason="needs long doubles wider than double")
def test_u_minus_tanh_keeps_its_digits():
    """Against 64-bit-mantissa long doubles, where u - tanh(u) loses 3/u^2 of its ~1e-19
    relative precision: below 1e-13 for u >= 0.01."""
    u = np.concatenate([np.geomspace(0.01, 3.0, 200), [0.5, np.nextafter(0.5, 0)]])
    exact = u.astype(np.longdouble) - np.tanh(u.astype(np.longdouble))
    relative = np.abs((meanfield._u_minus_tanh(u) - exact) / exact).astype(float)
    assert relative.max() < 1e-13


@examples(20)
@given(q=st.floats(-8.0, -5.0).map(lambda e: 10.0 ** e))
def test_mean_square_excess_matches_its_small_q_expansion(q):
    """q - E[tanh^2] = 2 q^2 - 17/3 q^3 + 62/3 q^4 - O(q^5) (to a relative 46 q^3 <
    1e-13 for q <= 1e-5): no cancellation."""
    expansion = 2 * q ** 2 - 17 / 3 * q ** 3 + 62 / 3 * q ** 4
    assert meanfield._mean_sq_excess(q) == pytest.approx(expansion, rel=1e-11, abs=0)


def test_gaussian_means_at_q_zero_are_exact():
    assert meanfield._mean_tanh_sq(0.0) == 0.0
    assert meanfield._mean_sech_4(0.0) == 1.0


@examples(10)
@given(q=variances, gain=gains)
def test_relu_variance_map_matches_quad(q, gain):
    relu_sq = gaussian_mean_quad(lambda u: u * u, q) / 2  # E[relu(u)^2] = E[u^2] / 2
    assert abs(variance_map(q, gain, nonlinearity="relu") - gain ** 2 * relu_sq) < 1e-10 * (1 + q)


def test_201_node_gauss_hermite_is_not_accurate_enough_at_g_3():
    """Why the composite rule: tanh(sqrt(q) z) has poles at distance pi / (2 sqrt(q))
    from the real axis, and a global Gauss-Hermite rule converges slowly for them. At
    the fixed point of g = 3 (q* = 6.3, poles 0.63 away) 201 nodes err past 1e-8, while
    the composite Gauss-Legendre rule agrees with quad to 1e-10 (test above)."""
    nodes, weights = hermegauss(201)
    weights = weights / math.sqrt(2.0 * math.pi)
    root = math.sqrt(Q_STAR_G3)
    hermite = np.dot(weights, np.cosh(root * nodes) ** -4.0)
    reference = gaussian_mean_quad(sech_4, Q_STAR_G3)
    assert abs(hermite - reference) > 1e-8
    assert abs(meanfield._mean_sech_4(Q_STAR_G3) - reference) < 1e-10


# --- fixed point ------------------------------------------------------------------

@examples(25)
@given(gain=gains, sigma_x=sigmas, sigma_b=sigmas)
@example(gain=3.0, sigma_x=0.0, sigma_b=0.0)
@example(gain=1.0 + 1e-6, sigma_x=0.0, sigma_b=0.0)
def test_q_star_is_the_stable_fixed_point(gain, sigma_x, sigma_b):
    autonomous = sigma_x ** 2 + sigma_b ** 2 == 0.0  # sigma ~ 1e-200 squares to 0
    assume(not (autonomous and gain == 1.0))  # marginal: F'(0) = 1
    q = fixed_point_variance(gain, sigma_x, sigma_b)
    assert abs(variance_map(q, gain, sigma_x, sigma_b) - q) <= 1e-12 * q
    assert slope_of_variance_map(q, gain) < 1.0
    assert (q == 0.0) == (autonomous and gain <= 1.0)


@examples(20)
@given(sigma=st.floats(-100.0, -8.0).map(lambda e: 10.0 ** e))
def test_q_star_at_gain_1_with_small_input_matches_small_q_expansion(sigma):
    """g = 1: q* ~ sqrt(s/2) solves s - 2 q^2 + 17/3 q^3 = O(q^4) (to a relative 5 q^2 <
    1e-15 for sigma <= 1e-8): no digits lost to F(q) - q cancelling."""
    s = sigma ** 2
    q = math.sqrt(s / 2)
    for _ in range(5):   # Newton on the truncated equation
        q -= (s - 2 * q ** 2 + 17 / 3 * q ** 3) / (-4 * q + 17 * q ** 2)
    assert fixed_point_variance(1.0, sigma) == pytest.approx(q, rel=1e-11, abs=0)


@pytest.mark.parametrize("k", range(4, 10))
def test_q_star_just_above_gain_1_matches_small_q_expansion(k):
    """g = 1 + 10^-k: E[tanh^2] = q - 2 q^2 + 17/3 q^3 + O(q^4), so q* solves
    17/3 q^2 - 2 q + (1 - 1/g^2) = 0 to a relative O(q^2)."""
    gain = 1.0 + 10.0 ** -k
    eps = 1.0 - 1.0 / gain ** 2
    expected = (1.0 - math.sqrt(1.0 - 17.0 / 3.0 * eps)) * 3.0 / 17.0
    assert fixed_point_variance(gain) == pytest.approx(expected, rel=1e-6)


def test_q_star_of_huge_gains_is_about_g_squared():
    """E[tanh^2] -> 1 for q* ~ g^2: q* = g^2 + s to rounding, up to the largest gain."""
    for gain, sigma_x in [(1e78, 1.0), (1e150, 0.0)]:
        assert fixed_point_variance(gain, sigma_x) == pytest.approx(gain ** 2, rel=1e-12)


def test_relu_fixed_point_closed_form():
    gain = np.array([0.5, 1.0, 1.4, 1.4142, 2.0, 3.0])
    assert np.array_equal(fixed_point_variance(gain, 1.0, 0.5, nonlinearity="relu"),
                          np.append(1.25 / (1.0 - gain[:4] ** 2 / 2), [np.inf, np.inf]))
    assert np.array_equal(fixed_point_variance(gain, nonlinearity="relu"),
                          [0.0, 0.0, 0.0, 0.0, np.inf, np.inf])


# --- chi_1, Lyapunov exponent, edge of chaos --------------------------------------

@examples(20)
@given(gain=st.floats(0.01, 1.0))
def test_autonomous_tanh_below_1_has_exponent_ln_g(gain):
    assert abs(lyapunov_max(gain) - math.log(gain)) < 1e-12
    assert chi_1(gain) == gain * gain


@examples(10)
@given(sigma_x=st.floats(0.0, 3.0), sigma_b=st.floats(0.0, 1.0))
@example(sigma_x=1e-6, sigma_b=0.0)
def test_exponent_vanishes_at_critical_gain(sigma_x, sigma_b):
    gain = critical_gain(sigma_x, sigma_b)
    assert gain >= 1.0
    assert abs(lyapunov_max(gain, sigma_x, sigma_b)) < 1e-9
    assert lag_scale(gain * 0.99, sigma_x, sigma_b) > 0 > lag_scale(gain * 1.01, sigma_x, sigma_b)


def test_critical_gain_autonomous_tanh_is_1():
    assert critical_gain() == 1.0
    assert lyapunov_max(1.0) == 0.0
    assert lag_scale(1.0) == math.inf


def test_chi_1_at_fixed_point_matches_quad():
    for gain, sigma_x in [(3.0, 0.0), (1.5, 0.7), (0.8, 2.0)]:
        q = fixed_point_variance(gain, sigma_x)
        assert abs(chi_1(gain, sigma_x) - gain ** 2 * gaussian_mean_quad(sech_4, q)) < 1e-10


@examples(10)
@given(gain=gains, sigma_x=sigmas, sigma_b=sigmas)
def test_relu_chi_1_and_critical_gain(gain, sigma_x, sigma_b):
    assert chi_1(gain, sigma_x, sigma_b, "relu") == pytest.approx(gain ** 2 / 2, rel=1e-15)
    assert lyapunov_max(gain, sigma_x, sigma_b, "relu") == pytest.approx(
        math.log(gain ** 2 / 2) / 2, rel=1e-12, abs=1e-15)
    assert critical_gain(sigma_x, sigma_b, "relu") == math.sqrt(2.0)


@examples(10)
@given(sigma=st.floats(0.0, 3.0), step=st.floats(1e-3, 1.0))
@example(sigma=1e-103, step=1.0)
def test_input_suppresses_chaos(sigma, step):
    """Molgedey et al.: the critical gain grows with the input (and bias) strength."""
    assert critical_gain(sigma) < critical_gain(sigma + step)
    assert critical_gain(0.5, sigma) < critical_gain(0.5, sigma + step)
    assert lyapunov_max(2.0, sigma) > lyapunov_max(2.0, sigma + step)


# --- vectorisation -----------------------------------------------------------------

@examples(5)
@given(gain=st.lists(gains, min_size=1, max_size=5),
       sigma_x=st.lists(sigmas, min_size=1, max_size=3),
       nonlinearity=st.sampled_from(["tanh", "relu"]))
def test_arrays_equal_loops_over_scalars(gain, sigma_x, nonlinearity):
    column = np.array(sigma_x)[:, None]
    for function in (fixed_point_variance, chi_1, lyapunov_max, lag_scale):
        got = function(np.array(gain), column, 0.3, nonlinearity)
        assert got.shape == (len(sigma_x), len(gain)) and got.dtype == np.float64
        loop = [[function(g, s, 0.3, nonlinearity) for g in gain] for s in sigma_x]
        assert np.array_equal(got, loop)
    got = critical_gain(np.array(sigma_x), 0.3, nonlinearity)
    assert np.array_equal(got, [critical_gain(s, 0.3, nonlinearity) for s in sigma_x])


def test_scalars_give_python_floats():
    for value in (fixed_point_variance(2.0), chi_1(2.0), lyapunov_max(2.0), lag_scale(2.0),
                  critical_gain(0.5), variance_map(1.0, 2.0)):
        assert type(value) is float


# --- dataset ----------------------------------------------------------------------

def test_dataset_layout_and_values():
    gain, sigma_x = [0.5, 1.0, 2.0, 3.0], [0.0, 0.5, 1.0]
    ds = dataset(gain, sigma_x=sigma_x, sigma_b=0.2)
    assert isinstance(ds, xr.Dataset)
    assert dict(ds.sizes) == {"sigma_x": 3, "gain": 4}
    for name in ("q_star", "chi_1", "lyapunov_max", "lag_scale"):
        assert ds[name].dims == ("sigma_x", "gain")
    assert ds.critical_gain.dims == ("sigma_x",)
    assert ds.lyapunov_max.attrs["units"] == "nats/step"
    assert ds.lag_scale.attrs["units"] == "steps"
    assert ds.chi_1.attrs["units"] == ds.q_star.attrs["units"] == "1"
    assert ds.attrs["dtype"] == "float64"
    for name in list(ds.data_vars) + list(ds.coords):
        assert ds[name].attrs["long_name"] and "units" in ds[name].attrs
    assert ds.attrs["nonlinearity"] == "tanh" and ds.attrs["sigma_b"] == 0.2
    assert {"package_version", "numba_version", "config", "created"} <= set(ds.attrs)
    np.testing.assert_array_equal(ds.gain, gain)
    np.testing.assert_array_equal(ds.sigma_x, sigma_x)
    column = np.array(sigma_x)[:, None]
    for name, function in (("q_star", fixed_point_variance), ("chi_1", chi_1),
                           ("lyapunov_max", lyapunov_max), ("lag_scale", lag_scale)):
        np.testing.assert_array_equal(ds[name], function(gain, column, 0.2))
    np.testing.assert_array_equal(ds.critical_gain, critical_gain(sigma_x, 0.2))


def test_dataset_relu_marks_divergence_with_inf():
    ds = dataset([1.0, 2.0], sigma_x=[1.0], nonlinearity="relu")
    assert ds.attrs["nonlinearity"] == "relu"
    np.testing.assert_array_equal(ds.q_star, [[2.0, np.inf]])
    np.testing.assert_array_equal(ds.chi_1, [[0.5, 2.0]])


# --- bad input --------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, words", [
    (dict(gain=1.0, nonlinearity="sigmoid"), ValueError, ["nonlinearity", "'sigmoid'"]),
    (dict(gain=0.0), ValueError, ["gain", "> 0", "0.0"]),
    (dict(gain=-1.0), ValueError, ["gain", "> 0", "-1.0"]),
    (dict(gain=[1.0, np.nan]), ValueError, ["gain", "finite", "nan"]),
    (dict(gain=np.inf), ValueError, ["gain", "finite", "inf"]),
    (dict(gain=1e160), ValueError, ["gain", "at most 1e+150", "1e+160"]),   # g^2 overflows
    (dict(gain=1.0, sigma_x=1e160), ValueError, ["sigma_x", "at most 1e+150"]),
    (dict(gain=1.0, sigma_x=-0.1), ValueError, ["sigma_x", ">= 0", "-0.1"]),
    (dict(gain=1.0, sigma_b=[0.0, np.inf]), ValueError, ["sigma_b", "finite", "inf"]),
    (dict(gain="1.0"), TypeError, ["gain", "real", "<U3"]),
    (dict(gain=1.0, sigma_x=1j), TypeError, ["sigma_x", "real", "complex128"]),
])
@pytest.mark.parametrize("function", [fixed_point_variance, chi_1, lyapunov_max, lag_scale])
def test_bad_input_is_refused_by_name(function, kwargs, error, words):
    with pytest.raises(error) as info:
        function(**kwargs)
    for word in words:
        assert word in str(info.value)


def test_bad_input_critical_gain_variance_map_and_dataset():
    with pytest.raises(ValueError, match=r"sigma_x must be finite and >= 0, at most 1e\+150, "
                                         "got -1.0"):
        critical_gain(-1.0)
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        critical_gain(nonlinearity="gelu")
    with pytest.raises(ValueError, match="q must be finite and >= 0"):
        variance_map(-1.0, 1.0)
    with pytest.raises(ValueError, match=r"gain must be 1-D, got shape \(2, 1\)"):
        dataset([[1.0], [2.0]])
    with pytest.raises(ValueError, match=r"sigma_b must be a scalar, got shape \(2,\)"):
        dataset([1.0], sigma_b=[0.0, 1.0])
    with pytest.raises(ValueError, match="gain must be finite and > 0"):
        dataset([1.0, -2.0])
