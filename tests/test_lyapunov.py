"""Lyapunov spectra, long Jacobian products and weight spectra.

Oracles: closed forms (normal linear maps, orthogonal maps, log det J), the network's
own eigenvalues, mean-field theory at N = 1000, the gradient-norm slope, and a plain
NumPy QR loop.
"""
import tracemalloc

import numpy as np
import pytest
from conftest import KINDS, examples, kinds, random_cell, seeds
from hypothesis import assume, given
from hypothesis import strategies as st

import analysis
import dynamics
from analysis import meanfield
from analysis._common import state_size
from dynamics.layer import member_major_parameters
from kernels.cells import CELL_CODES, saved_width
from kernels.tangents import spectrum_walk, tangent_walk


def relu_linear_network(matrix, bias=5.0):
    """A ReLU RNN whose units all stay active (non-negative ``matrix``, positive bias,
    positive state): its Jacobian is ``matrix`` at every step."""
    N = matrix.shape[0]
    return dynamics.RNN(weight_ih=np.zeros((N, 1)), weight_hh=matrix,
                        bias_ih=np.full(N, bias), bias_hh=np.zeros(N), nonlinearity="relu")


def positive_start(N, batch=1):
    return np.ones((1, batch, N))


@examples(10)
@given(st.integers(2, 8), seeds)
def test_normal_linear_map_has_log_abs_eigenvalues(N, seed):
    """A circulant matrix with non-negative entries is normal; the exponents of x -> A x
    are log |eig(A)| (in decreasing order)."""
    first_row = np.random.default_rng(seed).uniform(0.0, 1.0 / N, N)
    A = np.stack([np.roll(first_row, i) for i in range(N)])
    ly = analysis.lyapunov_spectrum(relu_linear_network(A), steps=600, burn_in=100,
                                    h0=positive_start(N), seed=seed)
    want = np.sort(np.log(np.abs(np.linalg.eigvals(A))))[::-1]
    got = np.sort(ly.lyapunov_exponents.values[0])[::-1]
    assert not ly.diverged.values.any()
    np.testing.assert_allclose(got, want, atol=2e-2)


