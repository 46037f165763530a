"""The non-recurrent half of a layer: matrix products over all steps at once.

Input projections before the recurrence, and parameter and input gradients after the
backward recurrence, are products over all T*B rows. They run as numba-parallel items,
each a fixed chunk of ``CHUNK_ROWS`` rows multiplied by single-threaded BLAS: the
work never depends on numba's thread count (results are bitwise reproducible), and no
BLAS thread pool runs beside numba's. (Letting multi-threaded BLAS do these products
between numba's parallel kernels made both spin against each other on 2 cores: a
training step of a 128-unit LSTM took 58 ms instead of 46.)

Arrays are seen as rows, ``row = t * B + b``: ``p`` (E, T*B, W) as in
``kernels.sequence``, states ``hs`` (E, T*B, H), ``h0`` (E, B, H), and ``x`` (or dL/dx)
either shared by all members, (1, T*B, D), or member-major, (E, T*B, D). Call with BLAS
limited to one thread (``dynamics.layer.single_threaded_blas``).
"""
import numpy as np
from numba import prange

from kernels._jit import jit
from kernels.cells import GRU

#: Rows per product; fixed, so that every sum's grouping depends on shapes alone.
CHUNK_ROWS = 512
#: Parameter-gradient sums over the rows of one member are split into up to this many
#: groups divided by the ensemble size, summed in order at the end: parallel work for a
#: single network, no extra memory for large ensembles (see ``gradient_groups``).
MIN_ITEMS = 8


@jit
def chunk_rows(chunk, n_rows):
    """(first row, end row) of chunk number ``chunk``."""
    r0 = chunk * CHUNK_ROWS
    return r0, min(r0 + CHUNK_ROWS, n_rows)


@jit
def n_chunks(n_rows):
    return (n_rows + CHUNK_ROWS - 1) // CHUNK_ROWS


@jit(parallel=True)
def _project_rows(x, weight_ih, bias_ih, p):
    """p[e, r, :G*H] = W_ih[e] x[r] + b_ih[e] for every member e and row r."""
    n_members, n_rows, _ = p.shape
    n_out = weight_ih.shape[1]
    chunks = n_chunks(n_rows)
    for item in prange(n_members * chunks):
        e = item // chunks
        r0, r1 = chunk_rows(item - e * chunks, n_rows)
        out = np.empty((r1 - r0, n_out), p.dtype)
        np.dot(x[0 if x.shape[0] == 1 else e, r0:r1], weight_ih[e].T, out)
        for r in range(r1 - r0):
            for j in range(n_out):
                p[e, r0 + r, j] = out[r, j] + bias_ih[e, j]


@jit
def _hidden_columns(p, e, r0, r1, d_hid):
    """GRU's dL/d(W_hh h + b_hh) for rows r0:r1: r, z as the input's, n from 3H:4H."""
    n_units = d_hid.shape[1] // 3
    for r in range(r1 - r0):
        for j in range(2 * n_units):
            d_hid[r, j] = p[e, r0 + r, j]
        for j in range(n_units):
            d_hid[r, 2 * n_units + j] = p[e, r0 + r, 3 * n_units + j]


@jit
def _add_column_sums(rows, out):
    """out += the sum of ``rows`` over its first axis, row by row in order."""
    for r in range(rows.shape[0]):
        for j in range(out.shape[0]):
            out[j] += rows[r, j]


@jit
def _add_outer_products(d, states, out):
    """out += sum_r d[r] (x) states[r], row by row in order."""
    for r in range(d.shape[0]):
        for j in range(d.shape[1]):
            a = d[r, j]
            for k in range(states.shape[1]):
                out[j, k] += a * states[r, k]


