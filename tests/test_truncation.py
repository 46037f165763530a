"""Truncated BPTT: ``dynamics.bptt(..., truncation=k)`` against torch run chunk by chunk
with the state detached between chunks.

Documented semantics (``dynamics.bptt``): gradients flow only within consecutive chunks
of k steps *in each direction's processing order* while the forward state carries across
chunks; ``k >= T`` equals full BPTT. For the reverse direction of a bidirectional layer
the chunks therefore start at t = T-1: [T-1 .. T-k], [T-k-1 .. T-2k], ...
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dynamics
from conftest import examples, torch_module as make_module

torch = pytest.importorskip("torch")

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
CELLS = {"rnn_tanh": dynamics.RNN, "rnn_relu": dynamics.RNN, "lstm": dynamics.LSTM,
         "gru": dynamics.GRU}
# 20 examples under the default profile, scaled by HYPOTHESIS_PROFILE (conftest.py).
SETTINGS = settings(examples(20), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
pytestmark = pytest.mark.usefixtures("one_torch_thread")



def chunked_torch(module, x, h0, c0, grad_output, k, grad_h_n=None, grad_c_n=None):
    """Gradients of sum(grad_output * output) [+ sum(grad_h_n * h_n) + sum(grad_c_n * c_n)]
    with the state detached every k steps.

    Parameter gradients accumulate over chunks; dL/dx is per chunk; dL/dh0 (dL/dc0)
    comes from the first chunk only; the final states' gradients enter the last chunk.
    Returns (output, h_n, c_n, grads).
    """
    lstm = isinstance(module, torch.nn.LSTM)
    xt = torch.from_numpy(x).requires_grad_(True)
    h0t = torch.from_numpy(h0).requires_grad_(True)
    c0t = torch.from_numpy(c0).requires_grad_(True)
    state = (h0t, c0t) if lstm else h0t
    outputs = []
    for start in range(0, x.shape[0], k):
        if start:
            state = tuple(s.detach() for s in state) if lstm else state.detach()
        out, state = module(xt[start:start + k], state)
        outputs.append(out)
    output = torch.cat(outputs)
    h_n, c_n = state if lstm else (state, None)
    loss = (output * torch.from_numpy(grad_output)).sum()
    if grad_h_n is not None:
        loss = loss + (h_n * torch.from_numpy(grad_h_n)).sum()
    if grad_c_n is not None:
        loss = loss + (c_n * torch.from_numpy(grad_c_n)).sum()
    module.zero_grad()
    loss.backward()
    grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    grads["x"] = xt.grad.numpy()
    grads["h0"] = h0t.grad.numpy()
    if lstm:
        grads["c0"] = c0t.grad.numpy()
    return (output.detach().numpy(), h_n.detach().numpy(),
            None if c_n is None else c_n.detach().numpy(), grads)


def assert_close(actual, expected, name):
    assert actual.shape == expected.shape, f"{name}: {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-11 * scale, err_msg=name)


def inputs(rng, kind, T, B, D, H, states, width):
    x = rng.normal(size=(T, B, D))
    h0 = rng.normal(size=(states, B, H))
    c0 = rng.normal(size=(states, B, H))
    grad_output = rng.normal(size=(T, B, width))
    return x, h0, c0, grad_output, ((h0, c0) if kind == "lstm" else h0)


@SETTINGS
@given(kind=st.sampled_from(KINDS), num_layers=st.integers(1, 2), T=st.integers(1, 20),
       k=st.integers(1, 6), B=st.integers(1, 3), D=st.integers(1, 3), H=st.integers(1, 4),
       seed=st.integers(0, 2**31 - 1), final_state_gradients=st.booleans())
def test_unidirectional_truncation_matches_chunked_torch(kind, num_layers, T, k, B, D, H, seed,
                                                         final_state_gradients):
    module = make_module(kind, D, H, num_layers, seed=seed)
    net = dynamics.from_torch(module)
    rng = np.random.default_rng(seed)
    x, h0, c0, grad_output, state = inputs(rng, kind, T, B, D, H, num_layers, H)
    finals = {}
    if final_state_gradients:
        finals["grad_h_n"] = rng.normal(size=h0.shape)
        if kind == "lstm":
            finals["grad_c_n"] = rng.normal(size=c0.shape)
    output, h_n, c_n, expected = chunked_torch(module, x, h0, c0, grad_output, k, **finals)
    # the forward pass is unaffected by the detaching
    result = dynamics.forward(net, x, h0=state)
    assert_close(result.output, output, "output")
    assert_close(result.h_n, h_n, "h_n")
    grads = dynamics.bptt(net, x, grad_output, h0=state, truncation=k, **finals)
    assert set(grads) == set(expected)
    for name, value in expected.items():
        assert_close(grads[name], value, f"{name} (T={T}, k={k})")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("T,k", [(10, 3), (7, 1), (9, 4), (8, 8), (5, 2)])
def test_bidirectional_reverse_half_chunks_from_the_end(kind, T, k):
    """One bidirectional layer: the forward half is chunked from t = 0, the reverse half
    in its own processing order, from t = T-1 down (torch: a unidirectional module on the
    time-reversed sequence, chunk by chunk)."""
    B, D, H = 2, 3, 4
    bidirectional = make_module(kind, D, H, bidirectional=True, seed=T * 10 + k)
    net = dynamics.from_torch(bidirectional)
    halves = {}
    for direction, suffix in ((0, ""), (1, "_reverse")):
        half = make_module(kind, D, H)
        half.load_state_dict({name[:len(name) - len(suffix)]: value
                              for name, value in bidirectional.state_dict().items()
                              if name.endswith("_reverse") == bool(direction)})
        halves[direction] = half
    rng = np.random.default_rng(T * 100 + k)
    x, h0, c0, grad_output, state = inputs(rng, kind, T, B, D, H, 2, 2 * H)
    flip = lambda a: np.ascontiguousarray(a[::-1])  # noqa: E731
    finals = {"grad_h_n": rng.normal(size=h0.shape)}
    if kind == "lstm":
        finals["grad_c_n"] = rng.normal(size=c0.shape)
    half_finals = [{name: value[[d]] for name, value in finals.items()} for d in (0, 1)]

    out_f, hn_f, _, g_f = chunked_torch(halves[0], x, h0[:1], c0[:1], grad_output[..., :H], k,
                                        **half_finals[0])
    out_r, hn_r, _, g_r = chunked_torch(halves[1], flip(x), h0[1:], c0[1:],
                                        flip(grad_output[..., H:]), k, **half_finals[1])

    result = dynamics.forward(net, x, h0=state)
    assert_close(result.output, np.concatenate([out_f, flip(out_r)], axis=-1), "output")
    assert_close(result.h_n, np.concatenate([hn_f, hn_r]), "h_n")

    grads = dynamics.bptt(net, x, grad_output, h0=state, truncation=k, **finals)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        assert_close(grads[name + "_l0"], g_f[name + "_l0"], name + "_l0")
        assert_close(grads[name + "_l0_reverse"], g_r[name + "_l0"], name + "_l0_reverse")
    assert_close(grads["x"], g_f["x"] + flip(g_r["x"]), "x")
    assert_close(grads["h0"], np.concatenate([g_f["h0"], g_r["h0"]]), "h0")
    if kind == "lstm":
        assert_close(grads["c0"], np.concatenate([g_f["c0"], g_r["c0"]]), "c0")

    # the reverse half alone: with no gradient on the forward half's outputs and final
    # states, the forward half's gradients vanish and dL/dx is the reverse half's alone
    only_reverse = grad_output.copy()
    only_reverse[..., :H] = 0.0
    for value in finals.values():
        value[0] = 0.0
    grads = dynamics.bptt(net, x, only_reverse, h0=state, truncation=k, **finals)
    assert_close(grads["x"], flip(g_r["x"]), "x (reverse half only)")
    assert not np.any(grads["weight_hh_l0"])
    assert_close(grads["weight_hh_l0_reverse"], g_r["weight_hh_l0"], "weight_hh_l0_reverse")


def make_network(kind, D, H, num_layers, bidirectional, ensemble=None, seed=0):
    options = {"nonlinearity": kind[4:]} if kind.startswith("rnn_") else {}
    dirs = 2 if bidirectional else 1
    return dynamics.Network([[CELLS[kind].init(D if l == 0 else dirs * H, H, ensemble=ensemble,
                                               seed=seed + 10 * l + d, **options)
                              for d in range(dirs)] for l in range(num_layers)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("ensemble", [None, 3])
def test_truncation_at_least_T_is_full_bptt_bitwise(kind, bidirectional, ensemble):
    T, B, D, H = 9, 2, 3, 4
    net = make_network(kind, D, H, 2, bidirectional, ensemble, seed=4)
    rng = np.random.default_rng(5)
    dirs = 2 if bidirectional else 1
    lead = (T,) if ensemble is None else (T, ensemble)
    x = rng.normal(size=lead + (B, D))
    grad_output = rng.normal(size=lead + (B, dirs * H))
    state_shape = (2 * dirs,) + (() if ensemble is None else (ensemble,)) + (B, H)
    h0 = rng.normal(size=state_shape)
    state = (h0, rng.normal(size=state_shape)) if kind == "lstm" else h0
    full = dynamics.bptt(net, x, grad_output, h0=state)
    for k in (T, T + 1, 1000):
        truncated = dynamics.bptt(net, x, grad_output, h0=state, truncation=k)
        assert set(truncated) == set(full)
        for name in full:
            assert np.array_equal(truncated[name], full[name]), f"{name}, k={k}"
    # and truncation actually changes something when k < T (the test can tell)
    short = dynamics.bptt(net, x, grad_output, h0=state, truncation=2)
    assert not np.allclose(short["h0"], full["h0"])
    assert not np.allclose(short["weight_hh_l0"], full["weight_hh_l0"])


@pytest.mark.parametrize("kind", KINDS)
def test_truncation_one_drops_all_recurrent_flow(kind):
    """k = 1: every step's gradient stops at its own input state; dL/dh0 comes from
    step 0 alone, so it does not change when grad_output after step 0 changes."""
    T, B, D, H = 6, 2, 3, 4
    module = make_module(kind, D, H, seed=3)
    net = dynamics.from_torch(module)
    rng = np.random.default_rng(0)
    x, h0, c0, grad_output, state = inputs(rng, kind, T, B, D, H, 1, H)
    _, _, _, expected = chunked_torch(module, x, h0, c0, grad_output, 1)
    grads = dynamics.bptt(net, x, grad_output, h0=state, truncation=1)
    for name, value in expected.items():
        assert_close(grads[name], value, name)
    changed = grad_output.copy()
    changed[1:] = rng.normal(size=changed[1:].shape)
    again = dynamics.bptt(net, x, changed, h0=state, truncation=1)
    assert np.array_equal(again["h0"], grads["h0"])
    assert np.array_equal(again["x"][0], grads["x"][0])
    assert not np.allclose(again["x"][1:], grads["x"][1:])


@pytest.mark.parametrize("k", [2**63 - 1, 2**63, 10**30])
def test_huge_truncation_is_full_bptt(k):
    """Any k >= T means full BPTT, however large (a Python int is unbounded)."""
    net = dynamics.RNN.init(3, 4, seed=1)
    rng = np.random.default_rng(0)
    x, grad_output = rng.normal(size=(5, 2, 3)), rng.normal(size=(5, 2, 4))
    full = dynamics.bptt(net, x, grad_output)
    truncated = dynamics.bptt(net, x, grad_output, truncation=k)
    for name in full:
        assert np.array_equal(truncated[name], full[name]), name
