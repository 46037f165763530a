"""Exact invariants, structural symmetries, user-facing kernels, initialisers and clipping.

(a) a saturated LSTM keeps its cell state bitwise; (b) an identity ReLU RNN keeps its
state bitwise; (c) permuting hidden units permutes the states; (d) an ensemble equals
its members run one by one (and stacking members gives it; the register-blocked
product of the batched recurrence is the walk's, bitwise); (e) the step kernels called from a user's own @njit code;
(f) accuracy of the exp-based tanh / sigmoid; (g) the step kernels' docstring examples;
(h) the initialisers; (i) clip_grad_norm against torch.
"""
import doctest

import numba
import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st
from numba import prange

import dynamics
import kernels
import naive
from conftest import (DTYPES, KINDS, RTOL, examples, net_configs, random_cell, random_inputs,
                      random_network, seeds)
from kernels.activations import relu, sigmoid, tanh

pytestmark = pytest.mark.usefixtures("single_thread")

GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def member_network(net, e):
    return dynamics.Network([[cell.member(e) for cell in layer] for layer in net.layers])


def networks_like(net, transform):
    """A copy of ``net`` whose every cell's parameters go through ``transform(l, d, params)``."""
    layers = []
    for l, layer in enumerate(net.layers):
        cells = []
        for d, cell in enumerate(layer):
            params = transform(l, d, dict(cell.parameters()))
            options = {"nonlinearity": cell.nonlinearity} if cell.kind.startswith("rnn_") else {}
            cells.append(type(cell)(**params, **options))
        layers.append(cells)
    return dynamics.Network(layers)


# ----------------------------------------------------------------------------------------
# (a) saturated LSTM keeps its cell state exactly

@examples(20)
@given(T=st.integers(1, 300), B=st.integers(1, 3), D=st.integers(1, 4), H=st.integers(1, 5),
       num_layers=st.integers(1, 2), bidirectional=st.booleans(), seed=seeds,
       dtype=st.sampled_from(DTYPES), c_scale=st.sampled_from([1.0, 1e3, 1e-30]))
def test_saturated_lstm_keeps_cell_state(T, B, D, H, num_layers, bidirectional, seed, dtype,
                                         c_scale):
    """f = sigmoid(+1000 + O(1)) rounds to exactly 1, i = sigmoid(-1000 + O(1)) to exactly 0,
    so c_t = 1 * c_{t-1} + 0 * g = c_{t-1} bitwise, for any weights of modest size."""
    net = random_network("lstm", D, H, num_layers, bidirectional, seed=seed, dtype=dtype)

    def saturate(l, d, p):
        p["bias_ih"] = p["bias_ih"].copy()
        p["bias_ih"][0:H] = -1000.0      # input gate closed
        p["bias_ih"][H:2 * H] = 1000.0   # forget gate open
        return p

    net = networks_like(net, saturate)
    dirs = 2 if bidirectional else 1
    x, h0, c0 = random_inputs(T, B, D, num_layers * dirs, H, seed=seed, dtype=dtype)
    c0 = (c0 * c_scale).astype(dtype)
    result = dynamics.forward(net, x, (h0, c0))
    np.testing.assert_array_equal(result.c_n, c0)
    assert np.all(np.isfinite(result.output))
    # the gradient of the cell state passes back unchanged as well
    grad_c_n = random_inputs(0, B, 1, num_layers * dirs, H, seed=seed + 1, dtype=dtype)[2]
    grads = dynamics.bptt(net, x, np.zeros_like(result.output), (h0, c0),
                          grad_c_n=grad_c_n)
    np.testing.assert_array_equal(grads["c0"], grad_c_n)


# ----------------------------------------------------------------------------------------
# (b) identity ReLU RNN with zero input keeps a non-negative state exactly

@examples(20)
@given(T=st.integers(1, 300), B=st.integers(1, 4), D=st.integers(1, 4), H=st.integers(1, 8),
       seed=seeds, dtype=st.sampled_from(DTYPES), ensemble=st.sampled_from([None, 2]))
def test_identity_relu_rnn_keeps_state(T, B, D, H, seed, dtype, ensemble):
    cell = dynamics.RNN.init(D, H, init="identity", nonlinearity="relu", seed=seed,
                             dtype=dtype, ensemble=ensemble)
    assert not np.any(cell.bias_ih) and not np.any(cell.bias_hh)
    e = () if ensemble is None else (ensemble,)
    rng = np.random.default_rng(seed)
    h0 = np.abs(rng.normal(size=(1,) + e + (B, H))).astype(dtype)
    h0.reshape(-1)[::3] = 0.0     # zeros stay zeros (relu(0) = 0)
    x = np.zeros((T, B, D), dtype)
    result = dynamics.forward(cell, x, h0)
    np.testing.assert_array_equal(result.h_n, h0)
    expected = np.broadcast_to(h0[0], result.output.shape)
    np.testing.assert_array_equal(result.output, expected)


