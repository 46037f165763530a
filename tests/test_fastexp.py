"""Accuracy of the vectorisable exp used by every gate nonlinearity."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernels.fastexp import exp


@numba.njit
def exp_all(a, out):
    for i in range(a.shape[0]):
        out[i] = exp(a[i])


def ulp_error(dtype, x):
    out = np.empty_like(x)
    exp_all(x, out)
    with np.errstate(over="ignore"):
        exact = np.exp(x.astype(np.float64) if dtype == np.float32 else x.astype(np.longdouble))
    normal = (exact >= np.finfo(dtype).tiny) & (exact <= np.finfo(dtype).max)
    ulp = np.spacing(exact[normal].astype(dtype)).astype(np.longdouble)
    return out, exact, normal, np.abs(out[normal] - exact[normal]) / ulp


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_within_two_ulp_over_the_whole_range(dtype):
    info = np.finfo(dtype)
    edge = float(np.log(info.max))
    x = np.linspace(-edge * 1.05, edge * 1.05, 1_000_001).astype(dtype)
    out, exact, normal, ulp = ulp_error(dtype, x)
    assert ulp.max() <= 2.0
    assert np.all(out[exact > info.max] == np.inf)
    assert np.all(out[exact < info.tiny] <= info.tiny)  # flushed to 0 or exact subnormal


@settings(max_examples=50, deadline=None)
@given(st.floats(-80.0, 80.0, width=32), st.sampled_from([np.float32, np.float64]))
def test_random_points(value, dtype):
    assert ulp_error(dtype, np.array([value], dtype))[3].max() <= 2.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0], dtype)
    out = np.empty_like(x)
    exp_all(x, out)
    assert out[0] == 1 and out[1] == 1 and out[2] == np.inf and out[3] == 0
    assert np.isnan(out[4]) and out.dtype == dtype
    assert abs(out[5] - np.e) <= 2 * np.spacing(dtype(np.e))


def test_python_fallback_is_numpy():
    assert exp(1.5) == np.exp(1.5)
