"""Unusual and bad input to the public API.

Every case runs in a subprocess, so that a crash inside a kernel (a segfault from an
out-of-bounds access) fails the tests instead of killing pytest. The cases are batched:
one subprocess runs them all and prints a JSON line before ("start") and after each
case; a case that started and never finished is the one that crashed the process.

Contract (DESIGN.md, dynamics/propagation.py): bad input gets a ValueError / TypeError
naming the argument, before any kernel runs; integer, bool and complex arrays are
refused with TypeError; nan/inf in x or h0 are data and propagate; T = 0 gives an empty
output, h_n = h0 and zero gradients; strided and read-only arrays are accepted; B = 0
is refused.
"""
import json
import os

import pytest

from conftest import ROOT, finish, start_python


def start_runner(code, *args, env=None):
    """Start ``code`` in a fresh interpreter with the repository on the path."""
    return start_python("-c", code, *args,
                        env=dict(os.environ if env is None else env, PYTHONPATH=str(ROOT)))


def run_python(code, *args, env=None, timeout=600):
    """Run ``code`` in a fresh interpreter with the repository on the path.

    Returns (returncode, stdout, stderr)."""
    done = finish(start_runner(code, *args, env=env), timeout)
    return done.returncode, done.stdout, done.stderr


# The case runner: every case is a function returning a JSON-able dict of facts (or
# raising). Checks that need arrays are done here and reported as booleans.
CASES_CODE = r'''
import json, sys, traceback
import numpy as np
import dynamics

rng = np.random.default_rng(0)
CASES = {}

def case(function):
    CASES[function.__name__] = function
    return function

def rnn(D=16, H=4, **kw):
    return dynamics.RNN.init(D, H, seed=1, **kw)

def lstm2(D=3, H=4, bidirectional=True, ensemble=None, dtype="float64"):
    dirs = 2 if bidirectional else 1
    return dynamics.Network([[dynamics.LSTM.init(D if l == 0 else dirs * H, H, seed=10 * l + d,
                                                 ensemble=ensemble, dtype=dtype)
                              for d in range(dirs)] for l in range(2)])

def gru2(D=3, H=4, bidirectional=True, ensemble=None):
    dirs = 2 if bidirectional else 1
    return dynamics.Network([[dynamics.GRU.init(D if l == 0 else dirs * H, H, seed=10 * l + d,
                                                ensemble=ensemble)
                              for d in range(dirs)] for l in range(2)])

def normal(*shape, dtype=np.float64):
    return rng.normal(size=shape).astype(dtype)

def same(a, b):
    return bool(a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True))

def same_grads(g1, g2):
    return sorted(g1) == sorted(g2) and all(same(g1[k], g2[k]) for k in g1)

# ---------------------------------------------------------------- x: shape, dtype
@case
def x_wrong_feature_size():
    dynamics.forward(rnn(D=16), np.zeros((100, 8, 12)))

@case
def x_wrong_feature_size_bptt():
    dynamics.bptt(rnn(D=16), np.zeros((100, 8, 12)), np.zeros((100, 8, 4)))

@case
def x_ndim_2():
    dynamics.forward(rnn(D=16), np.zeros((100, 16)))

@case
def x_ndim_1():
    dynamics.forward(rnn(D=16), np.zeros(16))

@case
def x_ndim_0():
    dynamics.forward(rnn(D=16), np.float64(1.0))

@case
def x_ndim_4_single_network():
    dynamics.forward(rnn(D=16), np.zeros((10, 2, 3, 16)))

@case
def x_ndim_5_ensemble():
    dynamics.forward(dynamics.RNN.init(16, 4, ensemble=3), np.zeros((10, 3, 2, 3, 16)))

@case
def x_int():
    dynamics.forward(rnn(D=3), np.ones((5, 2, 3), dtype=np.int64))

@case
def x_int32():
    dynamics.forward(rnn(D=3), np.ones((5, 2, 3), dtype=np.int32))

@case
def x_bool():
    dynamics.forward(rnn(D=3), np.ones((5, 2, 3), dtype=bool))

@case
def x_complex():
    dynamics.forward(rnn(D=3), np.ones((5, 2, 3), dtype=np.complex128))

@case
def x_float16():
    dynamics.forward(rnn(D=3), np.ones((5, 2, 3), dtype=np.float16))

@case
def big_endian_arrays():
    # as NetCDF and HDF5 files may give them: read in native byte order, same values
    swap = lambda a: a.astype(a.dtype.newbyteorder(">" if a.dtype.byteorder != ">" else "<"))
    net, x, h0 = lstm2(), normal(5, 2, 3), normal(4, 2, 4)
    swapped = dynamics.Network([[dynamics.LSTM(**{k: swap(v) for k, v in c.parameters().items()})
                                 for c in layer] for layer in net.layers])
    a = dynamics.forward(net, x, h0=(h0, h0))
    b = dynamics.forward(swapped, swap(x), h0=(swap(h0), swap(h0)))
    return {"swapped": swap(x).dtype.byteorder, "output": same(a.output, b.output),
            "c_n": same(a.c_n, b.c_n)}

@case
def x_object():
    dynamics.forward(rnn(D=3), np.ones((5, 2, 3), dtype=object))

@case
def x_int_bptt():
    dynamics.bptt(rnn(D=3), np.ones((5, 2, 3), dtype=np.int64), np.ones((5, 2, 4)))

@case
def x_nested_list_of_ints():
    dynamics.forward(rnn(D=1), [[[1], [2]]])

# ---------------------------------------------------------------- x: non-finite data
def nan_case(net, kind):
    T, B = 8, 3
    D = net.input_size
    x = normal(T, B, D)
    clean = dynamics.forward(net, x)
    x[3, 1, 0] = np.nan
    r = dynamics.forward(net, x)
    go = normal(*r.output.shape)
    g = dynamics.bptt(net, x, go)
    H = net.hidden_size
    return {
        "shape": list(r.output.shape),
        "unaffected_batch_equal": same(r.output[:, [0, 2]], clean.output[:, [0, 2]]),
        "before_equal": same(r.output[:3, 1, :H], clean.output[:3, 1, :H]),
        "nan_from_step_3": bool(np.all(np.isnan(r.output[3:, 1, :H]))),
        "h_n_nan": bool(np.all(np.isnan(r.h_n[0, 1]))),
        "h_n_other_finite": bool(np.all(np.isfinite(r.h_n[:, [0, 2]]))),
        "grad_other_batch_finite": bool(np.all(np.isfinite(g["x"][:, [0, 2]]))),
        "grad_has_nan": bool(np.any(np.isnan(g["x"][:, 1]))),
    }

@case
def x_nan_rnn_tanh():
    return nan_case(rnn(D=3, H=4), "rnn_tanh")

@case
def x_nan_lstm():
    return nan_case(dynamics.LSTM.init(3, 4, seed=2), "lstm")

@case
def x_nan_gru():
    return nan_case(dynamics.GRU.init(3, 4, seed=2), "gru")

@case
def x_inf_rnn_relu():
    net = rnn(D=3, H=4, nonlinearity="relu")
    x = normal(6, 3, 3)
    clean = dynamics.forward(net, x)
    x[2, 1, :] = np.inf
    x[4, 2, 0] = -np.inf
    r = dynamics.forward(net, x)
    g = dynamics.bptt(net, x, np.ones_like(r.output))
    return {"shape": list(r.output.shape),
            "unaffected_batch_equal": same(r.output[:, 0], clean.output[:, 0]),
            "before_equal": same(r.output[:2, 1], clean.output[:2, 1]),
            "affected_nonfinite": bool(not np.all(np.isfinite(r.output[2:, 1]))),
            "grad_shape": list(g["x"].shape)}

@case
def h0_nan_lstm():
    net = dynamics.LSTM.init(3, 4, seed=2)
    x = normal(5, 2, 3)
    h0, c0 = normal(1, 2, 4), normal(1, 2, 4)
    h0[0, 0, 1] = np.nan
    r = dynamics.forward(net, x, h0=(h0, c0))
    return {"nan_in_0": bool(np.all(np.isnan(r.output[:, 0]))),
            "batch_1_finite": bool(np.all(np.isfinite(r.output[:, 1])))}

@case
def x_huge_values_tanh_saturate():
    net = rnn(D=3, H=4)
    x = np.full((4, 2, 3), 1e300)
    r = dynamics.forward(net, x)
    g = dynamics.bptt(net, x, np.ones_like(r.output))
    return {"output_finite": bool(np.all(np.isfinite(r.output))),
            "bounded": bool(np.all(np.abs(r.output) <= 1)),
            "grads_no_exception": True}

# ---------------------------------------------------------------- ensembles
@case
def ensemble_x_wrong_E():
    net = dynamics.RNN.init(3, 4, ensemble=7)
    dynamics.forward(net, np.zeros((10, 5, 2, 3)))

@case
def ensemble_x_wrong_E_bptt():
    net = dynamics.GRU.init(3, 4, ensemble=7)
    dynamics.bptt(net, np.zeros((10, 5, 2, 3)), np.zeros((10, 5, 2, 4)))

@case
def ensemble_h0_wrong_E():
    net = dynamics.RNN.init(3, 4, ensemble=7)
    dynamics.forward(net, np.zeros((10, 2, 3)), h0=np.zeros((1, 6, 2, 4)))

@case
def ensemble_h0_missing_E_axis():
    net = dynamics.RNN.init(3, 4, ensemble=7)
    dynamics.forward(net, np.zeros((10, 2, 3)), h0=np.zeros((1, 2, 4)))

@case
def ensemble_c0_wrong_E():
    net = dynamics.LSTM.init(3, 4, ensemble=7)
    dynamics.forward(net, np.zeros((10, 2, 3)), h0=(np.zeros((1, 7, 2, 4)), np.zeros((1, 3, 2, 4))))

@case
def ensemble_grad_output_wrong_E():
    net = dynamics.RNN.init(3, 4, ensemble=7)
    dynamics.bptt(net, np.zeros((10, 2, 3)), np.zeros((10, 6, 2, 4)))

@case
def ensemble_parameters_disagree():
    dynamics.RNN(weight_ih=np.zeros((3, 4, 2)), weight_hh=np.zeros((4, 4, 4)))

@case
def ensemble_cells_disagree_in_network():
    dynamics.Network([[dynamics.RNN.init(3, 4, ensemble=2)], [dynamics.RNN.init(4, 4, ensemble=3)]])

@case
def ensemble_zero_members():
    # an ensemble of E = 0 networks: either refused when built or run with an empty E axis
    net = dynamics.RNN(weight_ih=np.zeros((0, 4, 2)), weight_hh=np.zeros((0, 4, 4)))
    r = dynamics.forward(net, np.zeros((5, 3, 2)))
    return {"shape": list(r.output.shape)}

# ---------------------------------------------------------------- states
@case
def h0_wrong_layers():
    dynamics.forward(gru2(), np.zeros((5, 2, 3)), h0=np.zeros((2, 2, 4)))

@case
def h0_wrong_batch():
    dynamics.forward(rnn(D=3), np.zeros((5, 2, 3)), h0=np.zeros((1, 3, 4)))

@case
def h0_wrong_hidden():
    dynamics.forward(rnn(D=3), np.zeros((5, 2, 3)), h0=np.zeros((1, 2, 5)))

@case
def h0_int():
    dynamics.forward(rnn(D=3), np.zeros((5, 2, 3)), h0=np.zeros((1, 2, 4), dtype=np.int64))

@case
def h0_complex():
    dynamics.forward(rnn(D=3), np.zeros((5, 2, 3)), h0=np.zeros((1, 2, 4), dtype=complex))

@case
def lstm_h0_not_tuple():
    net = dynamics.LSTM.init(3, 4)
    dynamics.forward(net, np.zeros((5, 2, 3)), h0=np.zeros((1, 2, 4)))

@case
def lstm_h0_list():
    net = dynamics.LSTM.init(3, 4)
    dynamics.forward(net, np.zeros((5, 2, 3)), h0=[np.zeros((1, 2, 4)), np.zeros((1, 2, 4))])

@case
def lstm_h0_triple():
    net = dynamics.LSTM.init(3, 4)
    z = np.zeros((1, 2, 4))
    dynamics.forward(net, np.zeros((5, 2, 3)), h0=(z, z, z))

@case
def lstm_h0_not_tuple_bptt():
    net = dynamics.LSTM.init(3, 4)
    dynamics.bptt(net, np.zeros((5, 2, 3)), np.zeros((5, 2, 4)), h0=np.zeros((1, 2, 4)))

@case
def lstm_c0_wrong_shape():
    net = dynamics.LSTM.init(3, 4)
    dynamics.forward(net, np.zeros((5, 2, 3)), h0=(np.zeros((1, 2, 4)), np.zeros((1, 2, 3))))

@case
def gru_h0_tuple():
    net = dynamics.GRU.init(3, 4)
    z = np.zeros((1, 2, 4))
    dynamics.forward(net, np.zeros((5, 2, 3)), h0=(z, z))

# ---------------------------------------------------------------- T = 0, B = 0
@case
def T_zero_lstm_network():
    net = lstm2()
    x = np.zeros((0, 2, 3))
    h0, c0 = normal(4, 2, 4), normal(4, 2, 4)
    r = dynamics.forward(net, x, h0=(h0, c0))
    g = dynamics.bptt(net, x, np.zeros((0, 2, 8)), h0=(h0, c0))
    params = {k: v for k, v in g.items() if k not in ("x", "h0", "c0")}
    return {"output_shape": list(r.output.shape), "h_n_is_h0": same(r.h_n, h0),
            "c_n_is_c0": same(r.c_n, c0), "x_grad_shape": list(g["x"].shape),
            "param_names": sorted(params) == sorted(net.parameters()),
            "param_shapes": all(params[k].shape == v.shape for k, v in net.parameters().items()),
            "param_grads_zero": all(not np.any(v) for v in params.values()),
            "h0_grad": same(g["h0"], np.zeros_like(h0)), "c0_grad": same(g["c0"], np.zeros_like(c0))}

@case
def T_zero_gru_no_h0():
    net = gru2(bidirectional=False)
    x = np.zeros((0, 3, 3), dtype=np.float32)
    r = dynamics.forward(net, x)
    g = dynamics.bptt(net, x, np.zeros((0, 3, 4), dtype=np.float32))
    return {"output_shape": list(r.output.shape), "dtype": str(r.output.dtype),
            "h_n_zero": same(r.h_n, np.zeros((2, 3, 4), np.float32)),
            "grads_zero": all(not np.any(v) for v in g.values()),
            "h0_grad_shape": list(g["h0"].shape)}

@case
def T_zero_ensemble_own_x():
    net = dynamics.RNN.init(3, 4, ensemble=5)
    x = np.zeros((0, 5, 2, 3))
    h0 = normal(1, 5, 2, 4)
    r = dynamics.forward(net, x, h0=h0)
    g = dynamics.bptt(net, x, np.zeros((0, 5, 2, 4)), h0=h0)
    return {"output_shape": list(r.output.shape), "h_n_is_h0": same(r.h_n, h0),
            "x_grad_shape": list(g["x"].shape), "weight_grad_shape": list(g["weight_hh_l0"].shape),
            "grads_zero": all(not np.any(v) for v in g.values())}

@case
def T_zero_grad_h_n_passes_to_h0():
    net = rnn(D=3)
    gh = normal(1, 2, 4)
    g = dynamics.bptt(net, np.zeros((0, 2, 3)), np.zeros((0, 2, 4)), grad_h_n=gh)
    return {"h0_grad_is_grad_h_n": same(g["h0"], gh)}

@case
def B_zero():
    dynamics.forward(rnn(D=3), np.zeros((5, 0, 3)))

@case
def B_zero_bptt():
    dynamics.bptt(rnn(D=3), np.zeros((5, 0, 3)), np.zeros((5, 0, 4)))

@case
def B_zero_ensemble_own_x():
    dynamics.forward(dynamics.RNN.init(3, 4, ensemble=2), np.zeros((5, 2, 0, 3)))

@case
def B_zero_T_zero():
    dynamics.forward(rnn(D=3), np.zeros((0, 0, 3)))

# ---------------------------------------------------------------- layout
@case
def x_strided_view():
    net = lstm2()
    big = normal(9, 6, 3)
    x = big[:, ::2]
    h0 = (normal(4, 3, 4)[:, :, :], normal(4, 3, 4))
    go = normal(9, 3, 16)[..., ::2]
    r1, r2 = dynamics.forward(net, x, h0=h0), dynamics.forward(net, x.copy(), h0=h0)
    g1 = dynamics.bptt(net, x, go, h0=h0)
    g2 = dynamics.bptt(net, x.copy(), go.copy(), h0=h0)
    return {"contiguous": bool(x.flags.c_contiguous), "output": same(r1.output, r2.output),
            "h_n": same(r1.h_n, r2.h_n), "c_n": same(r1.c_n, r2.c_n), "grads": same_grads(g1, g2)}

@case
def x_transposed_fortran():
    net = gru2()
    x = np.asfortranarray(normal(7, 3, 3))
    h0 = normal(4, 3, 4).transpose(0, 1, 2)
    h0_f = np.asfortranarray(h0)
    go = np.asfortranarray(normal(7, 3, 8))
    g1 = dynamics.bptt(net, x, go, h0=h0_f)
    g2 = dynamics.bptt(net, np.ascontiguousarray(x), np.ascontiguousarray(go), h0=np.ascontiguousarray(h0))
    r1 = dynamics.forward(net, x, h0=h0_f)
    r2 = dynamics.forward(net, np.ascontiguousarray(x), h0=np.ascontiguousarray(h0))
    return {"contiguous": bool(x.flags.c_contiguous), "output": same(r1.output, r2.output),
            "grads": same_grads(g1, g2)}

@case
def x_transposed_view():
    net = rnn(D=3, H=4)
    base = normal(3, 2, 6)            # (D, B, T)
    x = base.transpose(2, 1, 0)        # (T, B, D), a non-contiguous view
    g1 = dynamics.bptt(net, x, np.ones((6, 2, 4)))
    g2 = dynamics.bptt(net, x.copy(), np.ones((6, 2, 4)))
    return {"output": same(dynamics.forward(net, x).output, dynamics.forward(net, x.copy()).output),
            "grads": same_grads(g1, g2)}

@case
def x_negative_strides_ensemble_own():
    net = dynamics.LSTM.init(3, 4, ensemble=3, seed=4)
    x = normal(6, 3, 2, 3)[::-1, :, ::-1]
    r1, r2 = dynamics.forward(net, x), dynamics.forward(net, x.copy())
    go = normal(6, 3, 2, 4)
    g1, g2 = dynamics.bptt(net, x, go), dynamics.bptt(net, x.copy(), go)
    return {"output": same(r1.output, r2.output), "grads": same_grads(g1, g2)}

@case
def weights_strided():
    w_ih, w_hh = normal(8, 6)[:, ::2], normal(8, 8)[:, ::2]
    b = normal(16)[::2]
    strided = dynamics.GRU(weight_ih=normal(12, 6)[:, ::2], weight_hh=normal(12, 8)[:, ::2])
    copy = dynamics.GRU(weight_ih=np.ascontiguousarray(strided.weight_ih),
                        weight_hh=np.ascontiguousarray(strided.weight_hh))
    x = normal(5, 2, 3)
    go = normal(5, 2, 4)
    return {"output": same(dynamics.forward(strided, x).output, dynamics.forward(copy, x).output),
            "grads": same_grads(dynamics.bptt(strided, x, go), dynamics.bptt(copy, x, go))}

@case
def read_only_inputs():
    net = lstm2()
    x, h0, c0, go = normal(6, 2, 3), normal(4, 2, 4), normal(4, 2, 4), normal(6, 2, 8)
    originals = [a.copy() for a in (x, h0, c0, go)]
    r_ref = dynamics.forward(net, x.copy(), h0=(h0.copy(), c0.copy()))
    g_ref = dynamics.bptt(net, x.copy(), go.copy(), h0=(h0.copy(), c0.copy()))
    for a in (x, h0, c0, go):
        a.setflags(write=False)
    r = dynamics.forward(net, x, h0=(h0, c0))
    g = dynamics.bptt(net, x, go, h0=(h0, c0))
    return {"output": same(r.output, r_ref.output), "h_n": same(r.h_n, r_ref.h_n),
            "grads": same_grads(g, g_ref),
            "unchanged": all(same(a, b) for a, b in zip((x, h0, c0, go), originals))}

@case
def read_only_weights():
    params = {k: v.copy() for k, v in dynamics.GRU.init(3, 4, seed=3).parameters().items()}
    originals = {k: v.copy() for k, v in params.items()}
    for v in params.values():
        v.setflags(write=False)
    net = dynamics.GRU(**params)
    ref = dynamics.GRU(**originals)
    x, go = normal(5, 2, 3), normal(5, 2, 4)
    x.setflags(write=False)
    g, g_ref = dynamics.bptt(net, x, go), dynamics.bptt(ref, x, go)
    return {"output": same(dynamics.forward(net, x).output, dynamics.forward(ref, x).output),
            "grads": same_grads(g, g_ref),
            "unchanged": all(same(params[k], originals[k]) for k in params)}

@case
def read_only_ensemble_everything():
    params = {k: v.copy() for k, v in dynamics.LSTM.init(3, 4, ensemble=2, seed=3).parameters().items()}
    for v in params.values():
        v.setflags(write=False)
    net = dynamics.LSTM(**params)
    x, h0, c0, go = normal(5, 2, 2, 3), normal(1, 2, 2, 4), normal(1, 2, 2, 4), normal(5, 2, 2, 4)
    copies = [a.copy() for a in (x, h0, c0, go)]
    for a in (x, h0, c0, go):
        a.setflags(write=False)
    g = dynamics.bptt(net, x, go, h0=(h0, c0))
    g_ref = dynamics.bptt(dynamics.LSTM(**{k: v.copy() for k, v in params.items()}),
                          *copies[:1], copies[3], h0=(copies[1], copies[2]))
    return {"grads": same_grads(g, g_ref),
            "unchanged": all(same(a, b) for a, b in zip((x, h0, c0, go), copies))}

@case
def inputs_not_modified():
    net = gru2()
    x, h0, go = normal(6, 2, 3), normal(4, 2, 4), normal(6, 2, 8)
    copies = [a.copy() for a in (x, h0, go)]
    params = {k: v.copy() for k, v in net.parameters().items()}
    r = dynamics.forward(net, x, h0=h0)
    r.output[...] = 7.0  # writing into results must not reach the inputs either
    r.h_n[...] = 7.0
    g = dynamics.bptt(net, x, go, h0=h0)
    for v in g.values():
        v[...] = 7.0
    return {"unchanged": all(same(a, b) for a, b in zip((x, h0, go), copies)),
            "params_unchanged": all(same(v, params[k]) for k, v in net.parameters().items())}

@case
def float32_x_float64_net():
    net = rnn(D=3)
    x = normal(5, 2, 3, dtype=np.float32)
    r = dynamics.forward(net, x)
    g = dynamics.bptt(net, x, np.ones((5, 2, 4), np.float32))
    return {"output_dtype": str(r.output.dtype), "h_n_dtype": str(r.h_n.dtype),
            "grad_dtypes": sorted({str(v.dtype) for v in g.values()})}

# ---------------------------------------------------------------- grad_output, grad_h_n
@case
def grad_output_wrong_shape():
    dynamics.bptt(rnn(D=3), np.zeros((5, 2, 3)), np.zeros((5, 2, 5)))

@case
def grad_output_wrong_T():
    dynamics.bptt(rnn(D=3), np.zeros((5, 2, 3)), np.zeros((4, 2, 4)))

@case
def grad_output_bidirectional_width():
    dynamics.bptt(gru2(), np.zeros((5, 2, 3)), np.zeros((5, 2, 4)))

@case
def grad_output_int():
    dynamics.bptt(rnn(D=3), np.zeros((5, 2, 3)), np.zeros((5, 2, 4), dtype=np.int64))

@case
def grad_output_bool():
    dynamics.bptt(rnn(D=3), np.zeros((5, 2, 3)), np.zeros((5, 2, 4), dtype=bool))

@case
def grad_h_n_wrong_shape():
    dynamics.bptt(rnn(D=3), np.zeros((5, 2, 3)), np.zeros((5, 2, 4)), grad_h_n=np.zeros((2, 2, 4)))

@case
def grad_c_n_for_gru():
    dynamics.bptt(dynamics.GRU.init(3, 4), np.zeros((5, 2, 3)), np.zeros((5, 2, 4)),
                  grad_c_n=np.zeros((1, 2, 4)))

for name, value in [("string", "no"), ("int", 0), ("none", None)]:
    CASES["input_gradient_" + name] = (lambda v: lambda: dynamics.bptt(
        rnn(D=3), np.zeros((5, 2, 3)), np.zeros((5, 2, 4)), input_gradient=v))(value)

# ---------------------------------------------------------------- truncation
def truncation_case(value):
    dynamics.bptt(rnn(D=3), np.zeros((5, 2, 3)), np.zeros((5, 2, 4)), truncation=value)

for name, value in [("zero", 0), ("negative", -3), ("bool_true", True), ("bool_false", False),
                    ("float", 2.0), ("float_fraction", 2.5), ("string", "3"), ("nan", float("nan")),
                    ("numpy_bool", np.bool_(True))]:
    CASES["truncation_" + name] = (lambda v: lambda: truncation_case(v))(value)

@case
def truncation_numpy_int_ok():
    g1 = dynamics.bptt(rnn(D=3), normal(5, 2, 3), np.ones((5, 2, 4)), truncation=np.int64(2))
    return {"x_shape": list(g1["x"].shape)}

# ---------------------------------------------------------------- backend
for name in ("CUDA", "gpu", "CPU", "tpu"):
    CASES["backend_forward_" + name] = (lambda b: lambda: dynamics.forward(rnn(D=3), np.zeros((5, 2, 3)), backend=b))(name)
    CASES["backend_bptt_" + name] = (lambda b: lambda: dynamics.bptt(rnn(D=3), np.zeros((5, 2, 3)), np.zeros((5, 2, 4)), backend=b))(name)

# ---------------------------------------------------------------- cells
@case
def cell_weight_hh_not_square():
    dynamics.RNN(weight_ih=np.zeros((4, 2)), weight_hh=np.zeros((4, 3)))

@case
def cell_lstm_weight_hh_wrong_gates():
    dynamics.LSTM(weight_ih=np.zeros((12, 2)), weight_hh=np.zeros((12, 4)))

@case
def cell_gru_weight_hh_wrong_gates():
    dynamics.GRU(weight_ih=np.zeros((8, 2)), weight_hh=np.zeros((8, 4)))

@case
def cell_weight_hh_1d():
    dynamics.RNN(weight_ih=np.zeros((4, 2)), weight_hh=np.zeros(4))

@case
def cell_weight_hh_empty():
    dynamics.RNN(weight_ih=np.zeros((0, 2)), weight_hh=np.zeros((0, 0)))

@case
def cell_weight_ih_rows_mismatch():
    dynamics.LSTM(weight_ih=np.zeros((12, 2)), weight_hh=np.zeros((16, 4)))

@case
def cell_weight_ih_1d():
    dynamics.RNN(weight_ih=np.zeros(4), weight_hh=np.zeros((4, 4)))

@case
def cell_bias_ih_wrong_shape():
    dynamics.GRU(weight_ih=np.zeros((12, 2)), weight_hh=np.zeros((12, 4)),
                 bias_ih=np.zeros(4), bias_hh=np.zeros(12))

@case
def cell_bias_hh_wrong_shape():
    dynamics.GRU(weight_ih=np.zeros((12, 2)), weight_hh=np.zeros((12, 4)),
                 bias_ih=np.zeros(12), bias_hh=np.zeros((12, 1)))

@case
def cell_bias_ih_without_bias_hh():
    dynamics.RNN(weight_ih=np.zeros((4, 2)), weight_hh=np.zeros((4, 4)), bias_ih=np.zeros(4))

@case
def cell_bias_hh_without_bias_ih():
    dynamics.RNN(weight_ih=np.zeros((4, 2)), weight_hh=np.zeros((4, 4)), bias_hh=np.zeros(4))

@case
def cell_mixed_dtypes():
    dynamics.RNN(weight_ih=np.zeros((4, 2), np.float32), weight_hh=np.zeros((4, 4)))

@case
def cell_mixed_dtypes_bias():
    dynamics.RNN(weight_ih=np.zeros((4, 2)), weight_hh=np.zeros((4, 4)),
                 bias_ih=np.zeros(4, np.float32), bias_hh=np.zeros(4))

@case
def cell_int_weight_hh():
    dynamics.RNN(weight_ih=np.zeros((4, 2)), weight_hh=np.zeros((4, 4), dtype=np.int64))

@case
def cell_int_weight_ih():
    dynamics.RNN(weight_ih=np.zeros((4, 2), dtype=np.int32), weight_hh=np.zeros((4, 4)))

@case
def cell_bool_bias():
    dynamics.RNN(weight_ih=np.zeros((4, 2)), weight_hh=np.zeros((4, 4)),
                 bias_ih=np.zeros(4, bool), bias_hh=np.zeros(4))

@case
def cell_complex_weight():
    dynamics.RNN(weight_ih=np.zeros((4, 2)), weight_hh=np.zeros((4, 4), dtype=complex))

@case
def cell_nan_weight_hh():
    w = np.zeros((4, 4)); w[1, 2] = np.nan
    dynamics.RNN(weight_ih=np.zeros((4, 2)), weight_hh=w)

@case
def cell_inf_weight_ih():
    w = np.zeros((16, 2)); w[3, 1] = np.inf
    dynamics.LSTM(weight_ih=w, weight_hh=np.zeros((16, 4)))

@case
def cell_nan_bias_hh():
    b = np.zeros(12); b[0] = np.nan
    dynamics.GRU(weight_ih=np.zeros((12, 2)), weight_hh=np.zeros((12, 4)), bias_ih=np.zeros(12), bias_hh=b)

@case
def cell_bad_nonlinearity():
    dynamics.RNN(weight_ih=np.zeros((4, 2)), weight_hh=np.zeros((4, 4)), nonlinearity="sigmoid")

@case
def cell_parameter_reassigned():
    # checked shapes stay checked: a kernel would read a smaller array out of bounds
    dynamics.GRU.init(3, 64).bias_hh = np.ones(3)

@case
def cell_nonlinearity_reassigned():
    dynamics.RNN.init(3, 4).nonlinearity = "sigmoid"

# ---------------------------------------------------------------- networks
@case
def network_layer_input_mismatch():
    dynamics.Network([[dynamics.GRU.init(3, 4)], [dynamics.GRU.init(5, 4)]])

@case
def network_bidirectional_layer_input_mismatch():
    # layer 1 of a bidirectional network takes 2H = 8 inputs, not H = 4
    dynamics.Network([[dynamics.GRU.init(3, 4), dynamics.GRU.init(3, 4)],
                      [dynamics.GRU.init(4, 4), dynamics.GRU.init(4, 4)]])

@case
def network_directions_disagree_on_input():
    dynamics.Network([[dynamics.GRU.init(3, 4), dynamics.GRU.init(2, 4)]])

@case
def network_kinds_differ():
    dynamics.Network([[dynamics.GRU.init(3, 4)], [dynamics.LSTM.init(4, 4)]])

@case
def network_hidden_sizes_differ():
    dynamics.Network([[dynamics.GRU.init(3, 4)], [dynamics.GRU.init(4, 5)]])

@case
def network_dtypes_differ():
    dynamics.Network([[dynamics.GRU.init(3, 4)], [dynamics.GRU.init(4, 4, dtype="float32")]])

@case
def network_directions_differ():
    dynamics.Network([[dynamics.GRU.init(3, 4)], [dynamics.GRU.init(4, 4), dynamics.GRU.init(4, 4)]])

@case
def network_empty():
    dynamics.Network([])

@case
def network_not_cells():
    dynamics.Network([[np.zeros((4, 4))]])

@case
def network_init_nonlinearity_twice():
    dynamics.Network.init("rnn_tanh", 3, 4, nonlinearity="relu")

@case
def network_init_bidirectional_not_bool():
    dynamics.Network.init("gru", 3, 4, bidirectional="no")

@case
def network_layer_replaced():
    net = dynamics.Network.init("gru", 3, 4, num_layers=2)
    net.layers[1] = (dynamics.GRU.init(5, 4),)

@case
def model_not_a_model():
    dynamics.forward({"weight_hh": np.zeros((4, 4))}, np.zeros((5, 2, 3)))

# ---------------------------------------------------------------- torch interop
@case
def from_torch_linear():
    import torch
    dynamics.from_torch(torch.nn.Linear(3, 4))

@case
def from_torch_lstm_cell():
    import torch
    dynamics.from_torch(torch.nn.LSTMCell(3, 4))

@case
def from_torch_numpy_array():
    dynamics.from_torch(np.zeros((4, 4)))

@case
def from_torch_lstm_proj_size():
    import torch
    dynamics.from_torch(torch.nn.LSTM(3, 4, proj_size=2))

@case
def to_torch_state_dict_ensemble():
    dynamics.to_torch_state_dict(dynamics.GRU.init(3, 4, ensemble=2))

# ---------------------------------------------------------------- run
selected = sys.argv[1:] or list(CASES)
for name in selected:
    print(json.dumps({"case": name, "event": "start"}), flush=True)
    try:
        value = CASES[name]()
        out = {"case": name, "event": "done", "status": "ok", "value": value}
    except Exception as error:
        out = {"case": name, "event": "done", "status": "error", "type": type(error).__name__,
               "message": str(error), "traceback": traceback.format_exc()[-1500:]}
    print(json.dumps(out), flush=True)
'''


