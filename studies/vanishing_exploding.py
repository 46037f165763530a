"""Vanishing and exploding gradients: the one-unit textbook table, then N-unit networks.

Backpropagation multiplies the gradient by one Jacobian per step,
dL/ds_(t-1) = dL/ds_t J_t with J_t = d s_t / d s_(t-1); for a tanh RNN
J_t = diag(1 - h_t^2) W_hh. Over l steps the gradient is scaled by a product of l
Jacobians: it shrinks geometrically when their typical gain is below 1 (vanishing) and
grows when it is above 1 (exploding). For one tanh unit, J_t = w (1 - h_t^2) <= |w|,
so |w| < 1 always vanishes, and even w = 1.1 vanishes once the state settles at the
nonzero fixed point h* = tanh(w h*), where the local slope w (1 - h*^2) is below 1.
Clipping the backpropagated vector to a norm of at most c caps explosion but cannot
revive a gradient that has already vanished: it only ever shrinks vectors.

    python -m studies.vanishing_exploding [--quick] [--out DIR] [--seed 0]
        [--units 64] [--max-lag 100] [--spectral-norms 0.5,0.9,1.1,1.5] [--clip 1]
        [--backend cuda]

writes ``DIR/vanishing_exploding.nc`` and ``DIR/vanishing_exploding.png`` and prints
the tables. ``--backend cuda`` runs the pulse's forward pass on an NVIDIA GPU; the
Jacobian products and their spectral norms (``analysis.jacobian_product``,
``state_jacobians`` and ``gradient_norm_vs_lag`` with products) always run on the CPU.

Part 1, the textbook table: h_t = tanh(w h_(t-1) + u x_t), u = 1, no bias,
h_(-1) = 0, a pulse x_0 = 1 then x_t = 0, so h_0 = tanh(1) is the state right after
the pulse; ``pulse_gradient`` is |dh_T/dh_0| = prod_(t=1..T) |w (1 - h_t^2)|, from
``analysis.jacobian_product(rnn, x, t=T, k=0)``, tagged VANISH below 1e-2 and EXPLODE
above 1e2.

Part 2, the matrix version: the spectral norm ||dh_T/dh_(T-l)||_2 (T the last step)
against the lag l for N-unit RNNs driven by white input of std 0.5 through torch's
uniform W_ih, after a burn-in, with W_hh a random orthogonal or Gaussian matrix rescaled
to each spectral norm. "linear" means J_t = W, computed as numpy matrix powers
||W^l||_2; "tanh" and "relu" use ``analysis.gradient_norm_vs_lag`` on
``dynamics.RNN``. Beside the matrix norm, the norm of the backpropagated vector
g_l = dL/dh_(T-l) from a random unit g_0, without clipping and with g rescaled to norm
at most c = 1 after every step (``dynamics.clip_grad_norm`` applied per step).
Clipping bounds an exploding curve by c but leaves a vanishing one as it was: a
rescaling that only shrinks cannot lift a gradient that the Jacobians have shrunk.
For orthogonal W the spectral radius equals the spectral norm, so norm > 1 explodes in
the linear network; a large Gaussian W has a spectral radius of only about half its
norm, so even ||W||_2 = 1.5 vanishes after a transient (at small N, as ``--quick``'s
16 units, rho(W) scatters around that: the table prints it). Last, LSTM (forget-gate
bias 0 and 1; state (h, c)) and GRU with Gaussian gain-1 W_hh, on the same input.
"""
import json
import time

import numpy as np
import xarray as xr

import analysis
import dynamics
from analysis._common import attrs, provenance
from dynamics.init import recurrent_block
from dynamics.propagation import BACKENDS
from dynamics.validation import check_choice
from studies._common import parse_grid, save, study_parser

