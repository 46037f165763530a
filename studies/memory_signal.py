"""How long a signal injected at step 1 survives, in the state and in the gradient.

A signal enters a network at step 1; how much of it is still there at step T, for
vanilla RNNs (tanh, ReLU), LSTMs (forget-gate bias 0 and 1) and GRUs, all built as a
user would build them: PyTorch's default uniform initialisation, U(-1/sqrt(H),
1/sqrt(H)) for every weight and bias (the LSTMs then get their forget-gate bias set
to exactly 0 or 1: ``b_ih[f] = b``, ``b_hh[f] = 0``).

Every network of ``units`` hidden units reads ``inputs`` input channels driven by a
background of white noise, ``x_t ~ N(0, noise^2)`` per channel, over ``trials``
independent sequences (the batch); the initial state is zero. For each seed, a unit
input direction ``u`` and a unit readout direction ``v`` (over the H units of h) are
drawn once. Two measurements, both taken on the same networks and inputs:

``state_signal``
    The network runs twice on the same background, once with a finite signal
    ``signal * u`` added to the input at step 1 (``signal = 1``: the whole input
    direction, large next to the background). The surviving signal is the distance
    between the two runs' hidden states at step T, ``||h_T(signal) - h_T(none)||``
    (h only, also for an LSTM: h is what a readout sees), root-mean-square over the
    trials, divided by the same quantity at T = 1. It starts at 1 for every cell.

``gradient_signal``
    For the loss on the last step only, ``L = <v, h_T>``, the gradient that reaches
    the first input, ``||dL/dx_1||``, from ``dynamics.bptt`` along the background
    trajectory (no signal: the linear response to an infinitesimal one), root-mean-
    square over the trials, divided by its value at T = 1. This is what training a
    network to recall step 1 at step T would see; unlike ``||d h_T / d x_1||`` it
    needs one backward pass per T, and it weights the directions of h_T the way a
    readout does.

One forward run of ``max(lengths)`` steps gives the state measurement at every T (the
state at step T does not depend on later inputs); the gradient needs one BPTT of T
steps per length. The seeds of a cell run as one ensemble, each member with its own
inputs, in one kernel launch. Randomness: the networks of seed s and cell c come from
``SeedSequence(seed, spawn_key=(s, 0, c))`` (c indexes ``CELLS``, so choosing fewer
cells changes nothing else), the inputs of seed s (``u``, ``v``, then the noise) from
``SeedSequence(seed, spawn_key=(s, 1))``, shared by all cells.

The summary ``state_half_life``/``gradient_half_life`` is the T at which the median
survival over seeds first falls below 1/2, interpolated exponentially (linearly in log
survival) between the bracketing lengths, with (T = 1, survival 1) as the starting
point; nan if it never falls below 1/2 within the lengths swept.

    python -m studies.memory_signal [--quick] [--out DIR] [--units 64] [--inputs 8]
        [--lengths 1,2,5,10,20,50,100,200,500] [--seeds 8] [--trials 8]
        [--noise 0.1] [--signal 1.0] [--cells rnn_tanh,lstm_fb1] [--seed 0]
        [--dtype float64] [--backend cuda]

``--backend cuda`` runs the forward passes and BPTT on an NVIDIA GPU; the numbers are
the same (to rounding), and the ``backend`` attr records where they were computed.

The state measurement subtracts two runs whose states are of order 1, so it cannot
resolve less than about machine epsilon times ||h_T||: ``state_floor`` is that
rounding floor, ``eps * ||h_T(none)||`` normalised like ``state_signal`` (about 1e-15 in
float64, 1e-7 in float32); a ``state_signal`` within 10 times of it is rounding noise,
and the two runs may even agree bitwise (0). The gradient has no such floor: it is a
product of Jacobians and shrinks down to the dtype's smallest number (norms are
scaled, so that squaring does not underflow first).

The script writes ``DIR/memory_signal.nc``: ``state_signal``, ``gradient_signal`` and
``state_floor`` ``(cell, seq_len, seed)``; ``state_half_life`` and
``gradient_half_life`` ``(cell)``; ``diverged (cell, seed)`` (true where a measurement
is not finite: non-finite values are kept as data); coordinates ``cell``, ``seq_len``,
``seed`` and ``forget_bias (cell)``. And ``DIR/memory_signal.png``: median survival
against T (linear T, log survival) with the interquartile band over seeds, one line
per cell, a state panel (with the rounding floor) and a gradient panel. It prints
the medians at a few lengths and the half-lives.

>>> ds = memory_signal(["rnn_tanh", "lstm_fb1"], lengths=[1, 5], units=8, seeds=2,
...                    trials=2)
>>> ds.state_signal.dims, ds.state_signal.sel(seq_len=1).values.tolist()
(('cell', 'seq_len', 'seed'), [[1.0, 1.0], [1.0, 1.0]])
"""
import argparse
import json
import sys
import time

