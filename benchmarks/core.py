"""Core benchmark: forward and forward+BPTT of this toolkit against torch and NumPy.

Run from the repository root::

    PYTHONPATH=. python benchmarks/core.py              # full run (~10 min on 2 cores)
    PYTHONPATH=. python benchmarks/core.py --quick      # tiny sizes, smoke test (< 1 min)
    PYTHONPATH=. python benchmarks/core.py --only a --dtype float32 --repeats 7

Sections (all in one process, so the numbers are side by side):

a    one network, B = 32, T = 256 (T = 64 at H = 1024), H = D in {64, 256, 1024}, each
     cell, float32 and float64, forward and forward+BPTT. Ours: ``dynamics.forward`` /
     ``dynamics.bptt`` (which runs its own forward). Peers: ``torch.nn.RNN/LSTM/GRU`` on 2
     threads with the same weights (forward under ``no_grad``; forward + ``backward``
     through autograd, input requiring grad), and a plain NumPy implementation.
b    an ensemble of E = 256 independent tanh RNNs (N = 64 and 128 units, own W_hh each,
     Gaussian init with gain 1), T = 1000, B = 1, autonomous (D = 1, zero input, random
     h0) and driven (D = N white noise, one input sequence shared by all members, random
     h0). Peers: torch with one ``torch.baddbmm`` (bmm plus add) per step, forward and
     forward + autograd backward; NumPy with ``np.matmul`` on stacked (E, N, N) arrays.
jit  compile and start-up times, in subprocesses: cold (an empty ``NUMBA_CACHE_DIR``:
     ``import dynamics``, then the first forward and forward+BPTT of every cell in each
     dtype) and warm (the same again with the cache that the cold run filled).

Both peers are checked against ours (outputs and every gradient) before timing (section
b on a shorter sequence, section a's float32 ReLU RNN in float64: ``check_problem``). The
NumPy peer does what ours does: the input projection, the parameter gradients and dL/dx are one
matrix product over all steps each, only the recurrence loops over time. The torch peers
loop in C++ (nn modules) or Python (bmm), and autograd accumulates the weight gradients
step by step, as any autograd loop does.

FLOPs (``common.rnn_flops``): matrix products only, 2 * rows * cols per matrix-vector
product: per step and sequence 2 * G*H * (D + H) forward, and 3x that for
forward + BPTT. GFLOP/s are compared with numpy's GEMM rate (2048^2, best of >= 3) of
the same dtype, measured at the start of the run. Ours' peak memory in forward+BPTT
(tracemalloc) is compared with the footprint in ``Problem.footprint``.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np
from scipy.special import expit

import dynamics
from benchmarks import common

try:
    import torch
except ImportError:  # torch is optional: the torch peer is then left out
    torch = None

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
CLASS_NAMES = {"rnn_tanh": "RNN", "rnn_relu": "RNN", "lstm": "LSTM", "gru": "GRU"}  # ours = torch's
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
# Values per unit, step and sequence that a backward pass needs (the theoretical tape):
# rnn h; lstm h, c, i, f, g, o; gru h, r, z, n, W_hn h + b_hn.
SAVED_PER_UNIT = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 6, "gru": 5}
DTYPES = ("float32", "float64")
# max |peer - ours| / max |ours|; measured: below 1e-4 (float32), 1e-12 (float64)
TOLERANCE = {"float32": 1e-3, "float64": 1e-9}

# a_sizes: (H = D, T); b_check_steps: T of the run that verifies the peers in section b.
FULL = dict(a_sizes=((64, 256), (256, 256), (1024, 64)), a_batch=32, b_sizes=(64, 128),
            b_ensemble=256, b_steps=1000, b_check_steps=200, repeats=5, min_seconds=0.3,
            max_seconds=1.5, gemm_n=2048, copy_bytes=2 ** 28)
QUICK = dict(a_sizes=((16, 32), (64, 16)), a_batch=4, b_sizes=(16, 32), b_ensemble=8,
             b_steps=100, b_check_steps=100, repeats=3, min_seconds=0.02, max_seconds=0.1,
             gemm_n=512, copy_bytes=2 ** 24)
B_GAIN = 1.0   # edge of chaos: the ensemble neither explodes nor decays into denormals


# -- problems -----------------------------------------------------------------------------

@dataclass
class Problem:
    """One benchmark case: a cell (or ensemble), its input and the loss weights."""

    kind: str
    cell: object
    x: np.ndarray             # (T, B, D), shared by all members of an ensemble
    grad_output: np.ndarray   # shaped like ours' output: (T, B, H) or (T, E, B, H)
    h0: np.ndarray = None     # ours' layout (1, B, H) or (1, E, B, H); None for zeros
    labels: dict = field(default_factory=dict)

    T = property(lambda self: self.x.shape[0])
    B = property(lambda self: self.x.shape[1])
    D = property(lambda self: self.x.shape[2])
    H = property(lambda self: self.cell.hidden_size)
    E = property(lambda self: self.cell.ensemble_size)
    dtype = property(lambda self: str(self.x.dtype))

    def flops(self, backward):
        return common.rnn_flops(self.T, self.B, self.D, self.H, GATES[self.kind],
                                ensemble=self.E or 1, backward=backward)

    def footprint(self):
        """Bytes a forward+BPTT call must hold: parameters, inputs (x, grad_output, h0),
        the tape of saved activations (SAVED_PER_UNIT) and the gradients (parameters,
        x, h0 and, for LSTM, c0)."""
        size = self.x.dtype.itemsize
        params = sum(a.size for a in self.cell.parameters().values())
        states = (self.E or 1) * self.B * self.H
        h0 = 0 if self.h0 is None else self.h0.size
        parts = {"params": params, "inputs": self.x.size + self.grad_output.size + h0,
                 "saved": self.T * states * SAVED_PER_UNIT[self.kind],
                 "grads": params + self.x.size + states * (2 if self.kind == "lstm" else 1)}
        return {k: v * size for k, v in parts.items()}

    def traffic(self, backward):
        """Bytes ours must move at the least: the forward pass reads the parameters, x and
        h0 and writes the tape (SAVED_PER_UNIT); the backward pass reads the tape back
        and grad_output, and writes the gradients."""
        parts = self.footprint()
        size = self.x.dtype.itemsize
        forward = parts["params"] + (self.x.size + (0 if self.h0 is None else self.h0.size)) * size
        forward += parts["saved"]
        if not backward:
            return forward
        return forward + parts["saved"] + self.grad_output.nbytes + parts["grads"]

    def resident(self):
        """Bytes of the arrays that exist before the call (parameters, x, grad_output, h0)."""
        arrays = list(self.cell.parameters().values()) + [self.x, self.grad_output]
        return sum(a.nbytes for a in arrays) + (0 if self.h0 is None else self.h0.nbytes)


def make_cell(kind, input_size, hidden_size, dtype, **init):
    cls = getattr(dynamics, CLASS_NAMES[kind])
    return cls.init(input_size, hidden_size, dtype=dtype, **cell_options(kind), **init)


def cell_options(kind):
    return {"nonlinearity": kind[4:]} if kind.startswith("rnn_") else {}


def single_problem(kind, H, T, B, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x, g = (rng.standard_normal((T, B, H)).astype(dtype) for _ in range(2))
    return Problem(kind, make_cell(kind, H, H, dtype, seed=seed), x, g,
                   labels=dict(cell=kind, H=H, T=T, B=B, dtype=dtype))


def ensemble_problem(N, E, T, B, dtype, driven, seed=0):
    rng = np.random.default_rng(seed)
    D = N if driven else 1
    cell = dynamics.RNN.init(D, N, ensemble=E, init="gaussian", gain=B_GAIN, dtype=dtype,
                             seed=seed)
    x = rng.standard_normal((T, B, D)) if driven else np.zeros((T, B, D))
    h0 = rng.standard_normal((1, E, B, N))
    g = rng.standard_normal((T, E, B, N))
    return Problem("rnn_tanh", cell, x.astype(dtype), g.astype(dtype), h0.astype(dtype),
                   labels=dict(N=N, drive="driven" if driven else "autonomous", E=E, T=T,
                               dtype=dtype))


# -- implementations: forward() -> output, bptt() -> {"weight_ih": ..., "x": ..., ...} ------

class Ours:
    name = "ours"

    def __init__(self, problem):
        self.p = problem

    def forward(self):
        return dynamics.forward(self.p.cell, self.p.x, self.p.h0).output

    def bptt(self):
        grads = dynamics.bptt(self.p.cell, self.p.x, self.p.grad_output, self.p.h0)
        return {k.removesuffix("_l0"): v for k, v in grads.items()}


def numpy_cell_forward(kind, a, ah, h, c):
    """One step on stacked (E, B, .) arrays given a = W_ih x + b_ih and ah = W_hh h + b_hh.

    Returns the new (h, c) and what the backward step needs.
    """
    H = h.shape[-1]
    if kind == "rnn_tanh":
        return np.tanh(a + ah), c, None
    if kind == "rnn_relu":
        return np.maximum(a + ah, 0), c, None
    if kind == "lstm":
        gates = expit(a + ah)
        gates[..., 2 * H:3 * H] = np.tanh(a[..., 2 * H:3 * H] + ah[..., 2 * H:3 * H])
        i, f, g, o = np.split(gates, 4, axis=-1)
        c = f * c + i * g
        return o * np.tanh(c), c, gates
    rz = expit(a[..., :2 * H] + ah[..., :2 * H])
    r, z = rz[..., :H], rz[..., H:]
    n = np.tanh(a[..., 2 * H:] + r * ah[..., 2 * H:])
    return n + z * (h - n), c, (r, z, n, ah[..., 2 * H:])


def numpy_cell_backward(kind, saved, dh, dc, h_prev, c_prev, h, c):
    """Backward of ``numpy_cell_forward`` given dh = dL/dh_t (and dc = dL/dc_t from later).

    Returns (dL/da, dL/dah, the part of dL/dh_prev that bypasses W_hh, dL/dc_prev).
    """
    if kind in ("rnn_tanh", "rnn_relu"):
        da = dh * (1 - h * h) if kind == "rnn_tanh" else dh * (h > 0)
        return da, da, 0, dc
    if kind == "lstm":
        i, f, g, o = np.split(saved, 4, axis=-1)
        tc = np.tanh(c)
        dct = dc + dh * o * (1 - tc * tc)
        da = np.concatenate([dct * g * i * (1 - i), dct * c_prev * f * (1 - f),
                             dct * i * (1 - g * g), dh * tc * o * (1 - o)], axis=-1)
        return da, da, 0, dct * f
    r, z, n, hn = saved
    dn = dh * (1 - z) * (1 - n * n)
    dr = dn * hn * r * (1 - r)
    dz = dh * (h_prev - n) * z * (1 - z)
    return (np.concatenate([dr, dz, dn], axis=-1), np.concatenate([dr, dz, dn * r], axis=-1),
            dh * z, dc)


class NumPy:
    """A plain NumPy RNN/LSTM/GRU: a loop over time with ``np.matmul`` on stacked
    (E, ., .) arrays (E = 1 for one network). Input projections, parameter gradients and
    dL/dx are one matrix product over all steps each."""

    name = "numpy"

    def __init__(self, problem):
        p = self.p = problem
        E, B, H = p.E or 1, p.B, p.H
        lead = (lambda a: a) if p.E else (lambda a: a[None])
        self.w_ih, self.w_hh, self.b_ih, self.b_hh = (lead(a) for a in (
            p.cell.weight_ih, p.cell.weight_hh, p.cell.bias_ih, p.cell.bias_hh))
        self.h0 = np.zeros((E, B, H), p.dtype) if p.h0 is None else p.h0.reshape(E, B, H)
        self.c0 = np.zeros_like(self.h0) if p.kind == "lstm" else None

    def _run(self):
        p = self.p
        T, B, D = p.x.shape
        xa = np.matmul(p.x.reshape(T * B, D), self.w_ih.transpose(0, 2, 1)) + self.b_ih[:, None]
        xa = xa.reshape(len(self.w_ih), T, B, -1)
        w_hh_t = np.ascontiguousarray(self.w_hh.transpose(0, 2, 1))
        h, c, hs, cs, saved = self.h0, self.c0, [], [], []
        for t in range(T):
            ah = np.matmul(h, w_hh_t) + self.b_hh[:, None]
            h, c, s = numpy_cell_forward(p.kind, xa[:, t], ah, h, c)
            hs.append(h)
            cs.append(c)
            saved.append(s)
        return hs, cs, saved

    def _user(self, a):
        """(T, E, B, .) -> ours' output layout."""
        return a if self.p.E else a[:, 0]

    def forward(self):
        return self._user(np.stack(self._run()[0]))

    def bptt(self):
        p = self.p
        T, B, D = p.x.shape
        E, rows = self.w_hh.shape[:2]
        hs, cs, saved = self._run()
        g = p.grad_output if p.E else p.grad_output[:, None]
        da_all, dah_all = (np.empty((E, T, B, rows), p.dtype) for _ in range(2))
        dh, dc = np.zeros_like(self.h0), None if self.c0 is None else np.zeros_like(self.c0)
        for t in reversed(range(T)):
            h_prev, c_prev = (self.h0, self.c0) if t == 0 else (hs[t - 1], cs[t - 1])
            da, dah, dh_direct, dc = numpy_cell_backward(p.kind, saved[t], dh + g[t], dc,
                                                         h_prev, c_prev, hs[t], cs[t])
            da_all[:, t], dah_all[:, t] = da, dah
            dh = np.matmul(dah, self.w_hh) + dh_direct
        da_rows, dah_rows = (a.reshape(E, T * B, rows) for a in (da_all, dah_all))
        h_prev_rows = np.stack([self.h0] + hs[:-1], axis=1).reshape(E, T * B, -1)
        x_rows = p.x.reshape(T * B, D)
        grads = {"weight_ih": np.matmul(da_rows.transpose(0, 2, 1), x_rows),
                 "weight_hh": np.matmul(dah_rows.transpose(0, 2, 1), h_prev_rows),
                 "bias_ih": da_rows.sum(axis=1), "bias_hh": dah_rows.sum(axis=1)}
        if not p.E:
            grads = {k: v[0] for k, v in grads.items()}
        # dL/dx of the shared input sums over members: one (T*B, E*rows) @ (E*rows, D) product
        da_members = np.moveaxis(da_rows, 0, 1).reshape(T * B, E * rows)
        grads["x"] = (da_members @ self.w_ih.reshape(E * rows, D)).reshape(T, B, D)
        grads["h0"] = dh
        if dc is not None:
            grads["c0"] = dc
        return grads


