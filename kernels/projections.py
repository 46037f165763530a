"""The non-recurrent half of a layer: matrix products over all steps at once.

Input projections before the recurrence, and parameter and input gradients after the
backward recurrence, are products over all T*B rows. They run as numba-parallel items
over fixed row ranges, each multiplied in register panels from weights packed once
per call (``kernels.cells.add_packed_product``, every sum in order) where the shapes
allow and the panels beat BLAS (``kernels.cells.PANELS_BEAT_BLAS``: with AVX-512, not
with AVX2, where the gradients' products go to ``kernels.blas``), else by
single-threaded BLAS: the work never depends on numba's thread count
(results are bitwise reproducible), and no BLAS thread pool runs beside numba's.
(Letting multi-threaded BLAS do these products between numba's parallel kernels made
both spin against each other on 2 cores: a training step of a 128-unit LSTM took 58 ms
instead of 46.)

Arrays are seen as rows, ``row = t * B + b``: ``p`` (E, T*B, W) as in
``kernels.sequence``, states ``hs`` (E, T*B, H), ``h0`` (E, B, H), and ``x`` (or dL/dx)
either shared by all members, (1, T*B, D), or member-major, (E, T*B, D). Call with BLAS
limited to one thread (``dynamics.layer.single_threaded_blas``).
"""
import numpy as np

from kernels._jit import jit
from kernels.blas import (add_product_transposed_by_blas, add_transposed_product_by_blas, gemm,
                          rows_for_blas)
from kernels.cells import (GRU, PAGE_BYTES, PANELS_BEAT_BLAS, add_packed_product, fits_panels,
                           pack_member_panels, pack_panels, panel_width, reads_in_place)
from kernels.memory import add_into, copy_into, fill
from kernels.parallel import run_items

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


@jit
def project_block(x, packed_ih_t, bias_ih, out):
    """out = bias_ih + x W_ih^T for a block of rows, given ``packed_ih_t`` = W_ih^T
    packed (``kernels.cells.pack_panels``): register panels, sums in order. The batched
    recurrence calls it for one step's rows, ``project_inputs`` for all steps at once:
    the same bits."""
    for r in range(out.shape[0]):
        copy_into(bias_ih, out[r])
    add_packed_product(x, packed_ih_t, out)


@jit
def _by_blas(a, b, out):
    """Whether a product of ``a`` and ``b`` into ``out`` goes to BLAS: where BLAS beats the
    register panels (``PANELS_BEAT_BLAS``) and can read all three as they are."""
    return not PANELS_BEAT_BLAS and rows_for_blas(a) and rows_for_blas(b) and rows_for_blas(out)


@jit
def _project_chunk(item, x, packed_ih_t, weight_ih, bias_ih, p):
    """Item ``item`` of ``project_inputs``, one chunk of rows r of one member e:
    p[e, r, :G*H] = x[r] W_ih[e]^T + b_ih[e], straight into ``p``, by ``project_block``
    from ``packed_ih_t`` (E, panels, D, width) = W_ih transposed and packed, or where
    BLAS is faster (``PANELS_BEAT_BLAS``) one BLAS product with ``weight_ih`` (E, G*H, D)
    (float32, H = D = 1024, 2,048 rows: 127-198 ms on 2 Zen 3 cores where the panels
    took 184-225)."""
    n_rows, n_out = p.shape[1], bias_ih.shape[1]
    chunks = n_chunks(n_rows)
    e = item // chunks
    r0, r1 = chunk_rows(item - e * chunks, n_rows)
    rows, out = x[0 if x.shape[0] == 1 else e, r0:r1], p[e, r0:r1, :n_out]
    if _by_blas(rows, weight_ih[e], out):
        for r in range(out.shape[0]):
            copy_into(bias_ih[e], out[r])
        add_product_transposed_by_blas(rows, weight_ih[e], out)
    else:
        project_block(rows, packed_ih_t[e], bias_ih[e], out)


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
        add_into(rows[r], out)