RUNNER = []


def start_in_background():
    """Start the case runner as soon as the session is collected (tests/conftest.py)."""
    RUNNER.append(start_runner(CASES_CODE))


@pytest.fixture(scope="module")
def outcomes():
    """Every case, run in one subprocess: case name -> its JSON record."""
    if not RUNNER:
        start_in_background()
    done = finish(RUNNER[0])
    returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    records, started = {}, []
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == "start":
            started.append(record["case"])
        else:
            records[record["case"]] = record
    crashed = [name for name in started if name not in records]
    return {"records": records, "returncode": returncode, "stderr": stderr[-3000:],
            "crashed": crashed}


def outcome(outcomes, name):
    records = outcomes["records"]
    if name not in records:
        pytest.fail(f"case {name!r} produced no result (crashed: {outcomes['crashed']}, "
                    f"return code {outcomes['returncode']}):\n{outcomes['stderr']}")
    return records[name]


def expect_error(outcomes, name, error_type, *fragments):
    record = outcome(outcomes, name)
    assert record["status"] == "error", f"{name}: expected {error_type}, got result {record}"
    assert record["type"] == error_type, (
        f"{name}: expected {error_type}, got {record['type']}: {record['message']}\n"
        f"{record['traceback']}")
    message = record["message"]
    for fragment in fragments:
        assert fragment in message, f"{name}: {fragment!r} not in message {message!r}"
    return message


