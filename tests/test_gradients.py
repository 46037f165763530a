"""``dynamics.bptt`` against central finite differences of its own forward pass (float64).

The loss is L = sum(grad_output * output) [+ sum(grad_h_n * h_n) + sum(grad_c_n * c_n)];
every parameter of every layer-direction, x, h0 and (LSTM) c0 is checked entry by entry.
Error measure: max|g - fd| / max(max|fd|, floor) < 1e-6. The floor is where central
differences turn into noise: L's rounding is ~1e-16 of its O(1..10) intermediates times
sum|grad terms|, divided by 2 eps = 2e-6, i.e. ~5e-10 * S (measured: 3e-10 * S) with
S = sum(|grad_output|, |grad_h_n|, |grad_c_n|) * max(1, max|states|); the floor is
FD_FLOOR * S. (A gradient that all but vanishes, e.g. w.r.t. W_hh when h0 ~ 1e-3 and
T = 1, would otherwise fail on noise alone.)
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import dynamics
import naive
from conftest import KINDS, NetConfig, examples, net_configs

pytestmark = pytest.mark.usefixtures("single_thread")

TOL = 1e-6
FD_FLOOR = 5e-3  # measured noise: up to 2.7e-10 * S (150 random configurations)
# relu: keep every pre-activation this far from the kink, so +-eps never crosses it
RELU_MARGIN = 1e-3


def gradient_error(g, fd, floor=1e-300):
    return float(np.max(np.abs(g - fd), initial=0.0)
                 / max(np.max(np.abs(fd), initial=0.0), floor, 1e-300))


def loss_terms(cfg, rng, with_grad_h_n, with_grad_c_n):
    grad_output = rng.normal(size=(cfg.T, cfg.B, cfg.dirs * cfg.H))
    grad_h_n = rng.normal(size=(cfg.n_states, cfg.B, cfg.H)) if with_grad_h_n else None
    grad_c_n = (rng.normal(size=(cfg.n_states, cfg.B, cfg.H))
                if with_grad_c_n and cfg.kind == "lstm" else None)
    return grad_output, grad_h_n, grad_c_n


def make_loss(net, x, state, grad_output, grad_h_n, grad_c_n):
    """L() reading net's parameters, x and the state arrays at call time."""
    def loss():
        result = dynamics.forward(net, x, state)
        total = np.sum(grad_output * result.output)
        if grad_h_n is not None:
            total += np.sum(grad_h_n * result.h_n)
        if grad_c_n is not None:
            total += np.sum(grad_c_n * result.c_n)
        return total
    return loss


def noise_floor(net, x, state, grad_output, grad_h_n, grad_c_n):
    """FD_FLOOR * S (see the module docstring)."""
    result = dynamics.forward(net, x, state)
    states = [result.output, result.h_n] + ([result.c_n] if result.c_n is not None else [])
    size = max([1.0] + [float(np.max(np.abs(a), initial=0.0)) for a in states])
    terms = [a for a in (grad_output, grad_h_n, grad_c_n) if a is not None]
    return FD_FLOOR * size * sum(float(np.sum(np.abs(a))) for a in terms)


def check_all_gradients(cfg, net, x, h0, c0, grad_output, grad_h_n, grad_c_n, truncation=None):
    """Compare every entry of every gradient with central differences; returns the grads."""
    lstm = cfg.kind == "lstm"
    state = (h0, c0) if lstm else h0
    grads = dynamics.bptt(net, x, grad_output, state, truncation=truncation,
                          grad_h_n=grad_h_n, grad_c_n=grad_c_n)
    expected_keys = set(net.parameters()) | {"x", "h0"} | ({"c0"} if lstm else set())
    assert set(grads) == expected_keys
    loss = make_loss(net, x, state, grad_output, grad_h_n, grad_c_n)
    floor = noise_floor(net, x, state, grad_output, grad_h_n, grad_c_n)
    targets = {name + suffix: array for suffix, _, _, cell in net.named_cells()
               for name, array in cell.parameters().items()}
    targets.update({"x": x, "h0": h0})
    if lstm:
        targets["c0"] = c0
    for name, array in targets.items():
        assert grads[name].shape == array.shape, name
        assert grads[name].dtype == np.float64, name
        fd = naive.central_difference(loss, array)
        error = gradient_error(grads[name], fd, floor)
        assert error < TOL, f"{name}: relative error {error:.3g}"
    return grads