#: ``add_transposed_product`` reads d^T in place when the rows of d are closer than a
#: page (``kernels.cells.PAGE_BYTES``); from a page apart, the columns of d for blocks
#: of ``TRANSPOSE_BLOCK`` rows of ``out`` are first copied into a compact block, whose
#: rows (a part of the sum) are then close together. Measured on one core, float32, in
#: place and copied (GFLOP/s): (2048 x 1024)^T (2048 x 256), rows 4 KiB apart, 171 and
#: 201; (2048 x 4096)^T (2048 x 1024), 16 KiB apart, 134 and 203; (6400 x 512)^T
#: (6400 x 128), 2 KiB apart, 204 and 185; (2048 x 256)^T (2048 x 64), 1 KiB apart,
#: 192 and 180.
TRANSPOSE_BLOCK = 128
#: Terms of the sum that ``add_transposed_product`` packs at a time: its scratch is
#: this many rows of ``states`` (and of the copied block of d), whatever the number of
#: rows. Measured on one core, in parts of 256 rows and of 128 (GFLOP/s): float32
#: (6400 x 512)^T (6400 x 128) in place, 197 and 211; (2048 x 1024)^T (2048 x 256)
#: copied, 189 and 196; float64, 88 and 95.
TRANSPOSED_PART_ROWS = 128
#: Rows per part of ``_all_sides``' one pass over p. Where BLAS does the hidden side's
#: product, parts of 512 rows: single-threaded OpenBLAS on a Zen 3 core, float32
#: (6400 x 512)^T (6400 x 128) in parts of 128 rows, 512, 1024 and all 6400: 52-54,
#: 75, 72 and 53-55 GFLOP/s (float64 the same 32-36 for all).
FUSED_PART_ROWS = TRANSPOSED_PART_ROWS if PANELS_BEAT_BLAS else 512


@jit
def add_transposed_product(d, states, out):
    """out += d^T states, i.e. out[j] += sum_r d[r, j] * states[r]: in register panels
    with every sum over r in order (``kernels.cells.add_packed_product``). ``states`` is
    packed a part of the sum at a time, unless both it and d have close rows: then both
    are read in place (``kernels.cells.reads_in_place``). Measured on one core, float32
    (2048 x 4096)^T (2048 x 1024): 202 GFLOP/s (OpenBLAS 114); (6400 x 512)^T
    (6400 x 128): 202 (103).
    An ``out`` narrower than a panel (a few inputs) is summed transposed, out^T +=
    states^T d, reading the rows of d (contiguous) in place: float32 (6400 x 512)^T
    (6400 x 2), 13 MB from memory, took 0.45 ms on one core (OpenBLAS 1.22); float64
    1.59 (2.37)."""
    if not fits_panels(out):
        term = np.zeros((out.shape[1], out.shape[0]), out.dtype)
        add_packed_product(states.T, d, term)
        _add_transposed(term, out)
        return
    width = panel_width(out)
    part = TRANSPOSED_PART_ROWS
    copy = d.strides[0] >= PAGE_BYTES
    in_place = not copy and reads_in_place(states)
    block = np.empty((min(part, d.shape[0]) if copy else 0, TRANSPOSE_BLOCK), d.dtype)
    for k0 in range(0, d.shape[0], part):
        k1 = min(k0 + part, d.shape[0])
        if in_place:
            add_packed_product(d[k0:k1].T, states[k0:k1], out)
            continue
        packed = pack_panels(states[k0:k1], width)
        if not copy:
            add_packed_product(d[k0:k1].T, packed, out)
            continue
        for j0 in range(0, out.shape[0], TRANSPOSE_BLOCK):
            j1 = min(j0 + TRANSPOSE_BLOCK, out.shape[0])
            columns = block[:k1 - k0, :j1 - j0]
            for k in range(k1 - k0):
                copy_into(d[k0 + k, j0:j1], columns[k])
            add_packed_product(columns.T, packed, out[j0:j1])