@jit(parallel=True)
def weight_gradients(cell, reverse, x, p, hs, h0, grad_weight_ih, grad_bias_ih, grad_weight_hh,
                     grad_bias_hh):
    """Per member, sums over rows of dL/da times the inputs of a, into partial sums
    (E, groups, ...) over fixed, contiguous row ranges (one BLAS product per range):

    grad_weight_ih = sum d_in x^T, grad_bias_ih = sum d_in, grad_weight_hh = sum d_hid
    h_prev^T, grad_bias_hh = sum d_hid, where d_in = dL/d(W_ih x + b_ih) (``p[..., :G*H]``),
    d_hid = dL/d(W_hh h + b_hh) (the same but for GRU) and h_prev the state before the
    row's step (h0 at the first processed step). The outputs must hold zeros.
    """
    n_members, n_rows, _ = p.shape
    n_groups = grad_weight_ih.shape[1]
    batch = h0.shape[1]
    per_group = (n_rows + n_groups - 1) // n_groups
    # rows whose previous state is a row of hs (at offset -batch, or +batch in reverse)
    first_step = n_rows - batch if reverse else 0
    for item in prange(n_members * n_groups):
        e = item // n_groups
        group = item - e * n_groups
        r0, r1 = group * per_group, min((group + 1) * per_group, n_rows)
        if r0 >= r1:
            continue
        xe = x[0 if x.shape[0] == 1 else e]
        gw_ih, gb_ih = grad_weight_ih[e, group], grad_bias_ih[e, group]
        gw_hh, gb_hh = grad_weight_hh[e, group], grad_bias_hh[e, group]
        # rows of the first processed step, whose previous state is h0, on their own
        s0, s1 = max(r0, first_step), min(r1, first_step + batch)
        if cell == GRU:
            _weight_gradients_gathered(p, hs, h0, xe, e, r0, r1, s0, s1, reverse, gw_ih, gb_ih,
                                       gw_hh, gb_hh)
            continue
        d = p[e, r0:r1]  # the full rows: d_in = d_hid
        np.dot(d.T, xe[r0:r1], gw_ih)
        _add_column_sums(d, gb_ih)
        gb_hh[:] = gb_ih
        # the rest lies on one side of the first step (groups span at least a step)
        m0, m1 = (r0, r1) if s1 <= s0 else (r0, s0) if s0 > r0 else (s1, r1)
        shift = batch if reverse else -batch
        if m1 > m0:
            np.dot(p[e, m0:m1].T, hs[e, m0 + shift:m1 + shift], gw_hh)
        if s1 > s0:
            _add_outer_products(p[e, s0:s1], h0[e, s0 - first_step:s1 - first_step], gw_hh)


@jit
def _weight_gradients_gathered(p, hs, h0, xe, e, r0, r1, s0, s1, reverse, gw_ih, gb_ih, gw_hh,
                               gb_hh):
    """``weight_gradients`` for one row range of a GRU, whose input and hidden
    gradients are not contiguous in ``p``: gathered in chunks of ``CHUNK_ROWS``."""
    n_out, n_units, batch = gw_ih.shape[0], hs.shape[2], h0.shape[1]
    d_in = np.empty((CHUNK_ROWS, n_out), p.dtype)
    d_hid = np.empty((CHUNK_ROWS, n_out), p.dtype)
    h_prev = np.empty((CHUNK_ROWS, n_units), p.dtype)
    product_ih = np.empty(gw_ih.shape, p.dtype)
    product_hh = np.empty(gw_hh.shape, p.dtype)
    for c0 in range(r0, r1, CHUNK_ROWS):
        c1 = min(c0 + CHUNK_ROWS, r1)
        n = c1 - c0
        for r in range(n):
            row = c0 + r
            d_in[r] = p[e, row, :n_out]
            if s0 <= row < s1:
                h_prev[r] = h0[e, row % batch]
            else:
                h_prev[r] = hs[e, row + batch if reverse else row - batch]
        _hidden_columns(p, e, c0, c1, d_hid)
        np.dot(d_in[:n].T, xe[c0:c1], product_ih)
        np.dot(d_hid[:n].T, h_prev[:n], product_hh)
        gw_ih += product_ih
        gw_hh += product_hh
        _add_column_sums(d_in[:n], gb_ih)
        _add_column_sums(d_hid[:n], gb_hh)


