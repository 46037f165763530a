"""Shared hypothesis strategies and helpers for the test suite.

Public names (kept stable; import them with ``from conftest import ...``):

- ``KINDS``, ``DTYPES``, ``RTOL`` (dtype -> relative tolerance against tests/naive.py),
  ``FLOAT32_MAX_GAIN``
- ``NetConfig``: kind, T, B, D, H, num_layers, bidirectional, seed, gain, dtype, bias;
  with ``.network(ensemble=None)``, ``.inputs()``, ``.h0_arg(h0, c0)``, ``.dirs``
- ``net_configs(...)``: hypothesis strategy of ``NetConfig`` (bounds are overridable)
- ``random_cell(kind, D, H, ...)`` / ``random_network(kind, D, H, ...)``: dynamics objects
  with Gaussian parameters (every array ~ N(0, gain^2 / H)), reproducible from ``seed``
- ``random_inputs(T, B, D, n_states, H, ...)``: x, h0, c0 arrays
- ``examples(n)``: decorator, ``settings(max_examples=n)`` scaled by the loaded profile
- ``seeds``, ``kinds``, ``dtypes``: basic strategies
- fixture ``single_thread`` (module scope): numba on one thread, restored afterwards
- ``start_python(*arguments, env=...)`` / ``finish(process)``: a fresh interpreter run
  from the repository root (killed if the session ends first) / its ``CompletedProcess``
- a test module may define ``start_in_background()``: see "Subprocesses started early"

A hypothesis profile "recurrent" (deadline=None, max_examples=20, no too_slow check) is
registered and loaded; set ``HYPOTHESIS_PROFILE`` to choose another one ("thorough": 200).
(Whether CUDA kernels run on a GPU or in numba's simulator is decided in the root
``conftest.py``.)
"""
import atexit
import os
import pathlib
import subprocess
import sys
from dataclasses import dataclass

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import dynamics

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
DTYPES = (np.float32, np.float64)
# Tolerance of a forward pass against tests/naive.py, on
# max|got - expected| / max(1, max|expected|) (naive.relative_error(..., tiny=1.0)). float32 is measured on networks of gain <= FLOAT32_MAX_GAIN: at larger
# gains chaotic dynamics amplify rounding far beyond any fixed bound (worst seen in 1000
# random configurations of up to 12 steps and 3 layers: 8e-6 float32, 2e-14 float64).
RTOL = {np.dtype(np.float32): 3e-5, np.dtype(np.float64): 1e-12}
FLOAT32_MAX_GAIN = 1.5

settings.register_profile(
    "recurrent", deadline=None, max_examples=20, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", parent=settings.get_profile("recurrent"),
                          max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "recurrent"))


def examples(n):
    """``settings(max_examples=n)`` under the default profile, scaled with the loaded one
    (``HYPOTHESIS_PROFILE=thorough`` runs 10 times as many); use as a decorator."""
    base = settings.get_profile("recurrent").max_examples
    return settings(max_examples=max(1, round(n * settings().max_examples / base)))


_CELL_CLASS = {"rnn_tanh": dynamics.RNN, "rnn_relu": dynamics.RNN,
               "lstm": dynamics.LSTM, "gru": dynamics.GRU}
_GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def random_cell(kind, D, H, *, seed=0, gain=1.0, dtype=np.float64, bias=True, ensemble=None):
    """A dynamics cell of ``kind`` whose every parameter is ~ N(0, gain^2 / H)."""
    rng = np.random.default_rng(seed)
    lead = () if ensemble is None else (ensemble,)
    G, scale = _GATES[kind], gain / np.sqrt(H)
    params = {"weight_ih": rng.normal(0.0, scale, lead + (G * H, D)),
              "weight_hh": rng.normal(0.0, scale, lead + (G * H, H))}
    if bias:
        params["bias_ih"] = rng.normal(0.0, scale, lead + (G * H,))
        params["bias_hh"] = rng.normal(0.0, scale, lead + (G * H,))
    params = {k: v.astype(dtype) for k, v in params.items()}
    if kind.startswith("rnn_"):
        return dynamics.RNN(**params, nonlinearity=kind[4:])
    return _CELL_CLASS[kind](**params)


def random_network(kind, D, H, num_layers=1, bidirectional=False, *, seed=0, gain=1.0,
                   dtype=np.float64, bias=True, ensemble=None):
    """A ``dynamics.Network`` of ``random_cell``s; cell k draws from child k of ``seed``."""
    dirs = 2 if bidirectional else 1
    children = iter(np.random.SeedSequence(seed).spawn(num_layers * dirs))
    layers = []
    for l in range(num_layers):
        size = D if l == 0 else dirs * H
        layers.append([random_cell(kind, size, H, seed=next(children), gain=gain, dtype=dtype,
                                   bias=bias, ensemble=ensemble) for _ in range(dirs)])
    return dynamics.Network(layers)