import numpy as np
import xarray as xr

import dynamics
from analysis._common import attrs, provenance
from dynamics.propagation import BACKENDS
from dynamics.validation import check_choice
from studies._common import save, study_parser

NAME = "memory_signal"

#: cell label -> (class, options of ``init``, description).
CELLS = {
    "rnn_tanh": (dynamics.RNN, {"nonlinearity": "tanh"}, "vanilla RNN, tanh"),
    "rnn_relu": (dynamics.RNN, {"nonlinearity": "relu"}, "vanilla RNN, ReLU"),
    "lstm_fb0": (dynamics.LSTM, {"forget_bias": 0.0}, "LSTM, forget-gate bias 0"),
    "lstm_fb1": (dynamics.LSTM, {"forget_bias": 1.0}, "LSTM, forget-gate bias 1"),
    "gru": (dynamics.GRU, {}, "GRU"),
}
FULL_LENGTHS = (1, 2, 5, 10, 20, 50, 100, 200, 500)
QUICK_LENGTHS = (1, 2, 5, 10, 20)


def child_seed(seed, *key):
    """``SeedSequence(seed).spawn(...)[key[0]].spawn(...)[key[1]]...``, built directly."""
    return np.random.SeedSequence(seed, spawn_key=key)


def check_cells(cells):
    cells = list(cells)
    unknown = [c for c in cells if c not in CELLS]
    if unknown or not cells or len(set(cells)) != len(cells):
        raise ValueError(f"cells must be distinct names from {list(CELLS)}, got {cells}")
    return cells


def check_lengths(lengths):
    lengths = np.asarray(lengths)
    if (lengths.ndim != 1 or lengths.size == 0 or not np.all(lengths == np.round(lengths))
            or np.any(lengths < 1) or np.any(np.diff(lengths) <= 0)):
        raise ValueError("lengths must be increasing integers >= 1, got "
                         f"{lengths.tolist()}")
    return lengths.astype(np.int64)


def build_ensemble(cell, input_size, units, seeds, seed=0, dtype="float64"):
    """The ``seeds`` networks of ``cell`` (a name in ``CELLS``) as one ensemble.

    Member s is drawn from ``SeedSequence(seed, spawn_key=(s, 0, c))`` with c the cell's
    index in ``CELLS``.

    >>> lstm = build_ensemble("lstm_fb1", 3, 4, seeds=2)
    >>> lstm.ensemble_size, lstm.bias_ih[:, 4:8].tolist(), float(lstm.bias_hh[:, 4:8].max())
    (2, [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], 0.0)
    """
    cls, init_options, _ = CELLS[check_cells([cell])[0]]
    index = list(CELLS).index(cell)
    return dynamics.Cell.stack(cls.init(input_size, units, init="uniform", dtype=dtype,
                                        seed=child_seed(seed, s, 0, index), **init_options)
                               for s in range(seeds))