def relu_far_from_kink(cfg, net, x, h0):
    if cfg.kind != "rnn_relu":
        return True
    pre = naive.preactivations(naive.params_from_network(net), cfg.kind, x, h0, None,
                               cfg.bidirectional)
    return all(a.size == 0 or np.min(np.abs(a)) > RELU_MARGIN for a in pre)


small_configs = dict(T=(1, 5), B=(1, 3), D=(1, 3), H=(1, 4), num_layers=(1, 2),
                     dtypes=(np.float64,), gain=(0.2, 2.0))


@pytest.mark.parametrize("kind", KINDS)
@examples(10)
@given(data=st.data())
def test_bptt_matches_finite_differences(kind, data):
    cfg = data.draw(net_configs(kinds=(kind,), bias=(True, False), **small_configs), "cfg")
    with_h_n, with_c_n = data.draw(st.booleans(), "grad_h_n"), data.draw(st.booleans(), "grad_c_n")
    net = cfg.network()
    x, h0, c0 = cfg.inputs()
    assume(relu_far_from_kink(cfg, net, x, h0))
    rng = np.random.default_rng(cfg.seed)
    check_all_gradients(cfg, net, x, h0, c0, *loss_terms(cfg, rng, with_h_n, with_c_n))


@pytest.mark.parametrize("kind", KINDS)
@examples(4)
@given(seed=st.integers(0, 2**32 - 1))
def test_bptt_deep_bidirectional(kind, seed):
    """Three bidirectional layers, with gradients of the final states."""
    cfg = NetConfig(kind, T=4, B=2, D=2, H=3, num_layers=3, bidirectional=True, seed=seed,
                    gain=1.0, dtype=np.float64)
    net = cfg.network()
    x, h0, c0 = cfg.inputs()
    assume(relu_far_from_kink(cfg, net, x, h0))
    rng = np.random.default_rng(seed)
    check_all_gradients(cfg, net, x, h0, c0, *loss_terms(cfg, rng, True, True))


@examples(8)
@given(cfg=net_configs(**small_configs), extra=st.integers(0, 3))
def test_truncation_at_least_T_is_full_bptt(cfg, extra):
    net = cfg.network()
    x, h0, c0 = cfg.inputs()
    assume(relu_far_from_kink(cfg, net, x, h0))
    rng = np.random.default_rng(cfg.seed)
    terms = loss_terms(cfg, rng, True, True)
    state = cfg.h0_arg(h0, c0)
    full = dynamics.bptt(net, x, terms[0], state, grad_h_n=terms[1], grad_c_n=terms[2])
    truncated = check_all_gradients(cfg, net, x, h0, c0, *terms, truncation=cfg.T + extra)
    assert set(full) == set(truncated)
    for name in full:
        np.testing.assert_array_equal(truncated[name], full[name], err_msg=name)


@examples(10)
@given(cfg=net_configs(bias=(True, False)), ensemble=st.sampled_from([None, 3]),
       own_inputs=st.booleans(), truncation=st.sampled_from([None, 1, 2]))
