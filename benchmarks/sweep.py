"""Sweep benchmark: the edge-of-chaos sweep against NumPy and torch.bmm implementations of
the same sweep, the engine's scaling on a dask LocalCluster, and its overhead.

Run from the repository root::

    PYTHONPATH=. python benchmarks/sweep.py            # about 3 minutes on 2 cores
    PYTHONPATH=. python benchmarks/sweep.py --quick    # smoke test

1. throughput: tanh networks of N units, a grid of gains x sigma_x x seeds, burn-in +
   measured steps, per point lambda_max (one tangent, renormalised every step) and the
   gradient's log-slope (the adjoint of a last-step loss over the measured steps).
   Ours: ``studies.edge_of_chaos``'s sweep, in-process, points in chunks run as
   ensembles. Peers: the same per chunk with stacked arrays, ``np.matmul`` and
   ``torch.bmm`` (forward with the tangent, then the stored trajectory backward).
   Reported as grid points x steps per second.
2. scaling: the same sweep on a LocalCluster of 1 worker process with 1 numba thread,
   1 with 2 threads, and 2 workers with 1 thread each (the engine's default on 2 cores).
3. overhead: points that take 1 s (a sleep), in-process and on 2 workers (clusters
   started beforehand): wall time against the ideal.
"""
import functools
import tempfile
import time

import numpy as np

from distributed import Client

from analysis.sweep import Output, Sweep, local_cluster
from benchmarks import common
from studies import edge_of_chaos

try:
    import torch
except ImportError:
    torch = None

FULL = dict(units=200, gains=np.linspace(0.5, 3.0, 6), sigma_x=np.array([0.0, 1.0]), seeds=8,
            steps=1000, burn_in=300, chunk_size=8, sleepers=8, repeats=3)
QUICK = dict(units=32, gains=np.linspace(0.5, 3.0, 3), sigma_x=np.array([0.0, 1.0]), seeds=1,
             steps=100, burn_in=20, chunk_size=3, sleepers=2, repeats=2)


def peer_chunk(points, seeds, *, units, steps, burn_in, base_seed, xp):
    """The same chunk with stacked arrays: ``xp`` is numpy or torch (bmm)."""
    gains, sigmas = points["gain"], points["sigma_x"]
    W0 = np.stack([edge_of_chaos.base_weights("rnn_tanh", units, int(s), base_seed)
                   for s in points["seed"]])
    W = gains[:, None, None] * W0
    T, E = burn_in + steps, len(seeds)
    rngs = [np.random.default_rng(seed) for seed in seeds]
    noise = np.stack([edge_of_chaos.base_noise("rnn_tanh", units, T, int(s), base_seed)
                      for s in points["seed"]], axis=1)[:, :, 0]
    drive = noise * sigmas[None, :, None]
    h = np.stack([rng.normal(0.0, 1.0, (1, units)) for rng in rngs])[:, 0]
    q = np.ones((E, units)) / np.sqrt(units)
    matmul = np.matmul if xp is np else lambda a, b: torch.bmm(a, b)
    if xp is torch:
        W, drive, h, q = (torch.from_numpy(np.ascontiguousarray(a)) for a in (W, drive, h, q))
    hs, total = [], 0.0
    for t in range(T):
        hq = xp.stack([h, q], axis=2) if xp is np else torch.stack([h, q], dim=2)
        a = matmul(W, hq)
        h = xp.tanh(a[:, :, 0] + drive[t])
        q = (1 - h * h) * a[:, :, 1]
        norm = (q * q).sum(1) ** 0.5
        q = q / norm[:, None]
        if t >= burn_in:
            total = total + xp.log(norm)
        hs.append(h)
    v = np.ones((E, 1, units)) / np.sqrt(units)
    if xp is torch:
        v = torch.from_numpy(v)
    logs = []
    scale = 0.0
    for lag in range(steps + 1):
        if lag:
            v = matmul(v * (1 - hs[T - lag] ** 2)[:, None, :], W)
        norm = (v * v).sum((1, 2)) ** 0.5
        v = v / norm[:, None, None]
        scale = scale + xp.log(norm)
        logs.append(scale)
    logs = np.stack([np.asarray(value) for value in logs], axis=1)
    lags = np.arange(steps + 1)
    half = lags >= steps // 2
    slope = np.polyfit(lags[half], logs[:, half].T, 1)[0]
    radius = [edge_of_chaos.base_spectral_radius("rnn_tanh", units, int(s), base_seed)
              for s in points["seed"]]
    return {"lyapunov_max": np.asarray(total) / steps, "grad_decay_rate": slope,
            "spectral_radius": gains * np.array(radius)}


