"""State Jacobians, JVP/VJP, their products and gradient norms against lag.

Oracles: central finite differences of ``dynamics.forward`` over one step, explicit
matrix products of the Jacobians, ``dynamics.bptt`` for adjoints, and closed forms
(IRNN, saturated gates).
"""
import numpy as np
import pytest
import xarray as xr
from conftest import KINDS, examples, random_cell, seeds
from hypothesis import given
from hypothesis import strategies as st

import analysis
import dynamics
import kernels
from kernels import jacobians
from kernels.cells import CELL_CODES, LIN_ROWS, cell_linearisation


def one_step(cell, x_t, state):
    """The state after one step from ``state`` (S,) for one sequence, in float64."""
    H = cell.hidden_size
    if cell.kind == "lstm":
        r = dynamics.forward(cell, x_t[None, None], (state[None, None, :H], state[None, None, H:]))
        return np.concatenate([r.h_n[0, 0], r.c_n[0, 0]])
    return dynamics.forward(cell, x_t[None, None], state[None, None]).h_n[0, 0]


def state_at(cell, result, t, b):
    """s_t (S,) of sequence b from a ``dynamics.forward`` result (t = -1: zeros)."""
    H = cell.hidden_size
    S = 2 * H if cell.kind == "lstm" else H
    if t < 0:
        return np.zeros(S)
    tape = result.tapes[0]
    parts = [tape.hs[0, t, b]] + ([tape.cs[0, t, b]] if cell.kind == "lstm" else [])
    return np.concatenate(parts)


def finite_difference_jacobian(cell, x_t, state, eps=1e-6):
    columns = []
    for j in range(state.size):
        step = np.zeros_like(state)
        step[j] = eps
        columns.append((one_step(cell, x_t, state + step) - one_step(cell, x_t, state - step))
                       / (2 * eps))
    return np.stack(columns, axis=1)


cell_cases = st.tuples(st.sampled_from(KINDS), st.integers(1, 5), st.integers(1, 4),
                       st.integers(1, 3), seeds, st.floats(0.3, 2.5))


@examples(20)
@given(cell_cases)
def test_state_jacobian_matches_finite_differences(case):
    kind, H, D, B, seed, gain = case
    cell = random_cell(kind, D, H, seed=seed, gain=gain)
    x = np.random.default_rng(seed).normal(size=(4, B, D))
    jac = analysis.state_jacobians(cell, x)
    result = dynamics.forward(cell, x)
    for t in range(4):
        for b in range(B):
            want = finite_difference_jacobian(cell, x[t, b], state_at(cell, result, t - 1, b))
            np.testing.assert_allclose(jac.values[t, b], want, rtol=1e-6, atol=1e-8)


@examples(20)
@given(cell_cases, st.sampled_from([np.float32, np.float64]))
def test_jvp_vjp_and_jacobian_kernels_agree(case, dtype):
    """state_jvp = J q and state_vjp = l J with J from state_jacobian, for every cell."""
    kind, H, D, _, seed, gain = case
    cell = random_cell(kind, D, H, seed=seed, gain=gain, dtype=dtype)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 1, D)).astype(dtype)
    tape = dynamics.forward(cell, x).tapes[0]
    S = 2 * H if kind == "lstm" else H
    lin = np.empty((LIN_ROWS, H), dtype)
    saved = tape.p[0, 1, 0] if tape.p.shape[1] else np.empty(0, dtype)
    cell_linearisation(CELL_CODES[kind], saved, tape.hs[0, 0, 0], tape.cs[0, 0, 0],
                       tape.hs[0, 1, 0], tape.cs[0, 1, 0], lin)
    w_hh = np.ascontiguousarray(cell.weight_hh)
    jac = np.empty((S, S), dtype)
    kernels.state_jacobian(lin, w_hh, jac)
    q, l = rng.normal(size=S).astype(dtype), rng.normal(size=S).astype(dtype)
    q_out, l_out = np.empty(S, dtype), np.empty(S, dtype)
    kernels.state_jvp(lin, w_hh, q[:H], q[H:], q_out[:H], q_out[H:])
    kernels.state_vjp(lin, w_hh, l[:H], l[H:], l_out[:H], l_out[H:])
    # strided vectors (columns of a block) give the same bits
    columns, columns_out = np.stack([q, l], axis=1), np.empty((S, 2), dtype)
    kernels.state_jvp(lin, w_hh, columns[:H, 0], columns[H:, 0], columns_out[:H, 0],
                      columns_out[H:, 0])
    kernels.state_vjp(lin, w_hh, columns[:H, 1], columns[H:, 1], columns_out[:H, 1],
                      columns_out[H:, 1])
    np.testing.assert_array_equal(columns_out, np.stack([q_out, l_out], axis=1))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    scale = np.abs(jac).sum() + 1.0
    np.testing.assert_allclose(q_out, jac.astype(np.float64) @ q, atol=tol * scale)
    np.testing.assert_allclose(l_out, l @ jac.astype(np.float64), atol=tol * scale)
    # J Q for a block of tangents from J's h columns and the c-column terms (an LSTM's)
    h_columns = np.empty((S, H), dtype)
    jacobians.jacobian_h_columns(lin, w_hh, h_columns)
    np.testing.assert_array_equal(h_columns, jac[:, :H])
    block = rng.normal(size=(S, 3)).astype(dtype)
    product = h_columns @ block[:H]
    jacobians.add_c_column_terms(lin, block[H:], product[:S - H], product[H:])
    np.testing.assert_allclose(product, jac.astype(np.float64) @ block, atol=tol * scale)