class TorchModule:
    """``torch.nn.RNN/LSTM/GRU`` with our weights (single networks)."""

    name = "torch"

    def __init__(self, problem):
        p = self.p = problem
        cls = getattr(torch.nn, CLASS_NAMES[p.kind])
        self.module = cls(p.D, p.H, dtype=getattr(torch, p.dtype), **cell_options(p.kind))
        self.module.load_state_dict(dynamics.to_torch_state_dict(p.cell))
        self.x = torch.from_numpy(p.x)
        self.x_leaf = self.x.clone().requires_grad_(True)
        self.g = torch.from_numpy(p.grad_output)
        # zero initial states whose gradients torch must compute too, as ours does
        zeros = torch.zeros((1, p.B, p.H), dtype=self.x.dtype)
        self.states = {name: zeros.clone().requires_grad_(True)
                       for name in (("h0", "c0") if p.kind == "lstm" else ("h0",))}

    def forward(self):
        with torch.no_grad():
            return self.module(self.x)[0]

    def bptt(self):
        self.module.zero_grad(set_to_none=True)
        for leaf in (self.x_leaf, *self.states.values()):
            leaf.grad = None
        states = tuple(self.states.values())
        self.module(self.x_leaf, states if len(states) == 2 else states[0])[0].backward(self.g)
        grads = {k.removesuffix("_l0"): v.grad for k, v in self.module.named_parameters()}
        grads["x"] = self.x_leaf.grad
        grads.update({name: leaf.grad for name, leaf in self.states.items()})
        return grads