@examples(15)
@given(T=st.integers(1, 40), B=st.integers(1, 3), H=st.integers(1, 6), seed=seeds,
       exponent=st.sampled_from([-1, 1]), dtype=st.sampled_from(DTYPES))
def test_identity_relu_rnn_scaled_by_power_of_two(T, B, H, seed, exponent, dtype):
    """gain = 2**k: h_t = gain**t * relu(h0) exactly (powers of two scale without rounding);
    negative entries of h0 die at the first step and stay dead."""
    gain = 2.0 ** exponent
    cell = dynamics.RNN.init(2, H, init="identity", gain=gain, nonlinearity="relu", seed=seed,
                             dtype=dtype)
    h0 = np.random.default_rng(seed).normal(size=(1, B, H)).astype(dtype)
    result = dynamics.forward(cell, np.zeros((T, B, 2), dtype), h0)
    expected = np.stack([np.maximum(h0[0], 0) * dtype(gain ** (t + 1)) for t in range(T)])
    np.testing.assert_array_equal(result.output, expected)


# ----------------------------------------------------------------------------------------
# (c) permuting hidden units permutes the states

def gate_rows(kind, perm):
    H = len(perm)
    return np.concatenate([k * H + perm for k in range(GATES[kind])])


@examples(25)
@given(cfg=net_configs(T=(1, 8), num_layers=(1, 2), B=(1, 3), bias=(True, False)),
       data=st.data())
def test_hidden_permutation_equivariance(cfg, data):
    net = cfg.network()
    H, dirs = cfg.H, cfg.dirs
    perms = [[np.array(data.draw(st.permutations(range(H)), f"perm l{l} d{d}"))
              for d in range(dirs)] for l in range(cfg.num_layers)]

    def input_columns(l):
        if l == 0:
            return np.arange(cfg.D)
        return np.concatenate([d * H + perms[l - 1][d] for d in range(dirs)])

    def permute(l, d, p):
        """Works for parameters and for their gradients (same layout)."""
        rows, perm, cols = gate_rows(cfg.kind, perms[l][d]), perms[l][d], input_columns(l)
        out = {"weight_ih": p["weight_ih"][rows][:, cols],
               "weight_hh": p["weight_hh"][rows][:, perm]}
        if "bias_ih" in p:
            out["bias_ih"], out["bias_hh"] = p["bias_ih"][rows], p["bias_hh"][rows]
        return out

    permuted = networks_like(net, permute)
    flat = [perms[l][d] for l in range(cfg.num_layers) for d in range(dirs)]

    def permute_states(s):
        return np.stack([s[k][..., flat[k]] for k in range(len(flat))])

    x, h0, c0 = cfg.inputs()
    a = dynamics.forward(net, x, cfg.h0_arg(h0, c0))
    b = dynamics.forward(permuted, x, cfg.h0_arg(permute_states(h0), permute_states(c0)))
    out_cols = input_columns(cfg.num_layers)
    rtol = RTOL[np.dtype(cfg.dtype)]
    assert naive.relative_error(b.output, a.output[..., out_cols], tiny=1.0) <= rtol
    assert naive.relative_error(b.h_n, permute_states(a.h_n), tiny=1.0) <= rtol
    if cfg.kind == "lstm":
        assert naive.relative_error(b.c_n, permute_states(a.c_n), tiny=1.0) <= rtol
    # gradients permute the same way
    grad_output = np.random.default_rng(cfg.seed).normal(size=a.output.shape).astype(cfg.dtype)
    ga = dynamics.bptt(net, x, grad_output, cfg.h0_arg(h0, c0))
    gb = dynamics.bptt(permuted, x, grad_output[..., out_cols],
                       cfg.h0_arg(permute_states(h0), permute_states(c0)))
    gtol = 1e-10 if cfg.dtype == np.float64 else 1e-3
    for suffix, l, d, cell in net.named_cells():
        grads_a = {name: ga[name + suffix] for name in cell.parameters()}
        expected = permute(l, d, grads_a)
        for name in cell.parameters():
            error = naive.relative_error(gb[name + suffix], expected[name])
            assert error <= gtol, (name + suffix, error)
    assert naive.relative_error(gb["x"], ga["x"]) <= gtol
    assert naive.relative_error(gb["h0"], permute_states(ga["h0"])) <= gtol


# ----------------------------------------------------------------------------------------
# (d) an ensemble equals its members run one by one, bitwise

@examples(25)
@given(cfg=net_configs(T=(0, 6), num_layers=(1, 2), B=(1, 3), H=(1, 5),
                       bias=(True, False)),
       E=st.integers(1, 4), own_inputs=st.booleans())
