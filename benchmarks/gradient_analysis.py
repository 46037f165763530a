"""Analysis benchmark: Lyapunov exponents and gradient norms against lag, ours against
plain NumPy and torch loops doing the same work, in one run, taking turns
(``common.measure_interleaved``).

Run from the repository root::

    PYTHONPATH=. python benchmarks/gradient_analysis.py            # full sizes (~3 min on 2 cores)
    PYTHONPATH=. python benchmarks/gradient_analysis.py --quick    # small sizes, smoke test

Workloads (tanh RNN, W ~ N(0, g^2/N), g = 1.5 (chaotic), autonomous, float64):

lmax      N = 500: largest exponent, 500 burn-in + 5,000 steps, renormalised every step.
          Ours: ``analysis.lyapunov_spectrum(n_exponents=1)``. Peers: the state and one
          tangent, W @ h and W @ q per step (NumPy: also as one W @ [h q] product).
spectrum  N = 200: all 200 exponents over 2,000 steps, QR every 10 steps. Peers: W @ Q
          and a QR every 10 steps (``np.linalg.qr`` / ``torch.linalg.qr``).
gradnorm  N = 256: ||d s_T / d s_(T-l)|| for l = 0..1000 over a 1,000-step trajectory,
          Frobenius norm and the adjoint norm (``spectral=False``), products carried in
          log space. Peers: the forward loop, then P <- P diag(1 - h^2) W per lag.

FLOPs count matrix products only: lmax 2 x 2N^2 per step; spectrum 2N^2 + 2N^3 per
step + (8/3) N^3 per QR (Householder R and Q); gradnorm 2N^2 per forward step + 2N^3
per lag. GFLOP/s are compared with numpy's GEMM rate measured at the start of the run.
"""
import time

import numpy as np

import analysis
import dynamics
from benchmarks import common

try:
    import torch
except ImportError:  # the torch peer is then left out
    torch = None

FULL = dict(lmax=(500, 500, 5000), spectrum=(200, 2000, 10), gradnorm=(256, 1000, 1000),
            repeats=5)
QUICK = dict(lmax=(64, 50, 300), spectrum=(32, 200, 10), gradnorm=(32, 100, 100), repeats=2)
GAIN = 1.5


def network(N, seed=0):
    rnn = dynamics.RNN.init(1, N, init="gaussian", gain=GAIN, seed=seed, bias=False)
    h0 = np.random.default_rng(seed).normal(size=N)
    return rnn, rnn.weight_hh, h0


# -- largest exponent ---------------------------------------------------------------------

def ours_lmax(rnn, h0, burn_in, steps):
    ly = analysis.lyapunov_spectrum(rnn, steps=burn_in + steps, burn_in=burn_in,
                                    n_exponents=1, h0=h0[None, None])
    return float(ly.lyapunov_max[0])


def numpy_lmax(W, h0, burn_in, steps, fused):
    h, q = h0.copy(), np.ones(W.shape[0]) / np.sqrt(W.shape[0])
    total = 0.0
    for t in range(burn_in + steps):
        if fused:
            a = W @ np.stack([h, q], axis=1)
            h = np.tanh(a[:, 0])
            q = (1 - h * h) * a[:, 1]
        else:
            h = np.tanh(W @ h)
            q = (1 - h * h) * (W @ q)
        norm = np.linalg.norm(q)
        q /= norm
        if t >= burn_in:
            total += np.log(norm)
    return total / steps


def torch_lmax(W, h0, burn_in, steps):
    W, h = torch.from_numpy(W), torch.from_numpy(h0.copy())
    q = torch.ones(W.shape[0], dtype=W.dtype) / np.sqrt(W.shape[0])
    total = 0.0
    with torch.no_grad():
        for t in range(burn_in + steps):
            h = torch.tanh(W @ h)
            q = (1 - h * h) * (W @ q)
            norm = torch.linalg.vector_norm(q)
            q /= norm
            if t >= burn_in:
                total += float(torch.log(norm))
    return total / steps