class TorchBmm:
    """An ensemble of tanh RNNs in torch: one ``baddbmm`` over the E members per step."""

    name = "torch"

    def __init__(self, problem):
        p = self.p = problem
        self.params = {k: torch.tensor(v, requires_grad=True)
                       for k, v in p.cell.parameters().items()}
        self.x, self.h0 = torch.from_numpy(p.x), torch.from_numpy(p.h0[0])
        self.x_leaf, self.h0_leaf = (a.clone().requires_grad_(True) for a in (self.x, self.h0))
        self.g = torch.from_numpy(p.grad_output)

    def _run(self, x, h):
        w = self.params
        T, B, D = x.shape
        xa = torch.matmul(x.reshape(1, T * B, D), w["weight_ih"].transpose(1, 2))
        xa = (xa + (w["bias_ih"] + w["bias_hh"])[:, None]).reshape(-1, T, B, self.p.H)
        w_hh_t = w["weight_hh"].transpose(1, 2)
        outputs = []
        # unbind, not xa[:, t]: the backward of T selects would build T full-size gradients
        for xa_t in xa.unbind(1):
            h = torch.tanh(torch.baddbmm(xa_t, h, w_hh_t))
            outputs.append(h)
        return torch.stack(outputs)

    def forward(self):
        with torch.no_grad():
            return self._run(self.x, self.h0)

    def bptt(self):
        for leaf in [*self.params.values(), self.x_leaf, self.h0_leaf]:
            leaf.grad = None
        self._run(self.x_leaf, self.h0_leaf).backward(self.g)
        return {**{k: v.grad for k, v in self.params.items()}, "x": self.x_leaf.grad,
                "h0": self.h0_leaf.grad}