@examples(6)
@given(st.sampled_from(KINDS), st.sampled_from([33, 70]), seeds, st.floats(0.5, 2.0))
def test_product_of_one_sequence_in_column_blocks_matches_explicit_jacobians(kind, H, seed,
                                                                              gain):
    """One sequence of a network wide enough for several register panels of tangents:
    ``jacobian_product`` splits them into blocks of columns (one per thread) and must
    still give the product of the explicit Jacobians."""
    cell = random_cell(kind, 2, H, seed=seed, gain=gain)
    x = np.random.default_rng(seed).normal(size=(4, 1, 2))
    jac = analysis.state_jacobians(cell, x).values[:, 0]
    product = analysis.jacobian_product(cell, x, t=3, k=-1).values[0]
    exact = jac[3] @ jac[2] @ jac[1] @ jac[0]
    np.testing.assert_allclose(product, exact, rtol=1e-10, atol=1e-12 * np.abs(exact).max())


@examples(15)
@given(cell_cases, st.data())
def test_products_and_norms_match_explicit_jacobians(case, data):
    kind, H, D, B, seed, gain = case
    cell = random_cell(kind, D, H, seed=seed, gain=gain)
    T = 7
    x = np.random.default_rng(seed).normal(size=(T, B, D))
    jac = analysis.state_jacobians(cell, x).values
    t = data.draw(st.integers(0, T - 1))
    k = data.draw(st.integers(-1, t))
    product = analysis.jacobian_product(cell, x, t=t, k=k).values
    g = analysis.gradient_norm_vs_lag(cell, x)
    S = jac.shape[-1]
    v = np.zeros(S)
    v[:H] = 1 / np.sqrt(H)
    for b in range(B):
        want = np.eye(S)
        for step in range(t, k, -1):
            want = want @ jac[step, b]
        np.testing.assert_allclose(product[b], want, rtol=1e-10, atol=1e-12)
        p = np.eye(S)
        for lag in range(T + 1):
            if lag:
                p = p @ jac[T - lag, b]
            for norm, value in (("frobenius", np.linalg.norm(p)), ("spectral", np.linalg.norm(p, 2)),
                                ("adjoint", np.linalg.norm(v @ p))):
                got = g.gradient_norm.sel(norm=norm).values[b, lag]
                np.testing.assert_allclose(got, value, rtol=1e-9, atol=1e-300)


@examples(10)
@given(st.sampled_from(KINDS), st.integers(1, 5), seeds, st.integers(1, 9))
def test_adjoint_norm_equals_bptt(kind, H, seed, lag):
    """||dL/ds_(T-lag)|| from the adjoint chain = dynamics.bptt's gradient of the initial
    state of the sub-sequence that starts after step T-lag (independent kernels)."""
    cell = random_cell(kind, 2, H, seed=seed, gain=1.2)
    T, B = 10, 2
    x = np.random.default_rng(seed).normal(size=(T, B, 2))
    g = analysis.gradient_norm_vs_lag(cell, x, spectral=False)
    result = dynamics.forward(cell, x)
    start = T - lag  # the sub-sequence is steps start..T-1 from s_(start-1)
    tape = result.tapes[0]
    grad_output = np.zeros((lag, B, H))
    grad_output[-1] = 1 / np.sqrt(H)
    if start > 0:
        h0 = tape.hs[0, start - 1][None]
        state = (h0, tape.cs[0, start - 1][None]) if kind == "lstm" else h0
    else:
        state = None
    grads = dynamics.bptt(cell, x[start:], grad_output, h0=state)
    adjoint = grads["h0"][0]
    if kind == "lstm":
        adjoint = np.concatenate([adjoint, grads["c0"][0]], axis=-1)
    np.testing.assert_allclose(g.gradient_norm.sel(norm="adjoint").values[:, lag],
                               np.linalg.norm(adjoint, axis=-1), rtol=1e-10)