def expect_ok(outcomes, name):
    record = outcome(outcomes, name)
    assert record["status"] == "ok", (f"{name}: {record['type']}: {record['message']}\n"
                                      f"{record['traceback']}")
    return record["value"]


def test_runner_process_exits_cleanly(outcomes):
    assert outcomes["returncode"] == 0, outcomes["stderr"]
    assert not outcomes["crashed"]


def test_helper_reports_crashes():
    """The subprocess helper sees a segfault as a return code, not a dead pytest."""
    code = "import ctypes; ctypes.string_at(0)"
    returncode, _, _ = run_python(code)
    assert returncode != 0


# ------------------------------------------------------------------ x
def test_x_wrong_shape_message_names_x_and_both_shapes(outcomes):
    message = expect_error(outcomes, "x_wrong_feature_size", "ValueError")
    assert message == "x must have shape (T, B, 16), got (100, 8, 12)"
    expect_error(outcomes, "x_wrong_feature_size_bptt", "ValueError",
                 "x must have shape (T, B, 16)", "(100, 8, 12)")


@pytest.mark.parametrize("name,shape", [("x_ndim_2", "(100, 16)"), ("x_ndim_1", "(16,)"),
                                        ("x_ndim_0", "()"),
                                        ("x_ndim_4_single_network", "(10, 2, 3, 16)"),
                                        ("x_ndim_5_ensemble", "(10, 3, 2, 3, 16)")])
