"""Lyapunov exponents and long Jacobian products, by QR-orthonormalised tangent vectors.

k tangent vectors are advanced with the state, q <- J_t q, and re-orthonormalised by a
QR decomposition every ``interval`` steps; the logs of the |R_jj| accumulate, in
float64, the stretching of the first k directions (Benettin et al. 1980; Shimada &
Nagashima 1979). Nothing is kept per step: memory does not depend on the length. For
the full spectrum (k = S) with ``interval`` > 1, each interval's Jacobians are first
multiplied together and then applied, q <- QR(J_t1 ... J_t0 q), which lets the product
of one interval run beside the QR of the one before (``kernels.tangents.spectrum_walk``);
the exponents are the same up to rounding, the trajectory the same bit for bit.
``log_singular_values`` keeps every step's whole R as well, in scaled log form
(``analysis.graded``), for the singular values of the product itself.

>>> import numpy as np, dynamics, analysis
>>> rnn = dynamics.RNN.init(1, 20, init="gaussian", gain=0.5, seed=0)
>>> ly = analysis.lyapunov_spectrum(rnn, steps=2000, n_exponents=2, burn_in=100)
>>> ly.lyapunov_exponents.dims
('batch', 'exponent')
>>> rho = np.abs(np.linalg.eigvals(rnn.weight_hh)).max()
>>> bool(abs(float(ly.lyapunov_max[0]) - np.log(rho)) < 1e-2)  # decays to 0, where J = W
True
"""
import numba
import numpy as np
import xarray as xr

from analysis._common import (analysis_dtype, attrs, drop_member, item_dims, provenance,
                              single_cell, state_size)
from analysis.gradients import adjoint_log_norms, default_loss_gradient, fit_log_slope
from analysis.graded import graded_log_singular_values, pivoted_qr_step
from analysis.jacobians import (check_drive, diverged_variable, steps_and_batch,
                                tape_arguments, trajectory, trajectory_diverged)
from dynamics.init import children
from dynamics.layer import LayerTape, member_major_parameters, single_threaded_blas
from dynamics.network import as_network
from dynamics.propagation import check_input, check_states, engine
from dynamics.validation import check_float_array, check_positive_int
from kernels.cells import saved_width
from kernels.tangents import (column_blocks, spectrum_walk, tangent_chain, tangent_walk,
                              unit_block_size)


def _inputs(cell, x, drive, steps, batch, dtype):
    """(kernel input (1 or E, T, B, width), additive?, steps, batch)."""
    if x is not None and drive is not None:
        raise ValueError("give x (through W_ih) or drive (added to the pre-activations), not both")
    if x is None and drive is None:
        steps = check_positive_int("steps", steps)
        batch = check_positive_int("batch", 1 if batch is None else batch)
        return np.zeros((1, 0, batch, 0), dtype), False, steps, batch
    if drive is not None:
        x, additive = check_drive(cell, drive), True
    else:
        x, additive = check_input(cell, check_float_array("x", x))[0], False
        x = x.transpose(1, 0, 2, 3) if x.ndim == 4 else x  # back to time-major
    T = x.shape[0]
    if steps is not None and steps != T:
        raise ValueError(f"steps must match the input's {T} steps, got {steps}")
    if batch is not None and batch != x.shape[-2]:
        raise ValueError(f"batch must match the input's batch of {x.shape[-2]}, got {batch}")
    if T == 0:
        raise ValueError("the input must have at least one step")
    x = x.astype(dtype, copy=False)
    member_major_x = x.transpose(1, 0, 2, 3) if x.ndim == 4 else x[None]
    return np.ascontiguousarray(member_major_x), additive, T, x.shape[-2]


def _member_seeds(seed, ensemble_size):
    """One seed per member: ``seed`` itself for a single network; for an ensemble of E,
    the children of ``seed``, or ``seed`` if it is a list of E SeedSequences."""
    if isinstance(seed, (list, tuple)) and any(isinstance(s, np.random.SeedSequence)
                                               for s in seed):
        if not (all(isinstance(s, np.random.SeedSequence) for s in seed)
                and len(seed) == (ensemble_size or 0)):
            members = "a single network" if ensemble_size is None else f"{ensemble_size} members"
            raise ValueError(f"seed as a list must hold one SeedSequence per ensemble member "
                             f"({members}), got {len(seed)} items")
        return list(seed)
    return [seed] if ensemble_size is None else children(seed, ensemble_size)