NAME = "vanishing_exploding"
PULSE_WEIGHTS = (0.5, 0.9, 1.1)
PULSE_STEPS = 60
VANISH_BELOW = 1e-2
EXPLODE_ABOVE = 1e2
MATRICES = ("orthogonal", "gaussian")
ACTIVATIONS = ("linear", "tanh", "relu")
CLIPPING = ("none", "per_step")
FULL = {"units": 64, "max_lag": 100, "burn_in": 50, "batch": 4}
QUICK = {"units": 16, "max_lag": 30, "burn_in": 10, "batch": 2}


# --- part 1: one tanh unit ------------------------------------------------------------

def pulse_gradients(weights=PULSE_WEIGHTS, steps=PULSE_STEPS, dtype=np.float64,
                    backend="cpu"):
    """|dh_T/dh_0| and h_T of one tanh unit after a unit pulse, for T = 0..steps.

    The unit is h_t = tanh(w h_(t-1) + x_t) (W_ih = 1, zero biases), h_(-1) = 0,
    x_0 = 1 and x_t = 0 for t >= 1, so h_0 = tanh(1) is the state right after the
    pulse. The derivative is ``analysis.jacobian_product(rnn, x, t=T, k=0)``, that is
    dh_T/dh_0 = prod_(t=1..T) w (1 - h_t^2) (1 at T = 0). All weights run as one
    ensemble of 1-unit ``dynamics.RNN``s.

    Parameters
    ----------
    weights : recurrent weights w (W_hh), one per ensemble member
    steps : the largest T
    dtype : float64 (default) or float32
    backend : "cpu" or "cuda": where the forward pass giving the states runs (the
        Jacobian products run on the CPU)

    Returns
    -------
    (gradient, state), both (len(weights), steps + 1), indexed [w, T].

    Examples
    --------
    >>> g, h = pulse_gradients([0.5], steps=1)
    >>> h1 = np.tanh(0.5 * np.tanh(1.0))
    >>> bool(np.isclose(g[0, 1], 0.5 * (1 - h1 ** 2), rtol=1e-14, atol=0))
    True
    """
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    if weights.size == 0:
        raise ValueError("weights must hold at least one recurrent weight, got none")
    steps = dynamics.validation.check_positive_int("steps", steps, minimum=0)
    E = weights.size
    rnn = dynamics.RNN(weight_ih=np.ones((E, 1, 1)), weight_hh=weights.reshape(E, 1, 1),
                       bias_ih=np.zeros((E, 1)), bias_hh=np.zeros((E, 1)),
                       nonlinearity="tanh").astype(dtype)
    x = np.zeros((steps + 1, 1, 1), dtype)
    x[0] = 1.0
    gradient = np.array([analysis.jacobian_product(rnn, x, t=T, k=0, dtype=dtype).values[:, 0, 0, 0]
                         for T in range(steps + 1)]).T
    state = dynamics.forward(rnn, x, backend=backend).output[:, :, 0, 0].T
    return np.abs(gradient), state


def fixed_point(w):
    """The stable fixed point h* >= 0 of h = tanh(|w| h) and its slope |w| (1 - h*^2).

    h* = 0 (slope |w|) for |w| <= 1; for |w| > 1 the nonzero root, by Newton's method
    from h = 1 (f(h) = tanh(|w| h) - h is concave for h > 0, so the iterates fall
    monotonically onto the root). For w < -1 the state alternates between +h* and -h*,
    with the same slope magnitude.

    Examples
    --------
    >>> h, slope = fixed_point(1.1)
    >>> round(h, 6), round(slope, 6), bool(np.isclose(np.tanh(1.1 * h), h, atol=1e-15))
    (0.502941, 0.821756, True)
    >>> fixed_point(0.5)
    (0.0, 0.5)
    """
    w = abs(float(w))
    if not np.isfinite(w):
        raise ValueError(f"w must be finite, got {w}")
    if w <= 1.0:
        return 0.0, w
    h = 1.0
    for _ in range(100):
        step = (np.tanh(w * h) - h) / (w * (1.0 - np.tanh(w * h) ** 2) - 1.0)
        h -= step
        if abs(step) <= 1e-16 * h:
            break
    return float(h), float(w * (1.0 - h ** 2))