@examples(10)
@given(st.integers(1, 6), st.integers(5, 40), st.floats(0.5, 1.5), seeds)
def test_irnn_with_active_units_passes_gradients_exactly(H, T, alpha, seed):
    """ReLU RNN, W_hh = alpha I, positive inputs (every unit active): the product over
    T steps is alpha^T I; alpha = 1 gives the identity exactly."""
    x = np.random.default_rng(seed).uniform(0.1, 1.0, size=(T, 2, H))
    cell = dynamics.RNN(weight_ih=np.eye(H), weight_hh=alpha * np.eye(H),
                        bias_ih=np.zeros(H), bias_hh=np.zeros(H), nonlinearity="relu")
    product = analysis.jacobian_product(cell, x, t=T - 1, k=-1).values
    if alpha == 1.0:
        assert np.array_equal(product, np.broadcast_to(np.eye(H), product.shape))
    np.testing.assert_allclose(product, np.broadcast_to(alpha ** T * np.eye(H), product.shape),
                               rtol=1e-13)
    identity = dynamics.RNN(weight_ih=np.eye(H), weight_hh=np.eye(H), nonlinearity="relu")
    exact = analysis.jacobian_product(identity, x, t=T - 1, k=-1).values
    assert np.array_equal(exact, np.broadcast_to(np.eye(H), exact.shape))


@examples(10)
@given(st.integers(1, 5), st.integers(1, 30), st.floats(-3.0, 3.0))
def test_saturated_gates_give_gate_powers(H, T, b):
    """Zero weights, gate bias b: LSTM d c_T / d c_0 = sigmoid(b)^T I (forget gate), GRU
    d h_T / d h_0 = sigmoid(b)^T I (update gate)."""
    sigma = 1 / (1 + np.exp(-b))
    x = np.zeros((T, 1, 1))
    lstm_bias = np.zeros(4 * H)
    lstm_bias[H:2 * H] = b
    lstm = dynamics.LSTM(weight_ih=np.zeros((4 * H, 1)), weight_hh=np.zeros((4 * H, H)),
                         bias_ih=lstm_bias, bias_hh=np.zeros(4 * H))
    product = analysis.jacobian_product(lstm, x, t=T - 1, k=-1).values[0]
    np.testing.assert_allclose(product[H:, H:], sigma ** T * np.eye(H), rtol=1e-12, atol=1e-300)
    np.testing.assert_array_equal(product[H:, :H], 0.0)
    gru_bias = np.zeros(3 * H)
    gru_bias[H:2 * H] = b
    gru = dynamics.GRU(weight_ih=np.zeros((3 * H, 1)), weight_hh=np.zeros((3 * H, H)),
                       bias_ih=gru_bias, bias_hh=np.zeros(3 * H))
    product = analysis.jacobian_product(gru, x, t=T - 1, k=-1).values[0]
    np.testing.assert_allclose(product, sigma ** T * np.eye(H), rtol=1e-12, atol=1e-300)


def test_ensemble_results_equal_member_results():
    cell = random_cell("gru", 2, 4, seed=3, ensemble=3)
    x = np.random.default_rng(0).normal(size=(6, 2, 2))
    together = analysis.gradient_norm_vs_lag(cell, x)
    jac = analysis.state_jacobians(cell, x)
    assert together.log_gradient_norm.dims == ("norm", "member", "batch", "lag")
    for e in range(3):
        alone = analysis.gradient_norm_vs_lag(cell.member(e), x)
        np.testing.assert_array_equal(together.log_gradient_norm.values[:, e],
                                      alone.log_gradient_norm.values)
        np.testing.assert_array_equal(jac.values[:, e],
                                      analysis.state_jacobians(cell.member(e), x).values)


def test_gradient_decay_rate_and_e_folding_lag():
    """W = a I with tanh and zero input: the state stays 0, J = a I, every norm falls
    as a^lag: decay rate ln a, e-folding lag ceil(-1 / ln a)."""
    a, H = 0.8, 3
    cell = dynamics.RNN(weight_ih=np.zeros((H, 1)), weight_hh=a * np.eye(H))
    g = analysis.gradient_norm_vs_lag(cell, np.zeros((30, 1, 1)), fit_lags=(0, 30))
    np.testing.assert_allclose(g.decay_rate.values, np.log(a), rtol=1e-12)
    np.testing.assert_array_equal(g.decay_lag.values, np.ceil(-1 / np.log(a)))
    for name, variable in g.data_vars.items():
        assert {"long_name", "units"} <= set(variable.attrs), name
    assert {"package_version", "numba_version", "dtype", "config", "created"} <= set(g.attrs)