def draw_inputs(input_size, units, steps, seeds, trials, noise, seed=0, dtype="float64"):
    """Background ``(steps, seeds, trials, input_size)``, unit signal directions
    ``u (seeds, input_size)`` and unit readouts ``v (seeds, units)``.

    >>> x, u, v = draw_inputs(3, 4, steps=5, seeds=2, trials=6, noise=0.1)
    >>> x.shape, np.linalg.norm(u, axis=1).round(12).tolist(), v.shape
    ((5, 2, 6, 3), [1.0, 1.0], (2, 4))
    """
    background = np.empty((steps, seeds, trials, input_size))
    u, v = np.empty((seeds, input_size)), np.empty((seeds, units))
    for s in range(seeds):
        rng = np.random.default_rng(child_seed(seed, s, 1))
        u[s] = rng.normal(size=input_size)
        v[s] = rng.normal(size=units)
        background[:, s] = noise * rng.normal(size=(steps, trials, input_size))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return background.astype(dtype), u.astype(dtype), v.astype(dtype)


def state_distance(model, background, signal, backend="cpu"):
    """``||h_t(signal) - h_t(none)||`` and ``||h_t(none)||`` at every step t, both
    ``(T, E, B)``, for an ensemble ``model`` run on ``background (T, E, B, D)`` with
    ``signal (E, D)`` added to the input at step 1; the network runs on ``backend``.

    >>> rnn = build_ensemble("rnn_tanh", 2, 3, seeds=1)
    >>> distance, size = state_distance(rnn, np.zeros((4, 1, 1, 2)), np.zeros((1, 2)))
    >>> distance.ravel().tolist(), bool(np.all(size > 0))
    ([0.0, 0.0, 0.0, 0.0], True)
    """
    with_signal = background.copy()
    with_signal[0] += signal[:, None, :]
    h_none = dynamics.forward(model, background, backend=backend).output
    h_signal = dynamics.forward(model, with_signal, backend=backend).output
    return norm(h_signal - h_none), norm(h_none)


def first_input_gradient(model, background, readout, backend="cpu"):
    """``dL/dx_1`` for ``L = <v, h_T>`` (T the last step), ``(E, B, D)``, for an ensemble
    ``model`` on ``background (T, E, B, D)`` with readouts ``v = readout (E, H)``, by
    ``dynamics.bptt`` on ``backend``.

    >>> rnn = build_ensemble("rnn_tanh", 2, 3, seeds=1)
    >>> x = np.zeros((1, 1, 1, 2))      # one step from h0 = 0 with zero input and bias b:
    >>> v = np.ones((1, 3))             # dL/dx_1 = W_ih^T (v * tanh'(b))
    >>> b = rnn.bias_ih[0] + rnn.bias_hh[0]
    >>> expected = rnn.weight_ih[0].T @ (1 - np.tanh(b) ** 2)
    >>> bool(np.allclose(first_input_gradient(rnn, x, v)[0, 0], expected))
    True
    """
    steps, E, B, _ = background.shape
    grad_output = np.zeros((steps, E, B, model.hidden_size), background.dtype)
    grad_output[-1] = readout[:, None, :]
    return dynamics.bptt(model, background, grad_output, backend=backend)["x"][0]


