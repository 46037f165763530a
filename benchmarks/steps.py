"""Step-function benchmark: the kernels in a user's own ``@njit`` loop, against the same
loop written with NumPy, numba's ``np.dot`` and torch's cells, in one run, taking turns
(``common.measure_interleaved``).

Run from the repository root::

    PYTHONPATH=. python benchmarks/steps.py            # full sizes (~1 min on 2 cores)
    PYTHONPATH=. python benchmarks/steps.py --quick    # small sizes, smoke test

Workload: one sequence (B = 1) through an LSTM and a tanh RNN, H = D in {16, 64, 256},
T = 2,000 steps (500 at H = 256), float64 and float32, the state carried in place.

ours          a user's ``@njit`` loop calling ``kernels.lstm_step`` / ``rnn_tanh_step``
              on one thread (the loop of their docstrings).
ours forward  ``dynamics.forward`` on the whole sequence, for reference (not a peer).
numba dot     the same loop written in ``@njit`` code with ``np.dot`` (BLAS gemv) for
              both products and the cell's formula.
numpy         the same loop in Python with NumPy.
torch cell    ``torch.nn.LSTMCell`` / ``RNNCell`` called per step under ``no_grad``
              (2 threads).

FLOPs count the two matrix-vector products: 2 G*H (D + H) per step (G = 4 for the LSTM).
Each step reads W_ih and W_hh (G*H (D + H) values): from L1/L2 at H = 16 and 64, from
L2/L3 at H = 256 (4 MB in float64), so GB/s of weights read is the figure of merit.
"""
import time

import numba
import numpy as np

import dynamics
import kernels
from benchmarks import common

try:
    import torch
except ImportError:  # the torch peer is then left out
    torch = None

FULL = dict(sizes=((16, 2000), (64, 2000), (256, 500)), repeats=5, min_seconds=0.5)
QUICK = dict(sizes=((8, 50), (20, 50)), repeats=2, min_seconds=0.05)
GATES = {"lstm": 4, "rnn_tanh": 1}


@numba.njit
def ours_lstm(xs, h, c, w_ih, w_hh, b_ih, b_hh):
    for t in range(xs.shape[0]):
        kernels.lstm_step(xs[t], h, c, w_ih, w_hh, b_ih, b_hh, h, c)
    return h


@numba.njit
def ours_rnn(xs, h, c, w_ih, w_hh, b_ih, b_hh):
    for t in range(xs.shape[0]):
        kernels.rnn_tanh_step(xs[t], h, w_ih, w_hh, b_ih, b_hh, h)
    return h


@numba.njit
def numba_dot_lstm(xs, h, c, w_ih, w_hh, b_ih, b_hh):
    H = h.shape[0]
    for t in range(xs.shape[0]):
        a = np.dot(w_ih, xs[t]) + b_ih + np.dot(w_hh, h) + b_hh
        i, f = 1 / (1 + np.exp(-a[:H])), 1 / (1 + np.exp(-a[H:2 * H]))
        g, o = np.tanh(a[2 * H:3 * H]), 1 / (1 + np.exp(-a[3 * H:]))
        c[:] = f * c + i * g
        h[:] = o * np.tanh(c)
    return h


@numba.njit
def numba_dot_rnn(xs, h, c, w_ih, w_hh, b_ih, b_hh):
    for t in range(xs.shape[0]):
        h[:] = np.tanh(np.dot(w_ih, xs[t]) + b_ih + np.dot(w_hh, h) + b_hh)
    return h


def numpy_loop(kind, xs, h, c, w_ih, w_hh, b_ih, b_hh):
    H = h.shape[0]
    for x in xs:
        a = w_ih @ x + b_ih + w_hh @ h + b_hh
        if kind == "lstm":
            i, f, o = (1 / (1 + np.exp(-a[k * H:(k + 1) * H])) for k in (0, 1, 3))
            c = f * c + i * np.tanh(a[2 * H:3 * H])
            h = o * np.tanh(c)
        else:
            h = np.tanh(a)
    return h


