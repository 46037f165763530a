"""``dynamics.forward`` against the plain NumPy float64 oracle in tests/naive.py.

Errors are max|got - expected| / max(1, max|expected|): relative for large states and
absolute for small ones (a small output that comes from cancelling O(1) terms carries
their rounding, ~eps, whatever the implementation).
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dynamics
import naive
from conftest import (DTYPES, FLOAT32_MAX_GAIN, KINDS, RTOL, examples, net_configs,
                      random_network, seeds)


def error(got, expected):
    return naive.relative_error(got, expected, tiny=1.0)


def _check_against_naive(result, net, kind, x, h0, c0, bidirectional, rtol):
    output, h_n, c_n = naive.forward(naive.params_from_network(net), kind, x, h0, c0,
                                     bidirectional)
    assert result.output.shape == output.shape
    assert result.h_n.shape == h_n.shape
    assert error(result.output, output) <= rtol
    assert error(result.h_n, h_n) <= rtol
    if kind == "lstm":
        assert result.c_n.shape == c_n.shape
        assert error(result.c_n, c_n) <= rtol
    else:
        assert result.c_n is None


@examples(30)
@given(cfg=net_configs(T=(1, 12), bias=(True, False)), scale=st.sampled_from([0.5, 1.0, 3.0]))
def test_forward_matches_naive(cfg, scale):
    net = cfg.network()
    x, h0, c0 = cfg.inputs(scale=scale)
    result = dynamics.forward(net, x, cfg.h0_arg(h0, c0))
    for array in (result.output, result.h_n) + ((result.c_n,) if cfg.kind == "lstm" else ()):
        assert array.dtype == np.dtype(cfg.dtype)
        assert np.all(np.isfinite(array))
    _check_against_naive(result, net, cfg.kind, x, h0, c0 if cfg.kind == "lstm" else None,
                         cfg.bidirectional, RTOL[np.dtype(cfg.dtype)])


@examples(20)
@given(cfg=net_configs(T=(1, 8), num_layers=(1, 2)))
def test_forward_default_state_is_zero(cfg):
    net = cfg.network()
    x, _, _ = cfg.inputs()
    result = dynamics.forward(net, x)
    zeros = np.zeros((cfg.n_states, cfg.B, cfg.H), cfg.dtype)
    explicit = dynamics.forward(net, x, cfg.h0_arg(zeros, zeros))
    np.testing.assert_array_equal(result.output, explicit.output)
    np.testing.assert_array_equal(result.h_n, explicit.h_n)
    _check_against_naive(result, net, cfg.kind, x, None, None, cfg.bidirectional,
                         RTOL[np.dtype(cfg.dtype)])


@examples(20)
@given(cfg=net_configs(T=(1, 8), num_layers=(1, 2), gain=(0.1, FLOAT32_MAX_GAIN)),
       x_dtype=st.sampled_from(DTYPES))
def test_result_has_the_inputs_dtype(cfg, x_dtype):
    """Parameters of one dtype run on input of another: the result has the input's dtype."""
    net = cfg.network()
    x, h0, c0 = cfg.inputs()
    x, h0, c0 = x.astype(x_dtype), h0.astype(x_dtype), c0.astype(x_dtype)
    result = dynamics.forward(net, x, cfg.h0_arg(h0, c0))
    assert result.output.dtype == x_dtype
    assert result.h_n.dtype == x_dtype
    if cfg.kind == "lstm":
        assert result.c_n.dtype == x_dtype
    # float32 parameters are exact in float64; float64 ones are rounded for float32 input
    _check_against_naive(result, net, cfg.kind, x, h0, c0 if cfg.kind == "lstm" else None,
                         cfg.bidirectional, RTOL[np.dtype(x_dtype)])


@examples(20)
@given(cfg=net_configs(T=(0, 0)), with_state=st.booleans())
def test_empty_sequence(cfg, with_state):
    net = cfg.network()
    x, h0, c0 = cfg.inputs()
    assert x.shape == (0, cfg.B, cfg.D)
    result = dynamics.forward(net, x, cfg.h0_arg(h0, c0) if with_state else None)
    assert result.output.shape == (0, cfg.B, cfg.dirs * cfg.H)
    assert result.output.dtype == np.dtype(cfg.dtype)
    expected_h = h0 if with_state else np.zeros_like(h0)
    expected_c = c0 if with_state else np.zeros_like(c0)
    assert result.h_n.shape == h0.shape and result.h_n.dtype == h0.dtype
    np.testing.assert_array_equal(result.h_n, expected_h)
    if cfg.kind == "lstm":
        assert result.c_n.shape == c0.shape
        np.testing.assert_array_equal(result.c_n, expected_c)
    else:
        assert result.c_n is None


@examples(15)
@given(cfg=net_configs(T=(1, 8), num_layers=(1, 2), B=(1, 3)),
       E=st.integers(1, 3), own_inputs=st.booleans())
def test_ensemble_forward_matches_naive(cfg, E, own_inputs):
    """Every member of an ensemble against the oracle run on that member's parameters."""
    net = cfg.network(ensemble=E)
    x, h0, c0 = cfg.inputs(ensemble=E, own_inputs=own_inputs)
    result = dynamics.forward(net, x, cfg.h0_arg(h0, c0))
    assert result.output.shape == (cfg.T, E, cfg.B, cfg.dirs * cfg.H)
    assert result.h_n.shape == (cfg.n_states, E, cfg.B, cfg.H)
    rtol = RTOL[np.dtype(cfg.dtype)]
    for e in range(E):
        member = dynamics.Network([[cell.member(e) for cell in layer] for layer in net.layers])
        xe = x[:, e] if own_inputs else x
        output, h_n, c_n = naive.forward(naive.params_from_network(member), cfg.kind, xe,
                                         h0[:, e], c0[:, e] if cfg.kind == "lstm" else None,
                                         cfg.bidirectional)
        assert error(result.output[:, e], output) <= rtol
        assert error(result.h_n[:, e], h_n) <= rtol
        if cfg.kind == "lstm":
            assert error(result.c_n[:, e], c_n) <= rtol


@pytest.mark.parametrize("kind", KINDS)
@given(seed=seeds)
@examples(10)
def test_single_cell_is_a_one_layer_network(kind, seed):
    """A bare cell runs like a 1-layer network and like naive.cell_step applied T times."""
    net = random_network(kind, 3, 4, seed=seed)
    cell = net.layers[0][0]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(5, 2, 3))
    h, c = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    h0 = (h[None], c[None]) if kind == "lstm" else h[None]
    a, b = dynamics.forward(cell, x, h0), dynamics.forward(net, x, h0)
    np.testing.assert_array_equal(a.output, b.output)
    np.testing.assert_array_equal(a.h_n, b.h_n)
    p = cell.parameters()
    for t in range(5):
        h, c_new = naive.cell_step(kind, x[t], h, c, p["weight_ih"], p["weight_hh"],
                                   p["bias_ih"], p["bias_hh"])
        c = c if c_new is None else c_new
        assert error(a.output[t], h) <= 1e-12
    if kind == "lstm":
        assert error(a.c_n[0], c) <= 1e-12