def tag(value, vanish_below=VANISH_BELOW, explode_above=EXPLODE_ABOVE):
    """"VANISH" below ``vanish_below``, "EXPLODE" above ``explode_above``, else "ok".

    >>> tag(4e-4), tag(0.58), tag(1e3)
    ('VANISH', 'ok', 'EXPLODE')
    """
    if not value >= vanish_below:  # nan counts as vanished: no usable signal
        return "VANISH"
    return "EXPLODE" if value > explode_above else "ok"


# --- part 2: N-unit networks ----------------------------------------------------------

def scaled_matrix(rng, units, matrix, spectral_norm):
    """A random ``units`` x ``units`` W rescaled so that ||W||_2 = ``spectral_norm``.

    ``matrix`` "orthogonal" (Haar): all singular values and |eigenvalues| equal the
    spectral norm; "gaussian" (N(0, 1/N) entries): the spectral radius is only about
    half the spectral norm (circular law radius 1, largest singular value about 2).

    >>> w = scaled_matrix(np.random.default_rng(0), 8, "gaussian", 1.5)
    >>> round(float(np.linalg.norm(w, 2)), 12)
    1.5
    """
    if matrix not in MATRICES:
        raise ValueError(f"matrix must be one of {MATRICES}, got {matrix!r}")
    w = recurrent_block(rng, units, matrix, 1.0)
    return w * (spectral_norm / np.linalg.norm(w, 2))


def log_adjoint_norms(jacobians, v, max_lag, clip=None):
    """ln ||g_l|| for the backpropagated vectors g_0 = v, g_l = g_(l-1) J_(T-l+1).

    ``jacobians`` (T, B, S, S) holds J_t = d s_t / d s_(t-1) along a trajectory (as
    ``analysis.state_jacobians`` returns them; T is the last step), ``v`` (B, S) the
    loss gradient at the last state. Without ``clip`` the vectors are renormalised at
    each step and the logs summed, so nothing over- or underflows. With ``clip = c``,
    g_l is rescaled after each step by ``dynamics.clip_grad_norm`` (torch's rule: times
    min(1, c / (||g_l|| + 1e-6))), so ||g_l|| < c for every l >= 1.

    Returns (B, max_lag + 1); a vector that reaches exactly 0 gives -inf from then on.

    >>> J = np.broadcast_to(2.0 * np.eye(2), (5, 1, 2, 2))
    >>> np.exp(log_adjoint_norms(J, np.array([[1.0, 0.0]]), 3)).round(6).tolist()
    [[1.0, 2.0, 4.0, 8.0]]
    >>> clipped = np.exp(log_adjoint_norms(J, np.array([[1.0, 0.0]]), 2, clip=1.0))
    >>> clipped.round(4).tolist(), bool((clipped[:, 1:] < 1.0).all())
    ([[1.0, 1.0, 1.0]], True)
    """
    T, B = jacobians.shape[:2]
    if not 0 <= max_lag <= T:
        raise ValueError(f"max_lag must be in 0..{T} (the number of Jacobians), got {max_lag}")
    g = np.array(v, dtype=np.float64)
    logs = np.empty((B, max_lag + 1))
    offset = np.zeros(B)  # ln of the scale divided out so far (unclipped only)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs[:, 0] = np.log(np.linalg.norm(g, axis=-1))
        for lag in range(1, max_lag + 1):
            g = np.einsum("bs,bsr->br", g, jacobians[T - lag])
            norm = np.linalg.norm(g, axis=-1)
            if clip is None:
                logs[:, lag] = offset + np.log(norm)
                offset = logs[:, lag]
                g = np.where(norm[:, None] > 0, g / norm[:, None], 0.0)
            else:
                clipped = {"adjoint": g}
                dynamics.clip_grad_norm(clipped, clip, ensemble=True)
                g = clipped["adjoint"]
                logs[:, lag] = np.log(np.linalg.norm(g, axis=-1))
    return logs