@jit(parallel=True)
def input_gradients(p, weight_ih, grad_x, fresh):
    """dL/dx[r] = sum over members of W_ih[e]^T dL/d(W_ih x)[e, r], added to ``grad_x``
    (or written, if ``fresh``). ``grad_x`` (1, rows, D) is shared by all members,
    whose terms are added in member order; (E, rows, D) is per member."""
    n_members, n_rows, width = p.shape
    n_out, n_in = weight_ih.shape[1], weight_ih.shape[2]
    shared = grad_x.shape[0] == 1 and n_members > 1
    owners = grad_x.shape[0]
    chunks = n_chunks(n_rows)
    for item in prange(owners * chunks):
        owner = item // chunks
        r0, r1 = chunk_rows(item - owner * chunks, n_rows)
        n = r1 - r0
        first, last = (0, n_members) if shared else (owner, owner + 1)
        d_in = np.empty((n if width != n_out else 0, n_out), p.dtype)
        term = np.empty((n if last - first > 1 or not fresh else 0, n_in), p.dtype)
        out = grad_x[owner, r0:r1]
        for e in range(first, last):
            source = p[e, r0:r1]
            if width != n_out:  # GRU: the input gradients are the first 3H of 4H columns
                for r in range(n):
                    d_in[r] = source[r, :n_out]
            if fresh and e == first:  # straight into dL/dx
                np.dot(source if width == n_out else d_in, weight_ih[e], out)
            else:
                np.dot(source if width == n_out else d_in, weight_ih[e], term)
                out += term


def _rows(a):
    """View (..., T, B, k) with T and B merged, and a leading member axis: (E or 1, T*B, k)."""
    if a.ndim == 3:
        a = a[None]
    return np.reshape(a, (a.shape[0], a.shape[1] * a.shape[2], a.shape[3]), copy=False)


@np.errstate(over="ignore", invalid="ignore")  # inf/nan are data, flagged downstream
def project_inputs(x, weight_ih, bias_ih, p):
    """p[..., :G*H] = x W_ih^T + b_ih for every member, step and batch element; ``x``
    (T, B, D) shared or (E, T, B, D), ``p`` (E, T, B, W)."""
    _project_rows(_rows(x), weight_ih, bias_ih, _rows(p))


def gradient_groups(n_members, n_rows):
    """Groups per member of the parameter-gradient sums: a power of two (even work for
    2, 4, 8 threads), at most ``MIN_ITEMS / E`` and a quarter of the chunks, so that
    the partial sums (each as large as the weights) stay small beside the rows they
    sum. Depends on shapes only.

    >>> gradient_groups(1, 200 * 32), gradient_groups(1, 1000), gradient_groups(8, 10 ** 6)
    (2, 1, 1)
    """
    limit = min(MIN_ITEMS // n_members, -(-n_rows // CHUNK_ROWS) // 4)
    return 1 << (limit.bit_length() - 1) if limit >= 1 else 1


@np.errstate(over="ignore", invalid="ignore")
def parameter_and_input_gradients(cell, reverse, x, p, hs, h0, weight_ih, grad_x_accumulate,
                                  grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh,
                                  grad_x_fresh=False):
    """Fill parameter gradients from the pre-activation gradients left in ``p``.

    ``grad_x_accumulate`` (shape of ``x``) receives dL/dx added to what it holds; with
    ``grad_x_fresh`` it holds zeros and is written directly. The parameter gradients
    are overwritten.
    """
    p_rows, h_rows = _rows(p), _rows(hs)
    n_members, n_rows, _ = p_rows.shape
    groups = gradient_groups(n_members, n_rows)
    outputs = (grad_weight_ih, grad_bias_ih, grad_weight_hh, grad_bias_hh)
    if groups == 1:  # the sums go straight into the outputs
        for out in outputs:
            out[...] = 0.0
        weight_gradients(cell, reverse, _rows(x), p_rows, h_rows, h0,
                         *(out[:, None] for out in outputs))
    else:
        partials = [np.zeros((n_members, groups) + g.shape[1:], g.dtype) for g in outputs]
        weight_gradients(cell, reverse, _rows(x), p_rows, h_rows, h0, *partials)
        for out, partial in zip(outputs, partials):
            np.sum(partial, axis=1, out=out)  # in group order
    input_gradients(p_rows, weight_ih, _rows(grad_x_accumulate), grad_x_fresh)
