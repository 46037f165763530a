"""State Jacobians along a trajectory and their products, as xarray.

The state s_t is h_t, or (h_t, c_t) stacked for an LSTM; s_(-1) is the initial state.
J_t = d s_t / d s_(t-1) is the Jacobian of step t along the trajectory driven by x.

>>> import numpy as np, dynamics, analysis
>>> rnn = dynamics.RNN.init(2, 4, seed=0)
>>> x = np.random.default_rng(0).normal(size=(10, 3, 2))
>>> jac = analysis.state_jacobians(rnn, x)
>>> jac.dims, jac.shape
(('time', 'batch', 'row', 'column'), (10, 3, 4, 4))
>>> prod = analysis.jacobian_product(rnn, x, t=9, k=6)
>>> j = jac.values
>>> bool(np.allclose(prod[0], j[9, 0] @ j[8, 0] @ j[7, 0]))
True
"""
import numpy as np
import xarray as xr

import dynamics
from analysis._common import (analysis_dtype, attrs, drop_member, item_dims, provenance,
                              single_cell, state_coords, state_size)
from dynamics.layer import LayerTape, gemm_rows, member_major_parameters, single_threaded_blas
from dynamics.network import as_network
from dynamics.propagation import check_input, check_states, engine
from dynamics.validation import check_float_array, check_shape
from kernels.cells import pack_member_panels, panel_width, saved_width
from kernels.sequence import sequence_forward_gemm
from kernels.tangents import column_blocks, tangent_chain, trajectory_jacobians


def steps_and_batch(model, x, drive=None):
    """(T, B) of the input ``x`` (or ``drive``), checked before anything runs."""
    cell = single_cell(model)
    if drive is not None:
        if x is not None:
            raise ValueError("give x (through W_ih) or drive (added to the pre-activations), "
                             "not both")
        drive = check_drive(cell, drive)
        return drive.shape[0], drive.shape[-2]
    if x is None:
        raise ValueError("give the input x (or a drive)")
    x, batch = check_input(cell, x)   # (T, B, D), or member-major (E, T, B, D)
    return x.shape[-3], batch


def trajectory(model, x, h0=None, dtype=np.float64, drive=None, backend="cpu"):
    """Run ``model`` over ``x`` (or ``drive``, added to the pre-activations) in ``dtype``;
    return (cell, tape of the saved steps, on ``backend``'s arrays)."""
    cell = single_cell(model)
    dtype = analysis_dtype(dtype)
    steps_and_batch(cell, x, drive)
    if drive is None:
        x = check_float_array("x", x).astype(dtype, copy=False)
        return cell, dynamics.forward(cell.astype(dtype), x, h0, backend).tapes[0]
    return cell, driven_tape(cell.astype(dtype), drive, h0, backend)


def check_drive(cell, drive):
    """``drive`` as a float array of shape (T, B, G*H), or (T, E, B, G*H) for an ensemble
    whose members have their own, with T, B >= 1."""
    drive = check_float_array("drive", drive)
    E, width = cell.ensemble_size, cell.gates * cell.hidden_size
    shape = ("T", E, "B", width) if E is not None and drive.ndim == 4 else ("T", "B", width)
    check_shape("drive", drive, shape)
    if drive.shape[0] == 0 or drive.shape[-2] == 0:
        raise ValueError(f"drive must have at least one step and a batch of at least 1, got "
                         f"shape {drive.shape}")
    return drive


def driven_tape(cell, drive, h0, backend="cpu"):
    """The forward tape of ``cell`` when ``drive`` (T, [E,] B, G*H) is added to its
    pre-activations in place of W_ih x (on the CPU: the batched recurrence, which takes
    precomputed input projections)."""
    run = engine(backend)
    drive = check_drive(cell, drive).astype(cell.dtype, copy=False)
    E, width = cell.ensemble_size, cell.gates * cell.hidden_size
    n_members, batch = E or 1, drive.shape[-2]
    h_init, c_init = (s[0] for s in check_states(as_network(cell), h0, batch, cell.dtype))
    w_ih, b_ih, w_hh, b_hh = member_major_parameters(cell, cell.dtype)
    T, H = drive.shape[0], cell.hidden_size
    member_drive = drive.transpose(1, 0, 2, 3) if drive.ndim == 4 else drive[None]
    if backend == "cuda":
        return run.layer_forward(cell, run.to_device(member_drive), run.to_device(h_init),
                                 run.to_device(c_init), False, additive=True)
    p = np.empty((n_members, T, batch, saved_width(cell.code, H)), cell.dtype)
    p[..., :width] = member_drive + b_ih[:, None, None, :]
    hs = np.empty((n_members, T, batch, H), cell.dtype)
    cs = np.empty((n_members, T, batch, H if cell.kind == "lstm" else 0), cell.dtype)
    width = panel_width(hs)
    packed_hh_t = pack_member_panels(w_hh.transpose(0, 2, 1), width)
    no_inputs = np.empty((1, T, batch, 0), cell.dtype)  # p holds the projections
    no_packed_ih = np.empty((n_members, 0, 0, width), cell.dtype)
    with single_threaded_blas():
        sequence_forward_gemm(cell.code, False, no_inputs, no_packed_ih, b_ih, p, packed_hh_t,
                              b_hh, h_init, c_init, hs, cs, gemm_rows(cell.dtype, n_members, batch))
    return LayerTape(cell, False, None, w_ih, w_hh, b_hh, h_init, c_init, p, hs, cs)