def test_without_the_input_gradient_the_rest_is_the_same(cfg, ensemble, own_inputs, truncation):
    """``input_gradient=False`` drops "x" and changes no other bit."""
    own_inputs = own_inputs and ensemble is not None
    net = cfg.network(ensemble)
    x, h0, c0 = cfg.inputs(ensemble=ensemble, own_inputs=own_inputs)
    grad_output = np.ones_like(dynamics.forward(net, x, cfg.h0_arg(h0, c0)).output)
    full, without = (dynamics.bptt(net, x, grad_output, cfg.h0_arg(h0, c0), truncation,
                                   input_gradient=flag) for flag in (True, False))
    assert set(without) == set(full) - {"x"}
    for name in without:
        np.testing.assert_array_equal(without[name], full[name], err_msg=name)


@examples(10)
@given(cfg=net_configs(T=(0, 0), num_layers=(1, 2)), with_h_n=st.booleans())
def test_empty_sequence_gradients(cfg, with_h_n):
    """T = 0: h_n = h0, so dL/dh0 = grad_h_n (dL/dc0 = grad_c_n), everything else zero."""
    net = cfg.network()
    x, h0, c0 = cfg.inputs()
    rng = np.random.default_rng(cfg.seed)
    grad_output, grad_h_n, grad_c_n = (None if a is None else a.astype(cfg.dtype)
                                       for a in loss_terms(cfg, rng, with_h_n, with_h_n))
    grads = dynamics.bptt(net, x, grad_output, cfg.h0_arg(h0, c0),
                          grad_h_n=grad_h_n, grad_c_n=grad_c_n)
    for name, array in net.parameters().items():
        assert grads[name].shape == array.shape
        assert not np.any(grads[name]), name
    assert grads["x"].shape == x.shape
    np.testing.assert_array_equal(grads["h0"], grad_h_n if with_h_n else np.zeros_like(h0))
    if cfg.kind == "lstm":
        np.testing.assert_array_equal(grads["c0"],
                                      grad_c_n if with_h_n else np.zeros_like(c0))


@examples(12)
@given(cfg=net_configs(T=(1, 6), num_layers=(1, 2), dtypes=(np.float64,), gain=(0.2, 1.2)))
def test_float32_gradients_close_to_float64(cfg):
    """The float32 backward pass is the float64 one up to float32 rounding.

    Saturated units are excluded: there 1 - y*y (or y*(1 - y)) cancels catastrophically in
    float32 whatever the implementation (torch's too), e.g. 2% error at tanh(7).
    """
    net64 = cfg.network()
    net32 = dynamics.Network([[cell.astype(np.float32) for cell in layer]
                              for layer in net64.layers])
    x, h0, c0 = (a * 0.5 for a in cfg.inputs())
    f32 = [a.astype(np.float32) for a in (x, h0, c0)]
    # round once, so that both runs see the same numbers
    net64 = dynamics.Network([[cell.astype(np.float64) for cell in layer]
                              for layer in net32.layers])
    x, h0, c0 = [a.astype(np.float64) for a in f32]
    assume(relu_far_from_kink(cfg, net64, x, h0))
    pre = naive.preactivations(naive.params_from_network(net64), cfg.kind, x, h0, c0,
                               cfg.bidirectional)
    assume(max(np.max(np.abs(a)) for a in pre) < 3.0)
    grad_output = np.random.default_rng(cfg.seed).normal(size=(cfg.T, cfg.B, cfg.dirs * cfg.H))
    g64 = dynamics.bptt(net64, x, grad_output, cfg.h0_arg(h0, c0))
    g32 = dynamics.bptt(net32, f32[0], grad_output.astype(np.float32),
                        cfg.h0_arg(f32[1], f32[2]))
    assert set(g32) == set(g64)
    # a gradient that is a nearly cancelling sum (a bias's, over T * B terms) keeps the
    # absolute rounding error of its terms: measure it against 1% of the largest gradient
    floor = 0.01 * max(np.max(np.abs(g)) for g in g64.values())
    for name in g64:
        assert g32[name].dtype == np.float32, name
        error = gradient_error(g32[name], g64[name], floor)
        assert error < 1e-4, f"{name}: {error:.3g}"