def _initial(cell, h0, batch, n_vectors, seed, dtype):
    """States (E, B, H), (E, B, H or 0) and orthonormal tangents (E, B, S, k).

    As in ``dynamics.init.draw``, a single network draws from ``SeedSequence(seed)`` and
    ensemble member e from its child e (so member e's result is that of a single network
    given that child as seed), or from ``seed[e]`` when ``seed`` is a list of E
    SeedSequences; states from the member's child 0, tangents from its child 1:
    h0 ~ N(0, 1) per unit (c0 too for an LSTM) unless given, and random orthonormal
    tangents (QR of a Gaussian matrix).
    """
    E, H, S = cell.ensemble_size or 1, cell.hidden_size, state_size(cell)
    members = _member_seeds(seed, cell.ensemble_size)
    streams = [[np.random.default_rng(s) for s in children(member, 2)] for member in members]
    if h0 is None:
        h = np.stack([states.normal(size=(batch, H)) for states, _ in streams]).astype(dtype)
        c = (np.stack([states.normal(size=(batch, H)) for states, _ in streams]).astype(dtype)
             if cell.kind == "lstm" else np.zeros((E, batch, 0), dtype))
    else:
        h, c = (state[0].copy() for state in check_states(as_network(cell), h0, batch, dtype))
    q = np.empty((E, batch, S, n_vectors), dtype)
    for e, (_, tangents) in enumerate(streams):
        for b in range(batch):
            q[e, b] = np.linalg.qr(tangents.normal(size=(S, n_vectors)))[0]
    return h, c, q


