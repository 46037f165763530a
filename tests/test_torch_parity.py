"""Parity with PyTorch: ``dynamics.from_torch`` networks give torch's outputs, final
states and autograd gradients; ``to_torch_state_dict`` round-trips.

The loss is ``L = sum(grad_output * output)`` (plus ``sum(grad_h_n * h_n)`` and
``sum(grad_c_n * c_n)`` where those are given), differentiated by torch autograd and by
``dynamics.bptt``.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dynamics
from conftest import examples, torch_module as make_module

torch = pytest.importorskip("torch")

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
DTYPES = {"float32": (np.float32, torch.float32), "float64": (np.float64, torch.float64)}
# (rtol, atol relative to the reference's largest magnitude)
TOLERANCE = {"float64": (1e-10, 1e-11), "float32": (1e-4, 1e-4)}

# 25 examples under the default profile, scaled by HYPOTHESIS_PROFILE (conftest.py).
SETTINGS = settings(examples(25), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
pytestmark = pytest.mark.usefixtures("one_torch_thread")



CELLS = {"rnn_tanh": dynamics.RNN, "rnn_relu": dynamics.RNN, "lstm": dynamics.LSTM,
         "gru": dynamics.GRU}


def make_network(kind, input_size, hidden_size, num_layers=1, bidirectional=False, *,
                 seed=0, **options):
    """A Network of ``Cell.init`` cells with integer seeds.

    (``Network.init`` is tested on its own in ``test_network_init_round_trip``; building
    networks here keeps the other tests independent of it.)
    """
    if kind.startswith("rnn_"):
        options["nonlinearity"] = kind[4:]
    dirs = 2 if bidirectional else 1
    layers = [[CELLS[kind].init(input_size if l == 0 else dirs * hidden_size, hidden_size,
                                seed=seed * 100 + l * dirs + d, **options)
               for d in range(dirs)] for l in range(num_layers)]
    return dynamics.Network(layers)


def assert_close(actual, expected, dtype, name):
    """|actual - expected| <= rtol*|expected| + atol*max(1, max|expected|), same shape/dtype."""
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    rtol, atol = TOLERANCE[dtype]
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=name)


def torch_run(module, x, h0, c0, grad_output, grad_h_n=None, grad_c_n=None):
    """torch's output, final states and the gradients of the loss (as numpy arrays)."""
    xt = torch.from_numpy(x).requires_grad_(True)
    h0t = torch.from_numpy(h0).requires_grad_(True)
    lstm = isinstance(module, torch.nn.LSTM)
    if lstm:
        c0t = torch.from_numpy(c0).requires_grad_(True)
        output, (h_n, c_n) = module(xt, (h0t, c0t))
    else:
        output, h_n = module(xt, h0t)
    module.zero_grad()
    loss = (output * torch.from_numpy(grad_output)).sum()
    if grad_h_n is not None:
        loss = loss + (h_n * torch.from_numpy(grad_h_n)).sum()
    if grad_c_n is not None:
        loss = loss + (c_n * torch.from_numpy(grad_c_n)).sum()
    loss.backward()
    result = {"output": output.detach().numpy(), "h_n": h_n.detach().numpy()}
    grads = {name: p.grad.numpy().copy() for name, p in module.named_parameters()}
    grads["x"] = xt.grad.numpy()
    grads["h0"] = h0t.grad.numpy()
    if lstm:
        result["c_n"] = c_n.detach().numpy()
        grads["c0"] = c0t.grad.numpy()
    return result, grads


@st.composite
def configurations(draw):
    return dict(
        kind=draw(st.sampled_from(KINDS)),
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(sorted(DTYPES))),
        T=draw(st.integers(1, 7)),
        B=draw(st.integers(1, 3)),
        D=draw(st.integers(1, 4)),
        H=draw(st.integers(1, 5)),
        seed=draw(st.integers(0, 2**31 - 1)),
        give_h0=draw(st.booleans()),
        final_state_grads=draw(st.booleans()),
    )