def log_matrix_power_norms(w, max_lag):
    """ln ||W^l||_2 for l = 0..max_lag: the linear RNN, whose every Jacobian is W.

    The product is renormalised at each step (the logs summed), so it neither over- nor
    underflows.

    >>> round(float(np.exp(log_matrix_power_norms(0.5 * np.eye(3), 4)[-1])), 12)
    0.0625
    """
    product, offset = np.eye(w.shape[0]), 0.0
    logs = np.empty(max_lag + 1)
    logs[0] = 0.0
    for lag in range(1, max_lag + 1):
        product = product @ w
        norm = np.linalg.norm(product, 2)
        offset += np.log(norm)
        logs[lag] = offset
        product /= norm
    return logs


def mean_log(logs, axis):
    """Mean of ln values over ``axis`` (the ln of the geometric mean: the typical norm
    across sequences; -inf if one sequence's norm is exactly 0)."""
    with np.errstate(invalid="ignore"):
        return np.mean(logs, axis=axis)


def random_streams(seed):
    """Independent generators for each random ingredient, children of ``SeedSequence(seed)``:
    one per matrix ensemble, the input weights, the input, the loss gradient, the gated cells."""
    names = [*MATRICES, "input_weights", "input", "grad_final", "gated"]
    return dict(zip(names, np.random.SeedSequence(seed).spawn(len(names))))


def vanilla_curves(config, streams, x, v):
    """Norms against lag for the vanilla RNNs; every W_hh of one matrix ensemble is the
    same random matrix scaled to each spectral norm (one ensemble member per norm).

    Returns ln of the batch geometric means, jacobian (matrix, activation, spectral_norm,
    lag) and adjoint (matrix, activation, spectral_norm, clipping, lag), and the
    spectral radius (matrix, spectral_norm).
    """
    norms = np.asarray(config["spectral_norms"], dtype=np.float64)
    L, N, dtype = config["max_lag"], config["units"], config["dtype"]
    clips = {"none": None, "per_step": config["clip"]}
    shape = (len(MATRICES), len(ACTIVATIONS), norms.size)
    jacobian, adjoint = np.empty(shape + (L + 1,)), np.empty(shape + (len(CLIPPING), L + 1))
    radius = np.empty((len(MATRICES), norms.size))
    weight_ih = dynamics.RNN.init(N, N, seed=streams["input_weights"]).weight_ih  # torch's uniform
    for m, matrix in enumerate(MATRICES):
        w1 = scaled_matrix(np.random.default_rng(streams[matrix]), N, matrix, 1.0)
        ws = norms[:, None, None] * w1
        radius[m] = np.abs(np.linalg.eigvals(w1)).max() * norms
        for a, activation in enumerate(ACTIVATIONS):
            if activation == "linear":  # J_t = W at every step, whatever the input
                jacobian[m, a] = [log_matrix_power_norms(w, L) for w in ws]
                jac = np.broadcast_to(ws[None, :, None], (L, norms.size, v.shape[0], N, N))
            else:
                rnn = dynamics.RNN(weight_ih=np.broadcast_to(weight_ih, (norms.size, N, N)),
                                   weight_hh=ws, nonlinearity=activation)
                grads = analysis.gradient_norm_vs_lag(rnn, x, max_lag=L, grad_final=v, dtype=dtype)
                jacobian[m, a] = mean_log(grads.log_gradient_norm.sel(norm="spectral").values, 1)
                jac = analysis.state_jacobians(rnn, x, dtype=dtype).values  # (T, E, B, S, S)
            for c, clipping in enumerate(CLIPPING):
                for e in range(norms.size):
                    logs = log_adjoint_norms(jac[:, e], v, L, clips[clipping])
                    adjoint[m, a, e, c] = mean_log(logs, 0)
    return jacobian, adjoint, radius


