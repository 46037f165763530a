"""The edge of chaos of random recurrent networks: simulation against mean-field theory.

The network is ``h_t = tanh(W h_(t-1) + x_t)`` with ``W_ij ~ N(0, g^2/N)`` and white
input ``x_t ~ N(0, sigma_x^2)``, independent over units and steps. For every point
(sigma_x, gain, seed) of the grid it measures the largest Lyapunov exponent (one tangent
vector renormalised every step after a burn-in), the log-slope of the BPTT gradient
norm against the lag (a loss on the last step, the adjoint followed back over the
measured steps), and the spectral radius of W; it adds the mean-field lambda_max =
ln(chi_1)/2 and the critical gains, simulated (where the seed-mean lambda_max crosses 0)
and predicted (chi_1 = 1). Input suppresses chaos: the critical gain grows with sigma_x.

Seed s fixes the matrix W_0 ~ N(0, 1/N) and the noise xi_t ~ N(0, 1) of every point with
that seed (W = g W_0, x_t = sigma_x xi_t: common random numbers, so each seed's curves
against g are smooth); the initial state and tangent come from the point's own
SeedSequence, so a point's result does not depend on the chunk it ran in. ``--cell
lstm|gru`` runs the gated cells the same way (W_hh ~ N(0, g^2/H)
per gate, the white input added to every gate's pre-activation); they have no mean
field, and their spectral radius is that of the candidate block (LSTM g, GRU n).

    python -m studies.edge_of_chaos --gains 0.5:3.0:26 --sigma-x 0,0.5,1 --units 1000 \\
        --seeds 4 --steps 3000 --burn-in 1000 --out DIR [--workers 2 | --scheduler ADDR] \\
        [--backend cuda]

writes ``DIR/edge_of_chaos.nc`` and ``DIR/edge_of_chaos.png`` (and the resumable store
``DIR/edge_of_chaos.zarr``) and prints a summary. With ``--backend cuda`` the networks
run on an NVIDIA GPU (one per dask worker); the gradient is then followed on a
trajectory of its own (the GPU's Lyapunov walk keeps no tape), with the same result.
"""
import functools
import time

import numpy as np

import analysis
import dynamics
from analysis import meanfield
from analysis._common import attrs
from analysis.sweep import Output, Sweep
from studies._common import chosen_sizes, parse_grid, run_main, save, study_parser

NAME = "edge_of_chaos"
CELLS = {"rnn_tanh": ("tanh", 1), "rnn_relu": ("relu", 1), "lstm": (None, 4), "gru": (None, 3)}
CANDIDATE_BLOCK = {"rnn_tanh": 0, "rnn_relu": 0, "lstm": 2, "gru": 2}
QUICK = dict(gains=parse_grid("0.5:3.0:11"), sigma_x=parse_grid("0,1"), units=200, seeds=2,
             steps=1000, burn_in=300)
FULL = dict(gains=parse_grid("0.5:3.0:26"), sigma_x=parse_grid("0,0.5,1"), units=1000, seeds=4,
            steps=3000, burn_in=1000)


@functools.lru_cache(maxsize=16)
def base_weights(cell, units, seed, base_seed):
    """W_0 (G*H, H) ~ N(0, 1/H) of seed ``seed``: shared by every gain and sigma_x (drawn
    once per seed and process; read-only)."""
    gates = CELLS[cell][1]
    rng = np.random.default_rng(np.random.SeedSequence([base_seed, int(seed)]))
    weights = rng.normal(0.0, 1.0 / np.sqrt(units), (gates * units, units))
    weights.flags.writeable = False
    return weights


@functools.lru_cache(maxsize=16)
def base_noise(cell, units, n_steps, seed, base_seed):
    """The white noise xi_t ~ N(0, 1) (n_steps, 1, G*H) of seed ``seed``: every point with
    that seed is driven by sigma_x * xi_t (common random numbers across gains and input
    strengths, as W_0 is), so each seed's curves are smooth; computed once per seed (and
    process: up to 16 seeds are kept, T * G*H * 8 bytes each)."""
    gates = CELLS[cell][1]
    rng = np.random.default_rng(np.random.SeedSequence([base_seed, int(seed), 1]))
    noise = rng.normal(0.0, 1.0, (n_steps, 1, gates * units))
    noise.flags.writeable = False
    return noise


@functools.lru_cache(maxsize=None)
def base_spectral_radius(cell, units, seed, base_seed):
    """rho(W_0) of seed ``seed`` (candidate block for gated cells): W = g W_0 has g times
    it, so it is computed once per seed and process."""
    block = CANDIDATE_BLOCK[cell]
    w = base_weights(cell, units, seed, base_seed)[block * units:(block + 1) * units]
    return np.abs(np.linalg.eigvals(w)).max()