@examples(5)
@given(st.integers(2, 8), seeds, st.integers(1, 3))
def test_orthogonal_map_has_zero_exponents(N, seed, interval):
    """A random orthogonal Q: every exponent of h -> Q h is 0. The map is a ReLU network
    driven along a chosen positive path m_t (drive m_t - Q m_(t-1)), so that every unit
    stays on and J_t = Q at every step."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(N, N)))[0]
    path = rng.uniform(1.0, 2.0, size=(61, 1, N))
    drive = path[1:] - path[:-1] @ Q.T
    ly = analysis.lyapunov_spectrum(relu_linear_network(Q, bias=0.0), drive=drive,
                                    interval=interval, h0=path[:1])
    np.testing.assert_allclose(ly.lyapunov_exponents.values, 0.0, atol=1e-12)
    np.testing.assert_allclose(ly.finite_time_exponents.values, 0.0, atol=1e-12)


@examples(15)
@given(st.sampled_from(KINDS), st.integers(1, 5), seeds, st.floats(0.3, 1.0),
       st.integers(1, 4))
def test_sum_of_all_exponents_is_mean_log_det(kind, H, seed, gain, interval):
    """With every exponent, the sum of log |R_jj| over a record is log |det| of the
    product of the interval's Jacobians, for any cell. (A ReLU network's Jacobian is
    singular as soon as a unit is off: there every unit is kept on, and J_t = W_hh.)"""
    cell = random_cell(kind, 2, H, seed=seed, gain=gain)
    T = 12 * interval
    x = np.random.default_rng(seed).normal(size=(T, 1, 2))
    if kind == "rnn_relu":   # W_hh >= 0, h >= 0 and a bias above |W_ih x|: every unit on
        cell = dynamics.RNN(weight_ih=cell.weight_ih, weight_hh=np.abs(cell.weight_hh),
                            bias_ih=1 + np.abs(cell.weight_ih) @ np.abs(x).max((0, 1)),
                            bias_hh=np.abs(cell.bias_hh), nonlinearity="relu")
    h0 = np.zeros((1, 1, H))
    state = (h0, h0) if kind == "lstm" else h0
    ly = analysis.lyapunov_spectrum(cell, x, interval=interval, h0=state)
    jac = analysis.state_jacobians(cell, x, h0=state).values[:, 0]
    log_det = np.linalg.slogdet(jac)[1]
    per_record = ly.finite_time_exponents.values[0].sum(-1) * interval
    want = log_det.reshape(-1, interval).sum(-1)
    # QR recovers log |det| of an interval's product to about eps * its condition number
    # (an LSTM's c-block can make that 1e15 over 3 steps): compare where it is moderate
    products = [np.linalg.multi_dot(list(block[::-1])) if interval > 1 else block[0]
                for block in jac.reshape(-1, interval, *jac.shape[1:])]
    ok = np.array([np.linalg.cond(p) < 1e8 for p in products])
    assume(ok.any())
    np.testing.assert_allclose(per_record[ok], want[ok], rtol=1e-7, atol=1e-9)
    if ok.all():
        np.testing.assert_allclose(ly.lyapunov_exponents.values.sum(), log_det.mean(),
                                   rtol=1e-7, atol=1e-9)


@examples(5)
@given(seeds, st.floats(0.3, 0.9))
def test_autonomous_tanh_below_one_has_log_spectral_radius(seed, gain):
    """The state decays to 0, where J = W, when rho(W) < 1 (at N = 12, g < 1 does not
    guarantee it: rho(W) fluctuates around g)."""
    N = 12
    rnn = dynamics.RNN.init(1, N, init="gaussian", gain=gain, seed=seed)
    assume(np.abs(np.linalg.eigvals(rnn.weight_hh)).max() < 0.95)
    ly = analysis.lyapunov_spectrum(rnn, steps=3000, burn_in=500, n_exponents=1, seed=seed)
    rho = np.abs(np.linalg.eigvals(rnn.weight_hh)).max()
    assert abs(float(ly.lyapunov_max[0]) - np.log(rho)) < 5e-3
    np.testing.assert_allclose(meanfield.lyapunov_max(gain), np.log(gain), rtol=1e-12)


def test_driven_tanh_network_at_n1000_matches_mean_field():
    """g = 2, sigma_x = 1: simulated lambda_max within 0.01 of the mean-field value."""
    N, T = 1000, 2500
    rnn = dynamics.RNN.init(N, N, init="gaussian", gain=2.0, seed=1, bias=False)
    drive = np.random.default_rng(2).normal(size=(T, 1, N))
    ly = analysis.lyapunov_spectrum(rnn, drive=drive, n_exponents=1, burn_in=500)
    assert abs(float(ly.lyapunov_max[0]) - meanfield.lyapunov_max(2.0, sigma_x=1.0)) < 0.01


def test_gradient_norm_slope_equals_lyapunov_max():
    """The adjoint norm grows (or decays) with the lag at the rate lambda_max of the same
    trajectory, for a chaotic and an ordered network."""
    N, T = 150, 1600
    for gain in (0.8, 1.6):
        rnn = dynamics.RNN.init(N, N, init="gaussian", gain=gain, seed=3, bias=False)
        rng = np.random.default_rng(4)
        x = rng.normal(size=(T, 1, N)) * 0.5
        h0 = rng.normal(size=(1, 1, N))
        rnn = dynamics.RNN(weight_ih=np.eye(N), weight_hh=rnn.weight_hh)
        ly = analysis.lyapunov_spectrum(rnn, x, n_exponents=1, h0=h0)
        g = analysis.gradient_norm_vs_lag(rnn, x, h0=h0, spectral=False,
                                          fit_lags=(200, T - 100))
        slope = float(g.decay_rate.sel(norm="adjoint")[0])
        assert abs(slope - float(ly.lyapunov_max[0])) < 0.01, (gain, slope)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_on_the_lyapunov_trajectory_equals_gradient_norm_vs_lag(kind):
    """gradient_lags follows the BPTT adjoint on the tape the Lyapunov kernel kept; with
    no burn-in it is the whole trajectory, as gradient_norm_vs_lag's (own forward pass)."""
    G = {"lstm": 4, "gru": 3}.get(kind, 1)
    # 6 sequences of 70 units each walk on their own; one of 150 is split across threads
    for H, ensemble, batch in ((70, 2, 3), (150, None, 1)):
        cell = random_cell(kind, 2, H, seed=1, gain=0.8, ensemble=ensemble)
        lead = (2,) if ensemble else ()
        drive = np.random.default_rng(0).normal(size=(60, *lead, batch, G * H))
        h0 = np.random.default_rng(1).normal(size=(1, *lead, batch, H))
        state = (h0, h0) if kind == "lstm" else h0
        ly = analysis.lyapunov_spectrum(cell, drive=drive, h0=state, n_exponents=1,
                                        gradient_lags=60)
        g = analysis.gradient_norm_vs_lag(cell, drive=drive, h0=state, products=False)
        np.testing.assert_allclose(ly.log_gradient_norm.values,
                                   g.log_gradient_norm.sel(norm="adjoint").values, rtol=1e-9)
        np.testing.assert_allclose(ly.gradient_decay_rate, g.decay_rate.sel(norm="adjoint"),
                                   rtol=1e-7)
        later = analysis.lyapunov_spectrum(cell, drive=drive, h0=state, n_exponents=1,
                                           burn_in=20, gradient_lags=25)
        assert later.log_gradient_norm.shape == (*lead, batch, 26)


