"""Initialisation effects: how gradients flow at initialisation, and what then learns.

Nine ways to start a recurrent network of ``units`` hidden units (W_ih is torch's
default uniform everywhere):

==================  =========================================================
``tanh_g0.9``       tanh RNN, W_hh ~ N(0, g^2/H), g = 0.9, zero bias (also g = 1.0, 1.5)
``tanh_orthogonal`` tanh RNN, W_hh Haar-orthogonal, zero bias
``relu_gaussian``   ReLU RNN, W_hh ~ N(0, 0.001^2) (Le et al.'s small Gaussian), zero bias
``irnn``            ReLU RNN, W_hh = I, zero bias (IRNN, Le, Jaitly & Hinton 2015)
``lstm_fb0``        LSTM, torch's default uniform, forget-gate bias 0 (also ``lstm_fb1``: 1)
``gru``             GRU, torch's default uniform
==================  =========================================================

At initialisation, on adding-problem inputs of ``max(lengths)`` steps:
``grad_norm (init, lag)``, the BPTT adjoint norm ||dL/ds_(T-lag)|| for a loss on the last
state (``analysis.gradient_norm_vs_lag``, adjoint only), geometric mean over seeds and
batch; ``lyapunov_max (init, seed)``, the largest Lyapunov exponent along the same
inputs (``analysis.lyapunov_spectrum``, batch mean).

Then every network is trained on the adding problem at each length T (Adam, global-norm
clipping, a linear readout of the last state, MSE; the seeds of an init train as one
ensemble in one launch): ``loss (init, seq_len, seed, step)`` on each step's minibatch,
``final_mse (init, seq_len, seed)`` on a held-out batch, against the baseline 1/6 of
predicting the constant 1; ``diverged`` where training stopped on a non-finite value.

Randomness: network s of init i is drawn from ``SeedSequence(seed, spawn_key=(1, i, s))``
(the same networks are analysed and trained at every T); the minibatches of length T
from ``(2, T)`` and its held-out batch from ``(3, T)``, shared by every init (common
random numbers); the analysis inputs from ``(4,)``, the Lyapunov walk's initial states
and tangents from ``(6,)``; the readouts from ``(5,)``. The sweep engine runs the grid
(init x seq_len for training, init for the analysis), in-process or on dask, resumable
from its zarr stores.

    python -m studies.identity_init [--quick] [--out DIR] [--inits irnn,lstm_fb1]
        [--lengths 50,100,200] [--seeds 3] [--steps 2000] [--units 64] [--batch 32]
        [--lr 1e-3] [--clip 1.0] [--workers N | --scheduler ADDR] [--dtype float32]
        [--backend cuda]

writes ``DIR/identity_init.nc`` and ``DIR/identity_init.png`` and prints a table. With
``--backend cuda`` the networks (analysis, forward passes and BPTT) run on an NVIDIA GPU,
one per dask worker; readouts, losses and Adam stay on the CPU.
"""
import functools
import json
import time

import numpy as np
import xarray as xr

import analysis
import dynamics
from analysis._common import attrs
from analysis.sweep import Output, Sweep
from dynamics.clipping import check_clip
from dynamics.optim import Adam
from dynamics.tasks import ADDING_BASELINE_MSE, adding_problem, minibatches
from studies._common import chosen_sizes, parse_grid, run_main, save, study_parser

NAME = "identity_init"

#: label -> (cell kind, options of ``Cell.init``, description). ``gain`` None: Le et
#: al.'s small Gaussian, std 0.001 whatever H (gain 0.001 sqrt(H)).
INITS = {
    "tanh_g0.9": ("rnn_tanh", dict(init="gaussian", gain=0.9), "tanh, Gaussian g = 0.9"),
    "tanh_g1.0": ("rnn_tanh", dict(init="gaussian", gain=1.0), "tanh, Gaussian g = 1.0"),
    "tanh_g1.5": ("rnn_tanh", dict(init="gaussian", gain=1.5), "tanh, Gaussian g = 1.5"),
    "tanh_orthogonal": ("rnn_tanh", dict(init="orthogonal", gain=1.0), "tanh, orthogonal"),
    "relu_gaussian": ("rnn_relu", dict(init="gaussian", gain=None), "ReLU, Gaussian std 0.001"),
    "irnn": ("rnn_relu", dict(init="identity", gain=1.0), "IRNN (ReLU, identity)"),
    "lstm_fb0": ("lstm", dict(init="uniform", forget_bias=0.0), "LSTM, forget bias 0"),
    "lstm_fb1": ("lstm", dict(init="uniform", forget_bias=1.0), "LSTM, forget bias 1"),
    "gru": ("gru", dict(init="uniform"), "GRU"),
}
FULL = dict(lengths=(50, 100, 200), seeds=3, steps=2000, units=64, batch=32)
QUICK = dict(lengths=(50,), seeds=2, steps=500, units=32, batch=32)
ANALYSIS_BATCH = 8
TEST_BATCH = 1000