def test_ensemble_equals_members(cfg, E, own_inputs):
    net = cfg.network(ensemble=E)
    assert net.ensemble_size == E
    x, h0, c0 = cfg.inputs(ensemble=E, own_inputs=own_inputs)
    lstm = cfg.kind == "lstm"
    result = dynamics.forward(net, x, cfg.h0_arg(h0, c0))
    assert result.output.shape == (cfg.T, E, cfg.B, cfg.dirs * cfg.H)
    grad_output = np.random.default_rng(cfg.seed).normal(size=result.output.shape)
    grad_output = grad_output.astype(cfg.dtype)
    grads = dynamics.bptt(net, x, grad_output, cfg.h0_arg(h0, c0))
    assert grads["x"].shape == x.shape
    x_sum = np.zeros(x.shape if not own_inputs else x[:, 0].shape, np.float64)
    for e in range(E):
        member = member_network(net, e)
        for name, value in member.parameters().items():
            np.testing.assert_array_equal(value, net.parameters()[name][e])
        xe = x[:, e] if own_inputs else x
        single = dynamics.forward(member, xe, cfg.h0_arg(h0[:, e], c0[:, e]))
        np.testing.assert_array_equal(result.output[:, e], single.output)
        np.testing.assert_array_equal(result.h_n[:, e], single.h_n)
        if lstm:
            np.testing.assert_array_equal(result.c_n[:, e], single.c_n)
        g = dynamics.bptt(member, xe, grad_output[:, e], cfg.h0_arg(h0[:, e], c0[:, e]))
        for name in member.parameters():
            np.testing.assert_array_equal(grads[name][e], g[name], err_msg=name)
        np.testing.assert_array_equal(grads["h0"][:, e], g["h0"])
        if lstm:
            np.testing.assert_array_equal(grads["c0"][:, e], g["c0"])
        if own_inputs:
            np.testing.assert_array_equal(grads["x"][:, e], g["x"])
        else:
            x_sum += g["x"]
    if not own_inputs:
        # the shared input's gradient is the sum over members (summation order may differ)
        tol = 1e-12 if cfg.dtype == np.float64 else 1e-5
        assert naive.relative_error(grads["x"], x_sum) <= tol


@examples(10)
@given(kind=st.sampled_from(KINDS), E=st.integers(1, 4), seed=seeds, bias=st.booleans())
def test_stacking_single_networks_gives_an_ensemble_of_them(kind, E, seed, bias):
    cells = [random_cell(kind, 2, 3, seed=seed + e, bias=bias) for e in range(E)]
    ensemble = dynamics.Cell.stack(cells)
    assert type(ensemble) is type(cells[0]) and ensemble.kind == kind
    for e, cell in enumerate(cells):
        for name, value in cell.parameters().items():
            np.testing.assert_array_equal(ensemble.member(e).parameters()[name], value)


@pytest.mark.parametrize("cells", [
    [],
    [random_cell("gru", 2, 3, ensemble=2)],
    [random_cell("gru", 2, 3), random_cell("lstm", 2, 3)],
    [random_cell("rnn_tanh", 2, 3), random_cell("rnn_relu", 2, 3)],
    [random_cell("gru", 2, 3), random_cell("gru", 2, 4)],
    [random_cell("gru", 2, 3), random_cell("gru", 2, 3, dtype=np.float32)],
    [random_cell("gru", 2, 3), random_cell("gru", 2, 3, bias=False)],
    ["not a cell"],
])
def test_stacking_refuses_cells_that_do_not_form_an_ensemble(cells):
    with pytest.raises(ValueError, match="cells must"):
        dynamics.Cell.stack(cells)


@examples(30)
@given(n_items=st.integers(1, 9), n=st.integers(1, 9),
       m=st.sampled_from([1, 7, 16, 20, 32, 64, 128]), seed=seeds, dtype=st.sampled_from(DTYPES))
def test_register_blocked_product_equals_the_row_walk_bitwise(n_items, n, m, seed, dtype):
    """``add_product`` (the products of the batched path, the tangents' W Q) is
    ``accumulate_rows`` per item, the same bits, and a matrix product to rounding."""
    from kernels.cells import accumulate_rows, add_product

    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, m)).astype(dtype)
    coefficients = rng.normal(size=(n_items, n)).astype(dtype)
    start = rng.normal(size=(n_items, m)).astype(dtype)
    batched = start.copy()
    add_product(coefficients, rows, batched)
    for b in range(n_items):
        walked = start[b].copy()
        accumulate_rows(rows, coefficients[b], walked)
        np.testing.assert_array_equal(batched[b], walked)
    expected = start.astype(np.float64) + coefficients.astype(np.float64) @ rows
    assert naive.relative_error(batched, expected, tiny=1.0) <= RTOL[np.dtype(dtype)]


# ----------------------------------------------------------------------------------------
# (e) the step kernels from a user's own @njit code