def network(cell, weights_hh, dtype):
    """An ensemble of ``cell`` with these W_hh (E, G*H, H), no biases, W_ih unused."""
    E, rows, units = weights_hh.shape
    parameters = dict(weight_ih=np.zeros((E, rows, 1), dtype), weight_hh=weights_hh.astype(dtype))
    if cell.startswith("rnn_"):
        return dynamics.RNN(**parameters, nonlinearity=CELLS[cell][0])
    return (dynamics.LSTM if cell == "lstm" else dynamics.GRU)(**parameters)


def simulate(points, seeds, *, cell, units, steps, burn_in, dtype, base_seed, backend="cpu"):
    """One chunk of grid points, run as one ensemble on ``backend``: lambda_max, gradient
    decay rate and spectral radius per point."""
    gains, sigmas = points["gain"], points["sigma_x"]
    W0 = np.stack([base_weights(cell, units, int(s), base_seed) for s in points["seed"]])
    rnn = network(cell, gains[:, None, None] * W0, dtype)
    T = burn_in + steps
    noise = np.stack([base_noise(cell, units, T, int(s), base_seed) for s in points["seed"]],
                     axis=1)
    drive = (noise * sigmas[None, :, None, None]).astype(dtype)
    rngs = [np.random.default_rng(seed) for seed in seeds]
    h0 = np.stack([rng.normal(0.0, 1.0, (1, units)) for rng in rngs])[None].astype(dtype)
    state = (h0, np.zeros_like(h0)) if cell == "lstm" else h0
    with np.errstate(over="ignore", invalid="ignore"):  # diverged runs are flagged
        lyapunov = analysis.lyapunov_spectrum(
            rnn, drive=drive, n_exponents=1, burn_in=burn_in, h0=state, seed=list(seeds),
            dtype=dtype, gradient_lags=steps if backend == "cpu" else None, backend=backend)
        if backend == "cpu":
            decay = lyapunov.gradient_decay_rate
        else:  # the same adjoint, on a trajectory of its own (the GPU walk keeps no tape)
            decay = analysis.gradient_norm_vs_lag(
                rnn, drive=drive, max_lag=steps, h0=state, dtype=dtype, products=False,
                backend=backend).decay_rate.sel(norm="adjoint")
    radius = [base_spectral_radius(cell, units, int(s), base_seed) for s in points["seed"]]
    return {"lyapunov_max": lyapunov.lyapunov_max.values[:, 0],
            "grad_decay_rate": decay.values[:, 0],
            "spectral_radius": gains * np.array(radius),
            "diverged": lyapunov.diverged.values[:, 0]}


OUTPUTS = {
    "lyapunov_max": Output("largest Lyapunov exponent", "nats/step"),
    "grad_decay_rate": Output("log-slope of the BPTT gradient norm against lag", "1/step"),
    "spectral_radius": Output("spectral radius of W_hh (candidate block for gated cells)", "1"),
    "diverged": Output("trajectory stopped being finite", "1", dtype="bool"),
}


def zero_crossing(gains, values):
    """The first gain where ``values`` turns from negative to non-negative (linear
    interpolation), nan if it never does."""
    for i in range(1, len(gains)):
        a, b = values[i - 1], values[i]
        if a < 0 <= b:
            return gains[i - 1] + (gains[i] - gains[i - 1]) * (-a) / (b - a)
    return np.nan


def build_sweep(gains, sigma_x, units, seeds, steps, burn_in, cell="rnn_tanh",
                dtype="float64", seed=0, chunk_size=4, backend="cpu"):
    """The study's Sweep; ``backend`` ("cpu" or "cuda") runs the networks there."""
    config = dict(cell=cell, units=units, steps=steps, burn_in=burn_in, dtype=dtype)
    compute = functools.partial(simulate, base_seed=seed, backend=backend, **config)
    return Sweep(NAME, {"sigma_x": sigma_x, "gain": gains, "seed": np.arange(seeds)}, compute,
                 OUTPUTS, config=config, seed=seed, chunk_size=chunk_size, backend=backend,
                 coords_attrs={"sigma_x": ("input standard deviation per unit", "1"),
                               "gain": ("recurrent gain g, W_ij ~ N(0, g^2/N)", "1"),
                               "seed": ("network seed (W_0)", "1")})


def finish(swept, cell):
    """Add the mean-field curves and the critical gains to the sweep's dataset."""
    ds = swept.copy()
    radius = ds.spectral_radius.isel(sigma_x=0).drop_vars("sigma_x")
    ds["spectral_radius"] = radius.assign_attrs(swept.spectral_radius.attrs)
    nonlinearity = CELLS[cell][0]
    gains, sigmas = ds.gain.values, ds.sigma_x.values
    if nonlinearity is not None:
        mf = meanfield.lyapunov_max(gains[None, :], sigma_x=sigmas[:, None],
                                    nonlinearity=nonlinearity)
        critical_mf = np.atleast_1d(meanfield.critical_gain(sigmas, nonlinearity=nonlinearity))
    else:
        mf = np.full((sigmas.size, gains.size), np.nan)
        critical_mf = np.full(sigmas.size, np.nan)
    ds["lyapunov_max_meanfield"] = (("sigma_x", "gain"), np.asarray(mf, float),
                                    attrs("mean-field largest Lyapunov exponent", "nats/step"))
    mean = ds.lyapunov_max.mean("seed").values
    ds["critical_gain"] = ("sigma_x", [zero_crossing(gains, row) for row in mean],
                           attrs("gain where the seed-mean lambda_max crosses 0", "1"))
    ds["critical_gain_meanfield"] = ("sigma_x", critical_mf,
                                     attrs("mean-field critical gain (chi_1 = 1)", "1"))
    ds.attrs["cell"] = cell
    return ds