def test_x_wrong_ndim(outcomes, name, shape):
    expect_error(outcomes, name, "ValueError", "x must have shape", shape)


@pytest.mark.parametrize("name,dtype", [("x_int", "int64"), ("x_int32", "int32"),
                                        ("x_bool", "bool"), ("x_complex", "complex128"),
                                        ("x_float16", "float16"), ("x_object", "object"),
                                        ("x_int_bptt", "int64"),
                                        ("x_nested_list_of_ints", "int")])
def test_x_non_float_dtype_is_type_error(outcomes, name, dtype):
    message = expect_error(outcomes, name, "TypeError", "x ", dtype)
    assert message.startswith("x ")


def test_big_endian_arrays_are_read_in_native_order(outcomes):
    assert expect_ok(outcomes, "big_endian_arrays") == {"swapped": ">", "output": True,
                                                        "c_n": True}


@pytest.mark.parametrize("name", ["x_nan_rnn_tanh", "x_nan_lstm", "x_nan_gru"])
def test_nan_in_x_propagates_as_data(outcomes, name):
    value = expect_ok(outcomes, name)
    assert value["shape"] == [8, 3, 4]
    for key, flag in value.items():
        if key != "shape":
            assert flag is True, f"{name}: {key} is {flag}"


def test_inf_in_x_is_data(outcomes):
    value = expect_ok(outcomes, "x_inf_rnn_relu")
    assert value == {"shape": [6, 3, 4], "unaffected_batch_equal": True, "before_equal": True,
                     "affected_nonfinite": True, "grad_shape": [6, 3, 3]}