def make_user_loop(step, lstm, parallel):
    """A user's own loop over a sequence with ``kernels.<cell>_step``: serial code updates
    the state in place (h_out aliases h), parallel code writes each step into hs[t, b]."""
    if lstm and not parallel:
        @numba.njit
        def run(xs, h0, c0, w_ih, w_hh, b_ih, b_hh, hs, cs):
            for b in range(xs.shape[1]):
                h, c = h0[b].copy(), c0[b].copy()
                for t in range(xs.shape[0]):
                    step(xs[t, b], h, c, w_ih, w_hh, b_ih, b_hh, h, c)
                    hs[t, b] = h
                    cs[t, b] = c
    elif lstm:
        @numba.njit(parallel=True)
        def run(xs, h0, c0, w_ih, w_hh, b_ih, b_hh, hs, cs):
            for b in prange(xs.shape[1]):
                step(xs[0, b], h0[b], c0[b], w_ih, w_hh, b_ih, b_hh, hs[0, b], cs[0, b])
                for t in range(1, xs.shape[0]):
                    step(xs[t, b], hs[t - 1, b], cs[t - 1, b], w_ih, w_hh, b_ih, b_hh,
                         hs[t, b], cs[t, b])
    elif not parallel:
        @numba.njit
        def run(xs, h0, c0, w_ih, w_hh, b_ih, b_hh, hs, cs):
            for b in range(xs.shape[1]):
                h = h0[b].copy()
                for t in range(xs.shape[0]):
                    step(xs[t, b], h, w_ih, w_hh, b_ih, b_hh, h)
                    hs[t, b] = h
    else:
        @numba.njit(parallel=True)
        def run(xs, h0, c0, w_ih, w_hh, b_ih, b_hh, hs, cs):
            for b in prange(xs.shape[1]):
                step(xs[0, b], h0[b], w_ih, w_hh, b_ih, b_hh, hs[0, b])
                for t in range(1, xs.shape[0]):
                    step(xs[t, b], hs[t - 1, b], w_ih, w_hh, b_ih, b_hh, hs[t, b])
    return run


_USER_LOOPS = {}


def user_loop(kind, parallel):
    key = (kind, parallel)
    if key not in _USER_LOOPS:
        _USER_LOOPS[key] = make_user_loop(getattr(kernels, kind + "_step"), kind == "lstm",
                                          parallel)
    return _USER_LOOPS[key]


@pytest.mark.parametrize("parallel", [False, True], ids=["njit", "parallel"])
@pytest.mark.parametrize("kind", KINDS)
@examples(8)
@given(data=st.data())
def test_step_kernels_in_user_njit_code(kind, parallel, data):
    dtypes = DTYPES if not parallel else (np.float64,)   # limits compilations
    cfg = data.draw(net_configs(kinds=(kind,), T=(1, 10), num_layers=(1, 1),
                                bidirectional=(False,), dtypes=dtypes))
    cell = cfg.network().layers[0][0]
    x, h0, c0 = cfg.inputs()
    hs = np.full((cfg.T, cfg.B, cfg.H), np.nan, cfg.dtype)
    cs = np.full((cfg.T, cfg.B, cfg.H), np.nan, cfg.dtype)
    threads = numba.get_num_threads()
    if parallel:   # really run the kernels concurrently (the module runs on one thread)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    try:
        user_loop(kind, parallel)(x, h0[0], c0[0], cell.weight_ih, cell.weight_hh,
                                  cell.bias_ih, cell.bias_hh, hs, cs)
    finally:
        numba.set_num_threads(threads)
    expected = dynamics.forward(cell, x, cfg.h0_arg(h0, c0))
    rtol = RTOL[np.dtype(cfg.dtype)]
    assert naive.relative_error(hs, expected.output, tiny=1.0) <= rtol
    if kind == "lstm":
        assert naive.relative_error(cs[-1], expected.c_n[0], tiny=1.0) <= rtol


@numba.njit
def _user_tangent_walk(cell, xs, h, c, w_ih, w_hh, b_ih, b_hh, q):
    """A user's own tangent propagation: step and linearise, then q <- J q."""
    lin = np.empty((kernels.LIN_ROWS, h.shape[0]), h.dtype)
    h_out, c_out, q_out = np.empty_like(h), np.empty_like(c), np.empty_like(q)
    n = h.shape[0]
    for t in range(xs.shape[0]):
        kernels.step_linearisation(cell, xs[t], h, c, w_ih, w_hh, b_ih, b_hh, h_out, c_out,
                                   lin)
        kernels.state_jvp(lin, w_hh, q[:n], q[n:], q_out[:n], q_out[n:])
        h[:], c[:], q[:] = h_out, c_out, q_out


@examples(10)
@given(kind=st.sampled_from(("rnn_tanh", "lstm", "gru")), H=st.integers(1, 5), seed=seeds,
       dtype=st.sampled_from(DTYPES))
def test_linearised_steps_in_user_njit_code(kind, H, seed, dtype):
    """kernels.step_linearisation + state_jvp along a trajectory give the product of
    analysis.state_jacobians applied to q."""
    import analysis

    cell = random_cell(kind, 2, H, seed=seed, gain=1.5, dtype=dtype)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, 1, 2)).astype(dtype)
    S = 2 * H if kind == "lstm" else H
    q = rng.normal(size=S).astype(dtype)
    want = q.astype(np.float64)
    for jac in analysis.state_jacobians(cell, x).values[:, 0]:
        want = jac @ want
    h, c = np.zeros(H, dtype), np.zeros(H if kind == "lstm" else 0, dtype)
    _user_tangent_walk(kernels.CELL_CODES[kind], x[:, 0], h, c, cell.weight_ih,
                       cell.weight_hh, cell.bias_ih, cell.bias_hh, q)
    np.testing.assert_allclose(q, want, rtol=RTOL[np.dtype(dtype)] * 100,
                               atol=RTOL[np.dtype(dtype)] * 100 * np.abs(want).max())


