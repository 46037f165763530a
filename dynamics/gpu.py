"""One layer-direction on an NVIDIA GPU: the ``backend="cuda"`` counterpart of
``dynamics.layer``, with the same functions and the same member-major layout, on
device arrays.

``dynamics.propagation`` imports this module only when a caller asks for
``backend="cuda"`` (so importing the toolkit never touches CUDA). Inputs go to the GPU
once; the tape (saved gates and states) stays there between the forward and the backward
pass, and layers hand their outputs to the next on the device; only results come back.
"""
import zlib

import numpy as np

from dynamics.layer import LayerTape, member_major_parameters
from kernels import cuda_sequence as kernels
from kernels import cuda_tangents
from kernels.cells import GRU, LSTM, n_gates, saved_width
from kernels.cuda_api import TILE, cuda, require_gpu, view

__all__ = ["require_gpu", "layer_forward", "layer_backward", "to_device", "to_host",
           "zeros_like", "concatenate_units", "units", "matmul", "adjoint_log_norms",
           "tangent_walk"]

#: The walk (one block per sequence, all steps in one launch) runs when there are at
#: least this many sequences (E * B) to fill the GPU, or a batch too small for the
#: batched recurrence's tiles, and its state fits a block's shared memory
#: (``uses_walk``); otherwise each step is a tiled matrix product.
WALK_MIN_SEQUENCES = 2048
BATCHED_MIN_BATCH = 32
#: Long sums of ``matmul`` (over T * B rows, or over members) are split into chunks of at
#: least this many terms when the product alone has fewer than ``SPLIT_BELOW_BLOCKS``
#: tiles.
SPLIT_MIN_TERMS = 256
SPLIT_BELOW_BLOCKS = 1024
THREADS = 256
#: The largest grid z extent CUDA launches: ``matmul``'s grid has one z per member.
MAX_GRID_Z = 65535


def on_device(array):
    return not isinstance(array, np.ndarray)


def c_order(array):
    """``array`` C-contiguous, as a view with the strides of a fresh array. NumPy calls
    an array contiguous whatever the strides of its length-1 axes (``drive[None]``, a
    transposed (T, 1, N)) and gives empty arrays zero strides; numba-cuda's device arrays
    keep those strides, and then refuse to reshape or slice."""
    array = np.asarray(array, order="C")
    fresh, step = [], array.itemsize
    for n in reversed(array.shape):
        fresh.insert(0, step)
        step *= n
    return np.lib.stride_tricks.as_strided(array, strides=fresh)


def to_device(array):
    """``array`` on the GPU (C order, see ``c_order``); device arrays pass through."""
    return array if on_device(array) else cuda.to_device(c_order(array))


def to_host(array):
    """``array`` as a NumPy array."""
    return array.copy_to_host() if on_device(array) else array


