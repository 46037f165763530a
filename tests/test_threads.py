"""Results do not depend on numba's thread count: forward outputs, every BPTT gradient
and the analysis kernels' results are bitwise identical under ``NUMBA_NUM_THREADS=1``
and ``=2``.

Each thread count runs in its own subprocess (numba reads the variable at start-up).
"""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
import numpy as np
import numba
import dynamics

CELLS = {"rnn_tanh": dynamics.RNN, "rnn_relu": dynamics.RNN, "lstm": dynamics.LSTM,
         "gru": dynamics.GRU}
E, B, T, D, H = 7, 5, 12, 3, 6
results = {}
for kind in CELLS:
    options = {"nonlinearity": kind[4:]} if kind.startswith("rnn_") else {}
    for dtype in ("float32", "float64"):
        rng = np.random.default_rng(len(results))
        for ensemble in (None, E):
            # two layers, bidirectional: every kernel path (forward, reverse, stacked)
            net = dynamics.Network([[CELLS[kind].init(D if l == 0 else 2 * H, H,
                                                      ensemble=ensemble, seed=10 * l + d,
                                                      init="gaussian", gain=1.5,
                                                      dtype=dtype, **options)
                                     for d in range(2)] for l in range(2)])
            xs = {"shared": rng.normal(size=(T, B, D)).astype(dtype)}
            if ensemble:
                xs["own"] = rng.normal(size=(T, E, B, D)).astype(dtype)
            lead = (E,) if ensemble else ()
            h0 = rng.normal(size=(4,) + lead + (B, H)).astype(dtype)
            state = (h0, rng.normal(size=h0.shape).astype(dtype)) if kind == "lstm" else h0
            for name, x in xs.items():
                key = f"{kind}-{dtype}-{'ens' if ensemble else 'single'}-{name}"
                r = dynamics.forward(net, x, h0=state)
                results[key + "-output"] = r.output
                results[key + "-h_n"] = r.h_n
                if r.c_n is not None:
                    results[key + "-c_n"] = r.c_n
                grad_output = rng.normal(size=r.output.shape).astype(dtype)
                for truncation in (None, 5):
                    g = dynamics.bptt(net, x, grad_output, h0=state, truncation=truncation)
                    for gname, value in g.items():
                        results[f"{key}-k{truncation}-grad-{gname}"] = value
import analysis  # linearised kernels; H = 150 is split into blocks by the Lyapunov kernel
for kind in CELLS:
    options = {"nonlinearity": kind[4:]} if kind.startswith("rnn_") else {}
    cell = CELLS[kind].init(3, 150, ensemble=2, seed=1, init="gaussian", gain=1.5, **options)
    x = np.random.default_rng(0).normal(size=(30, 2, 3))
    for k in (1, 5):  # one tangent: one block per thread; several: blocks from H alone
        ly = analysis.lyapunov_spectrum(cell, x, n_exponents=k, interval=3, burn_in=5)
        results[f"{kind}-float64-lyapunov-{k}"] = ly.running_estimate.values
    # all exponents: by interval products, 4 items (2 x 2) and 10 (2 x 5, in groups)
    ly = analysis.lyapunov_spectrum(cell, x, interval=3, burn_in=5)
    results[f"{kind}-float64-lyapunov-all"] = ly.running_estimate.values
    ly = analysis.lyapunov_spectrum(cell, steps=12, batch=5, interval=4, seed=3)
    results[f"{kind}-float64-lyapunov-all-groups"] = ly.running_estimate.values
    g = analysis.gradient_norm_vs_lag(cell, x[:8], spectral=False)
    results[f"{kind}-float64-gradient-norm"] = g.log_gradient_norm.values[1:]
    results[f"{kind}-float64-jacobians"] = analysis.state_jacobians(cell, x[:2]).values
    # one sequence: its tangents go in blocks of columns, one per thread
    single = CELLS[kind].init(3, 150, seed=2, init="gaussian", gain=1.5, **options)
    product = analysis.jacobian_product(single, x[:6, :1], t=5, k=0)
    results[f"{kind}-float64-jacobian-product"] = product.values
np.savez(sys.argv[1], **results)
print(json.dumps({"threads": numba.get_num_threads(), "count": len(results)}))
"""


def run_with_threads(threads, path):
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(path)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"NUMBA_NUM_THREADS={threads} run failed:\n{proc.stderr}"
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["threads"] == threads, info
    return info


def test_results_bitwise_identical_for_1_and_2_threads(tmp_path):
    paths = {n: tmp_path / f"threads{n}.npz" for n in (1, 2)}
    infos = {n: run_with_threads(n, path) for n, path in paths.items()}
    with np.load(paths[1]) as one, np.load(paths[2]) as two:
        assert sorted(one.files) == sorted(two.files)
        assert len(one.files) == infos[1]["count"] > 0
        kinds = {name.split("-")[0] for name in one.files}
        assert kinds == {"rnn_tanh", "rnn_relu", "lstm", "gru"}
        differing = []
        for name in one.files:
            a, b = one[name], two[name]
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert a.dtype == (np.float32 if "float32" in name else np.float64), name
            assert np.all(np.isfinite(a) | np.isneginf(a)), name  # (-inf: a dead ReLU unit)
            if not np.array_equal(a, b):
                differing.append(f"{name}: max abs diff {np.max(np.abs(a - b)):.3g}")
        assert not differing, "results depend on NUMBA_NUM_THREADS:\n" + "\n".join(differing)
        # ensemble outputs are (T, E, B, 2H) and the batch is 5, as built
        assert one["gru-float64-ens-own-output"].shape == (12, 7, 5, 12)
        assert one["lstm-float32-single-shared-output"].shape == (12, 5, 12)