def _walk(cell, x, additive, steps, burn_in, interval, h, c, q, dtype, keep=0, backend="cpu"):
    """Advance ``burn_in`` steps (QR every ``interval``, records dropped), then
    R = (steps - burn_in) // interval intervals; return (log |R_jj| (E, B, R, k),
    diverged, the forward tape of the last ``keep`` steps or None)."""
    E, B, H = h.shape
    diverged = np.zeros((E, B), bool)
    parameters = member_major_parameters(cell, dtype)
    used = burn_in + (steps - burn_in) // interval * interval
    if backend == "cuda":  # states and tangents stay on the GPU from start to end
        gpu = engine(backend)
        parameters = [gpu.to_device(a) for a in parameters]
        state = [gpu.to_device(a) for a in (h, c, q, diverged)]
        if burn_in:
            gpu.tangent_walk(cell, x, additive, parameters, 0, burn_in, interval, *state)
        log_r = gpu.tangent_walk(cell, x, additive, parameters, burn_in, used - burn_in,
                                 interval, *state)
        return log_r, state[3].copy_to_host(), None
    block_size = unit_block_size(cell.hidden_size, E * B)  # (tangent_walk)
    in_flight = min(E * B, 4 * numba.get_num_threads())  # (spectrum_walk: items at once)
    gated = cell.kind in ("lstm", "gru")  # a vanilla RNN's linearisation needs h alone
    tape = (np.empty((E, keep, B, H), dtype), np.empty((E, keep, B, c.shape[2]), dtype),
            np.empty((E, keep if gated else 0, B, saved_width(cell.code, H)), dtype),
            np.empty_like(h), np.empty_like(c))

    def advance(t0, n_steps):
        log_r = np.empty((E, B, -(-n_steps // interval), q.shape[-1]))
        with single_threaded_blas():
            if q.shape[-1] == q.shape[-2] and interval > 1:  # all exponents: by interval products
                spectrum_walk(cell.code, x, additive, *parameters, t0, n_steps, interval, h, c,
                              q, diverged, log_r, in_flight, used - keep, *tape)
            else:
                tangent_walk(cell.code, x, additive, *parameters, t0, n_steps, interval, h, c,
                             q, diverged, log_r, block_size, used - keep, *tape)
        return log_r

    if burn_in:
        advance(0, burn_in)
    log_r = advance(burn_in, used - burn_in)
    if not keep:
        return log_r, diverged, None
    hs, cs, p, h_before, c_before = tape
    return log_r, diverged, LayerTape(cell, False, None, parameters[0], parameters[2],
                                      parameters[3], h_before, c_before, p, hs, cs)


def _check_vectors(cell, n_vectors, name="n_exponents"):
    S = state_size(cell)
    if n_vectors is None:
        return S
    n_vectors = check_positive_int(name, n_vectors)
    if n_vectors > S:
        raise ValueError(f"{name} must be at most the state size S = {S}, got {n_vectors}")
    return n_vectors


def lyapunov_spectrum(model, x=None, *, drive=None, steps=None, batch=None, n_exponents=None,
                      burn_in=0, interval=1, h0=None, seed=0, dtype=np.float64,
                      gradient_lags=None, backend="cpu"):
    """The first ``n_exponents`` Lyapunov exponents, autonomous or driven.

    Parameters
    ----------
    model : dynamics.RNN, LSTM, GRU (or an ensemble), or a one-layer unidirectional Network
    x : (T, B, D) (or (T, E, B, D)) input through W_ih; or
    drive : (T, B, G*H) (or (T, E, B, G*H)) input added to the pre-activations
        directly, the "x_t" of ``h_t = phi(W h_(t-1) + x_t + b)``; or neither, with
    steps, batch : an autonomous run (x_t = 0) of ``steps`` steps from ``batch`` states
        (default 1); with an input, its own T and B (``steps``/``batch`` must then match)
    n_exponents : k, 1 <= k <= S (S = H, or 2H for an LSTM); default all S
    burn_in : steps run (state and tangents) before anything is recorded
    interval : re-orthonormalise every ``interval`` >= 1 steps (one record each); the
        k-th exponent loses digits once (lambda_1 - lambda_k) * interval passes about 36
        nats in float64 (16 in float32): the tangents then collapse within an interval
    h0 : initial state as for ``dynamics.forward``; default N(0, 1) per unit, drawn
        from ``seed`` (member e of an ensemble from child e of ``SeedSequence(seed)``)
    seed : an int or SeedSequence for the initial states and tangents; for an ensemble
        also a list of E SeedSequences, one per member (a sweep's points: a point's
        result then does not depend on the ensemble it ran in)
    dtype : float64 (default) or float32 arithmetic; the logs always add up in float64
    gradient_lags : L, to follow also, on the same trajectory, the BPTT gradient of a loss
        on the last state (dLoss/dh = 1/sqrt(H), as ``gradient_norm_vs_lag``'s default)
        back L steps (at most the steps after burn-in); keeps the last L steps in memory
        (cpu backend only)
    backend : "cpu", or "cuda" to run every sequence's walk on an NVIDIA GPU
        (``kernels.cuda_tangents``); the exponents agree with the CPU's to within the
        rounding differences a chaotic trajectory amplifies

    Returns
    -------
    xarray.Dataset: ``lyapunov_exponents`` ``([member,] batch, exponent)`` in nats/step
    (in QR order: descending up to finite-time fluctuations), ``lyapunov_max``,
    ``running_estimate`` and ``finite_time_exponents`` ``([member,] batch, time,
    exponent)`` (the estimate after each record, and each record's own exponents), and
    ``diverged`` (the state or tangents stopped being finite: exponents are then nan).
    The exponents use the ``(T - burn_in) // interval`` whole intervals after burn-in.
    With ``gradient_lags``, also ``log_gradient_norm`` ``([member,] batch, lag)`` and its
    fitted log-slope over the second half of the lags, ``gradient_decay_rate``
    (asymptotically lambda_max).
    """
    cell = single_cell(model)
    dtype = analysis_dtype(dtype)
    run = engine(backend)
    if backend == "cuda" and gradient_lags is not None:
        raise ValueError("gradient_lags is computed on backend='cpu' only; on the GPU, "
                         "use analysis.gradient_norm_vs_lag(..., backend='cuda')")
    if backend == "cuda":
        run.check_tangents_fit(cell, dtype)
    n_vectors = _check_vectors(cell, n_exponents)
    inputs, additive, steps, batch = _inputs(cell, x, drive, steps, batch, dtype)
    burn_in = check_positive_int("burn_in", burn_in, minimum=0)
    interval = check_positive_int("interval", interval)
    if (steps - burn_in) // interval < 1:
        raise ValueError(f"need at least one interval of {interval} steps after the burn-in "
                         f"of {burn_in}, got {steps} steps")
    h, c, q = _initial(cell, h0, batch, n_vectors, seed, dtype)
    keep = 0
    if gradient_lags is not None:
        keep = check_positive_int("gradient_lags", gradient_lags)
        if keep > (steps - burn_in) // interval * interval:
            raise ValueError("gradient_lags must be at most the steps measured after the "
                             f"burn-in, {(steps - burn_in) // interval * interval}, got {keep}")
    log_r, diverged, tape = _walk(cell.astype(dtype), inputs, additive, steps, burn_in,
                                  interval, h, c, q, dtype, keep, backend)
    n_records = log_r.shape[2]
    elapsed = interval * np.arange(1, n_records + 1)
    running = np.cumsum(log_r, axis=2) / elapsed[:, None]
    exponents = running[:, :, -1]
    dims = item_dims(cell)
    nats = "nats/step"
    config = {"steps": steps, "burn_in": burn_in, "interval": interval, "n_exponents": n_vectors,
              "input": "none" if x is None and drive is None else "drive" if additive else "x",
              "batch": batch, "h0": "random" if h0 is None else "given",
              "gradient_lags": gradient_lags}
    variables = {}
    if tape is not None:
        logs = adjoint_log_norms(tape, default_loss_gradient(tape), keep)
        lags = np.arange(keep + 1)
        rate = fit_log_slope(np.where(lags >= keep // 2, logs, np.nan), lags)
        variables = {
            "log_gradient_norm": (dims + ("lag",), drop_member(logs, cell),
                                  attrs("natural log of ||dLoss / d s_(T-lag)||", "1")),
            "gradient_decay_rate": (dims, drop_member(rate, cell),
                                    attrs("fitted log-slope of the gradient norm against lag",
                                          "1/step"))}
    dataset = xr.Dataset(
        {"lyapunov_exponents": (dims + ("exponent",), drop_member(exponents, cell),
                                attrs("Lyapunov exponents", nats)),
         "lyapunov_max": (dims, drop_member(exponents[..., 0], cell),
                          attrs("largest Lyapunov exponent", nats)),
         "running_estimate": (dims + ("time", "exponent"), drop_member(running, cell),
                              attrs("Lyapunov exponents estimated up to this step", nats)),
         "finite_time_exponents": (dims + ("time", "exponent"),
                                   drop_member(log_r / interval, cell),
                                   attrs("exponents of one re-orthonormalisation interval", nats)),
         "diverged": diverged_variable(cell, diverged, "state or tangents")},
        coords={"exponent": ("exponent", np.arange(n_vectors),
                             attrs("index of the exponent, in QR order (0: the largest)", "1")),
                "time": ("time", burn_in + elapsed, attrs("steps run at this record", "steps"))},
        attrs=provenance("lyapunov_spectrum", config, dtype, seed, backend))
    if variables:
        dataset = dataset.assign(variables).assign_coords(
            lag=("lag", np.arange(keep + 1), attrs("steps back from the last state", "steps")))
    return dataset


def log_singular_values(model, x, h0=None, n_values=None, interval=1, dtype=np.float64):
    """Log singular values, descending, of the product d s_(T-1) / d s_(-1) = J_(T-1) ...
    J_0 over the whole of ``x``, to the accuracy of the factors however long the product.

    The product is accumulated as U diag(exp(log_d)) M with a pivoted QR step after
    every step, and its singular values come from the QR algorithm run on that form
    (``analysis.graded``): a 10,000-step product neither over- nor underflows, and small
    singular values keep their relative accuracy. ``interval`` > 1 (it must divide T)
    multiplies that many Jacobians before each QR: fewer QRs, but values more than 1/eps
    below the largest within an interval lose digits, and the interval's product must
    stay inside the dtype's range (an overflow is flagged as ``diverged``; an underflow
    reads as -inf). Every one of the S directions is followed, whatever ``n_values``:
    O(S^3) work per step and sequence.

    Returns an xarray.DataArray ``([member,] batch, index)`` (the first ``n_values``,
    default all S; -inf for a singular product's zeros), nan where the trajectory or an
    interval's product stopped being finite (the coordinate ``diverged``).
    """
    cell = single_cell(model)
    n_vectors = _check_vectors(cell, n_values, "n_values")
    if x is None:
        raise ValueError("log_singular_values needs the input x, (T, B, D) or (T, E, B, D)")
    steps, _ = steps_and_batch(cell, x)
    if steps == 0:
        raise ValueError("x must have at least one step")
    interval = check_positive_int("interval", interval)
    if steps % interval:
        raise ValueError(f"interval must divide the number of steps {steps}, got {interval}")
    cell, tape = trajectory(cell, x, h0, dtype)
    E, _, B, _ = tape.hs.shape
    S = state_size(cell)
    q = np.broadcast_to(np.eye(S, dtype=tape.hs.dtype), (E, B, S, S)).copy()
    log_d, m = np.zeros((E, B, S)), np.broadcast_to(np.eye(S), (E, B, S, S)).copy()
    blocks = column_blocks(S, E * B, q.dtype)
    diverged = trajectory_diverged(tape)
    with single_threaded_blas(), np.errstate(invalid="ignore", over="ignore"):
        for start in range(-1, steps - 1, interval):
            tangent_chain(*tape_arguments(tape), start, start + interval, q, blocks)
            diverged |= ~np.isfinite(q).all(axis=(-2, -1))
            q[diverged] = np.eye(S)   # a diverged sequence: no values; the others go on
            q[...], log_d, m = pivoted_qr_step(q, log_d, m)
    values = np.full((E, B, n_vectors), np.nan)
    for e, b in zip(*np.nonzero(~diverged)):
        values[e, b] = graded_log_singular_values(log_d[e, b], m[e, b])[:n_vectors]
    return xr.DataArray(drop_member(values, cell), dims=item_dims(cell) + ("index",),
                        coords={"diverged": diverged_variable(
                            cell, diverged, "trajectory or an interval's product")},
                        name="log_singular_values",
                        attrs={**attrs("natural log of the singular values of the Jacobian "
                                       "product over all steps", "1"),
                               **provenance("log_singular_values",
                                            {"steps": steps, "interval": interval},
                                            tape.hs.dtype)})