# -- full spectrum ------------------------------------------------------------------------

def ours_spectrum(rnn, h0, steps, interval):
    ly = analysis.lyapunov_spectrum(rnn, steps=steps, interval=interval, h0=h0[None, None])
    return ly.lyapunov_exponents.values[0]


def numpy_spectrum(W, h0, steps, interval):
    N = W.shape[0]
    h, q = h0.copy(), np.eye(N)
    logs = np.zeros(N)
    for t in range(steps):
        h = np.tanh(W @ h)
        q = (1 - h * h)[:, None] * (W @ q)
        if (t + 1) % interval == 0:
            q, r = np.linalg.qr(q)
            logs += np.log(np.abs(np.diag(r)))
    return logs / (steps // interval * interval)


def torch_spectrum(W, h0, steps, interval):
    W, h = torch.from_numpy(W), torch.from_numpy(h0.copy())
    q = torch.eye(W.shape[0], dtype=W.dtype)
    logs = torch.zeros(W.shape[0], dtype=W.dtype)
    with torch.no_grad():
        for t in range(steps):
            h = torch.tanh(W @ h)
            q = (1 - h * h)[:, None] * (W @ q)
            if (t + 1) % interval == 0:
                q, r = torch.linalg.qr(q)
                logs += torch.log(torch.abs(torch.diagonal(r)))
    return (logs / (steps // interval * interval)).numpy()


# -- gradient norm against lag --------------------------------------------------------------

def ours_gradnorm(rnn, h0, steps, lags):
    x = np.zeros((steps, 1, 1))
    g = analysis.gradient_norm_vs_lag(rnn, x, max_lag=lags, h0=h0[None, None], spectral=False)
    return g.log_gradient_norm.sel(norm="frobenius").values[0]


def _trajectory(W, h0, steps, xp):
    hs = []
    h = h0
    for _ in range(steps):
        h = xp.tanh(W @ h)
        hs.append(h)
    return hs


def numpy_gradnorm(W, h0, steps, lags):
    hs = _trajectory(W, h0.copy(), steps, np)
    N = W.shape[0]
    p, v, scale = np.eye(N), np.full(N, 1 / np.sqrt(N)), 0.0
    log_fro, log_adjoint = np.empty(lags + 1), np.empty(lags + 1)
    for lag in range(lags + 1):
        if lag:
            slope = 1 - hs[steps - lag] ** 2
            p = (p * slope) @ W
        norm = np.linalg.norm(p)
        p /= norm
        scale += np.log(norm)
        log_fro[lag] = scale
        log_adjoint[lag] = scale + np.log(np.linalg.norm(v @ p))
    return log_fro


def torch_gradnorm(W, h0, steps, lags):
    W = torch.from_numpy(W)
    with torch.no_grad():
        hs = _trajectory(W, torch.from_numpy(h0.copy()), steps, torch)
        N = W.shape[0]
        p, v, scale = torch.eye(N, dtype=W.dtype), torch.full((N,), 1 / np.sqrt(N), dtype=W.dtype), 0.0
        log_fro = np.empty(lags + 1)
        for lag in range(lags + 1):
            if lag:
                p = (p * (1 - hs[steps - lag] ** 2)) @ W
            norm = torch.linalg.matrix_norm(p)
            p /= norm
            scale += float(torch.log(norm))
            log_fro[lag] = scale
            float(torch.linalg.vector_norm(v @ p))  # the adjoint norm, as ours computes
    return log_fro


# -- the run --------------------------------------------------------------------------------

def run(name, flops, implementations, repeats, check):
    """Time each implementation; return table rows (ratio = best peer / ours)."""
    # a first call each: the warm-up (compilation for ours) and the value to check
    results = {label: fn() for label, fn in implementations.items()}
    check(results)
    timings = common.measure_interleaved(implementations, repeats=repeats, warmup=0,
                                         max_seconds=30)
    peers = [t.median for label, t in timings.items() if label != "ours"]
    best = min(peers)
    rows = []
    for label, t in timings.items():
        rows.append([name, label, t.median * 1e3, t.spread, common.gflops(flops, t.median),
                     best / timings["ours"].median if label == "ours" else
                     t.median / timings["ours"].median])
    return rows


def close(tolerance, below_top=-np.inf):
    """A check that every result is within ``tolerance`` of ours, where ours is above its
    largest value + ``below_top``."""
    def check(results):
        ours = np.asarray(results["ours"])
        compared = ours > ours.max() + below_top
        for label, value in results.items():
            gap = np.max(np.abs(np.asarray(value) - ours)[compared])
            assert gap < tolerance, f"{label} differs from ours by {gap} (> {tolerance})"
    return check


def main(argv=None):
    config = common.begin("benchmarks/gradient_analysis.py", __doc__, FULL, QUICK, argv, torch)
    gemm = common.gemm_rate(np.float64, n=512 if config is QUICK else 2048)
    bandwidth = common.copy_bandwidth()
    print(f"numpy GEMM float64: {gemm:.0f} GFLOP/s; copy bandwidth: {bandwidth:.1f} GB/s\n")
    rows, repeats = [], config["repeats"]

    N, burn_in, steps = config["lmax"]
    rnn, W, h0 = network(N)
    impls = {"ours": lambda: ours_lmax(rnn, h0, burn_in, steps),
             "numpy": lambda: numpy_lmax(W, h0, burn_in, steps, fused=False),
             "numpy fused": lambda: numpy_lmax(W, h0, burn_in, steps, fused=True)}
    if torch is not None:
        impls["torch"] = lambda: torch_lmax(W, h0, burn_in, steps)
    # chaotic: rounding differences separate the trajectories; the estimates agree
    # to their statistical error
    rows += run(f"lmax N={N}", 4 * N * N * (burn_in + steps), impls, repeats, close(0.03))

    N, steps, interval = config["spectrum"]
    rnn, W, h0 = network(N, seed=1)
    flops = steps * (2 * N * N + 2 * N ** 3) + steps // interval * 8 * N ** 3 / 3
    impls = {"ours": lambda: ours_spectrum(rnn, h0, steps, interval),
             "numpy": lambda: numpy_spectrum(W, h0, steps, interval)}
    if torch is not None:
        impls["torch"] = lambda: torch_spectrum(W, h0, steps, interval)
    # an interval's product has condition number ~ exp(interval * (lmax - l)): where that
    # passes 1 / sqrt(eps), rounding between two QRs blurs the exponent l (for every
    # method, each its own way), so compare the exponents above that
    resolved = np.log(np.finfo(np.float64).eps) / (2 * interval)
    rows += run(f"spectrum N={N}", flops, impls, repeats, close(0.05, below_top=resolved))

    N, steps, lags = config["gradnorm"]
    rnn, W, h0 = network(N, seed=2)
    flops = steps * 2 * N * N + lags * 2 * N ** 3
    impls = {"ours": lambda: ours_gradnorm(rnn, h0, steps, lags),
             "numpy": lambda: numpy_gradnorm(W, h0, steps, lags)}
    if torch is not None:
        impls["torch"] = lambda: torch_gradnorm(W, h0, steps, lags)

    def slopes_agree(results):  # chaotic forward pass: compare the log-slopes
        fits = {k: np.polyfit(np.arange(lags // 2, lags + 1), v[lags // 2:], 1)[0]
                for k, v in results.items()}
        assert max(fits.values()) - min(fits.values()) < 0.05, fits
    rows += run(f"gradnorm N={N}", flops, impls, repeats, slopes_agree)

    for row in rows:
        row.insert(5, 100 * row[4] / gemm)
    common.print_table(["workload", "impl", "median ms", "spread", "GFLOP/s", "% GEMM",
                        "ratio"], rows,
                       title="ratio: for ours, best peer time / ours (> 1: ours faster); "
                             "for a peer, its time / ours")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
