"""The two recurrence strategies (per-sequence walk, per-step BLAS) agree.

Which one runs is chosen by size (``dynamics.layer.recurrence_kernels``); here the
thresholds are lowered so the BLAS path runs at test sizes, and both are compared on
every cell, direction, truncation and ensemble shape, over runs shorter and longer than
the backward passes' prefetch distance (``kernels.sequence.PREFETCH_STEPS``).
"""
import functools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import dynamics
import dynamics.layer
from kernels.cells import PANELS_BEAT_BLAS

KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def run(net, x, grad_output, truncation, gemm, monkeypatch):
    with monkeypatch.context() as m:
        if gemm:
            m.setattr(dynamics.layer, "GEMM_MIN_WEIGHT_BYTES", 0)
            m.setattr(dynamics.layer, "GEMM_MIN_BATCH", 1)
        result = dynamics.forward(net, x)
        grads = dynamics.bptt(net, x, grad_output, truncation=truncation)
    return result, grads


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(KINDS), steps=st.integers(1, 20), batch=st.integers(1, 4),
       hidden=st.integers(1, 6), layers=st.integers(1, 2), bidirectional=st.booleans(),
       ensemble=st.sampled_from([None, 3]), truncation=st.sampled_from([None, 1, 3]),
       seed=st.integers(0, 2**31))
def test_blas_recurrence_equals_sequence_walk(kind, steps, batch, hidden, layers, bidirectional,
                                              ensemble, truncation, seed):
    monkeypatch = pytest.MonkeyPatch()
    net = dynamics.Network.init(kind, 2, hidden, num_layers=layers, bidirectional=bidirectional,
                                ensemble=ensemble, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps, batch, 2))
    width = (2 if bidirectional else 1) * hidden
    out_shape = (steps, batch, width) if ensemble is None else (steps, ensemble, batch, width)
    grad_output = rng.normal(size=out_shape)
    walk = run(net, x, grad_output, truncation, False, monkeypatch)
    blas = run(net, x, grad_output, truncation, True, monkeypatch)
    np.testing.assert_allclose(blas[0].output, walk[0].output, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(blas[0].h_n, walk[0].h_n, rtol=1e-12, atol=1e-13)
    assert blas[1].keys() == walk[1].keys()
    for name in walk[1]:
        np.testing.assert_allclose(blas[1][name], walk[1][name], rtol=1e-11, atol=1e-12,
                                   err_msg=name)


def test_default_choice_follows_weight_size():
    small = np.zeros((1, 64, 64), np.float32)  # 16 KiB
    large = np.zeros((1, 4096, 1024), np.float32)
    assert dynamics.layer.recurrence_kernels(small, 32)[0].__name__ == "sequence_forward"
    assert dynamics.layer.recurrence_kernels(large, 32)[0].__name__ == "sequence_forward_gemm"
    assert dynamics.layer.recurrence_kernels(large, 1)[0].__name__ == "sequence_forward"


@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(KINDS), steps=st.integers(1, 6), batch=st.integers(1, 20),
       inputs=st.integers(1, 40), hidden=st.integers(1, 20), bidirectional=st.booleans(),
       ensemble=st.sampled_from([None, 2]), dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**31))
def test_input_projections_in_the_step_are_the_same_bits(kind, steps, batch, inputs, hidden,
                                                         bidirectional, ensemble, dtype, seed):
    """The batched recurrence's input projections, computed in each step or all at once
    beforehand (``dynamics.layer.PROJECT_IN_STEP_INPUTS``)."""
    net = dynamics.Network.init(kind, inputs, hidden, num_layers=2, bidirectional=bidirectional,
                                ensemble=ensemble, seed=seed, dtype=dtype)
    x = np.random.default_rng(seed).normal(size=(steps, batch, inputs)).astype(dtype)
    results = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(dynamics.layer, "GEMM_MIN_WEIGHT_BYTES", 0)
        m.setattr(dynamics.layer, "GEMM_MIN_BATCH", 1)
        for limit in (0, 1 << 30):
            m.setattr(dynamics.layer, "PROJECT_IN_STEP_INPUTS", limit)
            result = dynamics.forward(net, x)
            grads = dynamics.bptt(net, x, np.cos(result.output))
            results.append((result.output, result.h_n, grads))
    (out_a, h_a, g_a), (out_b, h_b, g_b) = results
    # the same bits where both run in register panels; where BLAS projects all steps
    # beforehand (kernels.cells.PANELS_BEAT_BLAS false), the same up to rounding
    if PANELS_BEAT_BLAS:
        same = np.testing.assert_array_equal
    else:
        tolerance = 2e-4 if dtype == np.float32 else 1e-11
        same = functools.partial(np.testing.assert_allclose, rtol=tolerance, atol=tolerance)
    same(out_a, out_b)
    same(h_a, h_b)
    for name in g_a:
        same(g_a[name], g_b[name], err_msg=name)


@settings(max_examples=10, deadline=None)
@given(kind=st.sampled_from(KINDS), steps=st.integers(1, 12), batch=st.integers(1, 20),
       hidden=st.integers(1, 12), rows=st.integers(1, 7), ensemble=st.sampled_from([None, 3]),
       dtype=st.sampled_from([np.float32, np.float64]), truncation=st.sampled_from([None, 2]),
       seed=st.integers(0, 2**31))
def test_batched_recurrence_gives_the_same_bits_in_blocks_of_any_rows(
        kind, steps, batch, hidden, rows, ensemble, dtype, truncation, seed):
    """``dynamics.layer.gemm_rows`` chooses the blocks of batch rows from shapes; any
    choice, including blocks that do not divide the batch, gives the same bits."""
    net = dynamics.Network.init(kind, 3, hidden, num_layers=2, bidirectional=True,
                                ensemble=ensemble, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps, batch, 3)).astype(dtype)
    results = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(dynamics.layer, "GEMM_MIN_WEIGHT_BYTES", 0)
        m.setattr(dynamics.layer, "GEMM_MIN_BATCH", 1)
        for block_rows in (dynamics.layer.GEMM_ROWS, rows):
            m.setattr(dynamics.layer, "gemm_rows", lambda *shape: block_rows)
            result = dynamics.forward(net, x)
            grads = dynamics.bptt(net, x, np.cos(result.output), truncation=truncation)
            results.append((result.output, result.h_n, grads))
    (out_a, h_a, g_a), (out_b, h_b, g_b) = results
    np.testing.assert_array_equal(out_a, out_b)
    np.testing.assert_array_equal(h_a, h_b)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        np.testing.assert_array_equal(g_a[name], g_b[name], err_msg=name)


def test_float64_blocks_are_twice_as_tall_where_items_remain():
    gemm_rows, tall = dynamics.layer.gemm_rows, 2 * dynamics.layer.GEMM_ROWS
    assert gemm_rows(np.float64, 8, 32) == tall
    assert gemm_rows(np.float64, 1, 256) == tall
    assert gemm_rows(np.float64, 1, 32) == dynamics.layer.GEMM_ROWS  # keep two items
    assert gemm_rows(np.float32, 8, 32) == dynamics.layer.GEMM_ROWS