def test_matches_a_numpy_qr_loop():
    N, T, k, m = 30, 300, 4, 5
    rnn = dynamics.RNN.init(N, N, init="gaussian", gain=1.3, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(T, 1, N))
    h0 = rng.normal(size=(1, 1, N))
    ly = analysis.lyapunov_spectrum(rnn, x, n_exponents=k, interval=m, h0=h0, seed=9)
    W, U, b = rnn.weight_hh, rnn.weight_ih, rnn.bias_ih + rnn.bias_hh
    tangents = np.random.SeedSequence(9).spawn(2)[1]  # the tangents' stream
    q = np.linalg.qr(np.random.default_rng(tangents).normal(size=(N, k)))[0]
    h, logs = h0[0, 0], []
    for t in range(T):
        h = np.tanh(W @ h + U @ x[t, 0] + b)
        q = (1 - h ** 2)[:, None] * (W @ q)
        if (t + 1) % m == 0:
            q, r = np.linalg.qr(q)
            logs.append(np.log(np.abs(np.diag(r))))
    np.testing.assert_allclose(ly.finite_time_exponents.values[0], np.array(logs) / m,
                               rtol=1e-8, atol=1e-10)


def _walk_both_ways(cell, x, t0, n_steps, interval, keep, seed, dtype):
    """Run ``tangent_walk`` (step by step, whole sequences) and ``spectrum_walk`` (by
    interval products) from one start with all S tangents; their states, log |R_jj|,
    diverged flags and forward tapes."""
    E, H, code = cell.ensemble_size or 1, cell.hidden_size, CELL_CODES[cell.kind]
    B = x.shape[2]
    S = 2 * H if cell.kind == "lstm" else H
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(E, B, H)).astype(dtype)
    c = rng.normal(size=(E, B, H if cell.kind == "lstm" else 0)).astype(dtype)
    q = np.linalg.qr(rng.normal(size=(E, B, S, S)))[0].astype(dtype)
    parameters = member_major_parameters(cell, dtype)
    results = []
    for walk, extra in ((tangent_walk, H), (spectrum_walk, 1 + seed % 3)):
        state = [h.copy(), c.copy(), q.copy(), np.zeros((E, B), bool),
                 np.empty((E, B, -(-n_steps // interval), S))]
        shapes = [(E, keep, B, H), (E, keep, B, c.shape[2]),
                  (E, keep if cell.kind in ("lstm", "gru") else 0, B, saved_width(code, H)),
                  h.shape, c.shape]
        tape = tuple(np.full(shape, np.nan, dtype) for shape in shapes)
        walk(code, x, False, *parameters, t0, n_steps, interval, *state, extra,
             t0 + n_steps - keep, *tape)  # (extra: the block size, or the items in flight)
        results.append((state, tape))
    return results


@examples(25)
@given(st.sampled_from(KINDS), st.sampled_from([np.float32, np.float64]), st.integers(1, 5),
       st.integers(1, 2), st.integers(1, 3), st.integers(2, 12), st.integers(1, 30),
       st.integers(0, 3), st.booleans(), st.data(), seeds)
def test_interval_products_walk_like_step_by_step_tangents(kind, dtype, H, E, B, interval,
                                                           n_steps, t0, driven, data, seed):
    """With all S tangents and QR every interval > 1 steps, ``spectrum_walk`` multiplies
    each interval's Jacobians together before applying them: the same trajectory and
    tapes as ``tangent_walk``, bit for bit, and the same log |R_jj| up to the rounding of
    the other association (eps times the interval product's condition number)."""
    cell = random_cell(kind, 2, H, seed=seed, gain=1.2, ensemble=E if E > 1 else None)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(E if seed % 2 else 1, t0 + n_steps if driven else 0, B,
                         2 if driven else 0)).astype(dtype)
    keep = data.draw(st.integers(0, n_steps))
    (steps, step_tape), (products, product_tape) = _walk_both_ways(
        cell, x, t0, n_steps, interval, keep, seed, dtype)
    exact = (2 * H if kind == "lstm" else H) > 1  # (one tangent: tangent_walk's own matvec)
    for a, b in zip(steps[:2] + steps[3:4] + list(step_tape), products[:2] + products[3:4] +
                    list(product_tape)):
        if exact:
            np.testing.assert_array_equal(a, b)
        else:  # sums in another order: roundings of terms as large as the largest value
            np.testing.assert_allclose(a, b, rtol=1e-5,
                                       atol=1e-5 * np.nanmax(np.abs(b), initial=1.0))
    log_r, other = steps[4], products[4]
    eps = np.finfo(dtype).eps
    spread = np.nanmax(log_r, -1) - np.nanmin(log_r, -1)  # log of the condition number
    # records whose interval product, and every one before it, has condition < eps^-1/5
    # (a record inherits the earlier ones' rounding through the directions of q; at
    # eps^-1/4 a tanh record of 7 steps, spread 8.6 nats, differed by 6.5e-10)
    tight = np.logical_and.accumulate(np.isfinite(spread) & (spread < -0.2 * np.log(eps)),
                                      axis=-1)
    np.testing.assert_allclose(other[tight], log_r[tight], rtol=0, atol=100 * eps ** 0.75)
    assert np.array_equal(np.isnan(other), np.isnan(log_r))


def test_a_diverging_member_stops_alone():
    """In an ensemble whose member 0 overflows, member 0 is flagged and member 1 gets the
    spectrum it gets alone, both step by step (QR every step) and by interval products."""
    good = random_cell("rnn_relu", 1, 4, seed=3, gain=1.5)
    bad = dynamics.RNN(weight_ih=np.zeros((4, 1)), weight_hh=1e200 * np.eye(4),
                       bias_ih=np.zeros(4), bias_hh=np.zeros(4), nonlinearity="relu")
    pair = dynamics.RNN.stack([bad, good])
    for interval in (1, 5):
        with np.errstate(over="ignore", invalid="ignore"):
            both = analysis.lyapunov_spectrum(pair, steps=100, interval=interval,
                                              h0=np.ones((1, 2, 1, 4)), seed=0)
        alone = analysis.lyapunov_spectrum(good, steps=100, interval=interval,
                                           h0=np.ones((1, 1, 4)),
                                           seed=np.random.SeedSequence(0).spawn(2)[1])
        assert both.diverged.values.tolist() == [[True], [False]]
        assert np.isnan(both.lyapunov_exponents.values[0]).all()
        np.testing.assert_array_equal(both.lyapunov_exponents.values[1],
                                      alone.lyapunov_exponents.values)


def test_ensemble_equals_members_and_float32_is_close():
    cell = random_cell("lstm", 3, 4, seed=5, ensemble=3)
    x = np.random.default_rng(1).normal(size=(200, 2, 3))
    together = analysis.lyapunov_spectrum(cell, x, burn_in=50, interval=3, seed=7)
    assert together.lyapunov_exponents.dims == ("member", "batch", "exponent")
    h0 = np.random.default_rng(0).normal(size=(1, 3, 2, 4))
    given_h0 = analysis.lyapunov_spectrum(cell, x, burn_in=50, h0=(h0, h0))
    single32 = analysis.lyapunov_spectrum(cell.member(1), x.astype(np.float32), burn_in=50,
                                          h0=(h0[:, 1], h0[:, 1]), dtype=np.float32,
                                          seed=np.random.SeedSequence(0).spawn(3)[1])
    # float32: the sum (log det) is close; single exponents of a near-degenerate pair
    # and the most contracting direction (e^-6.4 per step) carry float32's rounding
    got, want = single32.lyapunov_exponents.values, given_h0.lyapunov_exponents.values[1]
    np.testing.assert_allclose(got.sum(-1), want.sum(-1), rtol=1e-4)
    np.testing.assert_allclose(got, want, atol=3e-3)
    for e in range(3):
        # member e draws its own h0 and tangents from child e of the seed
        ss = np.random.SeedSequence(7).spawn(3)[e]
        alone = analysis.lyapunov_spectrum(cell.member(e), x, burn_in=50, interval=3, seed=ss)
        np.testing.assert_array_equal(together.lyapunov_exponents.values[e],
                                      alone.lyapunov_exponents.values)


@examples(15)
@given(kind=kinds, H=st.integers(1, 4), T=st.integers(1, 15), seed=seeds,
       gain=st.floats(0.3, 2.0), ensemble=st.sampled_from([None, 2]))
def test_log_singular_values_are_those_of_the_explicit_product(kind, H, T, seed, gain,
                                                               ensemble):
    """Against LAPACK's SVD of the product of the explicit Jacobians, for the values it
    holds to 1e-8 (those above 1e-8 times the largest), and against the product taken
    in 60-digit mpmath for all of them. A product made singular by a dead ReLU unit has
    zeros that mpmath finds at its own rounding (below 1e-40 of the largest) and ours at
    float64's (below 1e-13 of it), or exactly."""
    cell = random_cell(kind, 2, H, seed=seed, gain=gain, ensemble=ensemble)
    x = np.random.default_rng(seed).normal(size=(T, 2, 2))
    got = analysis.log_singular_values(cell, x).values.reshape(-1, state_size(cell))
    jac = analysis.state_jacobians(cell, x).values
    products = [np.linalg.multi_dot([np.eye(jac.shape[-1])] + list(chain[::-1]))
                for chain in np.moveaxis(jac, 0, -3).reshape(-1, T, *jac.shape[-2:])]
    for logs, product in zip(got, products):
        with np.errstate(divide="ignore"):
            want = np.log(np.linalg.svd(product, compute_uv=False))
        held = want > want[0] + np.log(1e-8)
        np.testing.assert_allclose(logs[held], want[held], rtol=1e-9, atol=1e-9)
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(60):
        product = mpmath.eye(jac.shape[-1])
        for step in jac[(slice(None),) + (0,) * (jac.ndim - 3)]:  # the first sequence
            product = mpmath.matrix(step.tolist()) * product
        exact = mpmath.svd_r(product, compute_uv=False)
        want = np.array(sorted((float(mpmath.log(s)) if s > 0 else -np.inf for s in exact),
                               reverse=True))
    zero = want < want[0] + np.log(1e-40)
    np.testing.assert_allclose(got[0][~zero], want[~zero], rtol=1e-9, atol=1e-8)
    assert np.all(got[0][zero] <= want[0] + np.log(1e-13))


@pytest.mark.parametrize("T", [20, 60, 300, 3000])
def test_log_singular_values_when_a_later_direction_decays_slower(T):
    """W = [[0.5, 1], [0, 0.9]]: the second unit vector decays slower than the first, so
    a product kept without pivoting swamps its small value. det(W^T) = 0.45^T, and
    sigma_1^2 is the larger root of s^2 - |W^T|_F^2 s + det^2 (in logs past float range)."""
    W = np.array([[0.5, 1.0], [0.0, 0.9]])
    logs = analysis.log_singular_values(relu_linear_network(W), np.zeros((T, 1, 1)),
                                        h0=positive_start(2)).values[0]
    corner = (0.5 ** T - 0.9 ** T) / (0.5 - 0.9)          # W^T = [[.5^T, corner], [0, .9^T]]
    log_top = 0.5 * np.log(0.25 ** T + corner ** 2 + 0.81 ** T)   # sigma_1 ~ |W^T|_F
    log_det = T * np.log(0.45)
    np.testing.assert_allclose(logs, [log_top, log_det - log_top], rtol=1e-11)


def test_log_singular_values_of_a_long_normal_product_are_exact():
    """x -> A x with A normal: the singular values of A^T are |eig(A)|^T, here up to
    e^-20,000 apart (a 10,000-step product)."""
    N, T = 6, 10_000
    first_row = np.random.default_rng(5).uniform(0.0, 1.0 / N, N)
    A = np.stack([np.roll(first_row, i) for i in range(N)])
    logs = analysis.log_singular_values(relu_linear_network(A), np.zeros((T, 1, 1)),
                                        h0=positive_start(N)).values[0]
    want = np.sort(T * np.log(np.abs(np.linalg.eigvals(A))))[::-1]
    np.testing.assert_allclose(logs, want, rtol=1e-10)


def test_log_singular_values_of_10000_step_products_are_finite():
    """Contracting and chaotic 10,000-step products reach logs far outside float64's
    range (|log| > 709) and stay finite; an all-active ReLU map 0.5 P is exact."""
    T, N = 10_000, 6
    x = np.random.default_rng(0).normal(size=(T, 1, N))
    for gain in (0.3, 4.0):
        rnn = dynamics.RNN.init(N, N, init="gaussian", gain=gain, seed=1)
        logs = analysis.log_singular_values(rnn, x).values
        assert np.all(np.isfinite(logs)) and np.abs(logs).max() > 709, logs
    permutation = 0.5 * np.eye(N)[::-1].copy()
    relu = relu_linear_network(permutation)
    logs = analysis.log_singular_values(relu, np.zeros((T, 1, 1)), h0=positive_start(N)).values
    np.testing.assert_allclose(logs, T * np.log(0.5), rtol=1e-12)


def test_lyapunov_memory_does_not_grow_with_steps():
    rnn = dynamics.RNN.init(1, 64, init="gaussian", gain=1.5, seed=0)
    peaks = []
    for steps in (2000, 8000):
        analysis.lyapunov_spectrum(rnn, steps=steps, n_exponents=8, interval=10)
        tracemalloc.start()
        analysis.lyapunov_spectrum(rnn, steps=steps, n_exponents=8, interval=10)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # the growth is the float64 records (k per interval, a few arrays of them), far from
    # one state per step (6000 * 64 * 8 bytes = 3 MB)
    records = 8 * (8000 - 2000) // 10 * 8
    assert peaks[1] - peaks[0] < 6 * records, peaks


@examples(8)
@given(kinds, st.sampled_from([1, 3]), st.sampled_from([np.float32, np.float64]), seeds)
def test_one_tangent_in_blocks_of_units_gives_the_same_bits(kind, interval, dtype, seed):
    """The largest exponent's walk split into blocks of units (as when there are more
    threads than sequences: each block reads its tiles of W_hh once for state and
    tangent, and normalises its own copy of the tangent at the step after the one due)
    gives the bits of the walk over whole sequences, whatever the blocks."""
    cell = random_cell(kind, 3, 70, seed=seed % 1000, gain=1.5, dtype=dtype)
    x = np.random.default_rng(seed).normal(size=(25, 2, 3)).astype(dtype)
    runs = []
    for block in (70, 16, 40):  # whole; 5 blocks, the last of 6 units; 2 blocks
        with pytest.MonkeyPatch.context() as m:
            m.setattr(analysis.lyapunov, "unit_block_size", lambda n_units, n_items: block)
            runs.append(analysis.lyapunov_spectrum(cell, x, n_exponents=1, interval=interval,
                                                   burn_in=4, dtype=dtype))
    for run in runs[1:]:
        np.testing.assert_array_equal(run.finite_time_exponents.values,
                                      runs[0].finite_time_exponents.values)
        assert not run.diverged.values.any()


def test_diverging_network_is_flagged_in_blocks_of_units_too():
    rnn = dynamics.RNN(weight_ih=np.zeros((20, 1)), weight_hh=1e200 * np.eye(20),
                       nonlinearity="relu")
    for block in (20, 8):
        with pytest.MonkeyPatch.context() as m, np.errstate(over="ignore", invalid="ignore"):
            m.setattr(analysis.lyapunov, "unit_block_size", lambda n_units, n_items: block)
            ly = analysis.lyapunov_spectrum(rnn, steps=50, batch=2, n_exponents=1,
                                            h0=np.ones((1, 2, 20)))
        assert ly.diverged.values.all()
        assert np.isnan(ly.lyapunov_exponents.values).all()


def test_diverging_network_is_flagged():
    rnn = dynamics.RNN(weight_ih=np.zeros((3, 1)), weight_hh=1e200 * np.eye(3),
                       nonlinearity="relu")
    with np.errstate(over="ignore", invalid="ignore"):
        ly = analysis.lyapunov_spectrum(rnn, steps=50, batch=2, h0=np.ones((1, 2, 3)))
    assert ly.diverged.values.all()
    assert np.isnan(ly.lyapunov_exponents.values).all()


def test_weight_spectrum_dense_sparse_and_gates():
    rnn = dynamics.RNN.init(1, 50, init="gaussian", gain=1.0, seed=0)
    dense = analysis.weight_spectrum(rnn)
    sparse = analysis.weight_spectrum(rnn, method="sparse", n_values=3)
    np.testing.assert_allclose(sparse.spectral_radius, dense.spectral_radius, rtol=1e-10)
    np.testing.assert_allclose(sparse.singular_value, dense.singular_value[:, :3], rtol=1e-10)
    w = rnn.weight_hh
    np.testing.assert_allclose(dense.spectral_norm[0], np.linalg.norm(w, 2), rtol=1e-12)
    lstm = dynamics.LSTM.init(2, 5, seed=0, ensemble=2)
    s = analysis.weight_spectrum(lstm)
    assert s.spectral_radius.dims == ("member", "gate")
    assert list(s.gate.values) == ["i", "f", "g", "o"]
    block = lstm.weight_hh[1, 5:10]
    np.testing.assert_allclose(s.spectral_radius.sel(gate="f")[1],
                               np.abs(np.linalg.eigvals(block)).max(), rtol=1e-12)
    for name, variable in s.data_vars.items():
        assert {"long_name", "units"} <= set(variable.attrs), name


def test_an_ensemble_takes_one_seed_per_member():
    """seed=[s_0, s_1, ...]: member e draws its state and tangents as a single network
    seeded with s_e would, wherever it sits in the ensemble."""
    seeds = [np.random.SeedSequence(9, spawn_key=(i,)) for i in (4, 1, 7)]
    ensemble = dynamics.GRU.init(1, 5, ensemble=3, gain=2.0, init="gaussian", seed=3)
    together = analysis.lyapunov_spectrum(ensemble, steps=30, n_exponents=2, seed=seeds)
    for e in (2, 0):
        alone = analysis.lyapunov_spectrum(ensemble.member(e), steps=30, n_exponents=2,
                                           seed=seeds[e])
        np.testing.assert_array_equal(together.lyapunov_exponents[e], alone.lyapunov_exponents)
    with pytest.raises(ValueError, match="one SeedSequence per ensemble member"):
        analysis.lyapunov_spectrum(ensemble, steps=30, seed=seeds[:2])


@pytest.mark.parametrize("call, message", [
    (lambda: analysis.weight_spectrum(np.zeros((3, 4))), "square"),
    (lambda: analysis.weight_spectrum(np.full((3, 3), np.nan)), "finite"),
    (lambda: analysis.lyapunov_spectrum(random_cell("gru", 2, 3), steps=10, n_exponents=4),
     "at most the state size S = 3"),
    (lambda: analysis.lyapunov_spectrum(random_cell("lstm", 2, 3), steps=10, n_exponents=7),
     "at most the state size S = 6"),
    (lambda: analysis.lyapunov_spectrum(random_cell("gru", 2, 3), steps=10, interval=0),
     "interval must be an integer >= 1"),
    (lambda: analysis.lyapunov_spectrum(random_cell("gru", 2, 3), steps=10, burn_in=10),
     "at least one interval"),
    (lambda: analysis.lyapunov_spectrum(random_cell("gru", 2, 3)), "steps must be an integer"),
    (lambda: analysis.lyapunov_spectrum(random_cell("gru", 2, 3), np.zeros((5, 2, 2)), batch=7),
     "batch must match the input's batch of 2"),
    (lambda: analysis.lyapunov_spectrum(random_cell("gru", 2, 3), np.zeros((5, 1, 3))),
     "x must have shape"),
    (lambda: analysis.lyapunov_spectrum(random_cell("gru", 2, 3), drive=np.zeros((5, 1, 3))),
     r"drive must have shape \(T, B, 9\)"),
    (lambda: analysis.lyapunov_spectrum(random_cell("gru", 2, 3), np.zeros((5, 1, 2)),
                                        drive=np.zeros((5, 1, 9))), "not both"),
    (lambda: analysis.lyapunov_spectrum(random_cell("gru", 2, 3), steps=10,
                                        h0=np.zeros((1, 2, 3)), batch=1), "h0 must have shape"),
    (lambda: analysis.log_singular_values(random_cell("gru", 2, 3), np.zeros((10, 1, 2)),
                                          interval=3), "interval must divide"),
    (lambda: analysis.log_singular_values(random_cell("gru", 2, 3), np.zeros((10, 1, 2)),
                                          n_values=4), "n_values must be at most"),
    (lambda: analysis.log_singular_values(random_cell("gru", 2, 3), None), "needs the input x"),
    (lambda: analysis.lyapunov_spectrum(random_cell("gru", 2, 3), drive=np.zeros((5, 0, 9))),
     "batch of at least 1"),
    (lambda: analysis.weight_spectrum(np.zeros((0, 0))), "at least 1"),
    (lambda: analysis.lyapunov_spectrum(random_cell("gru", 2, 3), steps=10, burn_in=4,
                                        gradient_lags=7), "gradient_lags must be at most"),
    (lambda: dynamics.RNN(weight_ih=np.zeros((3, 1)), weight_hh=np.full((3, 3), np.nan)),
     "weight_hh must be finite"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