def torch_cell(kind, D, H, dtype, w_ih, w_hh, b_ih, b_hh):
    """``torch.nn.LSTMCell`` / ``RNNCell`` with the given weights (built once, untimed)."""
    module = (torch.nn.LSTMCell(D, H) if kind == "lstm" else torch.nn.RNNCell(D, H)).to(
        torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        for name, value in (("weight_ih", w_ih), ("weight_hh", w_hh), ("bias_ih", b_ih),
                            ("bias_hh", b_hh)):
            getattr(module, name).copy_(torch.from_numpy(value))
    return module


def torch_loop(module, lstm, xs, h, c):
    with torch.no_grad():
        xs, h, c = (torch.from_numpy(a)[None] if a.ndim == 1 else torch.from_numpy(a)[:, None]
                    for a in (xs, h, c))
        for x in xs:
            if lstm:
                h, c = module(x, (h, c))
            else:
                h = module(x, h)
    return h[0].numpy()


def workload(kind, H, T, dtype):
    rng = np.random.default_rng(H)
    net = dynamics.Network.init(kind, H, H, init="gaussian", gain=1.0, dtype=dtype, seed=H)
    cell = net.layers[0][0]
    weights = tuple(np.ascontiguousarray(w) for w in (cell.weight_ih, cell.weight_hh,
                                                      cell.bias_ih, cell.bias_hh))
    xs = rng.standard_normal((T, H)).astype(dtype)
    h0 = (0.1 * rng.standard_normal(H)).astype(dtype)
    c0 = np.zeros(H, dtype)
    ours = ours_lstm if kind == "lstm" else ours_rnn
    numba_dot = numba_dot_lstm if kind == "lstm" else numba_dot_rnn
    state = (h0[None, None], c0[None, None]) if kind == "lstm" else h0[None, None]
    impls = {"ours": lambda: ours(xs, h0.copy(), c0.copy(), *weights),
             "ours forward": lambda: dynamics.forward(net, xs[:, None], state).output[-1, 0],
             "numba dot": lambda: numba_dot(xs, h0.copy(), c0.copy(), *weights),
             "numpy": lambda: numpy_loop(kind, xs, h0, c0, *weights)}
    if torch is not None:
        module = torch_cell(kind, H, H, dtype, *weights)
        impls["torch cell"] = lambda: torch_loop(module, kind == "lstm", xs, h0, c0)
    return impls


def run(name, flops, weight_bytes, implementations, config, dtype):
    """Check that all agree, time them; table rows (ratio: best peer / ours for ours,
    time / ours otherwise; the rows named "ours ..." are not peers)."""
    results = {label: np.asarray(fn(), np.float64) for label, fn in implementations.items()}
    tolerance = 1e-3 if dtype == np.float32 else 1e-9
    for label, value in results.items():
        gap = np.max(np.abs(value - results["ours"]))
        assert gap < tolerance, f"{name}: {label} differs from ours by {gap}"
    timings = common.measure_interleaved(implementations, repeats=config["repeats"], warmup=1,
                                         min_seconds=config["min_seconds"], max_seconds=20)
    ours = timings["ours"].median
    best = min(t.median for label, t in timings.items() if not label.startswith("ours"))
    return [[name, label, t.median * 1e3, t.spread, common.gflops(flops, t.median),
             weight_bytes / t.median / 1e9, best / ours if label == "ours" else t.median / ours]
            for label, t in timings.items()]


def main(argv=None):
    config = common.begin("benchmarks/steps.py", __doc__, FULL, QUICK, argv, torch)
    rows = []
    for dtype in (np.float64, np.float32):
        for kind in ("lstm", "rnn_tanh"):
            for H, T in config["sizes"]:
                weights = GATES[kind] * H * 2 * H
                rows += run(f"{kind} H={H} {np.dtype(dtype).name}", T * 2 * weights,
                            T * weights * np.dtype(dtype).itemsize, workload(kind, H, T, dtype),
                            config, dtype)
    common.print_table(["workload", "impl", "median ms", "spread", "GFLOP/s", "weights GB/s",
                        "ratio"], rows,
                       title="ratio: for ours, best peer time / ours (> 1: ours faster); "
                             "for the others, their time / ours")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