@jit(inline=True)
def _add_gradient_product(d, states, out):
    """out += d^T states for a parameter gradient: in register panels, every sum in order
    (``add_transposed_product``), where they beat BLAS (``PANELS_BEAT_BLAS``) or ``out``
    is narrower than a panel; else one BLAS call (float32 (1024 x 4096)^T (1024 x 1024)
    on one Zen 3 core: 90 GFLOP/s, panels 51)."""
    if fits_panels(out) and _by_blas(d, states, out):
        add_transposed_product_by_blas(d, states, out)
    else:
        add_transposed_product(d, states, out)


@jit
def _add_transposed(term, out):
    """out += term^T."""
    for j in range(out.shape[0]):
        add_into(term[:, j], out[j])


def weight_gradients(cell, reverse, x, p, hs, h0, grad_weight_ih, grad_bias_ih, grad_weight_hh,
                     grad_bias_hh):
    """Per member, sums over rows of dL/da times the inputs of a, into partial sums
    (E, groups, ...) over fixed, contiguous row ranges (one product per range):

    grad_weight_ih = sum d_in x^T, grad_bias_ih = sum d_in, grad_weight_hh = sum d_hid
    h_prev^T, grad_bias_hh = sum d_hid, where d_in = dL/d(W_ih x + b_ih) (``p[..., :G*H]``),
    d_hid = dL/d(W_hh h + b_hh) (the same but for GRU) and h_prev the state before the
    row's step (h0 at the first processed step). Where d_hid = d_in (all but GRU) the
    two bias sums are the same: only grad_bias_ih is summed. The outputs must hold zeros.

    The input and the hidden side are separate work items, so that even one network in
    one group keeps two threads busy; but when d_in = d_hid and the input is narrower
    than a register panel, one item does all three sums a part of the rows at a time
    (``_all_sides``), reading p from memory once instead of twice.
    """
    n_items = p.shape[0] * grad_weight_ih.shape[1] * _sides(cell, grad_weight_ih)
    run_items(_gradient_item, n_items, cell, reverse, x, p, hs, h0, grad_weight_ih, grad_bias_ih,
              grad_weight_hh, grad_bias_hh)


@jit
def _sides(cell, grad_weight_ih):
    """Items per group of rows of ``weight_gradients``: 1 where one item does all three
    sums (d_in = d_hid and an input narrower than a panel), else 2."""
    return 1 if cell != GRU and not fits_panels(grad_weight_ih[0, 0]) else 2