def strided_copy(a):
    """``a`` as a view with every stride doubled (its rows and its columns)."""
    spaced = np.full(tuple(2 * n for n in a.shape), np.nan, a.dtype)
    view = spaced[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    return view


@examples(15)
@given(kind=st.sampled_from(KINDS), D=st.integers(1, 40), H=st.integers(1, 40), seed=seeds,
       dtype=st.sampled_from(DTYPES), gain=st.floats(0.1, 3.0))
def test_one_step_kernel_against_naive_aliasing_and_strides(kind, D, H, seed, dtype, gain):
    """One call of a step kernel: as naive.cell_step; writing in place (h_out is h) gives
    bitwise the same as writing elsewhere, and so do strided views of every argument;
    nothing but the outputs is written. D and H reach past two vectors of either dtype
    (the matrix-vector products sum in vector lanes, the last vector masked)."""
    cell = random_cell(kind, D, H, seed=seed, gain=gain, dtype=dtype)
    rng = np.random.default_rng(seed)
    x, h, c = (rng.normal(size=n).astype(dtype) for n in (D, H, H))
    params = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    before = [a.copy() for a in (x, h, c) + params]
    step = getattr(kernels, kind + "_step")
    h_out, c_out = np.full(H, np.nan, dtype), np.full(H, np.nan, dtype)
    h_in, c_in = h.copy(), c.copy()
    strided = [strided_copy(a) for a in (x, h, c) + params]
    h_strided, c_strided = strided_copy(h_out), strided_copy(c_out)
    if kind == "lstm":
        step(x, h, c, *params, h_out, c_out)
        step(x, h_in, c_in, *params, h_in, c_in)
        step(*strided, h_strided, c_strided)
        np.testing.assert_array_equal(c_in, c_out)
        np.testing.assert_array_equal(c_strided, c_out)
    else:
        step(strided[0], strided[1], *strided[3:], h_strided)
        step(x, h, *params, h_out)
        step(x, h_in, *params, h_in)
    np.testing.assert_array_equal(h_in, h_out)
    np.testing.assert_array_equal(h_strided, h_out)
    for old, new in zip(before, (x, h, c) + params):
        np.testing.assert_array_equal(old, new)
    expected_h, expected_c = naive.cell_step(kind, x, h, c, *params)
    tol = 1e-13 if dtype == np.float64 else 1e-5
    assert naive.relative_error(h_out, expected_h, tiny=1.0) <= tol
    if kind == "lstm":
        assert naive.relative_error(c_out, expected_c, tiny=1.0) <= tol


# ----------------------------------------------------------------------------------------
# (f) accuracy of the exp-based activations

# Pinned bounds on max |f(x) - exact| in units of the dtype's eps (observed: tanh 1.5,
# sigmoid 0.75, in float32 and float64, on the grid below); tanh's relative error near 0
# is pinned separately.
TANH_ULPS = 2.0
SIGMOID_ULPS = 1.0


@numba.njit
def _apply(kind, a, out):
    for i in range(a.shape[0]):
        if kind == 0:
            out[i] = tanh(a[i])
        elif kind == 1:
            out[i] = sigmoid(a[i])
        else:
            out[i] = relu(a[i])


def apply(name, a):
    out = np.empty_like(a)
    _apply({"tanh": 0, "sigmoid": 1, "relu": 2}[name], a, out)
    return out


def exact(name, a):
    """The function in long double (at least float64) precision."""
    a = a.astype(np.longdouble)
    with np.errstate(over="ignore"):
        return np.tanh(a) if name == "tanh" else 1 / (1 + np.exp(-a))


def dense_grid(dtype):
    fi = np.finfo(dtype)
    extremes = [0.0, -0.0, fi.tiny, -fi.tiny, fi.smallest_subnormal, -fi.smallest_subnormal,
                fi.eps, -fi.eps, fi.max, -fi.max, 1e-8, -1e-8, 20.0, -20.0, 45.0, -45.0,
                89.0, -89.0, 710.0, -710.0, 1e30, -1e30]
    grid = np.concatenate([np.linspace(-40, 40, 200001), np.geomspace(1e-30, 1e3, 20001),
                           -np.geomspace(1e-30, 1e3, 20001), extremes])
    with np.errstate(over="ignore"):
        return grid.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, ulps", [("tanh", TANH_ULPS), ("sigmoid", SIGMOID_ULPS)])
def test_activation_accuracy_on_dense_grid(name, ulps, dtype):
    grid = dense_grid(dtype)
    got = apply(name, grid)
    assert got.dtype == dtype
    error = np.max(np.abs(got.astype(np.longdouble) - exact(name, grid)))
    assert error <= ulps * np.finfo(dtype).eps, f"{name} {dtype.__name__}: {error}"
    low = -1.0 if name == "tanh" else 0.0
    assert np.all((got >= low) & (got <= 1.0))
    special = apply(name, np.array([np.inf, -np.inf, np.nan], dtype))
    np.testing.assert_array_equal(special[:2], [1.0, low])
    assert np.isnan(special[2])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, ulps", [("tanh", TANH_ULPS), ("sigmoid", SIGMOID_ULPS)])
@examples(30)
@given(data=st.data())
def test_activation_accuracy_random(name, ulps, dtype, data):
    width = 32 if dtype == np.float32 else 64
    values = data.draw(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=width),
                                min_size=1, max_size=50))
    a = np.array(values, dtype)
    error = np.max(np.abs(apply(name, a).astype(np.longdouble) - exact(name, a)))
    assert error <= ulps * np.finfo(dtype).eps