def test_nan_in_h0_propagates(outcomes):
    assert expect_ok(outcomes, "h0_nan_lstm") == {"nan_in_0": True, "batch_1_finite": True}


def test_huge_inputs_saturate_tanh_without_exception(outcomes):
    value = expect_ok(outcomes, "x_huge_values_tanh_saturate")
    assert value["output_finite"] and value["bounded"]


# ------------------------------------------------------------------ ensembles
def test_ensemble_size_mismatch(outcomes):
    expect_error(outcomes, "ensemble_x_wrong_E", "ValueError", "x must have shape (T, 7, B, 3)",
                 "(10, 5, 2, 3)")
    expect_error(outcomes, "ensemble_x_wrong_E_bptt", "ValueError", "x must have shape (T, 7, B, 3)")
    expect_error(outcomes, "ensemble_h0_wrong_E", "ValueError", "h0 must have shape (1, 7, 2, 4)",
                 "(1, 6, 2, 4)")
    expect_error(outcomes, "ensemble_h0_missing_E_axis", "ValueError", "h0", "(1, 2, 4)")
    expect_error(outcomes, "ensemble_c0_wrong_E", "ValueError", "c0", "(1, 3, 2, 4)")
    expect_error(outcomes, "ensemble_grad_output_wrong_E", "ValueError", "grad_output",
                 "(10, 7, 2, 4)", "(10, 6, 2, 4)")
    expect_error(outcomes, "ensemble_parameters_disagree", "ValueError", "weight_ih")
    expect_error(outcomes, "ensemble_cells_disagree_in_network", "ValueError", "ensemble_size")