def peer_sweep(config, xp):
    compute = functools.partial(peer_chunk, units=config["units"], steps=config["steps"],
                                burn_in=config["burn_in"], base_seed=0, xp=xp)
    return Sweep("peer", {"sigma_x": config["sigma_x"], "gain": config["gains"],
                          "seed": np.arange(config["seeds"])}, compute,
                 {k: Output(k, "1") for k in ("lyapunov_max", "grad_decay_rate", "spectral_radius")},
                 chunk_size=config["chunk_size"])


def ours_sweep(config):
    return edge_of_chaos.build_sweep(config["gains"], config["sigma_x"], config["units"],
                                     config["seeds"], config["steps"], config["burn_in"],
                                     chunk_size=config["chunk_size"])


def sleeper(points, seeds):
    time.sleep(1.0 * len(seeds))
    return {"value": np.zeros(len(seeds))}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main(argv=None):
    config = common.begin("benchmarks/sweep.py", __doc__, FULL, QUICK, argv, torch)
    ours = ours_sweep(config)
    work = ours.n_points * (config["burn_in"] + config["steps"])
    print(f"\n{ours.n_points} points of N = {config['units']}, {config['burn_in']} + "
          f"{config['steps']} steps, chunks of {config['chunk_size']}")
    rows, results, runs = [], {}, {"ours": lambda: ours.run(progress=False)}
    peers = {"numpy": np} | ({"torch.bmm": torch} if torch is not None else {})
    for label, xp in peers.items():
        runs[label] = (lambda xp: lambda: peer_sweep(config, xp).run(progress=False))(xp)
    for label, run in runs.items():  # the first call compiles and fills the per-seed caches
        results[label] = run()
        timing = common.measure(run, repeats=config["repeats"], warmup=0)
        rows.append([label if label != "ours" else "ours (in-process)", timing.median,
                     timing.spread, work / timing.median])
    # the same sweep, the same exponents up to their finite-time fluctuations (the initial
    # tangents differ)
    tolerance = 1 / np.sqrt(config["steps"])
    for label, result in results.items():
        gap = float(np.nanmax(np.abs(result.lyapunov_max.values
                                     - results["ours"].lyapunov_max.values)))
        assert gap < tolerance, f"{label} lambda_max differs from ours by {gap}"
    best = min(row[1] for row in rows[1:])
    for row in rows:
        row.append(best / row[1] if row[0].startswith("ours") else row[1] / rows[0][1])
    common.print_table(["implementation", "median s", "spread", "points x steps / s", "ratio"],
                       rows,
                       title="1. edge-of-chaos sweep throughput (ratio: for ours best peer / "
                             "ours, for a peer its time / ours)")

    rows = []
    sleepers = config["sleepers"]
    sleepy = Sweep("sleep", {"i": np.arange(sleepers)}, sleeper, {"value": Output("zero", "1")},
                   chunk_size=1)
    overhead = [["in-process", *sleep_run(sleepy, {}), sleepers]]
    for workers, threads in ((1, 1), (1, 2), (2, 1)):
        with local_cluster(workers) as cluster, Client(cluster) as client:
            ours.run(client=client, progress=False)  # workers load the compiled kernels
            timing = common.measure(lambda: ours.run(client=client, progress=False,
                                                     numba_threads=threads),
                                    repeats=config["repeats"], warmup=0)
            rows.append([f"{workers} worker(s) x {threads} numba thread(s)", timing.median,
                         timing.spread, work / timing.median])
            if workers == 2:
                overhead.append(["2 workers", *sleep_run(sleepy, {"client": client}),
                                 sleepers / 2])
    for row in rows:
        row.append(rows[0][1] / row[1])
    common.print_table(["run", "median s", "spread", "points x steps / s",
                        "speed-up vs 1 worker x 1 thread"], rows,
                       title="2. scaling on a LocalCluster (started beforehand)")
    for row in overhead:
        row.append(100 * (row[1] - row[2]) / row[1])
    common.print_table(["run", "seconds", "ideal", "overhead %"], overhead,
                       title=f"3. engine overhead: {sleepers} points of 1 s each, written to "
                             "a zarr store")


def sleep_run(sweep, options):
    with tempfile.TemporaryDirectory() as folder:
        seconds, _ = timed(lambda: sweep.run(store=f"{folder}/s.zarr", progress=False,
                                             **options))
    return [seconds]


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - start:.0f} s")
