"""Sequence forward and backward (BPTT) of one layer-direction, for ensembles.

Arrays are member-major: ``p`` (E, T, B, W), states ``hs``/``cs`` (E, T, B, H). Two
strategies, chosen by ``dynamics.layer.recurrence_kernels`` from shapes alone:

- the walk (``sequence_forward``/``sequence_backward``): one work item is one sequence
  (member e, batch element b); items run in parallel (``kernels.parallel.run_items``)
  and each walks through time on its own, with its member's weights in cache for all T
  steps and the input projections computed on the way, a few dozen steps at a time;
- the batched recurrence (``*_gemm``): one work item is a fixed block of batch rows of
  one member, with one small register-blocked matrix product per step
  (``kernels.cells.add_packed_product``: the weights, packed once into contiguous
  panels of columns, are read once per four rows).

Either way no floating-point sum is split across threads, so results are bitwise
identical for any number of threads. Parameter and input gradients (and the batched
path's input projections) are matrix products over all steps at once, in
``kernels.projections``.

What the kernels assume (checked by ``dynamics``, not here): every array C-contiguous
and of one float dtype; ``p`` (E, T, B, saved_width); for the walk ``w_hh_t`` (E, H*G*H)
= W_hh transposed and ``w_hh`` (E, G*H*H) = W_hh, both in column blocks
(``kernels.cells.pack_column_blocks``; the batched recurrence takes them packed in
panels, see there); ``b_hh`` (E, G*H), ``h0`` (E, B, H), ``hs`` (E, T, B, H);
for LSTM ``c0`` (E, B, H) and ``cs`` (E, T, B, H), for the other cells zero-width
arrays (E, B, 0) and (E, T, B, 0). ``reverse`` walks from t = T-1 down to 0 (the
reverse direction of a bidirectional layer); states are always stored at their real
time index.
"""
import numpy as np

from kernels._jit import jit
from kernels.blas import product_by_blas
from kernels.cells import (RNN_RELU, RNN_TANH, add_packed_product, cell_backward,
                           cell_forward, column_blocks, fits_panels, pack_panels, panel_width,
                           recurrent_matvec, rnn_backward, transposed_matvec)
from kernels.memory import add_into, copy_array, copy_into, fill, prefetch
from kernels.parallel import run_items
from kernels.projections import project_block


@jit
def time_index(step, n_steps, reverse):
    """Real time index of processing step ``step``."""
    return n_steps - 1 - step if reverse else step


#: Steps whose input projections a walk computes at once, as one small BLAS product per
#: sequence (a matrix-vector product per step costs 10-30x more per FLOP). Fixed, so that
#: results do not depend on the number of threads.
PROJECTION_STEPS = 64


def sequence_forward(cell, reverse, x, w_ih_t, b_ih, p, w_hh_t, b_hh, h0, c0, hs, cs):
    """Run ``cell`` over the sequence ``x``: fills ``hs`` (and ``cs``) and ``p``.

    ``x`` is (1, T, B, D) when shared by all members, else (E, T, B, D); ``w_ih_t``
    (E, D, G*H) is W_ih transposed. The input projections are computed on the way, for
    ``PROJECTION_STEPS`` steps at a time (no pass over a (T, B, G*H) buffer). ``p``
    receives what the backward pass needs; a vanilla RNN needs nothing, and may pass
    ``p`` with T = 0. Calls BLAS: run it with BLAS single-threaded.
    """
    run_items(_forward_walk, hs.shape[0] * hs.shape[2], cell, reverse, x, w_ih_t, b_ih, p,
              w_hh_t, b_hh, h0, c0, hs, cs)