def random_inputs(T, B, D, n_states, H, *, seed=0, dtype=np.float64, scale=1.0,
                  ensemble=None, own_inputs=False):
    """(x, h0, c0): x (T, B, D) (or (T, E, B, D) if ``own_inputs``), states
    (n_states, B, H) (or (n_states, E, B, H) for an ensemble), all ~ N(0, scale^2)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    e = () if ensemble is None else (ensemble,)
    x = rng.normal(0.0, scale, (T,) + (e if own_inputs else ()) + (B, D)).astype(dtype)
    h0 = rng.normal(0.0, scale, (n_states,) + e + (B, H)).astype(dtype)
    c0 = rng.normal(0.0, scale, (n_states,) + e + (B, H)).astype(dtype)
    return x, h0, c0


@dataclass(frozen=True)
class NetConfig:
    """One drawn network configuration (see ``net_configs``)."""

    kind: str
    T: int
    B: int
    D: int
    H: int
    num_layers: int
    bidirectional: bool
    seed: int
    gain: float
    dtype: type
    bias: bool = True

    @property
    def dirs(self):
        return 2 if self.bidirectional else 1

    @property
    def n_states(self):
        return self.num_layers * self.dirs

    def network(self, ensemble=None):
        return random_network(self.kind, self.D, self.H, self.num_layers, self.bidirectional,
                              seed=self.seed, gain=self.gain, dtype=self.dtype, bias=self.bias,
                              ensemble=ensemble)

    def inputs(self, scale=1.0, ensemble=None, own_inputs=False):
        """(x, h0, c0) in the config's dtype."""
        return random_inputs(self.T, self.B, self.D, self.n_states, self.H, seed=self.seed,
                             dtype=self.dtype, scale=scale, ensemble=ensemble,
                             own_inputs=own_inputs)

    def h0_arg(self, h0, c0):
        """What ``dynamics.forward`` takes as ``h0``: the tuple (h0, c0) for LSTM."""
        return (h0, c0) if self.kind == "lstm" else h0


@st.composite
def net_configs(draw, kinds=KINDS, T=(0, 12), B=(1, 4), D=(1, 5), H=(1, 6),
                num_layers=(1, 3), bidirectional=(False, True), dtypes=DTYPES,
                gain=(0.1, 3.0), bias=(True,), float32_max_gain=FLOAT32_MAX_GAIN):
    """Strategy of ``NetConfig``; each bound is an inclusive (min, max) or a tuple of choices.

    For float32 the gain is capped at ``float32_max_gain`` (see ``RTOL``).
    """
    def ints(bounds):
        return st.integers(*bounds)

    dtype = draw(st.sampled_from(dtypes))
    if np.dtype(dtype) == np.float32:
        gain = (min(gain[0], float32_max_gain), min(gain[1], float32_max_gain))
    return NetConfig(
        kind=draw(st.sampled_from(kinds)),
        T=draw(ints(T)), B=draw(ints(B)), D=draw(ints(D)), H=draw(ints(H)),
        num_layers=draw(ints(num_layers)),
        bidirectional=draw(st.sampled_from(bidirectional)),
        seed=draw(st.integers(0, 2**32 - 1)),
        gain=draw(st.floats(*gain, allow_nan=False, allow_infinity=False)),
        dtype=dtype,
        bias=draw(st.sampled_from(bias)),
    )


seeds = st.integers(0, 2**32 - 1)
kinds = st.sampled_from(KINDS)
dtypes = st.sampled_from(DTYPES)


@pytest.fixture(scope="module")
def single_thread():
    """Run numba's parallel kernels on one thread for the module (restored afterwards).

    On a loaded 2-core machine a ``prange`` launch costs milliseconds; tests that call
    ``dynamics.forward`` thousands of times (finite differences) use this. Results do not
    depend on the thread count (the design promises bitwise equality), only speed does.
    """
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch's thread pool fights numba's on a small machine: one torch thread per module."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torch_module(kind, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True,
                 dtype="float64", seed=0):
    """A seeded ``torch.nn.RNN/LSTM/GRU`` in ``dtype`` with torch's default initialisation."""
    import torch

    torch.manual_seed(seed)
    options = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    if kind == "lstm":
        module = torch.nn.LSTM(input_size, hidden_size, **options)
    elif kind == "gru":
        module = torch.nn.GRU(input_size, hidden_size, **options)
    else:
        module = torch.nn.RNN(input_size, hidden_size, nonlinearity=kind[4:], **options)
    return module.to(getattr(torch, dtype))


# -- subprocesses --------------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]


def start_python(*arguments, env):
    """Start ``python *arguments`` from the repository root with the environment ``env``;
    it is killed when this session exits, so a session that stops early leaves nothing
    running."""
    process = subprocess.Popen([sys.executable, *map(str, arguments)], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    atexit.register(process.kill)
    return process


def finish(process, timeout=900):
    """The ``subprocess.CompletedProcess`` of a ``start_python`` process, once it ends."""
    stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


# -- subprocesses started early ------------------------------------------------------------
# Some checks run in a subprocess of their own that spends minutes on single-threaded JIT
# compilation (the bad-input runner compiles nearly every kernel). A test module that
# defines ``start_in_background()`` has it called as soon as the session is collected, so
# that its subprocess runs on the core this process leaves idle, and the module's tests
# run last, so that the subprocess has the whole session to finish.

def _starts_in_background(item):
    return hasattr(getattr(item, "module", None), "start_in_background")


def pytest_collection_modifyitems(items):
    items.sort(key=_starts_in_background)  # a stable sort: each group keeps its order


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    for module in {item.module for item in session.items if _starts_in_background(item)}:
        module.start_in_background()