@pytest.mark.parametrize("function", [tanh, sigmoid])
@pytest.mark.parametrize("value", [3, True, 1 + 2j])
def test_activations_refuse_other_than_floats_in_users_njit_code(function, value):
    """``tanh`` and ``sigmoid`` are documented for users' own loops: an integer, bool or
    complex argument is a typing error when the loop compiles, not a wrong number."""
    @numba.njit
    def apply_one(x):
        return function(x)

    with pytest.raises(numba.core.errors.TypingError):
        apply_one(value)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tanh_is_relatively_accurate_near_zero(dtype):
    """Near 0, tanh(x) ~ x: the relative error stays a few eps down to the smallest
    subnormals (states of a decaying network live there)."""
    fi = np.finfo(dtype)
    grid = np.concatenate([np.geomspace(float(fi.smallest_subnormal), 1.0, 20001), [0.3, 0.62]])
    grid = np.concatenate([grid, -grid]).astype(dtype)
    got = apply("tanh", grid).astype(np.longdouble)
    want = exact("tanh", grid)
    normal = np.abs(grid) >= fi.tiny  # subnormal results carry absolute rounding only
    relative = np.abs(got[normal] - want[normal]) / np.abs(want[normal])
    assert relative.max() <= 2 * fi.eps, relative.max()
    assert np.all(np.abs(got[~normal] - want[~normal]) <= float(fi.smallest_subnormal))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_special_values(dtype):
    a = np.array([-np.inf, -1.0, -0.0, 0.0, 2.5, np.inf, np.nan], dtype)
    got = apply("relu", a)
    np.testing.assert_array_equal(got[:-1], [0.0, 0.0, 0.0, 0.0, 2.5, np.inf])
    assert np.isnan(got[-1])
    assert got.dtype == dtype


# ----------------------------------------------------------------------------------------
# (g) the step kernels' docstring examples run

@pytest.mark.parametrize("name", ["rnn_tanh_step", "rnn_relu_step", "lstm_step", "gru_step"])
def test_step_kernel_docstring_examples(name):
    function = getattr(kernels, name)
    docstring = function.__doc__
    assert docstring and ">>>" in docstring, f"{name} has no example"
    assert f"kernels.{name}(" in docstring
    test = doctest.DocTestParser().get_doctest(docstring, {}, f"kernels.{name}", None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test)
    assert result.attempted >= 3
    assert result.failed == 0


# ----------------------------------------------------------------------------------------
# (h) initialisers

CLASSES = {"rnn_tanh": (dynamics.RNN, {"nonlinearity": "tanh"}),
           "rnn_relu": (dynamics.RNN, {"nonlinearity": "relu"}),
           "lstm": (dynamics.LSTM, {}), "gru": (dynamics.GRU, {})}


def init_cell(kind, D, H, **kwargs):
    cls, options = CLASSES[kind]
    return cls.init(D, H, **kwargs, **options)