# -- verification, timing, reporting ------------------------------------------------------

def as_numpy(value):
    return value.detach().numpy() if hasattr(value, "detach") else np.asarray(value)


def assert_close(what, got, want, dtype):
    got, want = as_numpy(got), as_numpy(want)
    if got.size != want.size:
        raise AssertionError(f"{what}: size {got.shape} != ours {want.shape}")
    scale = max(np.max(np.abs(want), initial=0), 1e-30)
    err = np.max(np.abs(got.reshape(want.shape) - want), initial=0) / scale
    if not err <= TOLERANCE[dtype]:
        raise AssertionError(f"{what} differs from ours: max relative error {err:.2e}")


def verify(impls):
    """Assert that every peer's output and gradients match ours (impls[0])."""
    ours, peers = impls[0], impls[1:]
    dtype = ours.p.dtype
    output = ours.forward()
    for peer in peers:
        assert_close(f"{peer.name} output", peer.forward(), output, dtype)
    grads = ours.bptt()
    for peer in peers:
        peer_grads = peer.bptt()
        for key in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "x", "h0"):
            if key not in peer_grads:
                raise AssertionError(f"{peer.name} computes no gradient for {key}")
        for key, value in peer_grads.items():
            assert_close(f"{peer.name} d{key}", value, grads[key], dtype)


