"""How gradients fade or grow with the distance they travel back in time.

For the trajectory driven by ``x`` and its last state s_T (T = last step), the norms of

    P_l = d s_T / d s_(T-l),   l = 0, 1, ..., L

(spectral and Frobenius) and of the BPTT adjoint v P_l = dLoss / d s_(T-l) for a loss
whose gradient at s_T is v, against the lag l, with the fitted log-slope per step (the
asymptotic rate equals the largest Lyapunov exponent) and the lag at which each norm
has fallen by a factor e. Products are carried in log space, so lags of thousands of
steps neither under- nor overflow.

>>> import numpy as np, dynamics, analysis
>>> rnn = dynamics.RNN.init(1, 8, init="gaussian", gain=0.5, seed=0)
>>> g = analysis.gradient_norm_vs_lag(rnn, np.zeros((50, 2, 1)), max_lag=40)
>>> g.log_gradient_norm.dims
('norm', 'batch', 'lag')
>>> rate = g.decay_rate.sel(norm="spectral").values  # the state stays at 0, where J = W:
>>> rho = np.abs(np.linalg.eigvals(rnn.weight_hh)).max()  # so the rate is ln rho(W)
>>> bool(np.allclose(rate, np.log(rho), atol=0.02))
True
"""
import functools

import numpy as np
import xarray as xr

from analysis._common import (analysis_dtype, attrs, drop_member, item_dims, provenance,
                              single_cell, state_size)
from analysis.jacobians import (diverged_variable, steps_and_batch, tape_arguments,
                                trajectory, trajectory_diverged)
from dynamics.layer import single_threaded_blas
from dynamics.propagation import engine
from dynamics.validation import check_float_array, check_positive_int
from kernels.tangents import adjoint_chain, unit_block_size

NORMS = ("spectral", "frobenius", "adjoint")