def gated_cells(config, stream):
    """The LSTMs (one per forget bias) and the GRU, W_hh Gaussian with gain 1, zero
    biases but the forget gate's, keyed by the ``cell`` labels of the dataset."""
    N = config["units"]
    cells = {f"lstm_forget_bias_{b:g}": dynamics.LSTM.init(N, N, init="gaussian", gain=1.0,
                                                           seed=stream, forget_bias=b)
             for b in config["forget_biases"]}
    cells["gru"] = dynamics.GRU.init(N, N, init="gaussian", gain=1.0, seed=stream)
    return cells


def gated_curves(config, stream, x, v):
    """(labels, jacobian (cell, lag), adjoint (cell, lag)), ln of the batch geometric means.

    The LSTM state is (h, c) stacked, as in ``analysis``; the loss gradient sits on h.
    """
    labels, jacobian, adjoint = [], [], []
    for label, cell in gated_cells(config, stream).items():
        S = 2 * cell.hidden_size if cell.kind == "lstm" else cell.hidden_size
        grad_final = np.zeros((v.shape[0], S))
        grad_final[:, :cell.hidden_size] = v
        logs = analysis.gradient_norm_vs_lag(cell, x, max_lag=config["max_lag"],
                                             grad_final=grad_final,
                                             dtype=config["dtype"]).log_gradient_norm
        labels.append(label)
        jacobian.append(mean_log(logs.sel(norm="spectral").values, 0))
        adjoint.append(mean_log(logs.sel(norm="adjoint").values, 0))
    return labels, np.array(jacobian), np.array(adjoint)


def pulse_part(config, backend):
    """Part 1 as a Dataset: ``pulse_gradient``, ``pulse_state`` (w, time),
    ``fixed_point``, ``fixed_point_slope`` (w)."""
    weights = np.asarray(config["weights"], dtype=np.float64)
    gradient, state = pulse_gradients(weights, config["pulse_steps"], config["dtype"], backend)
    fixed = np.array([fixed_point(w) for w in weights])
    return xr.Dataset(
        {"pulse_gradient": (("w", "time"), gradient, attrs(
            "|dh_T/dh_0| of one tanh unit, T = time steps after a unit pulse", "1")),
         "pulse_state": (("w", "time"), state, attrs(
             "state h_T of one tanh unit, T = time steps after a unit pulse", "1")),
         "fixed_point": (("w",), fixed[:, 0], attrs(
             "stable fixed point h* >= 0 of h = tanh(|w| h)", "1")),
         "fixed_point_slope": (("w",), fixed[:, 1], attrs(
             "local slope |w| (1 - h*^2) at the fixed point", "1"))},
        coords={"w": ("w", weights, attrs("recurrent weight W_hh of the one-unit tanh RNN", "1")),
                "time": ("time", np.arange(config["pulse_steps"] + 1),
                         attrs("steps T after the pulse", "steps"))})