def network(init, units, seeds, base_seed, dtype):
    """The ``seeds`` networks of ``init`` as one ensemble (see the module docstring).

    >>> network("irnn", 4, 2, 0, "float64").weight_hh[1].tolist()[0]
    [1.0, 0.0, 0.0, 0.0]
    """
    kind, options, _ = INITS[init]
    options = dict(options)
    if options.get("gain", 1.0) is None:
        options["gain"] = 1e-3 * np.sqrt(units)
    cls = dynamics.network.CELL_CLASSES[kind]
    if kind.startswith("rnn_"):
        options["nonlinearity"] = kind[4:]
    index = list(INITS).index(init)
    return dynamics.Cell.stack(cls.init(2, units, dtype=dtype, seed=np.random.SeedSequence(
        base_seed, spawn_key=(1, index, s)), **options) for s in range(seeds))


def analyse_point(points, point_seeds, *, units, seeds, lags, dtype, base_seed, backend="cpu"):
    """Sweep computation at initialisation: grad_norm (lag) and lyapunov_max (seed)."""
    x, _ = adding_problem(lags, ANALYSIS_BATCH, np.random.SeedSequence(base_seed, spawn_key=(4,)),
                          dtype=dtype)
    grad, lyap = [], []
    for init in points["init"]:
        model = network(str(init), units, seeds, base_seed, dtype)
        norms = analysis.gradient_norm_vs_lag(model, x, max_lag=lags - 1, products=False,
                                              dtype=dtype, backend=backend)
        log_norm = norms.log_gradient_norm.sel(norm="adjoint")
        grad.append(np.exp(log_norm.mean(("member", "batch")).values))
        spectrum = analysis.lyapunov_spectrum(model, x, n_exponents=1, burn_in=lags // 5,
                                              seed=np.random.SeedSequence(base_seed,
                                                                          spawn_key=(6,)),
                                              dtype=dtype, backend=backend)
        lyap.append(spectrum.lyapunov_max.mean("batch").values)
    return {"grad_norm": np.array(grad), "lyapunov_max": np.array(lyap)}


def train_point(points, point_seeds, *, units, seeds, steps, batch, lr, clip, dtype, base_seed,
                backend="cpu"):
    """Sweep computation of one (init, seq_len) chunk: train the init's seeds as one
    ensemble; loss (seed, step), final_mse (seed), diverged (seed)."""
    results = {"loss": [], "final_mse": [], "diverged": []}
    for init, seq_len in zip(points["init"], points["seq_len"]):
        seq_len = int(seq_len)
        model = network(str(init), units, seeds, base_seed, dtype)
        data = minibatches(adding_problem, seed=np.random.SeedSequence(
            base_seed, spawn_key=(2, seq_len)), seq_len=seq_len, batch=batch, dtype=dtype)
        run = dynamics.train(model, data, steps=steps, readout=1, optimizer=Adam(lr), clip=clip,
                             seed=np.random.SeedSequence(base_seed, spawn_key=(5,)),
                             backend=backend)
        x, y = adding_problem(seq_len, TEST_BATCH, np.random.SeedSequence(
            base_seed, spawn_key=(3, seq_len)), dtype=dtype)
        final = dynamics.evaluate(run.model, run.readout, x, y, backend=backend)
        diverged = run.history.diverged.values
        results["loss"].append(run.history.loss.values)
        results["final_mse"].append(np.where(diverged, np.nan, final))
        results["diverged"].append(diverged)
    return {k: np.array(v) for k, v in results.items()}