def run_case(problem, classes, config, check=None):
    """Verify the peers (on ``check``, default the problem itself), then time forward
    and forward+BPTT of each, and measure ours' peak memory in forward+BPTT."""
    start = time.perf_counter()
    checked = [cls(check or problem) for cls in classes]
    verify(checked)
    impls = checked if check is None else [cls(problem) for cls in classes]
    warmup = 0 if check is None else 1   # the verification calls were the warm-up
    timings = {}
    for mode in ("forward", "bptt"):
        measured = common.measure_interleaved(
            {impl.name: getattr(impl, mode) for impl in impls}, config["repeats"], warmup,
            config["min_seconds"], config["max_seconds"])
        timings.update(((mode, name), timing) for name, timing in measured.items())
    peak = common.peak_memory(impls[0].bptt)
    labels = " ".join(f"{k}={v}" for k, v in problem.labels.items())
    print(f"  {labels}: verified and timed in {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)
    return dict(problem=problem, timings=timings, peak=peak, names=[i.name for i in impls])


def timing_table(title, cases, gemm, bandwidth, config):
    """Median times, ratios peer/ours (> 1: ours faster), GFLOP/s and % of the GEMM rate,
    and ours' GB/s (``Problem.traffic``) and % of the copy bandwidth."""
    names = cases[0]["names"]
    peers = names[1:]
    label_keys = [k for k in cases[0]["problem"].labels if k not in ("B", "E")]
    headers = (label_keys + ["pass"] + [f"{n} ms" for n in names] + [f"{n}/ours" for n in peers]
               + (["best/ours"] if len(peers) > 1 else []) + [f"{n} GF/s" for n in names]
               + [f"{n} %G" for n in names] + ["ours GB/s", "ours %bw"])
    rows = []
    for case in cases:
        problem = case["problem"]
        for mode, label in (("forward", "fwd"), ("bptt", "fwd+bptt")):
            t = {n: case["timings"][mode, n].median for n in names}
            rate = {n: common.gflops(problem.flops(mode == "bptt"), t[n]) for n in names}
            ratios = [t[n] / t["ours"] for n in peers]
            bytes_per_second = problem.traffic(mode == "bptt") / t["ours"]
            rows.append([problem.labels[k] for k in label_keys] + [label]
                        + [1e3 * t[n] for n in names] + ratios
                        + ([min(t[n] for n in peers) / t["ours"]] if len(peers) > 1 else [])
                        + [rate[n] for n in names]
                        + [100 * rate[n] / gemm[problem.dtype] for n in names]
                        + [bytes_per_second / 1e9, 100 * bytes_per_second / 1e9 / bandwidth])
    common.print_table(headers, rows, title)
    counts = sorted(t.n for case in cases for t in case["timings"].values())
    print(f"calls timed per measurement: {counts[0]} to {counts[-1]} (median "
          f"{counts[len(counts) // 2]}); {counts.count(1)} of {len(counts)} measurements are one "
          f"call of {config['max_seconds']} s or more\n", flush=True)


def memory_table(title, cases):
    label_keys = [k for k in cases[0]["problem"].labels if k not in ("B", "E")]
    headers = label_keys + ["params MB", "inputs MB", "saved MB", "grads MB", "theory MB",
                            "allocated MB", "measured MB", "measured/theory"]
    rows = []
    for case in cases:
        problem = case["problem"]
        parts = problem.footprint()
        theory = sum(parts.values())
        measured = case["peak"] + problem.resident()
        rows.append([problem.labels[k] for k in label_keys]
                    + [v / common.MB for v in parts.values()]
                    + [theory / common.MB, case["peak"] / common.MB, measured / common.MB,
                       measured / theory])
    common.print_table(headers, rows, title)


def check_problem(kind, H, T, B, dtype):
    """The problem on which section a verifies the peers: the timed one, except for the
    ReLU RNN in float32, verified in float64. Its gradient jumps where a pre-activation
    crosses 0, and one that float32 rounding puts on the other side (one of the 2
    million unit-steps at H = 1024, T = 64) moved float32 dW_ih by 3.9e-3 of its largest
    value: ours and NumPy's (summing alike) on one side, torch and every float64 result
    on the other."""
    check_dtype = "float64" if kind == "rnn_relu" else dtype
    return single_problem(kind, H, T, B, check_dtype)


def section_a(config, dtypes):
    classes = [Ours] + ([TorchModule] if torch else []) + [NumPy]
    B = config["a_batch"]
    return [run_case(single_problem(kind, H, T, B, dtype), classes, config,
                     check=check_problem(kind, H, T, B, dtype))
            for H, T in config["a_sizes"] for kind in KINDS for dtype in dtypes]


def section_b(config, dtypes):
    classes = [Ours] + ([TorchBmm] if torch else []) + [NumPy]
    cases = []
    for N in config["b_sizes"]:
        for driven in (False, True):
            for dtype in dtypes:
                steps = (config["b_steps"], min(config["b_check_steps"], config["b_steps"]))
                problem, check = (ensemble_problem(N, config["b_ensemble"], T, 1, dtype, driven)
                                  for T in steps)
                cases.append(run_case(problem, classes, config, check=check))
    return cases


# -- compile times ------------------------------------------------------------------------

JIT_CHILD = """
import json, sys, time
start = time.perf_counter()
import numpy as np
import dynamics
events = [["import dynamics", "", time.perf_counter() - start]]
for dtype in sys.argv[1].split(","):
    for kind, name in {classes!r}.items():
        options = {{"nonlinearity": kind[4:]}} if kind.startswith("rnn_") else {{}}
        cell = getattr(dynamics, name).init(4, 8, dtype=dtype, **options)
        x, g = np.ones((8, 2, 4), dtype), np.ones((8, 2, 8), dtype)
        for what, call in (("forward", lambda: dynamics.forward(cell, x)),
                           ("forward+bptt", lambda: dynamics.bptt(cell, x, g))):
            t = time.perf_counter()
            call()
            events.append([kind + " " + dtype, what, time.perf_counter() - t])
print(json.dumps(events))
"""


def section_jit(dtypes):
    """Cold and warm start in subprocesses sharing a fresh NUMBA_CACHE_DIR."""
    root = Path(__file__).resolve().parents[1]
    code = JIT_CHILD.format(classes=CLASS_NAMES)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(root),
                                                            os.environ.get("PYTHONPATH")])))
        for run in ("cold", "warm"):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", code, ",".join(dtypes)], env=env, cwd=root,
                                 capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"jit {run} subprocess failed:\n{out.stderr[-3000:]}")
            runs[run] = dict(events=json.loads(out.stdout.strip().splitlines()[-1]),
                             process=time.perf_counter() - start)
            print(f"  jit {run}: {runs[run]['process']:.1f} s", file=sys.stderr, flush=True)
        cached = sum(len(files) for _, _, files in os.walk(cache))
    rows = [[*cold, warm[2]] for cold, warm in zip(runs["cold"]["events"], runs["warm"]["events"])]
    common.print_table(["case", "first call", "cold s", "warm s"], rows,
                       f"jit: first calls in a fresh process (tiny sizes: the time is compiling "
                       f"or loading); cache dir held {cached} files after the cold run")
    for run in ("cold", "warm"):
        events = runs[run]["events"]
        first_forward = events[0][2] + events[1][2]
        print(f"{run}: import dynamics + first forward {first_forward:.2f} s; import + every "
              f"first call above {sum(e[2] for e in events):.2f} s; whole subprocess "
              f"{runs[run]['process']:.2f} s")
    print(flush=True)
    return runs