def test_ensemble_of_zero_members(outcomes):
    """E = 0: refused with an error naming the argument, or an empty E axis — never an
    error from deep inside numpy that names nothing."""
    record = outcome(outcomes, "ensemble_zero_members")
    if record["status"] == "ok":
        assert record["value"]["shape"] == [5, 0, 3, 4]
    else:
        assert record["type"] == "ValueError", record
        assert any(word in record["message"] for word in ("weight_hh", "weight_ih", "ensemble")), (
            f"error does not name the argument: {record['message']!r}")


# ------------------------------------------------------------------ states
def test_h0_wrong_shape(outcomes):
    expect_error(outcomes, "h0_wrong_layers", "ValueError", "h0 must have shape (4, 2, 4)",
                 "(2, 2, 4)")
    expect_error(outcomes, "h0_wrong_batch", "ValueError", "h0 must have shape (1, 2, 4)",
                 "(1, 3, 4)")
    expect_error(outcomes, "h0_wrong_hidden", "ValueError", "h0", "(1, 2, 5)")
    expect_error(outcomes, "lstm_c0_wrong_shape", "ValueError", "c0 must have shape (1, 2, 4)",
                 "(1, 2, 3)")


def test_h0_non_float_dtype(outcomes):
    expect_error(outcomes, "h0_int", "TypeError", "h0", "int64")
    expect_error(outcomes, "h0_complex", "TypeError", "h0", "complex")