def build_sweeps(inits, lengths, seeds, steps, units, batch, lr=1e-3, clip=1.0,
                 dtype="float64", seed=0, backend="cpu"):
    """(analysis sweep over init, training sweep over init x seq_len), run on ``backend``."""
    lags = int(max(lengths))
    sizes = dict(units=units, seeds=seeds, dtype=dtype)
    seed_coords = {"seed": np.arange(seeds)}
    seed_attrs = {"seed": ("network seed within an init", "1")}
    init_attrs = {"init": ("initialisation (see the description attr)", "1")}
    at_init = Sweep(
        f"{NAME}_analysis", {"init": list(inits)},
        functools.partial(analyse_point, lags=lags, base_seed=seed, backend=backend, **sizes),
        {"grad_norm": Output("BPTT adjoint norm ||dL/ds_(T-lag)|| at initialisation, loss on "
                             "the last state, geometric mean over seeds and batch", "1",
                             ("lag",), {"lag": np.arange(lags)},
                             {"lag": ("lag: steps back from the last state", "steps")}),
         "lyapunov_max": Output("largest Lyapunov exponent at initialisation, adding-problem "
                                "input, batch mean", "nats/step", ("seed",), seed_coords,
                                seed_attrs)},
        config=dict(lags=lags, **sizes), coords_attrs=init_attrs, seed=seed, chunk_size=1,
        backend=backend)
    training = dict(steps=steps, batch=batch, lr=lr, clip=clip, **sizes)
    trained = Sweep(
        f"{NAME}_training", {"init": list(inits), "seq_len": np.asarray(lengths, dtype=np.int64)},
        functools.partial(train_point, base_seed=seed, backend=backend, **training),
        {"loss": Output("training MSE on each step's minibatch (nan after divergence)", "1",
                        ("seed", "step"), {**seed_coords, "step": np.arange(steps)},
                        {**seed_attrs, "step": ("training step", "1")}),
         "final_mse": Output(f"test MSE after training, {TEST_BATCH} held-out sequences "
                             "(baseline 1/6)", "1", ("seed",), seed_coords, seed_attrs),
         "diverged": Output("training stopped on a non-finite loss, gradient or update", "1",
                            ("seed",), seed_coords, seed_attrs, dtype="bool")},
        config=training, coords_attrs={**init_attrs, "seq_len": (
            "sequence length T of the adding problem", "steps")}, seed=seed, chunk_size=1,
        backend=backend)
    return at_init, trained