@SETTINGS
@given(configurations())
def test_outputs_and_gradients_match_torch(cfg):
    kind, dtype = cfg["kind"], cfg["dtype"]
    np_dtype = DTYPES[dtype][0]
    module = make_module(kind, cfg["D"], cfg["H"], cfg["num_layers"], cfg["bidirectional"],
                         cfg["bias"], dtype, cfg["seed"])
    net = dynamics.from_torch(module)
    assert net.dtype == np_dtype and net.kind == kind
    assert net.num_layers == cfg["num_layers"] and net.bidirectional == cfg["bidirectional"]

    rng = np.random.default_rng(cfg["seed"])
    T, B, H = cfg["T"], cfg["B"], cfg["H"]
    states = cfg["num_layers"] * (2 if cfg["bidirectional"] else 1)
    width = (2 if cfg["bidirectional"] else 1) * H
    x = rng.normal(size=(T, B, cfg["D"])).astype(np_dtype)
    h0 = rng.normal(size=(states, B, H)).astype(np_dtype)
    c0 = rng.normal(size=(states, B, H)).astype(np_dtype)
    grad_output = rng.normal(size=(T, B, width)).astype(np_dtype)
    if not cfg["give_h0"]:
        h0, c0 = np.zeros_like(h0), np.zeros_like(c0)
    grad_h_n = grad_c_n = None
    if cfg["final_state_grads"]:
        grad_h_n = rng.normal(size=(states, B, H)).astype(np_dtype)
        if kind == "lstm":
            grad_c_n = rng.normal(size=(states, B, H)).astype(np_dtype)

    expected, expected_grads = torch_run(module, x, h0, c0, grad_output, grad_h_n, grad_c_n)

    state_arg = ((h0, c0) if kind == "lstm" else h0) if cfg["give_h0"] else None
    result = dynamics.forward(net, x, h0=state_arg)
    assert_close(result.output, expected["output"], dtype, "output")
    assert_close(result.h_n, expected["h_n"], dtype, "h_n")
    if kind == "lstm":
        assert_close(result.c_n, expected["c_n"], dtype, "c_n")
    else:
        assert result.c_n is None

    grads = dynamics.bptt(net, x, grad_output, h0=state_arg, grad_h_n=grad_h_n,
                          grad_c_n=grad_c_n)
    assert set(grads) == set(expected_grads)
    for name, value in expected_grads.items():
        assert_close(grads[name], value, dtype, name)


@pytest.mark.parametrize("kind", KINDS)
def test_ensemble_members_match_torch(kind):
    """Each member of an ensemble (own inputs and shared input) equals its torch module."""
    E, T, B, D, H = 3, 5, 2, 3, 4
    net = make_network(kind, D, H, num_layers=2, bidirectional=True, ensemble=E,
                                seed=7)
    rng = np.random.default_rng(1)
    own_x = rng.normal(size=(T, E, B, D))
    shared_x = rng.normal(size=(T, B, D))
    h0 = rng.normal(size=(4, E, B, H))
    c0 = rng.normal(size=(4, E, B, H))
    grad_output = rng.normal(size=(T, E, B, 2 * H))
    for x in (own_x, shared_x):
        state = (h0, c0) if kind == "lstm" else h0
        result = dynamics.forward(net, x, h0=state)
        grads = dynamics.bptt(net, x, grad_output, h0=state)
        assert result.output.shape == (T, E, B, 2 * H)
        grad_x_total = np.zeros_like(shared_x)
        for e in range(E):
            member = dynamics.Network([[cell.member(e) for cell in layer] for layer in net.layers])
            module = make_module(kind, D, H, num_layers=2, bidirectional=True)
            module.load_state_dict(dynamics.to_torch_state_dict(member))
            xe = x[:, e] if x.ndim == 4 else x
            expected, expected_grads = torch_run(module, np.ascontiguousarray(xe),
                                                 h0[:, e].copy(), c0[:, e].copy(),
                                                 np.ascontiguousarray(grad_output[:, e]))
            assert_close(result.output[:, e], expected["output"], "float64", f"output[{e}]")
            assert_close(result.h_n[:, e], expected["h_n"], "float64", f"h_n[{e}]")
            for name, value in expected_grads.items():
                if name == "x":
                    if x.ndim == 4:
                        assert_close(grads["x"][:, e], value, "float64", "x")
                    else:
                        grad_x_total += value
                else:
                    assert_close(grads[name][:, e] if name in ("h0", "c0") else grads[name][e],
                                 value, "float64", f"{name}[{e}]")
        if x.ndim == 3:
            # a shared input's gradient sums over the members
            assert_close(grads["x"], grad_x_total, "float64", "x (shared)")