@pytest.mark.parametrize("name", ["lstm_h0_not_tuple", "lstm_h0_list", "lstm_h0_triple",
                                  "lstm_h0_not_tuple_bptt"])
def test_lstm_h0_must_be_a_pair(outcomes, name):
    expect_error(outcomes, name, "TypeError", "h0", "tuple")


def test_gru_h0_tuple_refused(outcomes):
    expect_error(outcomes, "gru_h0_tuple", "TypeError", "h0")


# ------------------------------------------------------------------ T = 0, B = 0
def test_T_zero_lstm_network(outcomes):
    value = expect_ok(outcomes, "T_zero_lstm_network")
    assert value["output_shape"] == [0, 2, 8] and value["x_grad_shape"] == [0, 2, 3]
    for key in ("h_n_is_h0", "c_n_is_c0", "param_names", "param_shapes", "param_grads_zero",
                "h0_grad", "c0_grad"):
        assert value[key] is True, key


def test_T_zero_without_h0_and_float32(outcomes):
    value = expect_ok(outcomes, "T_zero_gru_no_h0")
    assert value == {"output_shape": [0, 3, 4], "dtype": "float32", "h_n_zero": True,
                     "grads_zero": True, "h0_grad_shape": [2, 3, 4]}


def test_T_zero_ensemble(outcomes):
    value = expect_ok(outcomes, "T_zero_ensemble_own_x")
    assert value == {"output_shape": [0, 5, 2, 4], "h_n_is_h0": True,
                     "x_grad_shape": [0, 5, 2, 3], "weight_grad_shape": [5, 4, 4],
                     "grads_zero": True}


def test_T_zero_grad_of_final_state_is_grad_of_h0(outcomes):
    assert expect_ok(outcomes, "T_zero_grad_h_n_passes_to_h0") == {"h0_grad_is_grad_h_n": True}


@pytest.mark.parametrize("name", ["B_zero", "B_zero_bptt", "B_zero_ensemble_own_x",
                                  "B_zero_T_zero"])
def test_B_zero_refused(outcomes, name):
    expect_error(outcomes, name, "ValueError", "x ", "batch")


# ------------------------------------------------------------------ layout
@pytest.mark.parametrize("name", ["x_strided_view", "x_transposed_fortran", "x_transposed_view",
                                  "x_negative_strides_ensemble_own", "weights_strided"])
def test_strided_arrays_give_the_contiguous_result(outcomes, name):
    value = expect_ok(outcomes, name)
    assert value.get("contiguous", False) is False
    for key, flag in value.items():
        if key != "contiguous":
            assert flag is True, f"{name}: {key}"


@pytest.mark.parametrize("name", ["read_only_inputs", "read_only_weights",
                                  "read_only_ensemble_everything", "inputs_not_modified"])
def test_read_only_arrays_work_and_inputs_stay_unchanged(outcomes, name):
    value = expect_ok(outcomes, name)
    for key, flag in value.items():
        assert flag is True, f"{name}: {key}"


def test_result_has_the_input_dtype(outcomes):
    assert expect_ok(outcomes, "float32_x_float64_net") == {
        "output_dtype": "float32", "h_n_dtype": "float32", "grad_dtypes": ["float32"]}