def fit_log_slope(log_values, lags):
    """Least-squares slope of ``log_values`` (..., L) against ``lags``, over the finite
    entries of each series (nan where fewer than two)."""
    finite = np.isfinite(log_values)
    count = finite.sum(-1)
    y = np.where(finite, log_values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_lag = np.where(finite, lags, 0.0).sum(-1) / count
        centred = np.where(finite, lags - mean_lag[..., None], 0.0)  # sum(centred) = 0, so
        slope = (centred * y).sum(-1) / (centred ** 2).sum(-1)      # y needs no centring
    return np.where(count >= 2, slope, np.nan)


def e_folding_lag(log_values, lags):
    """First lag where the log norm has dropped by 1 from lag 0 (nan if it never does)."""
    fallen = log_values <= log_values[..., :1] - 1.0
    first = np.argmax(fallen, axis=-1)
    return np.where(fallen.any(-1), lags[first], np.nan)


def _check_fit_lags(fit_lags, max_lag):
    """(first, last): two integers with 0 <= first <= last <= max_lag; default the
    second half of the lags, (max_lag // 2, max_lag)."""
    if fit_lags is None:
        return max_lag // 2, max_lag
    try:
        first, last = fit_lags
    except (TypeError, ValueError):
        raise ValueError(f"fit_lags must be a pair (first, last) of lags, got {fit_lags!r}") from None
    first = check_positive_int("fit_lags[0]", first, minimum=0)
    last = check_positive_int("fit_lags[1]", last, minimum=first)
    if last > max_lag:
        raise ValueError(f"fit_lags[1] must be at most max_lag = {max_lag}, got {last}")
    return first, last


def default_loss_gradient(tape):
    """dLoss/ds_T = 1/sqrt(H) on every h unit, 0 on c: (E, B, S)."""
    E, _, B, H = tape.hs.shape
    v = np.zeros((E, B, H + tape.cs.shape[3]), tape.hs.dtype)
    v[..., :H] = 1.0 / np.sqrt(H)
    return v


def adjoint_log_norms(tape, v, max_lag):
    """log ||dLoss / d s_(T-lag)||, lag = 0..max_lag, (E, B, max_lag + 1), for the loss
    gradient ``v`` (E, B, S) at the tape's last state: the BPTT adjoint alone, one vector
    carried back (S times less work than the products)."""
    E, T, B, _ = tape.hs.shape
    logs = np.full((3, E, B, max_lag + 1), np.nan)
    with single_threaded_blas():
        adjoint_chain(*tape_arguments(tape), T - 1, v[:, :, None], v[:, :, :0], False,
                      logs[0], logs[1], logs[2], unit_block_size(v.shape[2], E * B))
    return logs[0]


def gradient_norm_vs_lag(model, x=None, max_lag=None, h0=None, grad_final=None, spectral=True,
                         fit_lags=None, dtype=np.float64, drive=None, products=True,
                         backend="cpu"):
    """Norms of d s_T / d s_(T-l) and of the BPTT adjoint against the lag l.

    Parameters
    ----------
    model, x, h0, dtype : as for ``analysis.state_jacobians``
    max_lag : L, at most T (lag T reaches the initial state); default T
    grad_final : v, the loss gradient at the last state, ([E,] B, S) or (S,); default
        1/sqrt(H) on every h unit and 0 on c
    spectral : compute the spectral norm (one SVD per lag: the costly part for large S)
    fit_lags : (first, last) lags of the log-slope fit; default the second half, (L//2, L)
    drive : instead of ``x``, an input added to the pre-activations (see
        ``analysis.lyapunov_spectrum``)
    products : False to follow the adjoint vector alone (S times less work: for large
        networks); the spectral and Frobenius norms are then nan
    backend : "cpu", or "cuda": the trajectory and the adjoint run on an NVIDIA GPU
        (one block per sequence); needs ``products=False`` (the products' SVDs are
        LAPACK's, on the CPU)

    Returns
    -------
    xarray.Dataset with ``gradient_norm`` and ``log_gradient_norm``
    ``(norm, [member,] batch, lag)`` for norm in (spectral, frobenius, adjoint);
    ``decay_rate`` (log-slope per step: negative when gradients vanish), ``decay_lag``
    (lag of an e-fold drop), both ``(norm, [member,] batch)``; ``diverged``
    ``([member,] batch)``, true where the trajectory or a product stopped being finite.
    """
    if backend == "cuda" and products:
        raise ValueError("backend='cuda' follows the adjoint alone: pass products=False "
                         "(the spectral and Frobenius norms of the products need backend='cpu')")
    run = engine(backend)
    cell = single_cell(model)
    if backend == "cuda":
        run.check_adjoint_fits(cell, analysis_dtype(dtype))
    T, B = steps_and_batch(cell, x, drive)
    if T == 0:
        raise ValueError("x must have at least one step to measure gradients against lag")
    max_lag = T if max_lag is None else check_positive_int("max_lag", max_lag, minimum=0)
    if max_lag > T:
        raise ValueError(f"max_lag must be at most the number of steps T = {T}, got {max_lag}")
    first, last = _check_fit_lags(fit_lags, max_lag)
    E, S = cell.ensemble_size or 1, state_size(cell)
    if grad_final is not None:
        v = check_float_array("grad_final", grad_final)
        want = (E, B, S) if cell.ensemble_size is not None else (B, S)
        try:
            v = np.broadcast_to(v, want)
        except ValueError:
            raise ValueError(f"grad_final must broadcast to shape {want}, got {v.shape}") from None
    cell, tape = trajectory(model, x, h0, dtype, drive, backend)
    if grad_final is None:
        v = default_loss_gradient(tape)
    else:
        v = np.ascontiguousarray(np.broadcast_to(v, (E, B, S)), dtype=tape.hs.dtype)
    lags = np.arange(max_lag + 1)
    logs = np.full((3, E, B, max_lag + 1), np.nan)
    if products:
        start = np.broadcast_to(np.eye(S, dtype=v.dtype), (E, B, S, S))
        with single_threaded_blas():
            adjoint_chain(*tape_arguments(tape), T - 1, start, v, spectral, logs[1], logs[0],
                          logs[2], unit_block_size(S, E * B))
    else:
        logs[2] = (adjoint_log_norms if backend == "cpu" else run.adjoint_log_norms)(tape, v,
                                                                                   max_lag)
    in_fit = (lags >= first) & (lags <= last)
    rate = fit_log_slope(np.where(in_fit, logs, np.nan), lags)
    drop = e_folding_lag(logs, lags)
    diverged = trajectory_diverged(tape, run.to_host) | np.isnan(logs[2]).any(-1)
    norm_dims = ("norm",) + item_dims(cell)
    member = functools.partial(drop_member, cell=cell, axis=1)  # logs are (norm, E, B, ...)
    config = {"steps": T, "max_lag": max_lag, "spectral": spectral, "products": products,
              "input": "drive" if drive is not None else "x",
              "fit_lags": [int(first), int(last)], "grad_final": "default" if grad_final is None else "given"}
    return xr.Dataset(
        {"log_gradient_norm": (norm_dims + ("lag",), member(logs),
                               attrs("natural log of the norm of d s_T / d s_(T-lag) "
                                     "(adjoint: of dLoss / d s_(T-lag))", "1")),
         "gradient_norm": (norm_dims + ("lag",), member(np.exp(logs)),
                           attrs("norm of d s_T / d s_(T-lag) (adjoint: of dLoss / d s_(T-lag))",
                                 "1")),
         "decay_rate": (norm_dims, member(rate),
                        attrs("fitted log-slope of the norm against lag", "1/step")),
         "decay_lag": (norm_dims, member(drop),
                       attrs("lag at which the norm has fallen by a factor e", "steps")),
         "diverged": diverged_variable(cell, diverged, "trajectory or product")},
        coords={"norm": ("norm", list(NORMS), attrs(
                    "spectral or Frobenius norm of the Jacobian product, or the adjoint's "
                    "Euclidean norm", "1")),
                "lag": ("lag", lags, attrs("steps back from the last state", "steps"))},
        attrs=provenance("gradient_norm_vs_lag", config, tape.hs.dtype, backend=backend))