def _grid(n):
    return max(1, (n + THREADS - 1) // THREADS)


def zeros(shape, dtype):
    array = cuda.device_array(shape, dtype)
    if array.size:
        kernels.fill[_grid(array.size), THREADS](array.reshape(array.size), array.dtype.type(0))
    return array


def zeros_like(array):
    return zeros(array.shape, array.dtype)


def transposed(array):
    """Each member's matrix of an (E, R, C) device array transposed: (E, C, R)."""
    out = cuda.device_array((array.shape[0], array.shape[2], array.shape[1]), array.dtype)
    if out.size:
        kernels.transpose_members[_grid(out.size), THREADS](array, out)
    return out


def units(array, start, stop):
    """array[..., start:stop] of a 4-D device array, as a C-contiguous copy."""
    part = view(array, np.s_[:, :, :, start:stop])
    out = cuda.device_array(part.shape, array.dtype)
    if out.size:
        kernels.copy4[_grid(out.size), THREADS](part, out)
    return out


def concatenate_units(arrays):
    """4-D device arrays joined along their last axis (the directions of a layer)."""
    width = sum(a.shape[3] for a in arrays)
    out = cuda.device_array(arrays[0].shape[:3] + (width,), arrays[0].dtype)
    start = 0
    for a in arrays:
        if a.size:
            part = view(out, np.s_[:, :, :, start:start + a.shape[3]])
            kernels.copy4[_grid(a.size), THREADS](a, part)
        start += a.shape[3]
    return out


def _chunks(n_terms, n_blocks):
    """How many chunks a sum of ``n_terms`` is split into (from shapes only)."""
    if n_blocks >= SPLIT_BELOW_BLOCKS:
        return 1
    return max(1, min(n_terms // SPLIT_MIN_TERMS, SPLIT_BELOW_BLOCKS // n_blocks))


def _group(array, members):
    """``array[members]``, or ``array`` itself where its one member broadcasts (or None)."""
    return array if array is None or array.shape[0] == 1 else view(array, members)


def matmul(a, b, c, trans_a=False, trans_b=False, accumulate=False, bias=None,
           sum_members=False):
    """c[e] = [c[e] +] [bias[e] +] op(a[e]) op(b[e]) on (members, rows, cols) device
    arrays (views allowed; a leading axis of 1 broadcasts); with ``sum_members``, c[0] =
    [c[0] +] the sum over members; see ``kernels.cuda_sequence.matmul_kernel``.
    Deterministic: long sums split into a number of chunks fixed by the shapes, run side
    by side in one launch, and added in order."""
    n_members, n_rows, n_cols = c.shape
    if c.size == 0:
        return
    if n_members > MAX_GRID_Z:  # one launch per group of members (each sum is unchanged)
        for start in range(0, n_members, MAX_GRID_Z):
            group = slice(start, start + MAX_GRID_Z)
            matmul(_group(a, group), _group(b, group), view(c, group), trans_a, trans_b,
                   accumulate, _group(bias, group), sum_members)
        return
    n_terms = ((max(a.shape[0], b.shape[0]) if sum_members else 1)
               * (a.shape[1] if trans_a else a.shape[2]))
    kernel = kernels.matmul_kernel(c.dtype)
    tiles = (-(-n_cols // kernels.BLOCK_SIDE), -(-n_rows // kernels.BLOCK_SIDE))
    n_chunks = 1 if bias is not None else _chunks(n_terms, tiles[0] * tiles[1] * n_members)
    grid, size = tiles + (n_chunks * n_members,), -(-n_terms // n_chunks)
    no_bias = cuda.device_array((1, 0), c.dtype)
    if n_chunks == 1:
        kernel[grid, (TILE, TILE)](a, b, c, no_bias if bias is None else bias, trans_a,
                                   trans_b, accumulate, sum_members, n_members, size)
        return
    partial = cuda.device_array((n_chunks * n_members, n_rows, n_cols), c.dtype)
    kernel[grid, (TILE, TILE)](a, b, partial, no_bias, trans_a, trans_b, False, sum_members,
                               n_members, size)
    kernels.add_chunks[_grid(c.size), THREADS](
        partial.reshape((n_chunks, n_members, n_rows, n_cols)), c, accumulate)


def uses_walk(n_members, batch, n_rows, hidden, itemsize):
    """Whether a layer runs as walks (else as the batched recurrence): enough sequences
    to fill the GPU or a batch too small for tiles, and a walk's state fits a block's
    shared memory."""
    return (kernels.state_fits(n_rows, hidden, itemsize)
            and (n_members * batch >= WALK_MIN_SEQUENCES or batch < BATCHED_MIN_BATCH))


def check_adjoint_fits(cell, dtype):
    """Refuse, before any work, a network too large for ``adjoint_log_norms``' walk."""
    n_rows, itemsize = n_gates(cell.code) * cell.hidden_size, np.dtype(dtype).itemsize
    if not kernels.state_fits(n_rows, cell.hidden_size, itemsize):
        raise ValueError(
            f"the GPU adjoint holds 3H + G*H = {3 * cell.hidden_size + n_rows} values of "
            f"{np.dtype(dtype).name} in a block's {kernels.SHARED_BYTES} bytes of shared "
            f"memory: hidden_size {cell.hidden_size} is too large; use backend='cpu'")


def check_tangents_fit(cell, dtype):
    """Refuse, before any work, a network too large for ``tangent_walk``."""
    itemsize = np.dtype(dtype).itemsize
    if cuda_tangents.tangent_shared_bytes(cell.hidden_size, itemsize) > kernels.SHARED_BYTES:
        raise ValueError(
            f"the GPU Lyapunov walk holds the state (2H = {2 * cell.hidden_size} values of "
            f"{np.dtype(dtype).name}) in a block's {kernels.SHARED_BYTES} bytes of shared "
            f"memory: hidden_size {cell.hidden_size} is too large; use backend='cpu'")


def _walk_launch(n_members, batch, n_rows, n_units, itemsize, n_state_rows):
    """(launch configuration, cache_weights) of a walk kernel."""
    cache = kernels.weights_fit(n_rows, n_units, itemsize)
    shared = (n_state_rows * n_units + n_rows + (n_rows * n_units if cache else 0)) * itemsize
    return (n_members * batch, kernels.walk_threads(n_rows), 0, shared), cache


class DeviceTape(LayerTape):
    """A ``LayerTape`` of device arrays."""
    index = staticmethod(view)


def _members(array):
    """A device array with a leading member axis: (T, B, D) -> (1, T, B, D)."""
    return array if array.ndim == 4 else array.reshape((1,) + array.shape)


def layer_forward(cell, x, h0, c0, reverse, additive=False):
    """``dynamics.layer.layer_forward`` on the GPU: ``x`` (T, B, D) or (E, T, B, D),
    ``h0``/``c0`` (E, B, H) device arrays; returns a ``LayerTape`` of device arrays.
    With ``additive``, ``x`` (D = G*H) is added to the pre-activations in place of
    W_ih x (a drive, as ``analysis`` takes it)."""
    dtype = h0.dtype
    n_members, batch, hidden = h0.shape
    n_steps = x.shape[x.ndim - 3]
    weight_ih, bias_ih, weight_hh, bias_hh = (to_device(a)
                                              for a in member_major_parameters(cell, dtype))
    n_rows = weight_hh.shape[1]
    hs = cuda.device_array((n_members, n_steps, batch, hidden), dtype)
    cs = cuda.device_array((n_members, n_steps, batch, hidden if cell.code == LSTM else 0),
                           dtype)
    p = cuda.device_array((n_members, n_steps, batch, saved_width(cell.code, hidden)), dtype)
    if n_steps:
        rows = n_steps * batch
        inputs = _members(x)
        inputs = inputs.reshape((inputs.shape[0], rows, inputs.shape[3]))
        projection = view(p.reshape((n_members, rows, p.shape[3])), np.s_[:, :, :n_rows])
        if additive:
            kernels.add_rows[_grid(projection.size), THREADS](inputs, bias_ih, projection)
        else:
            matmul(inputs, weight_ih, projection, trans_b=True, bias=bias_ih)
        if uses_walk(n_members, batch, n_rows, hidden, dtype.itemsize):
            w_hh_t = transposed(weight_hh)
            launch, cache = _walk_launch(n_members, batch, n_rows, hidden, p.dtype.itemsize, 2)
            kernels.walk_forward(p.dtype)[launch](cell.code, reverse, p, w_hh_t, bias_hh, h0,
                                                  c0, hs, cs, cache)
        else:
            ph = cuda.device_array((n_members, batch, n_rows), dtype)
            for s in range(n_steps):
                t = n_steps - 1 - s if reverse else s
                t_prev = t + 1 if reverse else t - 1
                h_prev = view(hs, np.s_[:, t_prev]) if s else h0
                c_prev = view(cs, np.s_[:, t_prev]) if s else c0
                matmul(h_prev, weight_hh, ph, trans_b=True, bias=bias_hh)
                kernels.step_forward[_grid(n_members * batch * hidden), THREADS](
                    cell.code, t, p, ph, h_prev, c_prev, hs, cs)
    return DeviceTape(cell, reverse, x, weight_ih, weight_hh, bias_hh, h0, c0, p, hs, cs)


def _backward_steps(tape, grad_hs, grad_time_major, dh, dc, truncation):
    """The batched recurrence's backward pass, step by step: leaves the gate gradients
    in ``tape.p`` and dL/dc0 in ``dc``; returns dL/dh0 (in ``dh`` or its spare)."""
    n_members, n_steps, batch, hidden = tape.hs.shape
    dph = cuda.device_array((n_members, batch, tape.weight_hh.shape[1]), dh.dtype)
    spare = cuda.device_array(dh.shape, dh.dtype)
    for s in range(n_steps - 1, -1, -1):
        t = n_steps - 1 - s if tape.reverse else s
        t_prev = t + 1 if tape.reverse else t - 1
        h_prev = view(tape.hs, np.s_[:, t_prev]) if s else tape.h0
        c_prev = view(tape.cs, np.s_[:, t_prev]) if s else tape.c0
        grad = view(grad_hs, t if grad_time_major else np.s_[:, t])
        kernels.step_backward[_grid(n_members * batch * hidden), THREADS](
            tape.cell.code, t, tape.p, grad, dh, dc, h_prev, c_prev, tape.hs, tape.cs, dph,
            spare)
        if truncation > 0 and s > 0 and s % truncation == 0:
            for state in (dh, dc):
                if state.size:
                    kernels.fill[_grid(state.size), THREADS](state.reshape(state.size),
                                                             state.dtype.type(0))
        else:
            matmul(dph, tape.weight_hh, spare, accumulate=True)
            dh, spare = spare, dh
    return dh


def _hidden_blocks(cell, hidden):
    """(rows of W_hh, columns of the gate gradients in p) that pair up: the gradient
    of W_hh h + b_hh is p's, except the GRU's n rows, whose is p[3H:4H]."""
    n_rows = n_gates(cell) * hidden
    if cell == GRU:
        return [(slice(0, 2 * hidden), slice(0, 2 * hidden)),
                (slice(2 * hidden, 3 * hidden), slice(3 * hidden, 4 * hidden))]
    return [(slice(0, n_rows), slice(0, n_rows))]


def layer_backward(tape, grad_hs, grad_time_major, grad_h_n, grad_c_n, truncation, grad_x,
                   grad_x_fresh=False):
    """``dynamics.layer.layer_backward`` on the GPU (device arrays in and out)."""
    dtype = tape.h0.dtype
    dh = to_device(np.array(grad_h_n, dtype=dtype, order="C"))
    dc = to_device(np.array(grad_c_n, dtype=dtype, order="C"))
    n_members, n_steps, batch, hidden = tape.hs.shape
    n_rows = tape.weight_hh.shape[1]
    grads = {"weight_ih": zeros_like(tape.weight_ih), "weight_hh": zeros_like(tape.weight_hh),
             "bias_ih": zeros((n_members, 1, n_rows), dtype),
             "bias_hh": zeros((n_members, 1, n_rows), dtype)}
    if n_steps:
        if uses_walk(n_members, batch, n_rows, hidden, dtype.itemsize):
            launch, cache = _walk_launch(n_members, batch, n_rows, hidden, dtype.itemsize, 3)
            kernels.walk_backward(dtype)[launch](
                tape.cell.code, tape.reverse, truncation, tape.p, tape.weight_hh, tape.h0,
                tape.c0, tape.hs, tape.cs, grad_hs, grad_time_major, dh, dc, cache,
                cuda.device_array((1, 1, 0), np.float64))
        else:
            dh = _backward_steps(tape, grad_hs, grad_time_major, dh, dc, truncation)
        _parameter_and_input_gradients(tape, grads, grad_x, grad_x_fresh)
    for name in ("bias_ih", "bias_hh"):
        grads[name] = grads[name].reshape((n_members, n_rows))
    if not tape.cell.bias:
        del grads["bias_ih"], grads["bias_hh"]
    return grads, dh, dc


def _parameter_and_input_gradients(tape, grads, grad_x, grad_x_fresh):
    """dW_ih, dW_hh, the biases' gradients and dL/dx (unless ``grad_x`` is None) from
    the gate gradients in tape.p, each one matrix product over all steps."""
    n_members, n_steps, batch, hidden = tape.hs.shape
    n_rows = tape.weight_hh.shape[1]
    rows = n_steps * batch
    gates = tape.p.reshape((n_members, rows, tape.p.shape[3]))
    inputs = _members(tape.x)
    inputs = inputs.reshape((inputs.shape[0], rows, inputs.shape[3]))
    ones = cuda.device_array((1, 1, rows), tape.p.dtype)
    kernels.fill[_grid(rows), THREADS](ones.reshape(rows), ones.dtype.type(1))
    projected = view(gates, np.s_[:, :, :n_rows])  # the gradient of W_ih x + b_ih
    matmul(projected, inputs, grads["weight_ih"], trans_a=True)
    matmul(ones, projected, grads["bias_ih"])
    states = tape.hs.reshape((n_members, rows, hidden))
    for w_rows, columns in _hidden_blocks(tape.cell.code, hidden):
        d_hidden = view(gates, np.s_[:, :, columns])
        target = view(grads["weight_hh"], np.s_[:, w_rows])
        # step t's gradient pairs with the state before it: h_(t-1), or h_(t+1) when
        # reversed, and h0 at the first processed step
        if tape.reverse:
            later, before, first = (view(d_hidden, np.s_[:, :rows - batch]),
                                    view(states, np.s_[:, batch:]),
                                    view(d_hidden, np.s_[:, rows - batch:]))
        else:
            later, before, first = (view(d_hidden, np.s_[:, batch:]),
                                    view(states, np.s_[:, :rows - batch]),
                                    view(d_hidden, np.s_[:, :batch]))
        if n_steps > 1:
            matmul(later, before, target, trans_a=True)
        matmul(first, tape.h0, target, trans_a=True, accumulate=n_steps > 1)
        matmul(ones, d_hidden, view(grads["bias_hh"], np.s_[:, :, w_rows]))
    if grad_x is None:
        return
    shared_x = tape.x.ndim == 3
    gx = _members(grad_x)
    matmul(projected, tape.weight_ih, gx.reshape((gx.shape[0], rows, gx.shape[3])),
           accumulate=not grad_x_fresh, sum_members=shared_x)


def adjoint_log_norms(tape, v, max_lag):
    """``analysis.gradients.adjoint_log_norms`` on a GPU tape (forward direction):
    log ||dLoss / d s_(T-lag)||, lag = 0..max_lag, (E, B, max_lag + 1), for the loss
    gradient ``v`` (E, B, S) at the last state. Consumes ``tape.p``."""
    n_members, _, batch, hidden = tape.hs.shape
    logs = to_device(np.full((n_members, batch, max_lag + 1), np.nan))
    dh, dc = to_device(v[..., :hidden]), to_device(v[..., hidden:])
    launch, cache = _walk_launch(n_members, batch, tape.weight_hh.shape[1], hidden,
                                 tape.hs.dtype.itemsize, 3)
    kernels.walk_backward(tape.hs.dtype)[launch](
        tape.cell.code, False, 0, tape.p, tape.weight_hh, tape.h0, tape.c0, tape.hs, tape.cs,
        cuda.device_array((0, 0, 0, 0), tape.hs.dtype), True, dh, dc, cache, logs)
    return logs.copy_to_host()


def tangent_walk(cell, x, additive, parameters, t0, n_steps, interval, h, c, q, diverged):
    """``kernels.tangents.tangent_walk`` on the GPU without a recorded tape: advances the
    device arrays ``h``, ``c``, ``q``, ``diverged`` in place; ``parameters`` are
    ``member_major_parameters`` (NumPy or already on the device); returns log |R_jj|
    (E, B, records, k) as NumPy."""
    w_ih, b_ih, w_hh, b_hh = parameters
    n_members, batch, hidden = h.shape
    n_rows = w_hh.shape[1]
    log_r = to_device(np.full((n_members, batch, -(-n_steps // interval), q.shape[3]), np.nan))
    scratch = cuda.device_array((n_members, batch, n_rows, q.shape[3]), h.dtype)
    rows = cuda.device_array((n_members, batch, 8 * hidden), h.dtype)
    kernel = cuda_tangents.tangent_walk(h.dtype)
    shared = cuda_tangents.tangent_shared_bytes(hidden, h.dtype.itemsize)
    kernel[n_members * batch, kernels.walk_threads(n_rows), 0, shared](
        cell.code, to_device(x), additive, to_device(w_ih), to_device(b_ih),
        transposed(to_device(w_hh)), to_device(b_hh), t0, n_steps, interval, h, c, q,
        scratch, rows, diverged, log_r)
    return log_r.copy_to_host()


def select_worker_gpu():
    """On a dask worker, use GPU (worker number mod the GPUs this process sees), so the
    workers of a machine spread over its GPUs; elsewhere (or where ``CUDA_VISIBLE_DEVICES``
    leaves one GPU, as dask-cuda does per worker) nothing changes. Returns the GPU's
    index, or None outside a dask worker."""
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        return None
    name = str(worker.name)
    number = int(name) if name.isdigit() else zlib.crc32(name.encode())
    index = number % len(cuda.gpus)
    cuda.select_device(index)
    return index