def test_long_products_stay_finite_in_log_space():
    """2,000 lags of a contracting network: the norms underflow float64, the logs do not."""
    cell = dynamics.RNN(weight_ih=np.zeros((4, 1)), weight_hh=0.5 * np.eye(4))
    g = analysis.gradient_norm_vs_lag(cell, np.zeros((2000, 1, 1)), spectral=False)
    logs = g.log_gradient_norm.sel(norm="frobenius").values[0]
    assert np.all(np.isfinite(logs))
    np.testing.assert_allclose(logs[-1], 2000 * np.log(0.5) + 0.5 * np.log(4), rtol=1e-12)
    assert g.gradient_norm.sel(norm="frobenius").values[0, -1] == 0.0  # underflowed


def test_diverging_trajectory_is_flagged_not_raised():
    H = 4
    cell = dynamics.RNN(weight_ih=np.full((H, 1), 1e300), weight_hh=3 * np.eye(H),
                        nonlinearity="relu")
    x = np.ones((20, 2, 1))
    x[:, 1] = 0.0   # batch element 1 stays at h = 0
    with np.errstate(over="ignore", invalid="ignore"):
        results = [analysis.gradient_norm_vs_lag(cell, x), analysis.state_jacobians(cell, x),
                   analysis.jacobian_product(cell, x, 19, 2), analysis.log_singular_values(cell, x)]
    for result in results:
        assert result.diverged.values.tolist() == [True, False]


@pytest.mark.parametrize("call, message", [
    (lambda c, x: analysis.state_jacobians(c, x[:, :, :1]), "x must have shape"),
    (lambda c, x: analysis.jacobian_product(c, x, t=10, k=0), "need -1 <= k <= t < T"),
    (lambda c, x: analysis.jacobian_product(c, x, t=3, k=-2), "k must be an integer >= -1"),
    (lambda c, x: analysis.gradient_norm_vs_lag(c, x, max_lag=11), "max_lag must be at most"),
    (lambda c, x: analysis.gradient_norm_vs_lag(c, x[:0]), "at least one step"),
    (lambda c, x: analysis.gradient_norm_vs_lag(c, x, fit_lags=5), "fit_lags must be a pair"),
    (lambda c, x: analysis.gradient_norm_vs_lag(c, x, fit_lags=(6, 2)),
     r"fit_lags\[1\] must be an integer >= 6"),
    (lambda c, x: analysis.gradient_norm_vs_lag(c, x, fit_lags=(2, 11)),
     r"fit_lags\[1\] must be at most max_lag = 10"),
    (lambda c, x: analysis.gradient_norm_vs_lag(c, x, grad_final=np.ones(5)), "grad_final"),
    (lambda c, x: analysis.gradient_norm_vs_lag(c, drive=np.zeros((5, 0, 9))),
     "batch of at least 1"),
    (lambda c, x: analysis.gradient_norm_vs_lag(c, x, drive=np.zeros((10, 2, 9))), "not both"),
    (lambda c, x: analysis.jacobian_product(c, x, t="a", k=0), "t must be an integer"),
    (lambda c, x: analysis.state_jacobians(dynamics.Network.init("gru", 2, 3, num_layers=2), x),
     "one layer in one direction"),
    (lambda c, x: analysis.state_jacobians(c, x.astype(int)), "float32 or float64"),
    (lambda c, x: analysis.state_jacobians("gru", x), "model must be"),
])
def test_bad_input_is_refused(call, message, monkeypatch):
    """... before the trajectory runs."""
    def not_reached(*args, **kwargs):
        raise AssertionError("the trajectory ran before the arguments were checked")
    monkeypatch.setattr(dynamics, "forward", not_reached)
    monkeypatch.setattr(analysis.jacobians, "driven_tape", not_reached)
    cell = random_cell("gru", 2, 3)
    x = np.zeros((10, 2, 2))
    with pytest.raises((ValueError, TypeError), match=message):
        call(cell, x)


@pytest.mark.parametrize("model", [dynamics.RNN.init(2, 5, ensemble=2, seed=0),
                                   dynamics.LSTM.init(2, 3, seed=0)])
def test_every_result_labels_its_variables_and_coordinates(model):
    """long_name and units on every variable and coordinate (issue 3), provenance attrs."""
    from studies._common import check_attrs

    x = np.random.default_rng(0).normal(size=(12, 2, 2))
    results = [analysis.state_jacobians(model, x), analysis.jacobian_product(model, x, 9, 3),
               analysis.log_singular_values(model, x), analysis.weight_spectrum(model),
               analysis.gradient_norm_vs_lag(model, x, max_lag=6),
               analysis.lyapunov_spectrum(model, x, n_exponents=2, gradient_lags=4),
               analysis.meanfield.dataset([0.5, 2.0], sigma_x=[0.0, 1.0])]
    for result in results:
        dataset = result if isinstance(result, xr.Dataset) else result.to_dataset()
        check_attrs(dataset)
        assert result.attrs["dtype"] == "float64" and "numba_version" in result.attrs