def blocks(weight_hh):
    H = weight_hh.shape[-1]
    return [weight_hh[..., k * H:(k + 1) * H, :] for k in range(weight_hh.shape[-2] // H)]


@examples(8)
@given(kind=st.sampled_from(KINDS), gain=st.floats(0.1, 4.0), seed=seeds)
def test_gaussian_init_statistics(kind, gain, seed):
    H, D = 400, 3
    cell = init_cell(kind, D, H, init="gaussian", gain=gain, seed=seed)
    assert cell.weight_hh.shape == (GATES[kind] * H, H)
    target = gain / np.sqrt(H)
    for block in blocks(cell.weight_hh):   # 160000 samples: std error of the std ~0.2%
        assert abs(block.std() / target - 1) < 0.015
        assert abs(block.mean()) < 5 * target / H
    assert not np.any(cell.bias_ih) and not np.any(cell.bias_hh)
    assert np.all(np.abs(cell.weight_ih) <= 1 / np.sqrt(H))


@examples(15)
@given(kind=st.sampled_from(KINDS), H=st.integers(1, 30), gain=st.floats(0.1, 4.0),
       seed=seeds, ensemble=st.sampled_from([None, 3]))
def test_orthogonal_init(kind, H, gain, seed, ensemble):
    cell = init_cell(kind, 2, H, init="orthogonal", gain=gain, seed=seed, ensemble=ensemble)
    for block in blocks(cell.weight_hh):
        for q in (block if ensemble else [block]):
            np.testing.assert_allclose(q.T @ q, gain ** 2 * np.eye(H), atol=1e-12 * gain ** 2)
            np.testing.assert_allclose(q @ q.T, gain ** 2 * np.eye(H), atol=1e-12 * gain ** 2)
    assert not np.any(cell.bias_ih) and not np.any(cell.bias_hh)


@examples(15)
@given(kind=st.sampled_from(KINDS), H=st.integers(1, 20), gain=st.floats(0.1, 4.0),
       seed=seeds, dtype=st.sampled_from(DTYPES))
def test_identity_init(kind, H, gain, seed, dtype):
    cell = init_cell(kind, 2, H, init="identity", gain=gain, seed=seed, dtype=dtype)
    assert cell.weight_hh.dtype == dtype
    for block in blocks(cell.weight_hh):
        np.testing.assert_array_equal(block, (gain * np.eye(H)).astype(dtype))


@examples(15)
@given(kind=st.sampled_from(KINDS), D=st.integers(1, 6), H=st.integers(1, 20), seed=seeds)
def test_uniform_init_is_torchs_default(kind, D, H, seed):
    cell = init_cell(kind, D, H, seed=seed)
    bound = 1 / np.sqrt(H)
    for name, array in cell.parameters().items():
        assert np.all(np.abs(array) <= bound), name
        assert np.unique(array).size == array.size, name   # really drawn, not constant


def test_a_seed_sequence_gives_the_same_draws_every_time():
    """Children are built, not spawned: a SeedSequence passed twice gives the same twice."""
    import analysis
    seed = np.random.SeedSequence(5)
    for make in (lambda: dynamics.Network.init("lstm", 2, 3, num_layers=2, ensemble=2,
                                               seed=seed).parameters(),
                 lambda: {"w": dynamics.Readout.init(3, 1, ensemble=2, seed=seed).weight},
                 lambda: {"x": dynamics.tasks.minibatches(dynamics.tasks.adding_problem, seed,
                                                          seq_len=4, batch=2)(3)[0]},
                 lambda: {"exponents": analysis.lyapunov_spectrum(
                     dynamics.GRU.init(1, 3, ensemble=2), steps=20, seed=seed).lyapunov_max}):
        first, second = make(), make()
        for name, value in first.items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(second[name]), name)
    assert seed.n_children_spawned == 0


@examples(8)
@given(kind=st.sampled_from(KINDS), seed=seeds)
def test_uniform_init_is_distributed_as_torchs(kind, seed):
    """U(-1/sqrt(H), 1/sqrt(H)) for every parameter: a Kolmogorov-Smirnov test over its
    100 to 40,000 values (a one-sided range, or one a tenth as wide, gives p < 1e-18 already
    with 100 values)."""
    H = 100
    bound = 1 / np.sqrt(H)
    for name, array in init_cell(kind, 7, H, seed=seed).parameters().items():
        p_value = scipy.stats.kstest(array.ravel(), "uniform", args=(-bound, 2 * bound)).pvalue
        assert p_value > 1e-6, (name, p_value)


@examples(15)
@given(kind=st.sampled_from(KINDS), init=st.sampled_from(dynamics.init.SCHEMES), seed=seeds,
       gain=st.floats(0.1, 3.0), small=st.integers(2, 3), extra=st.integers(1, 3),
       dtype=st.sampled_from(DTYPES))
def test_ensemble_members_do_not_depend_on_ensemble_size(kind, init, seed, gain, small, extra,
                                                          dtype):
    a = init_cell(kind, 3, 4, init=init, gain=gain, seed=seed, ensemble=small, dtype=dtype)
    b = init_cell(kind, 3, 4, init=init, gain=gain, seed=seed, ensemble=small + extra,
                  dtype=dtype)
    assert a.ensemble_size == small and b.ensemble_size == small + extra
    for e in range(small):
        for name, value in a.member(e).parameters().items():
            np.testing.assert_array_equal(value, b.member(e).parameters()[name])
    # members differ from each other (else "ensemble" would mean E copies)
    if init in ("uniform", "gaussian", "orthogonal"):
        assert not np.array_equal(b.member(0).weight_hh, b.member(1).weight_hh)
    # the same seed gives the same draw; float32 is the float64 draw rounded
    again = init_cell(kind, 3, 4, init=init, gain=gain, seed=seed, ensemble=small, dtype=dtype)
    wide = init_cell(kind, 3, 4, init=init, gain=gain, seed=seed, ensemble=small)
    for name, value in a.parameters().items():
        assert value.dtype == dtype
        np.testing.assert_array_equal(value, again.parameters()[name])
        np.testing.assert_array_equal(value, wide.parameters()[name].astype(dtype))


@examples(15)
@given(init=st.sampled_from(dynamics.init.SCHEMES), H=st.integers(1, 8),
       forget_bias=st.floats(-5.0, 5.0), seed=seeds, ensemble=st.sampled_from([None, 2]))
def test_lstm_forget_bias(init, H, forget_bias, seed, ensemble):
    plain = dynamics.LSTM.init(3, H, init=init, seed=seed, ensemble=ensemble)
    cell = dynamics.LSTM.init(3, H, init=init, seed=seed, ensemble=ensemble,
                              forget_bias=forget_bias)
    f = slice(H, 2 * H)
    np.testing.assert_array_equal(cell.bias_ih[..., f], forget_bias)
    np.testing.assert_array_equal(cell.bias_hh[..., f], 0.0)
    others = np.r_[0:H, 2 * H:4 * H]
    for name in ("bias_ih", "bias_hh"):
        np.testing.assert_array_equal(getattr(cell, name)[..., others],
                                      getattr(plain, name)[..., others])
    np.testing.assert_array_equal(cell.weight_ih, plain.weight_ih)
    np.testing.assert_array_equal(cell.weight_hh, plain.weight_hh)


# ----------------------------------------------------------------------------------------
# (i) clip_grad_norm against torch.nn.utils.clip_grad_norm_

def random_grads(rng, n_params, ensemble, dtype):
    lead = () if ensemble is None else (ensemble,)
    shapes = [tuple(rng.integers(1, 5, size=rng.integers(1, 3))) for _ in range(n_params)]
    grads = {f"weight_hh_l{k}": (rng.normal(size=lead + s) * rng.choice([0.1, 1, 10]))
             .astype(dtype) for k, s in enumerate(shapes)}
    inputs = {"x": rng.normal(size=(3,) + lead + (2, 2)).astype(dtype),
              "h0": rng.normal(size=(1,) + lead + (2, 3)).astype(dtype),
              "c0": rng.normal(size=(1,) + lead + (2, 3)).astype(dtype)}
    return grads, inputs


def torch_clip(grads, max_norm, norm_type):
    torch = pytest.importorskip("torch")
    params = []
    for g in grads.values():
        p = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        p.grad = torch.from_numpy(np.array(g, dtype=np.float64))
        params.append(p)
    total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
    return float(total), [p.grad.numpy() for p in params]


@examples(25)
@given(seed=seeds, n_params=st.integers(1, 4), norm_type=st.sampled_from([2, 1, np.inf]),
       ratio=st.sampled_from([0.01, 0.5, 0.999, 2.0, 100.0]), dtype=st.sampled_from(DTYPES))
def test_clip_grad_norm_matches_torch(seed, n_params, norm_type, ratio, dtype):
    pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    grads, inputs = random_grads(rng, n_params, None, dtype)
    original = {k: v.copy() for k, v in grads.items()}
    ours = dict(grads, **inputs)
    exact_total, _ = torch_clip(original, 1e300, norm_type)
    max_norm = ratio * exact_total
    total = dynamics.clip_grad_norm(ours, max_norm, norm_type=norm_type)
    torch_total, torch_grads = torch_clip(original, max_norm, norm_type)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert abs(float(total) - torch_total) <= tol * torch_total
    for name, expected in zip(original, torch_grads):
        assert ours[name].dtype == dtype
        assert ours[name].shape == original[name].shape
        assert naive.relative_error(ours[name], expected) <= tol, name
    for name, value in inputs.items():   # input gradients neither counted nor scaled
        np.testing.assert_array_equal(ours[name], value)
    clipped_norm = float(torch_clip({k: ours[k] for k in original}, 1e300, norm_type)[0])
    if ratio < 1:
        assert clipped_norm <= max_norm * (1 + 1e-5)
    else:
        for name in original:
            np.testing.assert_array_equal(ours[name], original[name])


@examples(20)
@given(seed=seeds, n_params=st.integers(1, 4), norm_type=st.sampled_from([2, 1, np.inf]),
       E=st.integers(1, 4), max_norm=st.sampled_from([0.05, 1.0, 5.0, 1e6]))
def test_clip_grad_norm_ensemble_clips_members_separately(seed, n_params, norm_type, E,
                                                          max_norm):
    pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    grads, inputs = random_grads(rng, n_params, E, np.float64)
    original = {k: v.copy() for k, v in grads.items()}
    ours = dict(grads, **inputs)
    total = dynamics.clip_grad_norm(ours, max_norm, norm_type=norm_type, ensemble=True)
    assert np.shape(total) == (E,)
    for e in range(E):
        torch_total, torch_grads = torch_clip({k: v[e] for k, v in original.items()},
                                              max_norm, norm_type)
        assert abs(total[e] - torch_total) <= 1e-12 * torch_total
        for name, expected in zip(original, torch_grads):
            assert naive.relative_error(ours[name][e], expected) <= 1e-12, (name, e)
    for name, value in inputs.items():
        np.testing.assert_array_equal(ours[name], value)