@jit
def _forward_walk(item, cell, reverse, x, w_ih_t, b_ih, p, w_hh_t, b_hh, h0, c0, hs, cs):
    """Item ``item`` of ``sequence_forward``: sequence b of member e."""
    n_steps, batch = hs.shape[1], hs.shape[2]
    n_rows = b_hh.shape[1]
    keep = p.shape[1] > 0
    e = item // batch
    b = item - e * batch
    # this member's arrays, sliced once (a view per step costs as much as the
    # recurrent product of a small network)
    inputs = x[0 if x.shape[0] == 1 else e]
    w_ih, bias_ih, bias_hh = w_ih_t[e], b_ih[e], b_hh[e]
    w_hh = column_blocks(w_hh_t[e], hs.shape[3], n_rows)
    states, cells = hs[e], cs[e]
    ph = np.empty(n_rows, hs.dtype)
    chunk = np.empty((PROJECTION_STEPS, inputs.shape[2]), hs.dtype)
    projected = np.empty((PROJECTION_STEPS, n_rows), hs.dtype)
    panels = fits_panels(projected)  # else BLAS, and nothing to pack
    packed_ih = pack_panels(w_ih[:, :n_rows if panels else 0], panel_width(projected))
    h_prev = h0[e, b]
    c_prev = c0[e, b]
    for s0 in range(0, n_steps, PROJECTION_STEPS):
        n = min(PROJECTION_STEPS, n_steps - s0)
        for k in range(n):
            copy_into(inputs[time_index(s0 + k, n_steps, reverse), b], chunk[k])
        if panels:  # the sums in order, in registers
            for k in range(n):
                copy_into(bias_ih, projected[k])
            add_packed_product(chunk[:n], packed_ih, projected[:n])
        else:
            product_by_blas(chunk[:n], w_ih, projected[:n])
            for k in range(n):
                add_into(bias_ih, projected[k])
        for k in range(n):
            t = time_index(s0 + k, n_steps, reverse)
            row = projected[k]
            if keep:  # the cell saves into the row: the tape's
                row = p[e, t, b]
                copy_into(projected[k], row[:n_rows])
            h, c = states[t, b], cells[t, b]
            recurrent_matvec(w_hh, h_prev, bias_hh, ph, k % 2 == 1)
            cell_forward(cell, row, ph, h_prev, c_prev, h, c)
            h_prev = h
            c_prev = c


#: Steps ahead whose rows (state, saved values, incoming gradient) a backward pass asks
#: the cache for (``kernels.memory.prefetch``): walking back through time, the hardware
#: prefetcher does not follow (float64 tanh RNN, 64 units, on one Zen 5 core: 411 ns per
#: step without, 222 with; 196 with every row already in cache).
PREFETCH_STEPS = 8


@jit(inline=True)
def prefetch_step(s, n_steps, reverse, states, saved, grad_hs, grad_time_major, e, rows):
    """Prefetch the rows ``rows`` (a batch index, or a slice of them) of processing step
    s - ``PREFETCH_STEPS`` of a backward pass (member e of ``grad_hs``), if there is
    one."""
    if s >= PREFETCH_STEPS:
        t = time_index(s - PREFETCH_STEPS, n_steps, reverse)
        prefetch(states[t, rows])
        prefetch(saved[t, rows])
        prefetch(grad_hs[t, e, rows] if grad_time_major else grad_hs[e, t, rows])


def sequence_backward(cell, reverse, truncation, p, w_hh, h0, c0, hs, cs, grad_hs, grad_time_major,
                      grad_first, dh0, dc0):
    """Backpropagate through time; the adjoint recurrence of ``sequence_forward``.

    ``grad_hs`` is dL/dh_t arriving from outside at every step, (T, E', B, H) if
    ``grad_time_major`` (the user's layout: no copy needed) else (E', T, B, H), whose
    members ``grad_first``, ... are this call's (so that a group of members needs no
    copy of its part of the user's array). On entry
    ``dh0``/``dc0`` hold dL/dh_T, dL/dc_T of the final state; on exit dL/dh0, dL/dc0.
    ``p`` must hold what the forward pass saved; on exit it holds the gradients of the
    pre-activations (see ``kernels.cells``). With ``truncation = k > 0`` the gradient
    carried to the previous state is dropped at the start of every chunk of k
    processing steps (the forward state still crossed the boundary), so dL/dh0 only
    collects from the first chunk.
    """
    run_items(_backward_walk, p.shape[0] * p.shape[2], cell, reverse, truncation, p, w_hh, h0,
              c0, hs, cs, grad_hs, grad_time_major, grad_first, dh0, dc0)