def figure(ds):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    for i, sigma in enumerate(ds.sigma_x.values):
        colour = f"C{i}"
        simulated = ds.lyapunov_max.sel(sigma_x=sigma)
        top.errorbar(ds.gain, simulated.mean("seed"), simulated.std("seed"), color=colour,
                     marker="o", ms=3, ls="none", label=f"simulated, sigma_x = {sigma:g}")
        top.plot(ds.gain, ds.lyapunov_max_meanfield.sel(sigma_x=sigma), color=colour,
                 label=f"mean field, sigma_x = {sigma:g}")
        decay = ds.grad_decay_rate.sel(sigma_x=sigma)
        bottom.errorbar(ds.gain, decay.mean("seed"), decay.std("seed"), color=colour, marker="o",
                        ms=3, label=f"sigma_x = {sigma:g}")
    for axis in (top, bottom):
        axis.axhline(0.0, color="grey", lw=0.8)
    top.set_ylabel("lambda_max (nats/step)")
    top.set_title(f"{ds.attrs['cell']}, N = {ds.attrs.get('units', '')}")
    top.legend(fontsize=7)
    bottom.set_ylabel("gradient log-slope (1/step)")
    bottom.set_xlabel("gain g")
    bottom.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None):
    parser = study_parser(__doc__.split("\n")[0], NAME)
    parser.add_argument("--gains", type=parse_grid, help="comma list or start:stop:num")
    parser.add_argument("--sigma-x", type=parse_grid, help="comma list or start:stop:num")
    parser.add_argument("--units", type=int)
    parser.add_argument("--seeds", type=int, help="number of network seeds")
    parser.add_argument("--steps", type=int, help="measured steps after the burn-in")
    parser.add_argument("--burn-in", type=int)
    parser.add_argument("--cell", choices=tuple(CELLS), default="rnn_tanh")
    parser.add_argument("--chunk-size", type=int, default=4, help="grid points per ensemble")
    parser.add_argument("--workers", type=int, help="run on a dask LocalCluster of N workers")
    parser.add_argument("--scheduler", help="run on a dask cluster, e.g. tcp://host:8786")
    parser.add_argument("--store", help="zarr store of the sweep (default DIR/edge_of_chaos.zarr)")
    args = parser.parse_args(argv)
    sizes = chosen_sizes(args, QUICK, FULL)
    for key in ("units", "seeds", "steps"):
        if sizes[key] < 1:
            parser.error(f"--{key} must be at least 1, got {sizes[key]}")
    if sizes["burn_in"] < 0:
        parser.error(f"--burn-in must be at least 0, got {sizes['burn_in']}")
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.store or str(args.out / f"{NAME}.zarr")
    try:  # a bad chunk size, or a store of another configuration: refused up front
        sweep = build_sweep(**sizes, cell=args.cell, dtype=args.dtype, seed=args.seed,
                            chunk_size=args.chunk_size, backend=args.backend)
        sweep.open_store(store)
    except ValueError as error:
        parser.error(str(error))
    swept = sweep.run(store=store, workers=args.workers, scheduler=args.scheduler)
    ds = finish(swept, args.cell)
    ds.attrs["units"] = sizes["units"]
    netcdf, png = save(ds, figure(ds), args.out, NAME)
    elapsed = time.perf_counter() - start
    print(summary(ds))
    print(f"wrote {netcdf} and {png} ({sweep.n_points} points in {elapsed:.1f} s)")
    return ds


def summary(ds):
    lines = [f"{'sigma_x':>8} {'g_c simulated':>14} {'g_c mean field':>15}   "
             "lambda_max (seed mean) at g = " + ", ".join(f"{g:g}" for g in ds.gain.values[::5])]
    for sigma in ds.sigma_x.values:
        row = ds.sel(sigma_x=sigma)
        lam = row.lyapunov_max.mean("seed").values[::5]
        lines.append(f"{sigma:8.2f} {float(row.critical_gain):14.3f} "
                     f"{float(row.critical_gain_meanfield):15.3f}   "
                     + ", ".join(f"{v:+.3f}" for v in lam))
    return "\n".join(lines)


if __name__ == "__main__":
    run_main("studies.edge_of_chaos")
