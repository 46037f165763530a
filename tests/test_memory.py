"""Forward + BPTT holds little beyond what it must: the saved activations, parameters,
inputs and gradients (a deterministic count, unlike time, so it is tested)."""
import tracemalloc

import numpy as np
import pytest

import dynamics


def peak_over_theory(cell, x, grad_output, saved_per_unit):
    dynamics.bptt(cell, x, grad_output)  # compile first
    params = sum(a.nbytes for a in cell.parameters().values())
    E = cell.ensemble_size or 1
    T, B = x.shape[0], x.shape[-2]
    saved = saved_per_unit * E * T * B * cell.hidden_size * x.itemsize
    theory = 2 * params + 2 * x.nbytes + grad_output.nbytes + saved  # grads: params and x
    tracemalloc.start()
    dynamics.bptt(cell, x, grad_output)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak + params + x.nbytes + grad_output.nbytes) / theory


@pytest.mark.parametrize("kind, ensemble", [("rnn_tanh", None), ("rnn_tanh", 16),
                                            ("lstm", None), ("gru", 16)])
def test_bptt_peak_memory_is_close_to_the_theory(kind, ensemble):
    """The budget is 1.5x; measured 1.03-1.34 here (a vanilla RNN needs a dL/da buffer as
    large as its saved states, allocated per group of members). 1.4 keeps headroom and
    fails the earlier code that held the whole buffer and a temporary of x's size."""
    H, T, B = 64, 200, 8
    options = {"nonlinearity": "tanh"} if kind == "rnn_tanh" else {}
    cls = {"rnn_tanh": dynamics.RNN, "lstm": dynamics.LSTM, "gru": dynamics.GRU}[kind]
    cell = cls.init(H, H, ensemble=ensemble, seed=0, **options)
    x = np.random.default_rng(0).normal(size=(T, B, H))
    out_shape = (T, B, H) if ensemble is None else (T, ensemble, B, H)
    grad_output = np.ones(out_shape)
    saved = {"rnn_tanh": 1, "lstm": 6, "gru": 5}[kind]
    assert peak_over_theory(cell, x, grad_output, saved) <= 1.4
