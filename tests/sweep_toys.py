"""Small sweeps for tests/test_sweep.py, importable by dask worker processes."""
import functools
import os
import pathlib
import time

import numpy as np

import dynamics
from analysis.sweep import Output, Sweep


def toy_compute(points, seeds, *, log=None, delay=0.0, crash_marker=None, crash_chunk=None):
    """Per point: a draw from its seed, and the final state of a small RNN of gain ``a``
    (numba kernels on whichever process runs this). Optionally logs the chunk, sleeps,
    or kills its own process once (to test resuming and worker loss)."""
    first = int(seeds[0].spawn_key[0])
    if crash_marker is not None and first == crash_chunk and not os.path.exists(crash_marker):
        pathlib.Path(crash_marker).touch()
        os._exit(1)
    if log is not None:
        with open(log, "a") as f:
            f.write(f"{first}\n")
    time.sleep(delay)
    draws = np.array([np.random.default_rng(s).normal() for s in seeds])
    cells = [dynamics.RNN.init(2, 8, init="gaussian", gain=a, seed=s)
             for a, s in zip(points["a"], seeds)]  # point i's network, run as one ensemble
    rnn = dynamics.RNN(weight_ih=np.stack([c.weight_ih for c in cells]),
                       weight_hh=np.stack([c.weight_hh for c in cells]))
    x = np.stack([np.random.default_rng(s).normal(size=(20, 1, 2)) for s in seeds], axis=1)
    h_n = dynamics.forward(rnn, x).h_n[0, :, 0]
    return {"draw": draws * points["b"], "state": h_n}


def toy_sweep(chunk_size=3, a=(0.5, 1.0, 1.5, 2.0), b=(1.0, 2.0, 3.0), **options):
    return Sweep("toy", {"a": list(a), "b": list(b)},
                 functools.partial(toy_compute, **options),
                 {"draw": Output("seeded draw times b", "1"),
                  "state": Output("final state", "1", dims=("unit",),
                                  coords={"unit": np.arange(8)},
                                  coords_attrs={"unit": ("hidden unit", "1")})},
                 config={"steps": 20}, coords_attrs={"a": ("gain", "1"), "b": ("scale", "1")},
                 seed=5, chunk_size=chunk_size)