@jit
def _backward_walk(item, cell, reverse, truncation, p, w_hh, h0, c0, hs, cs, grad_hs,
                   grad_time_major, grad_first, dh0, dc0):
    """Item ``item`` of ``sequence_backward``: sequence b of member e."""
    n_steps, batch, n_units = p.shape[1], p.shape[2], hs.shape[3]
    e = item // batch
    b = item - e * batch
    dh = np.empty(n_units, p.dtype)
    dc = np.empty(dc0.shape[2], p.dtype)
    copy_into(dh0[e, b], dh)
    copy_into(dc0[e, b], dc)
    dph = np.empty(w_hh.shape[1] // n_units, p.dtype)
    dh_prev = np.empty(n_units, p.dtype)
    weights = column_blocks(w_hh[e], dph.shape[0], n_units)
    saved, states, cells = p[e], hs[e], cs[e]  # sliced once
    for s in range(n_steps - 1, -1, -1):
        prefetch_step(s, n_steps, reverse, states, saved, grad_hs, grad_time_major,
                      grad_first + e, b)
        t = time_index(s, n_steps, reverse)
        if s > 0:
            t_prev = time_index(s - 1, n_steps, reverse)
            h_prev = states[t_prev, b]
            c_prev = cells[t_prev, b]
        else:
            h_prev = h0[e, b]
            c_prev = c0[e, b]
        g = grad_first + e
        grad = grad_hs[t, g, b] if grad_time_major else grad_hs[g, t, b]
        for u in range(n_units):
            dh[u] += grad[u]
        if cell == RNN_TANH or cell == RNN_RELU:  # dL/da serves both sides: no copy
            d_hidden = saved[t, b]
            rnn_backward(cell, d_hidden, dh, states[t, b])
            fill(dh_prev, 0.0)
        else:
            d_hidden = dph
            cell_backward(cell, saved[t, b], dh, dc, h_prev, c_prev, states[t, b],
                          cells[t, b], dph, dh_prev)
        if truncation > 0 and s > 0 and s % truncation == 0:
            fill(dh, 0.0)
            fill(dc, 0.0)
        else:
            transposed_matvec(weights, d_hidden, dh_prev, s % 2 == 1)
            copy_into(dh_prev, dh)
    copy_into(dh, dh0[e, b])
    copy_into(dc, dc0[e, b])


@jit
def batch_block(item, batch, block_rows):
    """(member, first row, end row) of work item ``item`` over blocks of ``block_rows``."""
    n_blocks = (batch + block_rows - 1) // block_rows
    e = item // n_blocks
    b0 = (item - e * n_blocks) * block_rows
    return e, b0, min(b0 + block_rows, batch)


@jit(inline=True)
def _step_forward_batch(cell, p, ph, packed_hh_t, b_hh, h_prev, c_prev, h, c):
    """One step for a block of batch rows: ph = b_hh + h_prev W_hh^T, then the cell."""
    for b in range(p.shape[0]):
        copy_into(b_hh, ph[b])
    add_packed_product(h_prev, packed_hh_t, ph)
    for b in range(p.shape[0]):
        cell_forward(cell, p[b], ph[b], h_prev[b], c_prev[b], h[b], c[b])


@jit(inline=True)
def _step_backward_batch(cell, p, dh, dc, grad_h, h_prev, c_prev, h, c, dph, dh_prev):
    """``cell_backward`` for a block of batch rows of one step."""
    for b in range(p.shape[0]):
        for u in range(dh.shape[1]):
            dh[b, u] += grad_h[b, u]
        cell_backward(cell, p[b], dh[b], dc[b], h_prev[b], c_prev[b], h[b], c[b], dph[b],
                      dh_prev[b])


def sequence_forward_gemm(cell, reverse, x, packed_ih_t, b_ih, p, packed_hh_t, b_hh, h0, c0,
                          hs, cs, block_rows):
    """``sequence_forward`` for large weights: each work item is a block of up to
    ``block_rows`` sequences of one member (``dynamics.layer.gemm_rows``), and each
    step's recurrent product for the block is one product (B_block, H) x (H, G*H) that
    reads the weights once per four sequences instead of once per sequence, with every
    sum in the walk's order (the same bits as ``sequence_forward`` given the same input
    projections, for any ``block_rows``). Items walk through time independently (no
    per-step synchronisation).
    ``packed_hh_t`` (E, panels, H, width) is W_hh^T packed
    (``kernels.cells.pack_member_panels``). Either ``p[..., :G*H]`` holds W_ih x_t + b_ih
    on entry (``kernels.projections``; then ``packed_ih_t`` has no panels), or each
    step computes it from ``x`` (1 or E, T, B, D) and ``packed_ih_t`` (E, panels, D,
    width), W_ih^T packed: for few inputs, where a pass that writes p and reads it
    back costs more than the products.
    """
    run_items(_forward_block, p.shape[0] * -(-p.shape[2] // block_rows), cell, reverse, x,
              packed_ih_t, b_ih, p, packed_hh_t, b_hh, h0, c0, hs, cs, block_rows)


@jit
def _forward_block(item, cell, reverse, x, packed_ih_t, b_ih, p, packed_hh_t, b_hh, h0, c0, hs,
                   cs, block_rows):
    """Item ``item`` of ``sequence_forward_gemm``: a block of rows of one member."""
    n_steps, batch, n_rows = p.shape[1], p.shape[2], b_hh.shape[1]
    in_step = packed_ih_t.shape[1] > 0
    e, b0, b1 = batch_block(item, batch, block_rows)
    ph = np.empty((b1 - b0, n_rows), p.dtype)
    h_prev = h0[e, b0:b1]
    c_prev = c0[e, b0:b1]
    inputs = x[0 if x.shape[0] == 1 else e]
    for s in range(n_steps):
        t = time_index(s, n_steps, reverse)
        if in_step:
            project_block(inputs[t, b0:b1], packed_ih_t[e], b_ih[e], p[e, t, b0:b1, :n_rows])
        _step_forward_batch(cell, p[e, t, b0:b1], ph, packed_hh_t[e], b_hh[e], h_prev, c_prev,
                            hs[e, t, b0:b1], cs[e, t, b0:b1])
        h_prev = hs[e, t, b0:b1]
        c_prev = cs[e, t, b0:b1]


def sequence_backward_gemm(cell, reverse, truncation, p, packed_hh, h0, c0, hs, cs, grad_hs,
                           grad_time_major, grad_first, dh0, dc0, block_rows):
    """``sequence_backward`` in blocks of ``block_rows`` batch rows, dh_prev += dph W_hh
    as one product; ``packed_hh`` (E, panels, G*H, width) is W_hh packed
    (``pack_member_panels``)."""
    run_items(_backward_block, p.shape[0] * -(-p.shape[2] // block_rows), cell, reverse,
              truncation, p, packed_hh, h0, c0, hs, cs, grad_hs, grad_time_major, grad_first,
              dh0, dc0, block_rows)


@jit
def _backward_block(item, cell, reverse, truncation, p, packed_hh, h0, c0, hs, cs, grad_hs,
                    grad_time_major, grad_first, dh0, dc0, block_rows):
    """Item ``item`` of ``sequence_backward_gemm``: a block of rows of one member."""
    n_steps, batch, n_units = p.shape[1], p.shape[2], hs.shape[3]
    e, b0, b1 = batch_block(item, batch, block_rows)
    dph = np.empty((b1 - b0, packed_hh.shape[2]), p.dtype)
    dh_prev = np.empty((b1 - b0, n_units), p.dtype)
    dh = np.empty((b1 - b0, n_units), p.dtype)
    dc = np.empty((b1 - b0, dc0.shape[2]), p.dtype)
    copy_array(dh0[e, b0:b1], dh)
    copy_array(dc0[e, b0:b1], dc)
    for s in range(n_steps - 1, -1, -1):
        prefetch_step(s, n_steps, reverse, hs[e], p[e], grad_hs, grad_time_major,
                      grad_first + e, slice(b0, b1))
        t = time_index(s, n_steps, reverse)
        if s > 0:
            t_prev = time_index(s - 1, n_steps, reverse)
            h_prev = hs[e, t_prev, b0:b1]
            c_prev = cs[e, t_prev, b0:b1]
        else:
            h_prev = h0[e, b0:b1]
            c_prev = c0[e, b0:b1]
        g = grad_first + e
        grad = grad_hs[t, g, b0:b1] if grad_time_major else grad_hs[g, t, b0:b1]
        _step_backward_batch(cell, p[e, t, b0:b1], dh, dc, grad, h_prev, c_prev,
                             hs[e, t, b0:b1], cs[e, t, b0:b1], dph, dh_prev)
        cut = truncation > 0 and s > 0 and s % truncation == 0
        if not cut:
            add_packed_product(dph, packed_hh[e], dh_prev)
        for b in range(b1 - b0):
            if cut:
                fill(dh[b], 0.0)
                fill(dc[b], 0.0)
            else:
                copy_into(dh_prev[b], dh[b])
    copy_array(dh, dh0[e, b0:b1])
    copy_array(dc, dc0[e, b0:b1])