# -- main ---------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke test)")
    parser.add_argument("--only", action="append", choices=("a", "b", "jit"),
                        help="run only these sections (repeatable); default: all")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (default 5, "
                        "quick 3); slow calls get fewer, see the header of the output")
    parser.add_argument("--dtype", choices=DTYPES, help="only this dtype (default: both)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    args = parser.parse_args(argv)
    if argv is None:  # run as a script, not called
        common.reuse_freed_memory()
    config = dict(QUICK if args.quick else FULL)
    if args.repeats:
        config["repeats"] = args.repeats
    sections = args.only or ["a", "b", "jit"]
    dtypes = (args.dtype,) if args.dtype else DTYPES
    start, jiffies = time.perf_counter(), common.cpu_jiffies()

    if torch is not None:
        torch.set_num_threads(2)
    print("benchmarks/core.py" + (" --quick" if args.quick else ""))
    for line in common.machine_info():
        print(line)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads" if torch else
          "torch not installed: the torch peer is left out")
    gemm = {d: common.gemm_rate(d, config["gemm_n"]) for d in dtypes}
    bandwidth = common.copy_bandwidth(config["copy_bytes"])
    rates = ", ".join(f"{d} {r:.1f} GFLOP/s" for d, r in gemm.items())
    print(f"numpy GEMM rate ({config['gemm_n']}^2, best of >= 3): {rates}; "
          f"copy bandwidth ({numba.get_num_threads()} threads, read + write): "
          f"{bandwidth:.1f} GB/s")
    print(f"timing: the implementations take turns in rounds of random order "
          f"(common.measure_interleaved);\nmedian of {config['repeats']} calls after a warm-up, "
          f"more while they take "
          f"under {config['min_seconds']} s in all, fewer (at least 3) past "
          f"{config['max_seconds']} s in all,\none warm call where a single call takes "
          f"{config['max_seconds']} s or more;"
          f"\nratios are peer time / ours (> 1: ours faster); %G is GFLOP/s as a percentage of "
          f"the GEMM rate of that dtype;\nours GB/s: the bytes ours must move at the least "
          f"(Problem.traffic) per second, %bw of the copy bandwidth\n", flush=True)

    results = {"machine": common.machine_info(), "gemm_gflops": gemm, "copy_gbs": bandwidth,
               "config": config, "sections": {}}
    for section, run, title in (("a", section_a, "one network, B = %d" % config["a_batch"]),
                                ("b", section_b, "ensemble of %d tanh RNNs, B = 1, gain %g, "
                                 "driven = white noise shared by all members"
                                 % (config["b_ensemble"], B_GAIN))):
        if section not in sections:
            continue
        print(f"section {section}: {title}", file=sys.stderr, flush=True)
        cases = run(config, dtypes)
        timing_table(f"({section}) {title}: forward and forward+BPTT", cases, gemm, bandwidth,
                     config)
        memory_table(f"({section}) {title}: ours' forward+BPTT memory (tracemalloc peak of the "
                     f"call + the parameters and inputs that exist before it) vs theory", cases)
        results["sections"][section] = [
            dict(labels=c["problem"].labels, peak_bytes=c["peak"],
                 footprint=c["problem"].footprint(),
                 flops={m: c["problem"].flops(m == "bptt") for m in ("forward", "bptt")},
                 times={f"{m} {n}": t.times for (m, n), t in c["timings"].items()})
            for c in cases]
    if "jit" in sections:
        print("section jit", file=sys.stderr, flush=True)
        results["sections"]["jit"] = section_jit(dtypes)
    layer = numba.threading_layer() if "a" in sections or "b" in sections else "not used"
    print(f"total {time.perf_counter() - start:.0f} s; numba threading layer: {layer}")
    common.print_steal(jiffies)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