def norm(values, axis=-1):
    """Euclidean norm along ``axis``, scaled first so that tiny values (a gradient of
    1e-200) do not underflow when squared.

    >>> float(norm(np.array([3e-200, 4e-200]))), float(norm(np.array([np.inf, 1.0])))
    (5e-200, inf)
    """
    scale = np.max(np.abs(values), axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(scale > 0, values / scale, 0.0)
        result = np.squeeze(scale, axis) * np.sqrt(np.sum(np.square(scaled), axis=axis))
    return np.where(np.isposinf(np.squeeze(scale, axis)), np.inf, result)


def rms(values, axis=-1):
    """Root mean square along ``axis``, without underflow (see ``norm``)."""
    return norm(values, axis) / np.sqrt(np.shape(values)[axis])


def half_life(survival, lengths):
    """T at which ``survival`` (..., len(lengths)) first falls below 1/2, interpolated
    linearly in log survival between lengths, starting from (T = 1, 1); nan if never.

    >>> T = np.array([1, 2, 4, 8])
    >>> half_life(0.5 ** ((T - 1) / 2), T)     # exact for exponential decay
    array(3.)
    >>> half_life(np.array([[0.25], [0.9]]), np.array([3])).tolist()
    [2.0, nan]
    """
    survival = np.asarray(survival, dtype=float)
    lengths = np.asarray(lengths, dtype=float)
    if lengths[0] != 1:
        lengths = np.concatenate([[1.0], lengths])
        survival = np.concatenate([np.ones(survival.shape[:-1] + (1,)), survival], axis=-1)
    result = np.full(survival.shape[:-1], np.nan)
    for index in np.ndindex(result.shape):
        crossed = np.flatnonzero(survival[index] < 0.5)
        if crossed.size == 0:
            continue
        i = crossed[0]
        if i == 0:
            result[index] = lengths[0]
            continue
        s0, s1 = survival[index][i - 1], survival[index][i]
        with np.errstate(divide="ignore"):
            fraction = (np.log(s0) - np.log(0.5)) / (np.log(s0) - np.log(s1))
        result[index] = lengths[i - 1] + fraction * (lengths[i] - lengths[i - 1])
    return result


def memory_signal(cells=tuple(CELLS), lengths=FULL_LENGTHS, units=64, inputs=8, seeds=8,
                  trials=8, noise=0.1, signal=1.0, seed=0, dtype="float64", progress=False,
                  backend="cpu"):
    """Survival of a signal injected at step 1, in the state and the gradient, against T.

    Parameters
    ----------
    cells : names from ``CELLS``
    lengths : increasing sequence lengths T >= 1
    units, inputs : hidden size H and input size D of every network
    seeds : networks (and input draws) per cell, run as one ensemble
    trials : background sequences per network (the batch)
    noise : standard deviation of the white-noise background, per input channel
    signal : norm of the signal added to the input at step 1
    seed : base seed of every ``SeedSequence`` (see the module docstring)
    dtype : "float64" or "float32"
    progress : show a tqdm bar over cells
    backend : "cpu" or "cuda": where the forward passes and BPTT run (the ``backend`` attr)

    Returns
    -------
    xarray.Dataset, described in the module docstring.

    Examples
    --------
    >>> ds = memory_signal(["rnn_tanh"], lengths=[1, 3], units=4, seeds=2, trials=1)
    >>> print(*sorted(ds.data_vars))
    diverged gradient_half_life gradient_signal state_floor state_half_life state_signal
    """
    cells, lengths = check_cells(cells), check_lengths(lengths)
    for name, value in (("units", units), ("inputs", inputs), ("seeds", seeds),
                        ("trials", trials)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not (np.isfinite(noise) and noise >= 0 and np.isfinite(signal) and signal > 0):
        raise ValueError(f"need noise >= 0 and signal > 0, finite, got noise={noise}, "
                         f"signal={signal}")
    check_choice("backend", backend, BACKENDS)
    dtype = np.dtype(dtype)
    background, u, v = draw_inputs(inputs, units, int(lengths[-1]), seeds, trials, noise,
                                   seed, dtype)
    state = np.empty((len(cells), len(lengths), seeds))
    gradient, floor = np.empty_like(state), np.empty_like(state)
    iterator = cells
    if progress:
        from tqdm import tqdm
        iterator = tqdm(cells, desc=NAME, file=sys.stderr)
    for c, cell in enumerate(iterator):
        model = build_ensemble(cell, inputs, units, seeds, seed, dtype)
        distance, size = (rms(a) for a in state_distance(model, background, signal * u,
                                                          backend))
        with np.errstate(divide="ignore", invalid="ignore"):      # (T, E): RMS over trials
            state[c] = distance[lengths - 1] / distance[0]
            floor[c] = np.finfo(dtype).eps * size[lengths - 1] / distance[0]
            reference = rms(norm(first_input_gradient(model, background[:1], v, backend)))
            for i, T in enumerate(lengths):
                grad = first_input_gradient(model, background[:T], v, backend)
                gradient[c, i] = rms(norm(grad)) / reference
    config = dict(cells=cells, lengths=lengths.tolist(), units=units, inputs=inputs,
                  seeds=seeds, trials=trials, noise=noise, signal=signal,
                  init="uniform (torch default)")
    return to_dataset(state, gradient, floor, cells, lengths, dtype, config, seed, backend)


def to_dataset(state, gradient, floor, cells, lengths, dtype, config, seed, backend):
    """The measurements ``(cell, seq_len, seed)`` as an xarray Dataset, attrs on everything."""
    dims = ("cell", "seq_len", "seed")
    relative = "RMS over trials, relative to its value at T = 1"
    half = ("T at which the median {} over seeds first falls below 1/2, interpolated in "
            "log survival between lengths (nan: not within the lengths swept)")
    diverged = ~(np.isfinite(state) & np.isfinite(gradient)).all(axis=1)
    forget = [CELLS[c][1].get("forget_bias", np.nan) for c in cells]
    return xr.Dataset(
        {"state_signal": (dims, state, attrs(
            f"signal surviving in the state, ||h_T(signal) - h_T(none)||, {relative}", "1")),
         "gradient_signal": (dims, gradient, attrs(
             f"gradient reaching the first input, ||dL/dx_1|| for L = <v, h_T>, {relative}",
             "1")),
         "state_floor": (dims, floor, attrs(
             "rounding floor of state_signal, eps * ||h_T(none)|| relative as state_signal: "
             "state_signal within about 10 times of it is rounding noise, not signal", "1")),
         "state_half_life": ("cell", half_life(np.median(state, axis=-1), lengths),
                             attrs(half.format("state_signal"), "steps")),
         "gradient_half_life": ("cell", half_life(np.median(gradient, axis=-1), lengths),
                                attrs(half.format("gradient_signal"), "steps")),
         "diverged": (("cell", "seed"), diverged, attrs(
             "true where a measurement of this network is not finite", "1"))},
        coords={"cell": ("cell", cells, attrs("recurrent cell", "1") | {
                    "description": json.dumps({c: CELLS[c][2] for c in cells})}),
                "seq_len": ("seq_len", lengths, attrs(
                    "sequence length T: the signal enters at step 1, is read at step T",
                    "steps")),
                "seed": ("seed", np.arange(state.shape[-1]),
                         attrs("index of the network and input draw", "1")),
                "forget_bias": ("cell", np.asarray(forget, float), attrs(
                    "LSTM forget-gate bias (nan: not an LSTM)", "1"))},
        attrs=provenance(f"studies.{NAME}", config, dtype, seed, backend))


def figure(dataset):
    """Median survival against T with the interquartile band over seeds, one line per
    cell; state (with its rounding floor) and gradient panels. Linear T, log survival:
    exponential forgetting is a straight line whose slope is the decay rate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    T = dataset.seq_len.values
    tiny = np.finfo(float).tiny
    for ax, name, title in zip(axes, ("state_signal", "gradient_signal"),
                               ("state: ||h_T(signal) - h_T(none)||", "gradient: ||dL/dx_1||")):
        for cell in dataset.cell.values:
            low, median, high = np.quantile(dataset[name].sel(cell=cell).values,
                                            [0.25, 0.5, 0.75], axis=-1)
            line, = ax.plot(T, np.maximum(median, tiny), marker="o", ms=3,
                            label=CELLS[str(cell)][2])
            ax.fill_between(T, np.maximum(low, tiny), np.maximum(high, tiny),
                            color=line.get_color(), alpha=0.2)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="1/2 (half-life)")
        ax.set(yscale="log", xlabel="sequence length T (steps)", title=title)
        ax.grid(True, which="major", alpha=0.3)
    floor = dataset.state_floor.median(("cell", "seed")).values
    axes[0].plot(T, floor, color="black", lw=0.8, ls="--", label="rounding floor")
    axes[0].set_ylim(max(floor.min() / 30, tiny), 2)
    medians = dataset.gradient_signal.median("seed").values
    positive = medians[medians > 0]
    axes[1].set_ylim(max(positive.min() / 10 if positive.size else tiny, tiny), 2)
    axes[0].set_ylabel("survival (relative to T = 1)")
    handles = [line for line in axes[0].get_lines() if not line.get_label().startswith("_")]
    axes[1].legend(handles=handles, fontsize=8, loc="lower left")
    config = json.loads(dataset.attrs["config"])
    fig.suptitle(f"Signal injected at step 1, read at step T: H = {config['units']}, torch "
                 f"default init, median and interquartile range over {config['seeds']} seeds",
                 fontsize=10)
    fig.tight_layout()
    return fig


def table(dataset, columns=5):
    """Median survival for each cell at a few lengths, and the half-lives, as text; a
    state value marked * is within 10 times its rounding floor.

    >>> ds = memory_signal(["gru"], lengths=[1, 2], units=4, seeds=1, trials=1)
    >>> print(table(ds).splitlines()[0])
    state_signal                  T=1        T=2  half-life
    """
    T = dataset.seq_len.values
    picks = T[np.unique(np.round(np.linspace(0, len(T) - 1, min(columns, len(T)))).astype(int))]
    median = dataset.sel(seq_len=picks).median("seed")
    lines = []
    for name in ("state_signal", "gradient_signal"):
        lines.append(f"{name:22s}" + "".join(f"{'T=' + str(t):>11s}" for t in picks)
                     + "  half-life")
        for cell in dataset.cell.values:
            row = median[name].sel(cell=cell).values
            marks = [" "] * len(row)
            if name == "state_signal":
                floor = median.state_floor.sel(cell=cell).values
                marks = ["*" if value < 10 * f else " " for value, f in zip(row, floor)]
            half = float(dataset[name.replace("signal", "half_life")].sel(cell=cell))
            lines.append(f"  {str(cell):20s}" + "".join(f"{value:10.2e}{mark}"
                                                        for value, mark in zip(row, marks))
                         + f"  {half:9.1f}")
    lines.append("(median over seeds; * within 10x of the rounding floor)")
    return "\n".join(lines)


def length_list(text):
    """'1,2,5' -> [1, 2, 5], for argparse."""
    try:
        return check_lengths([int(v) for v in text.split(",")]).tolist()
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected increasing integers >= 1 such as 1,2,5, got {text!r}") from error


def cell_list(text):
    """'rnn_tanh,gru' -> ['rnn_tanh', 'gru'], for argparse."""
    try:
        return check_cells(text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def main(argv=None):
    """Run the study from the command line; return the dataset."""
    parser = study_parser(__doc__.splitlines()[0], NAME)
    parser.add_argument("--units", type=int, default=None,
                        help="hidden units H (default 64; --quick 32)")
    parser.add_argument("--inputs", type=int, default=8, help="input channels D (default 8)")
    parser.add_argument("--lengths", type=length_list, default=None,
                        help="comma list of sequence lengths T (default "
                        f"{','.join(map(str, FULL_LENGTHS))}; "
                        f"--quick {','.join(map(str, QUICK_LENGTHS))})")
    parser.add_argument("--seeds", type=int, default=None,
                        help="networks per cell (default 8; --quick 4)")
    parser.add_argument("--trials", type=int, default=8,
                        help="background sequences per network (default 8)")
    parser.add_argument("--noise", type=float, default=0.1,
                        help="background noise std per input channel (default 0.1)")
    parser.add_argument("--signal", type=float, default=1.0,
                        help="norm of the input signal at step 1 (default 1)")
    parser.add_argument("--cells", type=cell_list, default=list(CELLS),
                        help=f"comma list from {','.join(CELLS)} (default all)")
    args = parser.parse_args(argv)
    def default(value, full, quick):
        return value if value is not None else (quick if args.quick else full)

    lengths = default(args.lengths, FULL_LENGTHS, QUICK_LENGTHS)
    seeds = default(args.seeds, 8, 4)
    units = default(args.units, 64, 32)
    start = time.perf_counter()
    dataset = memory_signal(args.cells, lengths, units, args.inputs, seeds, args.trials,
                            args.noise, args.signal, args.seed, args.dtype, progress=True,
                            backend=args.backend)
    fig = figure(dataset)
    netcdf, png = save(dataset, fig, args.out, NAME)
    import matplotlib.pyplot as plt
    plt.close(fig)
    print(f"Signal of norm {args.signal} at step 1, background noise {args.noise}, "
          f"H={units}, D={args.inputs}, {seeds} seeds x {args.trials} trials")
    print(table(dataset))
    print(f"wrote {netcdf} and {png} ({time.perf_counter() - start:.1f} s)")
    return dataset


if __name__ == "__main__":
    main()