@SETTINGS
@given(kind=st.sampled_from(KINDS), num_layers=st.integers(1, 3),
       bidirectional=st.booleans(), bias=st.booleans(),
       dtype=st.sampled_from(sorted(DTYPES)), seed=st.integers(0, 2**31 - 1))
def test_state_dict_round_trip(kind, num_layers, bidirectional, bias, dtype, seed):
    D, H = 3, 4
    np_dtype, torch_dtype = DTYPES[dtype]
    net = make_network(kind, D, H, num_layers=num_layers, bidirectional=bidirectional,
                                bias=bias, seed=seed, dtype=dtype)
    state = dynamics.to_torch_state_dict(net)
    assert set(state) == set(net.parameters())
    for name, tensor in state.items():
        assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch_dtype, name
        assert np.array_equal(tensor.numpy(), net.parameters()[name]), name

    fresh = make_module(kind, D, H, num_layers, bidirectional, bias, dtype, seed=seed + 1)
    missing, unexpected = fresh.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    x = np.random.default_rng(seed).normal(size=(6, 2, D)).astype(np_dtype)
    with torch.no_grad():
        torch_output, torch_h_n = fresh(torch.from_numpy(x))
    if kind == "lstm":
        torch_h_n = torch_h_n[0]
    result = dynamics.forward(net, x)
    assert_close(result.output, torch_output.numpy(), dtype, "output")
    assert_close(result.h_n, torch_h_n.numpy(), dtype, "h_n")

    # torch -> dynamics -> torch gives back exactly the module's tensors
    back = dynamics.to_torch_state_dict(dynamics.from_torch(fresh))
    original = fresh.state_dict()
    assert set(back) == set(original)
    for name in original:
        assert torch.equal(back[name], original[name]), name
    # and the rebuilt network computes exactly what the original one does
    again = dynamics.forward(dynamics.from_torch(fresh), x)
    assert np.array_equal(again.output, result.output)
    assert np.array_equal(again.h_n, result.h_n)


def test_state_dict_is_not_a_view_of_the_network():
    net = make_network("gru", 2, 3)
    state = dynamics.to_torch_state_dict(net)
    before = net.parameters()["weight_hh_l0"].copy()
    state["weight_hh_l0"].add_(1.0)
    assert np.array_equal(net.parameters()["weight_hh_l0"], before)


def test_single_cell_state_dict_and_from_torch_batch_first():
    cell = dynamics.LSTM.init(3, 4, seed=2)
    state = dynamics.to_torch_state_dict(cell)
    assert sorted(state) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]
    module = torch.nn.LSTM(3, 4, batch_first=True).double()
    module.load_state_dict(state)
    x = np.random.default_rng(0).normal(size=(5, 2, 3))
    with torch.no_grad():
        expected = module(torch.from_numpy(x).transpose(0, 1))[0].transpose(0, 1).numpy()
    # from_torch of a batch_first module: our arrays stay time-major
    net = dynamics.from_torch(module)
    assert_close(dynamics.forward(net, x).output, expected, "float64", "output")
    assert_close(dynamics.forward(cell, x).output, expected, "float64", "output")