def network_part(config):
    """Part 2 as a Dataset: ``jacobian_norm``, ``adjoint_norm``, ``spectral_radius``,
    ``gated_jacobian_norm``, ``gated_adjoint_norm`` (see ``run``)."""
    streams = random_streams(config["seed"])
    N, L, B = config["units"], config["max_lag"], config["batch"]
    x = np.random.default_rng(streams["input"]).normal(
        0.0, config["input_std"], (config["burn_in"] + L, B, N)).astype(config["dtype"])
    v = np.random.default_rng(streams["grad_final"]).normal(size=(B, N))
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    jacobian, adjoint, radius = vanilla_curves(config, streams, x, v)
    cells, gated_jacobian, gated_adjoint = gated_curves(config, streams["gated"], x, v)
    mean = "geometric mean over the batch of sequences"
    vanilla = ("matrix", "activation", "spectral_norm")
    return xr.Dataset(
        {"jacobian_norm": (vanilla + ("lag",), np.exp(jacobian), attrs(
            f"spectral norm of dh_T/dh_(T-lag), T the last step, {mean}", "1")),
         "adjoint_norm": (vanilla + ("clipping", "lag"), np.exp(adjoint), attrs(
             "norm of the backpropagated gradient dL/dh_(T-lag) for ||dL/dh_T|| = 1, "
             f"{mean}", "1")),
         "spectral_radius": (("matrix", "spectral_norm"), radius, attrs(
             "spectral radius (largest |eigenvalue|) of W_hh", "1")),
         "gated_jacobian_norm": (("cell", "lag"), np.exp(gated_jacobian), attrs(
             f"spectral norm of ds_T/ds_(T-lag), s = h (GRU) or (h, c) (LSTM), {mean}", "1")),
         "gated_adjoint_norm": (("cell", "lag"), np.exp(gated_adjoint), attrs(
             f"norm of dL/ds_(T-lag) for ||dL/dh_T|| = 1, dL/dc_T = 0, {mean}", "1"))},
        coords={
            "matrix": ("matrix", list(MATRICES), attrs("random matrix family of W_hh", "1")),
            "activation": ("activation", list(ACTIVATIONS),
                           attrs("nonlinearity of the vanilla RNN", "1")),
            "spectral_norm": ("spectral_norm", np.asarray(config["spectral_norms"], float),
                              attrs("spectral norm ||W_hh||_2", "1")),
            "clipping": ("clipping", list(CLIPPING), attrs(
                "none, or the backpropagated vector rescaled to norm <= clip at every step", "1")),
            "lag": ("lag", np.arange(L + 1), attrs("steps back from the last state", "steps")),
            "cell": ("cell", cells, attrs("gated cell (Gaussian gain-1 W_hh)", "1"))})


def run(config, backend="cpu"):
    """Both parts of the study for ``config`` (see ``study_config``), as a Dataset.

    ``backend`` ("cpu" or "cuda") is where the pulse's forward pass runs, recorded in the
    ``backend`` attr; the Jacobian products and their norms always run on the CPU.

    Variables: ``pulse_gradient``, ``pulse_state`` (w, time); ``fixed_point``,
    ``fixed_point_slope`` (w); ``jacobian_norm`` (matrix, activation, spectral_norm,
    lag); ``adjoint_norm`` (matrix, activation, spectral_norm, clipping, lag);
    ``spectral_radius`` (matrix, spectral_norm); ``gated_jacobian_norm``,
    ``gated_adjoint_norm`` (cell, lag); provenance attrs with the configuration.

    Examples
    --------
    >>> cfg = study_config(quick=True, units=4, max_lag=5, burn_in=2, spectral_norms=[0.5])
    >>> ds = run(cfg)
    >>> ds.jacobian_norm.dims
    ('matrix', 'activation', 'spectral_norm', 'lag')
    >>> round(float(ds.jacobian_norm.sel(matrix="orthogonal", activation="linear", lag=5)[0]), 12)
    0.03125
    """
    check_choice("backend", backend, BACKENDS)
    ds = xr.merge([pulse_part(config, backend), network_part(config)], combine_attrs="override")
    dtype = np.dtype(config["dtype"])
    ds.attrs.update(provenance(f"studies.{NAME}", config, dtype, config["seed"], backend))
    return ds


# --- output ---------------------------------------------------------------------------