@jit
def _gradient_item(item, cell, reverse, x, p, hs, h0, grad_weight_ih, grad_bias_ih,
                   grad_weight_hh, grad_bias_hh):
    """Item ``item`` of ``weight_gradients``: one side (or both) of one group of rows
    of one member."""
    n_rows = p.shape[1]
    n_groups = grad_weight_ih.shape[1]
    per_group = (n_rows + n_groups - 1) // n_groups
    sides = _sides(cell, grad_weight_ih)
    e = item // (sides * n_groups)
    group = (item // sides) % n_groups
    r0, r1 = group * per_group, min((group + 1) * per_group, n_rows)
    if r0 >= r1:
        return
    xe = x[0 if x.shape[0] == 1 else e]
    if sides == 1:
        _all_sides(reverse, p, xe, hs, h0, e, r0, r1, grad_weight_ih[e, group],
                   grad_bias_ih[e, group], grad_weight_hh[e, group])
    elif item % 2 == 0:
        _input_side(cell, p, xe, e, r0, r1, grad_weight_ih[e, group],
                    grad_bias_ih[e, group])
    else:
        _hidden_side(cell, reverse, p, hs, h0, e, r0, r1, grad_weight_hh[e, group],
                     grad_bias_hh[e, group])


@jit(inline=True)
def _input_side(cell, p, xe, e, r0, r1, gw, gb):
    """gw = sum over rows r0:r1 of d_in x^T, gb = sum of d_in (member e)."""
    if cell != GRU:  # d_in is the full row of p
        d = p[e, r0:r1]
        _add_gradient_product(d, xe[r0:r1], gw)
        _add_column_sums(d, gb)
        return
    n_out = gw.shape[0]  # GRU: the first 3H of 4H columns, gathered chunk by chunk
    d_in = np.empty((CHUNK_ROWS, n_out), p.dtype)
    for c0 in range(r0, r1, CHUNK_ROWS):
        c1 = min(c0 + CHUNK_ROWS, r1)
        for r in range(c1 - c0):
            copy_into(p[e, c0 + r, :n_out], d_in[r])
        _add_gradient_product(d_in[:c1 - c0], xe[c0:c1], gw)
        _add_column_sums(d_in[:c1 - c0], gb)


@jit(inline=True)
def _all_sides(reverse, p, xe, hs, h0, e, r0, r1, gw_ih, gb, gw_hh):
    """``_input_side`` and ``_hidden_side`` of a cell with d_in = d_hid (the full rows of
    p) and an input narrower than a panel, in one pass over p: each part of the rows
    feeds the three sums while it is in cache (the input's sum is kept transposed, the
    bits of ``add_transposed_product``)."""
    gw_ih_t = np.zeros((gw_ih.shape[1], gw_ih.shape[0]), p.dtype)
    for c0 in range(r0, r1, FUSED_PART_ROWS):
        c1 = min(c0 + FUSED_PART_ROWS, r1)
        d = p[e, c0:c1]
        _add_hidden_product(reverse, p, hs, h0, e, c0, c1, gw_hh)
        add_packed_product(xe[c0:c1].T, d, gw_ih_t)
        _add_column_sums(d, gb)
    _add_transposed(gw_ih_t, gw_ih)


@jit
def _previous_states(reverse, p, h0, r0, r1):
    """Where the states before rows r0:r1's steps are: row r's in hs at r + shift, except
    for the rows s0:s1 of the first processed step, whose is h0[r - first_step]."""
    batch, n_rows = h0.shape[1], p.shape[1]
    shift = batch if reverse else -batch
    first_step = n_rows - batch if reverse else 0
    return shift, first_step, max(r0, first_step), min(r1, first_step + batch)


@jit(inline=True)
def _add_hidden_product(reverse, p, hs, h0, e, r0, r1, gw):
    """gw += sum over rows r0:r1 of p's rows h_prev^T (member e)."""
    shift, first_step, s0, s1 = _previous_states(reverse, p, h0, r0, r1)
    # the rows after the first step lie on one side of it (the first or the last rows)
    m0, m1 = (r0, r1) if s1 <= s0 else (r0, s0) if s0 > r0 else (s1, r1)
    if m1 > m0:
        _add_gradient_product(p[e, m0:m1], hs[e, m0 + shift:m1 + shift], gw)
    if s1 > s0:
        _add_gradient_product(p[e, s0:s1], h0[e, s0 - first_step:s1 - first_step], gw)


@jit(inline=True)
def _hidden_side(cell, reverse, p, hs, h0, e, r0, r1, gw, gb):
    """gw = sum over rows r0:r1 of d_hid h_prev^T (member e), and for GRU gb = sum of
    d_hid (for the other cells d_hid = d_in, whose sum the input side makes)."""
    if cell != GRU:  # d_hid is the full row of p
        _add_hidden_product(reverse, p, hs, h0, e, r0, r1, gw)
        return  # (``parameter_and_input_gradients`` copies the input side's sum)
    shift, first_step, s0, s1 = _previous_states(reverse, p, h0, r0, r1)
    n_out, n_units = gw.shape  # GRU: r, z and n's hidden part, gathered chunk by chunk
    d_hid = np.empty((CHUNK_ROWS, n_out), p.dtype)
    h_prev = np.empty((CHUNK_ROWS, n_units), p.dtype)
    for c0 in range(r0, r1, CHUNK_ROWS):
        c1 = min(c0 + CHUNK_ROWS, r1)
        for r in range(c1 - c0):
            row = c0 + r
            copy_into(h0[e, row - first_step] if s0 <= row < s1 else hs[e, row + shift],
                      h_prev[r])
        _hidden_columns(p, e, c0, c1, d_hid)
        _add_gradient_product(d_hid[:c1 - c0], h_prev[:c1 - c0], gw)
        _add_column_sums(d_hid[:c1 - c0], gb)


def input_gradients(p, weight_ih, packed_ih, grad_x, fresh):
    """dL/dx[r] = sum over members of W_ih[e]^T dL/d(W_ih x)[e, r], added to ``grad_x``
    (or written, if ``fresh``). ``grad_x`` (1, rows, D) is shared by all members,
    whose terms are added in member order; (E, rows, D) is per member. Register panels
    from ``packed_ih`` (W_ih packed, ``kernels.cells.pack_member_panels``) where the
    input size allows (``fits_panels``) and they beat BLAS (``PANELS_BEAT_BLAS``), else
    BLAS."""
    run_items(_input_gradient_chunk, grad_x.shape[0] * n_chunks(p.shape[1]), p, weight_ih,
              packed_ih, grad_x, fresh)


@jit
def _input_gradient_chunk(item, p, weight_ih, packed_ih, grad_x, fresh):
    """Item ``item`` of ``input_gradients``: one chunk of rows of one owner of dL/dx."""
    n_members, n_rows, _ = p.shape
    n_out = weight_ih.shape[1]
    shared = grad_x.shape[0] == 1 and n_members > 1
    chunks = n_chunks(n_rows)
    owner = item // chunks
    r0, r1 = chunk_rows(item - owner * chunks, n_rows)
    first, last = (0, n_members) if shared else (owner, owner + 1)
    out = grad_x[owner, r0:r1]
    if PANELS_BEAT_BLAS and fits_panels(out):  # register panels, every sum in order
        if fresh:
            for r in range(r1 - r0):
                fill(out[r], 0.0)
        for e in range(first, last):
            add_packed_product(p[e, r0:r1, :n_out], packed_ih[e], out)
    else:
        _input_gradients_by_blas(p, weight_ih, first, last, r0, r1, out, fresh)


@jit(inline=True)
def _input_gradients_by_blas(p, weight_ih, first, last, r0, r1, out, fresh):
    """out (+)= sum over members first..last-1 of p[e, r0:r1, :G*H] W_ih[e], one BLAS
    product each, added in member order (GRU: the first 3H of 4H columns of p)."""
    n_out = weight_ih.shape[1]
    for e in range(first, last):
        add = not fresh or e > first
        gemm(p[e, r0:r1, :n_out], False, weight_ih[e], False, 1.0 if add else 0.0, out)


def _rows(a):
    """View (..., T, B, k) with T and B merged, and a leading member axis: (E or 1, T*B, k)."""
    if a.ndim == 3:
        a = a[None]
    return np.reshape(a, (a.shape[0], a.shape[1] * a.shape[2], a.shape[3]), copy=False)


def project_inputs(x, packed_ih_t, weight_ih, bias_ih, p):
    """p[..., :G*H] = x W_ih^T + b_ih for every member, step and batch element, given
    ``weight_ih`` (E, G*H, D) and ``packed_ih_t`` = W_ih^T packed
    (``kernels.cells.pack_member_panels``); ``x`` (T, B, D) shared or (E, T, B, D), ``p``
    (E, T, B, W)."""
    p_rows = _rows(p)
    run_items(_project_chunk, p_rows.shape[0] * n_chunks(p_rows.shape[1]), _rows(x), packed_ih_t,
              weight_ih, bias_ih, p_rows)


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
    ``grad_x_fresh`` it holds zeros and is written directly; None skips dL/dx (a pass
    over ``p``). The parameter gradients are overwritten.
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
    if cell != GRU:  # one sum of dL/da for both biases
        grad_bias_hh[...] = grad_bias_ih
    if grad_x_accumulate is None:
        return
    grad_x_rows = _rows(grad_x_accumulate)
    packed = np.empty((0, 0, 0, 1), weight_ih.dtype)  # a stand-in where BLAS multiplies
    if PANELS_BEAT_BLAS and fits_panels(grad_x_rows[0]):
        packed = pack_member_panels(weight_ih, panel_width(grad_x_rows))
    input_gradients(p_rows, weight_ih, packed, grad_x_rows, grad_x_fresh)