def identity_init(inits=tuple(INITS), lengths=FULL["lengths"], seeds=3, steps=2000, units=64,
                  batch=32, lr=1e-3, clip=1.0, dtype="float64", seed=0, store=None,
                  progress=False, backend="cpu", **where):
    """Run both sweeps and merge them into one Dataset (see the module docstring).

    ``store``: a folder for the two resumable zarr stores (None: in memory); ``backend``:
    "cpu" or "cuda", where the networks run (recorded in the ``backend`` attr, not in the
    configuration: a store begun on one backend resumes on the other); ``where``:
    ``workers`` or ``scheduler`` of ``Sweep.run``.

    >>> ds = identity_init(["irnn", "gru"], lengths=[6], seeds=2, steps=3, units=4, batch=4)
    >>> ds.loss.dims, ds.grad_norm.dims, ds.lyapunov_max.dims
    (('init', 'seq_len', 'seed', 'step'), ('init', 'lag'), ('init', 'seed'))
    """
    inits = list(inits)
    unknown = [i for i in inits if i not in INITS]
    if unknown or not inits or len(set(inits)) != len(inits):
        raise ValueError(f"inits must be distinct names from {list(INITS)}, got {inits}")
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0 or np.any(lengths < 2) or np.any(
            lengths != np.round(lengths)):
        raise ValueError(f"lengths must be integers >= 2, got {lengths.tolist()}")
    lengths = lengths.astype(int).tolist()
    for name, value in (("seeds", seeds), ("steps", steps), ("units", units), ("batch", batch)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    Adam(lr)  # lr and clip are checked before any store is opened
    check_clip(clip)
    at_init, trained = build_sweeps(inits, lengths, seeds, steps, units, batch, lr, clip, dtype,
                                    seed, backend)
    paths = [None, None] if store is None else [f"{store}/{s.name}.zarr" for s in (at_init, trained)]
    ds = xr.merge([at_init.run(paths[0], progress=progress, **where),
                   trained.run(paths[1], progress=progress, **where)], combine_attrs="override")
    ds["baseline_mse"] = ((), ADDING_BASELINE_MSE, attrs(
        "MSE of predicting the constant 1 (the adding problem's mean target)", "1"))
    ds["init"].attrs["description"] = json.dumps({i: INITS[i][2] for i in inits})
    ds.attrs["config"] = json.dumps(dict(inits=inits, lengths=lengths, seeds=seeds,
                                         steps=steps, units=units, batch=batch, lr=lr,
                                         clip=clip, optimizer="Adam", dtype=str(dtype)))
    return ds


def figure(ds):
    """At initialisation: gradient norm against lag, lambda_max; after training: test MSE
    against T and the training loss at the longest T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.5))
    longest = ds.seq_len.values[-1]
    window = max(1, ds.step.size // 50)
    for i, init in enumerate(ds.init.values):
        style = dict(color=f"C{i % 10}", ls="-" if i < 10 else "--", label=str(init))
        axes[0].plot(ds.lag, ds.grad_norm.sel(init=init), **style)
        axes[2].plot(ds.seq_len, ds.final_mse.sel(init=init).median("seed"), marker="o", **style)
        loss = ds.loss.sel(init=init, seq_len=longest).median("seed")
        axes[3].plot(ds.step, loss.rolling(step=window, min_periods=1).mean(), **style)
    lyap = ds.lyapunov_max  # -inf where every unit of a ReLU network is silent: not drawn
    with np.errstate(invalid="ignore"):
        axes[1].errorbar(np.arange(ds.init.size), lyap.mean("seed"), lyap.std("seed"), fmt="o")
    axes[1].set_xticks(np.arange(ds.init.size), [str(i) for i in ds.init.values], rotation=60,
                       fontsize=7)
    axes[1].axhline(0.0, color="grey", lw=0.8)
    axes[0].set(yscale="log", ylim=(1e-30, None), xlabel="lag (steps)",
                ylabel="||dL/ds_(T-lag)||", title="gradient norm at initialisation")
    axes[1].set(ylabel="lambda_max (nats/step)", title="largest Lyapunov exponent at init")
    for axis in axes[2:]:
        axis.axhline(ADDING_BASELINE_MSE, color="black", ls=":", lw=0.8, label="baseline 1/6")
        axis.set(yscale="log")
    axes[2].set(xlabel="sequence length T", ylabel="test MSE (median over seeds)",
                title="adding problem after training")
    axes[3].set(xlabel="training step", ylabel=f"training MSE (median, {window}-step mean)",
                title=f"training at T = {longest}")
    axes[0].legend(fontsize=7)
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    return fig


def table(ds):
    """Median test MSE per init and T, lambda_max and the gradient norm at the last lag.

    >>> ds = identity_init(["irnn"], lengths=[6], seeds=1, steps=2, units=4, batch=4)
    >>> print(table(ds).splitlines()[0])
    init                lambda_max  grad@lag5      T=6
    """
    lengths = ds.seq_len.values
    last = int(ds.lag.values[-1])
    lines = [f"{'init':18s} {'lambda_max':>11s} {'grad@lag' + str(last):>10s}"
             + "".join(f"{'T=' + str(t):>9s}" for t in lengths)]
    for init in ds.init.values:
        row = ds.sel(init=init)
        mse = row.final_mse.median("seed").values
        lines.append(f"{str(init):18s} {float(row.lyapunov_max.mean()):+11.4f} "
                     f"{float(row.grad_norm[-1]):10.2e}" + "".join(f"{m:9.4f}" for m in mse))
    lines.append(f"(test MSE, median over seeds; predicting 1 gives {ADDING_BASELINE_MSE:.4f})")
    return "\n".join(lines)


def main(argv=None):
    parser = study_parser(__doc__.split("\n")[0], NAME)
    parser.add_argument("--inits", type=lambda s: s.split(","), default=list(INITS),
                        help="comma list of " + ", ".join(INITS))
    parser.add_argument("--lengths", type=parse_grid, help="sequence lengths T, comma list")
    for option in ("seeds", "steps", "units", "batch"):
        parser.add_argument(f"--{option}", type=int)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--clip", type=float, default=1.0,
                        help="max global gradient norm per network (0: no clipping)")
    parser.add_argument("--workers", type=int, help="run on a dask LocalCluster of N workers")
    parser.add_argument("--scheduler", help="run on a dask cluster, e.g. tcp://host:8786")
    args = parser.parse_args(argv)
    sizes = chosen_sizes(args, QUICK, FULL)
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        ds = identity_init(args.inits, lr=args.lr, clip=args.clip or None, dtype=args.dtype,
                           seed=args.seed, store=str(args.out), progress=True,
                           backend=args.backend,
                           workers=args.workers, scheduler=args.scheduler, **sizes)
    except ValueError as error:
        parser.error(str(error))
    netcdf, png = save(ds, figure(ds), args.out, NAME)
    print(table(ds))
    print(f"wrote {netcdf} and {png} in {time.perf_counter() - start:.1f} s")
    return ds


if __name__ == "__main__":
    run_main("studies.identity_init")