@pytest.mark.parametrize("kind", KINDS)
def test_ensemble_has_no_torch_state_dict(kind):
    net = make_network(kind, 3, 4, ensemble=2)
    with pytest.raises(ValueError, match="ensemble"):
        dynamics.to_torch_state_dict(net)
    cls = {"lstm": dynamics.LSTM, "gru": dynamics.GRU}.get(kind, dynamics.RNN)
    options = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    with pytest.raises(ValueError, match="ensemble"):
        dynamics.to_torch_state_dict(cls.init(3, 4, ensemble=3, **options))
    # a member of an ensemble is a single network and converts
    member = dynamics.Network([[cell.member(1) for cell in layer] for layer in net.layers])
    assert set(dynamics.to_torch_state_dict(member)) == set(member.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_long_sequence_float64_matches_torch_to_rounding(kind):
    """2,000 steps, torch's default initialisation: agreement to float64 rounding."""
    T, B, D, H = 2000, 2, 8, 16
    module = make_module(kind, D, H, seed=11)
    net = dynamics.from_torch(module)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(T, B, D))
    h0 = rng.normal(size=(1, B, H))
    c0 = rng.normal(size=(1, B, H))
    grad_output = rng.normal(size=(T, B, H))
    expected, expected_grads = torch_run(module, x, h0, c0, grad_output)
    state = (h0, c0) if kind == "lstm" else h0
    result = dynamics.forward(net, x, h0=state)
    assert set(expected) == ({"output", "h_n", "c_n"} if kind == "lstm" else {"output", "h_n"})
    for name, value in expected.items():
        assert np.max(np.abs(getattr(result, name) - value)) < 1e-12, name
    grads = dynamics.bptt(net, x, grad_output, h0=state)
    assert set(grads) == set(expected_grads)
    for name, value in expected_grads.items():
        # parameter gradients are sums of T*B terms of size up to ~100: allow float64
        # rounding of such a sum (relative 1e-14), nothing more
        scale = max(1.0, float(np.max(np.abs(value))))
        diff = float(np.max(np.abs(grads[name] - value)))
        assert diff < 1e-12 * scale, f"{name}: max abs diff {diff:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("kind", KINDS)
def test_network_init_round_trip(kind):
    """``Network.init`` (as used in the docstring of ``to_torch_state_dict``) builds a
    network whose state dict a matching torch module accepts."""
    net = dynamics.Network.init(kind, 3, 4, num_layers=2, bidirectional=True, seed=5)
    module = make_module(kind, 3, 4, num_layers=2, bidirectional=True)
    module.load_state_dict(dynamics.to_torch_state_dict(net))
    x = np.random.default_rng(0).normal(size=(4, 2, 3))
    with torch.no_grad():
        expected = module(torch.from_numpy(x))[0].numpy()
    assert_close(dynamics.forward(net, x).output, expected, "float64", "output")


@pytest.mark.parametrize("kind", KINDS)
def test_many_rows_match_torch(kind):
    """T * B = 4,160 rows: the parameter and input gradients run over several chunks of
    ``kernels.projections.CHUNK_ROWS`` rows and, for one network, two groups of row
    ranges summed at the end; the reverse direction's first step (from h0) sits in the
    last group. Bidirectional, two layers, batched recurrence (B = 32)."""
    from kernels.projections import CHUNK_ROWS, gradient_groups

    T, B, D, H = 130, 32, 3, 4
    assert T * B > 8 * CHUNK_ROWS and gradient_groups(1, T * B) == 2
    module = make_module(kind, D, H, num_layers=2, bidirectional=True, seed=5)
    net = dynamics.from_torch(module)
    rng = np.random.default_rng(9)
    x, grad_output = rng.normal(size=(T, B, D)), rng.normal(size=(T, B, 2 * H))
    h0, c0 = rng.normal(size=(4, B, H)), rng.normal(size=(4, B, H))
    expected, expected_grads = torch_run(module, x, h0, c0, grad_output)
    grads = dynamics.bptt(net, x, grad_output, h0=(h0, c0) if kind == "lstm" else h0)
    assert set(grads) == set(expected_grads)
    for name, value in expected_grads.items():
        assert_close(grads[name], value, "float64", name)