# ------------------------------------------------------------------ grad_output
def test_grad_output_wrong_shape(outcomes):
    expect_error(outcomes, "grad_output_wrong_shape", "ValueError",
                 "grad_output must have shape (5, 2, 4), got (5, 2, 5)")
    expect_error(outcomes, "grad_output_wrong_T", "ValueError", "grad_output", "(4, 2, 4)")
    expect_error(outcomes, "grad_output_bidirectional_width", "ValueError", "grad_output",
                 "(5, 2, 8)")
    expect_error(outcomes, "grad_output_int", "TypeError", "grad_output", "int64")
    expect_error(outcomes, "grad_output_bool", "TypeError", "grad_output", "bool")
    expect_error(outcomes, "grad_h_n_wrong_shape", "ValueError", "grad_h_n", "(2, 2, 4)")
    expect_error(outcomes, "grad_c_n_for_gru", "ValueError", "grad_c_n")


# ------------------------------------------------------------------ truncation
@pytest.mark.parametrize("name", ["zero", "negative", "bool_true", "bool_false", "float",
                                  "float_fraction", "string", "nan", "numpy_bool"])
def test_bad_truncation(outcomes, name):
    expect_error(outcomes, "truncation_" + name, "ValueError", "truncation")


@pytest.mark.parametrize("name", ["string", "int", "none"])
def test_input_gradient_must_be_a_bool(outcomes, name):
    expect_error(outcomes, "input_gradient_" + name, "TypeError", "input_gradient")


def test_numpy_integer_truncation_accepted(outcomes):
    assert expect_ok(outcomes, "truncation_numpy_int_ok") == {"x_shape": [5, 2, 3]}


# ------------------------------------------------------------------ backend
@pytest.mark.parametrize("function", ["forward", "bptt"])
@pytest.mark.parametrize("backend", ["CUDA", "gpu", "CPU", "tpu"])
def test_unknown_backend(outcomes, function, backend):
    expect_error(outcomes, f"backend_{function}_{backend}", "ValueError", "backend",
                 repr(backend))


# ------------------------------------------------------------------ cells
@pytest.mark.parametrize("name,error,fragments", [
    ("cell_weight_hh_not_square", "ValueError", ["weight_hh", "(4, 3)"]),
    ("cell_lstm_weight_hh_wrong_gates", "ValueError", ["weight_hh", "(12, 4)"]),
    ("cell_gru_weight_hh_wrong_gates", "ValueError", ["weight_hh", "(8, 4)"]),
    ("cell_weight_hh_1d", "ValueError", ["weight_hh", "(4,)"]),
    ("cell_weight_hh_empty", "ValueError", ["weight_hh", "(0, 0)"]),
    ("cell_weight_ih_rows_mismatch", "ValueError", ["weight_ih", "(16, D)", "(12, 2)"]),
    ("cell_weight_ih_1d", "ValueError", ["weight_ih", "(4,)"]),
    ("cell_bias_ih_wrong_shape", "ValueError", ["bias_ih", "(12,)", "(4,)"]),
    ("cell_bias_hh_wrong_shape", "ValueError", ["bias_hh", "(12, 1)"]),
    ("cell_bias_ih_without_bias_hh", "ValueError", ["bias_ih", "bias_hh"]),
    ("cell_bias_hh_without_bias_ih", "ValueError", ["bias_ih", "bias_hh"]),
    ("cell_mixed_dtypes", "TypeError", ["float32", "float64"]),
    ("cell_mixed_dtypes_bias", "TypeError", ["float32", "float64"]),
    ("cell_int_weight_hh", "TypeError", ["weight_hh", "int64"]),
    ("cell_int_weight_ih", "TypeError", ["weight_ih", "int32"]),
    ("cell_bool_bias", "TypeError", ["bias_ih", "bool"]),
    ("cell_complex_weight", "TypeError", ["weight_hh", "complex"]),
    ("cell_nan_weight_hh", "ValueError", ["weight_hh", "finite"]),
    ("cell_inf_weight_ih", "ValueError", ["weight_ih", "finite"]),
    ("cell_nan_bias_hh", "ValueError", ["bias_hh", "finite"]),
    ("cell_bad_nonlinearity", "ValueError", ["nonlinearity", "'sigmoid'"]),
    ("cell_parameter_reassigned", "AttributeError", ["bias_hh"]),
    ("cell_nonlinearity_reassigned", "AttributeError", ["nonlinearity"]),
])
def test_inconsistent_cells(outcomes, name, error, fragments):
    expect_error(outcomes, name, error, *fragments)


# ------------------------------------------------------------------ networks
@pytest.mark.parametrize("name,error,fragments", [
    ("network_layer_input_mismatch", "ValueError", ["layer 1", "input_size 4", "5"]),
    ("network_bidirectional_layer_input_mismatch", "ValueError", ["layer 1", "input_size 8"]),
    ("network_directions_disagree_on_input", "ValueError", ["layer 0", "input_size"]),
    ("network_kinds_differ", "ValueError", ["kind"]),
    ("network_hidden_sizes_differ", "ValueError", ["hidden_size"]),
    ("network_dtypes_differ", "ValueError", ["dtype"]),
    ("network_directions_differ", "ValueError", ["directions"]),
    ("network_empty", "ValueError", ["layers"]),
    ("network_not_cells", "TypeError", ["layers"]),
    ("network_layer_replaced", "TypeError", ["tuple"]),
    ("network_init_nonlinearity_twice", "ValueError", ["rnn_tanh", "'relu'"]),
    ("network_init_bidirectional_not_bool", "ValueError", ["bidirectional", "'no'"]),
    ("model_not_a_model", "TypeError", ["model", "dict"]),
])
def test_inconsistent_networks(outcomes, name, error, fragments):
    expect_error(outcomes, name, error, *fragments)


# ------------------------------------------------------------------ torch interop
@pytest.mark.parametrize("name,error,fragments", [
    ("from_torch_linear", "TypeError", ["module", "Linear"]),
    ("from_torch_lstm_cell", "TypeError", ["module", "LSTMCell"]),
    ("from_torch_numpy_array", "TypeError", ["module", "ndarray"]),
    ("from_torch_lstm_proj_size", "ValueError", ["proj_size"]),
    ("to_torch_state_dict_ensemble", "ValueError", ["ensemble"]),
])
def test_torch_interop_refusals(outcomes, name, error, fragments):
    pytest.importorskip("torch")
    expect_error(outcomes, name, error, *fragments)