def figure(ds):
    """The pulse curves, the vanilla-RNN panels (one per matrix and activation) and the
    gated cells, as a matplotlib Figure (Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 8), constrained_layout=True)
    ax = axes[0, 0]
    for w in ds.w.values:
        ax.semilogy(ds.time, ds.pulse_gradient.sel(w=w), label=f"w = {w:g}")
    ax.axhline(VANISH_BELOW, color="grey", lw=0.8, ls=":")
    ax.set(title="one tanh unit after a pulse", xlabel="T", ylabel="|dh_T / dh_0|")
    ax.legend()
    colours = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, ds.spectral_norm.size))
    for m, matrix in enumerate(ds.matrix.values):
        for a, activation in enumerate(ds.activation.values):
            ax = axes[m, a + 1]
            for colour, s in zip(colours, ds.spectral_norm.values):
                sel = dict(matrix=matrix, activation=activation, spectral_norm=s)
                ax.semilogy(ds.lag, ds.jacobian_norm.sel(**sel), color=colour,
                            label=f"||W|| = {s:g}")
                ax.semilogy(ds.lag, ds.adjoint_norm.sel(**sel, clipping="per_step"),
                            color=colour, ls=":")
            ax.set(title=f"{activation}, {matrix} W  (dotted: clipped dL/dh)", xlabel="lag l")
            if a == 0:
                ax.set_ylabel("||dh_T / dh_(T-l)||_2")
            ax.legend(fontsize="small")
    ax = axes[1, 0]
    for cell in ds.cell.values:
        line, = ax.semilogy(ds.lag, ds.gated_jacobian_norm.sel(cell=cell), label=cell)
        ax.semilogy(ds.lag, ds.gated_adjoint_norm.sel(cell=cell), color=line.get_color(), ls="--")
    ax.set(title="gated cells, Gaussian gain 1", xlabel="lag l",
           ylabel="||ds_T / ds_(T-l)||  (dashed: ||dL/ds_(T-l)||)")
    ax.legend(fontsize="small")
    return fig


def pulse_table(ds):
    """The textbook table and the fixed-point explanation, as text."""
    T_end = int(ds.time[-1])
    lines = ["One tanh unit h_t = tanh(w h_(t-1) + x_t), h_(-1) = 0, pulse x_0 = 1, then x_t = 0.",
             f"|dh_T/dh_0| = prod_(t=1..T) w (1 - h_t^2); VANISH below {VANISH_BELOW:g}, "
             f"EXPLODE above {EXPLODE_ABOVE:g}.",
             f"{'w':>5s}  {'|dh_1/dh_0|':>12s} {'':7s}  {f'|dh_{T_end}/dh_0|':>13s}"]
    for w in ds.w.values:
        g1, gT = (float(ds.pulse_gradient.sel(w=w, time=T)) for T in (1, T_end))
        lines.append(f"{w:5.2f}  {g1:12.4e} {tag(g1):7s}  {gT:13.4e} {tag(gT)}")
    for w in ds.w.values[ds.w.values > 1]:
        h, slope = float(ds.fixed_point.sel(w=w)), float(ds.fixed_point_slope.sel(w=w))
        lines += [f"Why w = {w:g} still vanishes: the state does not decay to 0 but settles at the",
                  f"nonzero fixed point h* = tanh({w:g} h*) = {h:.6f}, where the local slope",
                  f"w (1 - h*^2) = {slope:.6f} < 1: tanh saturates and eats the gain w > 1.",
                  f"The product of slopes then shrinks like {slope:.4f}^T ({slope ** T_end:.2e} "
                  f"at T = {T_end};",
                  "the first slopes, taken while h is still larger than h*, are smaller still)."]
    return "\n".join(lines)


def matrix_table(ds, lags=(10, 25, 50)):
    """log10 of the Jacobian-product and clipped-gradient norms at a few lags and the
    last one, as text."""
    last = int(ds.lag[-1])
    lags = [lag for lag in lags if lag < last] + [last]
    head = "".join(f"{f'l={lag}':>9s}" for lag in lags)
    clip = json.loads(ds.attrs["config"])["clip"]
    lines = [f"log10 ||dh_T/dh_(T-l)||_2 | log10 ||dL/dh_(T-l)|| clipped per step to <= {clip:g}",
             f"{'matrix':>10s} {'activation':>10s} {'||W||':>5s} {'rho(W)':>6s} {head} |{head}"]
    with np.errstate(divide="ignore"):
        for matrix in ds.matrix.values:
            for activation in ds.activation.values:
                for s in ds.spectral_norm.values:
                    sel = dict(matrix=matrix, activation=activation, spectral_norm=s)
                    jac = np.log10(ds.jacobian_norm.sel(**sel, lag=lags).values)
                    clipped = ds.adjoint_norm.sel(**sel, clipping="per_step", lag=lags)
                    clip = np.log10(clipped.values)
                    rho = float(ds.spectral_radius.sel(matrix=matrix, spectral_norm=s))
                    lines.append(f"{matrix:>10s} {activation:>10s} {s:5.2f} {rho:6.3f} "
                                 + "".join(f"{v:9.2f}" for v in jac) + " |"
                                 + "".join(f"{v:9.2f}" for v in clip))
        lines.append(f"{'cell':>28s}  log10 ||ds_T/ds_(T-l)||_2")
        for cell in ds.cell.values:
            jac = np.log10(ds.gated_jacobian_norm.sel(cell=cell, lag=lags).values)
            lines.append(f"{cell:>28s} " + "".join(f"{v:9.2f}" for v in jac))
    return "\n".join(lines)


def study_config(quick=False, seed=0, dtype="float64", **overrides):
    """The study's full configuration (a JSON-able dict), quick or full size.

    >>> study_config(quick=True)["units"], study_config()["max_lag"]
    (16, 100)
    """
    config = {"weights": list(PULSE_WEIGHTS), "pulse_steps": PULSE_STEPS,
              "vanish_below": VANISH_BELOW, "explode_above": EXPLODE_ABOVE,
              **(QUICK if quick else FULL), "input_std": 0.5,
              "spectral_norms": [0.5, 0.9, 1.1, 1.5], "clip": 1.0, "forget_biases": [0.0, 1.0],
              "quick": bool(quick), "seed": int(seed), "dtype": str(np.dtype(dtype))}
    config.update({k: v for k, v in overrides.items() if v is not None})
    return config


def main(argv=None):
    """Parse the command line, run the study, save and print it; return the Dataset."""
    parser = study_parser(__doc__.splitlines()[0], NAME)
    parser.epilog = ("--backend cuda runs the pulse's forward pass on the GPU; the Jacobian "
                     "products and their spectral norms always run on the CPU.")
    parser.add_argument("--units", type=int,
                        help="N, units of the matrix version (default 64, quick 16)")
    parser.add_argument("--max-lag", type=int, help="L, the largest lag (default 100, quick 30)")
    parser.add_argument("--spectral-norms", type=parse_grid,
                        help="||W_hh||_2 values, a comma list or start:stop:num "
                             "(default 0.5,0.9,1.1,1.5)")
    parser.add_argument("--clip", type=float,
                        help="clipping bound c of the backpropagated vector (default 1)")
    args = parser.parse_args(argv)
    for name in ("units", "max_lag"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, "
                         f"got {getattr(args, name)}")
    if args.clip is not None and not args.clip > 0:
        parser.error(f"--clip must be positive, got {args.clip}")
    if args.spectral_norms is not None and not (np.all(args.spectral_norms > 0)
                                                and np.all(np.isfinite(args.spectral_norms))):
        parser.error("--spectral-norms must be positive and finite, got "
                     f"{args.spectral_norms.tolist()}")
    config = study_config(args.quick, args.seed, args.dtype, units=args.units,
                          max_lag=args.max_lag, clip=args.clip,
                          spectral_norms=None if args.spectral_norms is None
                          else args.spectral_norms.tolist())
    start = time.perf_counter()
    ds = run(config, args.backend)
    netcdf, png = save(ds, figure(ds), args.out, NAME)
    print(pulse_table(ds))
    print()
    print(matrix_table(ds))
    print(f"wrote {netcdf} and {png} ({time.perf_counter() - start:.1f} s)")
    return ds


if __name__ == "__main__":
    main()