def tape_arguments(tape):
    """The tape's arrays in the order the kernels of ``kernels.tangents`` take them."""
    return tape.cell.code, tape.p, tape.weight_hh, tape.h0, tape.c0, tape.hs, tape.cs


def trajectory_diverged(tape, to_host=np.asarray):
    """(E, B): true where the trajectory stopped being finite (h, or c for an LSTM)."""
    finite = [np.isfinite(to_host(states)).all(axis=(1, 3)) for states in (tape.hs, tape.cs)]
    return ~(finite[0] & finite[1])


def diverged_variable(cell, diverged, what="trajectory"):
    """The variable or coordinate ``diverged`` (``[member,] batch``) from (E, B) flags."""
    return item_dims(cell), drop_member(diverged, cell), attrs(f"{what} stopped being finite",
                                                               "1")


def state_labels(cell, *dims):
    """Coordinates naming the state component of each index along ``dims``."""
    part, unit = state_coords(cell)
    labels = {}
    for dim in dims:
        labels[f"{dim}_part"] = (dim, part, attrs(f"state part of the {dim} (h, or c)", "1"))
        labels[f"{dim}_unit"] = (dim, unit, attrs(f"unit of the {dim}'s state part", "1"))
    return labels


def state_jacobians(model, x, h0=None, dtype=np.float64):
    """J_t = d s_t / d s_(t-1) at every step of the trajectory driven by ``x``.

    Holds T * B * S^2 numbers: for long sequences use ``jacobian_product``,
    ``gradient_norm_vs_lag`` or ``log_singular_values`` instead.

    Parameters
    ----------
    model : dynamics.RNN, LSTM, GRU (or an ensemble), or a one-layer unidirectional Network
    x : (T, B, D) input, or (T, E, B, D) for an ensemble with inputs per member
    h0 : initial state as for ``dynamics.forward`` (zeros if omitted)
    dtype : float64 (default) or float32

    Returns
    -------
    xarray.DataArray ``(time, [member,] batch, row, column)``; the coordinates
    ``row_part``/``row_unit`` (and ``column_*``) name each state component ("h" or "c",
    unit index), and ``diverged`` flags the sequences whose trajectory stopped being
    finite (their Jacobians hold inf or nan from there on).
    """
    cell, tape = trajectory(model, x, h0, dtype)
    E, T, B, _ = tape.hs.shape
    S = state_size(cell)
    jac = np.empty((E, T, B, S, S), tape.hs.dtype)
    with single_threaded_blas():
        trajectory_jacobians(*tape_arguments(tape), jac)
    jac = np.moveaxis(drop_member(jac, cell), -4, 0)  # time first, as in dynamics
    return xr.DataArray(
        jac, dims=("time",) + item_dims(cell) + ("row", "column"),
        coords={"time": ("time", np.arange(T), attrs("step t of the trajectory", "steps")),
                **state_labels(cell, "row", "column"),
                "diverged": diverged_variable(cell, trajectory_diverged(tape))},
        name="state_jacobian",
        attrs={**attrs("state Jacobian d s_t / d s_(t-1)", "1"),
               **provenance("state_jacobians", {"steps": T, "batch": B}, jac.dtype)})


def jacobian_product(model, x, t, k, h0=None, dtype=np.float64):
    """d s_t / d s_k = J_t J_(t-1) ... J_(k+1) along the trajectory driven by ``x``.

    ``-1 <= k <= t < T``; k = -1 is the initial state, k = t gives the identity. Products
    of many steps can over- or underflow: their singular values are better taken with
    ``log_singular_values``. Returns ``([member,] batch, row, column)``, with the
    coordinate ``diverged`` as ``state_jacobians``.
    """
    T, _ = steps_and_batch(model, x)
    t = dynamics.validation.check_positive_int("t", t, minimum=0)
    k = dynamics.validation.check_positive_int("k", k, minimum=-1)
    if not k <= t < T:
        raise ValueError(f"need -1 <= k <= t < T = {T}, got t={t}, k={k}")
    cell, tape = trajectory(model, x, h0, dtype)
    E, _, B, _ = tape.hs.shape
    S = state_size(cell)
    q = np.broadcast_to(np.eye(S, dtype=tape.hs.dtype), (E, B, S, S)).copy()
    with single_threaded_blas():
        tangent_chain(*tape_arguments(tape), k, t, q, column_blocks(S, E * B, q.dtype))
    return xr.DataArray(
        drop_member(q, cell), dims=item_dims(cell) + ("row", "column"),
        coords={**state_labels(cell, "row", "column"),
                "diverged": diverged_variable(cell, trajectory_diverged(tape))},
        name="jacobian_product",
        attrs={**attrs(f"Jacobian product d s_{t} / d s_{k}", "1"),
               **provenance("jacobian_product", {"t": t, "k": k, "steps": T}, q.dtype)})
