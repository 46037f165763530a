"""Per-unit arithmetic of the four cells, and the step functions users call.

Cells are identified by a small integer code so that one compiled sequence kernel
serves all four (passing Python functions into kernels would recompile the caller for
each one and defeat caching).

Layout of the per-step work row ``p`` (width ``saved_width(cell, H)``):

=========  ===========================  ==========================  ====================
cell       on entry (input projection)  saved by the forward pass   after the backward
=========  ===========================  ==========================  ====================
rnn_*      W_ih x + b_ih      (H)       unchanged (h_t suffices)    dL/da          (H)
lstm       W_ih x + b_ih      (4H)      gates i, f, g, o     (4H)   dL/da  i,f,g,o (4H)
gru        W_ih x + b_ih      (3H)      r, z, n, W_hn h + b_hn (4H) dL/d(W_ih x) r,z,n
                                                                     and dL/d(W_hn h)
=========  ===========================  ==========================  ====================

The LSTM cell state ``c_t`` is kept beside ``h_t``; ``tanh(c_t)`` is recomputed in the
backward pass rather than stored.
"""
import numpy as np
from numba.extending import overload

from kernels._jit import jit
from kernels.activations import dsigmoid, drelu, dtanh, relu, sigmoid, tanh
from kernels.memory import aligned_buffer, aligned_empty, any_layout, copy_into, fill
from kernels.parallel import run_items
from kernels.registers import (DOT_ROWS, HALF_BLOCK, PANEL_ROWS, PANEL_VECTORS, QUARTER_BLOCK,
                               VECTOR_BITS, WIDE_BLOCK,
                               accumulate_columns, accumulate_panel, accumulate_panel_vector,
                               accumulate_vector, accumulate_vector_from, dot_rows,
                               load_vector, multiply_add)

RNN_TANH, RNN_RELU, LSTM, GRU = 0, 1, 2, 3
CELL_CODES = {"rnn_tanh": RNN_TANH, "rnn_relu": RNN_RELU, "lstm": LSTM, "gru": GRU}
GATES = {RNN_TANH: 1, RNN_RELU: 1, LSTM: 4, GRU: 3}


@jit
def saved_width(cell, hidden_size):
    """Width of the per-step work row ``p`` for ``cell`` (see the module docstring)."""
    return hidden_size if cell == RNN_TANH or cell == RNN_RELU else 4 * hidden_size


@jit(inline=True)
def recurrent_matvec(w_t, h, bias, out, descending):
    """out = bias + W h, with ``w_t`` the blocks of W.T (H, G*H) (``column_blocks``,
    read in ``descending`` order or not), each ``out[i]`` summed in the order j = 0, 1,
    ..., H-1."""
    copy_into(bias, out)
    accumulate_blocked_rows(w_t, h, out, descending)


@jit(inline=True)
def transposed_matvec(w, v, out, descending):
    """out += W.T v, with ``w`` the blocks of W (G*H, H) (``column_blocks``, read in
    ``descending`` order or not); fixed order."""
    accumulate_blocked_rows(w, v, out, descending)


@jit
def column_block_width(itemsize):
    """Columns per block of ``pack_column_blocks`` for elements of ``itemsize`` bytes:
    the widest block of ``accumulate_rows`` (``WIDE_BLOCK`` vector registers)."""
    return WIDE_BLOCK * VECTOR_BITS // (8 * itemsize)


def pack_column_blocks(w):
    """A stack of matrices (E, k, m) as (E, k*m): each matrix's columns in blocks of
    ``column_block_width`` (the last block may be narrower), one after the other, the k
    rows of a block contiguous (``column_blocks`` gives views of them).
    ``accumulate_blocked_rows`` then streams each block as one run of memory, which the
    hardware prefetcher follows, instead of a part of every row. The walks' recurrent
    products on one Zen 3 core, W from L2, ns per product in rows / in blocks: float32
    128 x 128, 987 / 746; float32 256 x 256, 5449 / 3666; float64 128 x 128, 2455 / 1748.

    >>> pack_column_blocks(np.arange(6.0).reshape(1, 2, 3))[0].tolist()  # one block
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    """
    n_members, n_terms, n_columns = w.shape
    width = column_block_width(w.itemsize)
    blocked = aligned_empty((n_members, n_terms * n_columns), w.dtype)
    for first in range(0, n_columns, width):
        last = min(first + width, n_columns)
        blocked[:, n_terms * first:n_terms * last] = np.reshape(
            w[:, :, first:last], (n_members, n_terms * (last - first)))
    return blocked


@jit(inline=True)
def column_blocks(blocked, n_terms, n_columns):
    """One matrix (n_terms, n_columns) from ``pack_column_blocks`` as views of its
    blocks: the whole ones (n_whole, n_terms, width) and the narrower last one
    (n_terms, n_columns - n_whole * width), possibly empty. Made once, before a loop
    over steps: a reshape is a call, a view of these a few instructions (a float32 64 x
    64 product and its copies, one Zen 4 core: 178 ns reshaping at every step, 135
    with these views)."""
    width = column_block_width(blocked.itemsize)
    n_whole = n_columns // width
    split = n_whole * n_terms * width
    last = blocked[split:n_terms * n_columns]
    return (blocked[:split].reshape((n_whole, n_terms, width)),
            last.reshape((n_terms, n_columns - n_whole * width)))


@jit(inline=True)
def accumulate_blocked_rows(blocks, coefficients, out, descending):
    """``accumulate_rows(w, coefficients, out)`` for w (k, m) as the views of its column
    blocks (``column_blocks``): the same sums, the same bits, in any order of the blocks.

    A walk alternates the order from step to step (``descending`` every other step), so
    that the block it reads first is the one it read last, still in L1 cache. One Zen 3
    core, W from cache, ns per product, one order / alternating: float32 128 x 128,
    734 / 623; float32 256 x 256, 2959 / 2833; float64 128 x 128, 1489 / 1410.
    """
    whole, last = blocks
    n_whole, width = whole.shape[0], whole.shape[2]
    n_blocks = n_whole + (1 if last.shape[1] > 0 else 0)
    for i in range(n_blocks):
        block = n_blocks - 1 - i if descending else i
        first = width * block
        if block < n_whole:
            accumulate_rows(whole[block], coefficients, out[first:first + width])
        else:
            accumulate_rows(last, coefficients, out[first:])


@jit(inline=True)
def accumulate_rows(rows, coefficients, out):
    """out += sum_j coefficients[j] * rows[j, :], summed in the order j = 0, 1, ...;
    ``out`` must not overlap ``rows`` or ``coefficients``.

    Blocks of columns keep their sums in vector registers over all rows
    (``kernels.registers``), the widest blocks first; when the length is not a multiple
    of the vector's lanes, the last vector overlaps the one before and is recomputed
    from the values saved at the start. Rows not contiguous, and sums shorter than one
    vector, go through ``accumulate_rows_in_memory``. Same bits every way.
    """
    n_out = out.shape[0]
    lanes = VECTOR_BITS // (8 * out.itemsize)
    if n_out < lanes or rows.strides[1] != rows.itemsize or out.strides[0] != out.itemsize:
        accumulate_rows_in_memory(rows, coefficients, out)
        return
    last = n_out - lanes
    initial = load_vector(out, last)
    start = 0
    while start + WIDE_BLOCK * lanes <= n_out:
        accumulate_columns(rows, coefficients, out, start, WIDE_BLOCK)
        start += WIDE_BLOCK * lanes
    if start + HALF_BLOCK * lanes <= n_out:
        accumulate_columns(rows, coefficients, out, start, HALF_BLOCK)
        start += HALF_BLOCK * lanes
    if start + QUARTER_BLOCK * lanes <= n_out:
        accumulate_columns(rows, coefficients, out, start, QUARTER_BLOCK)
        start += QUARTER_BLOCK * lanes
    while start + lanes <= n_out:
        accumulate_vector(rows, coefficients, out, start)
        start += lanes
    if start < n_out:
        accumulate_vector_from(rows, coefficients, out, last, initial)


@jit
def accumulate_rows_in_memory(rows, coefficients, out):
    """``accumulate_rows`` for any strides: four rows per pass over ``out``, each
    ``out[i]`` still summed in the order j = 0, 1, ..., each term a ``multiply_add``
    (same rounding)."""
    n = coefficients.shape[0]
    j = 0
    while j + 4 <= n:
        a, b, c, d = coefficients[j], coefficients[j + 1], coefficients[j + 2], coefficients[j + 3]
        r0, r1, r2, r3 = rows[j], rows[j + 1], rows[j + 2], rows[j + 3]
        for i in range(out.shape[0]):
            out[i] = multiply_add(d, r3[i], multiply_add(c, r2[i], multiply_add(
                b, r1[i], multiply_add(a, r0[i], out[i]))))
        j += 4
    while j < n:
        a = coefficients[j]
        r0 = rows[j]
        for i in range(out.shape[0]):
            out[i] = multiply_add(a, r0[i], out[i])
        j += 1


#: Bytes of one packed panel that ``add_packed_product`` sums at a time: every row of
#: ``out`` passes over them before the next part, so they stay in L2 cache (1 MiB per
#: core on the Zen 5 measured). Splitting the sum over k into consecutive parts keeps
#: its order.
PRODUCT_PART_BYTES = 256 << 10


@jit
def panel_width(out):
    """Columns of one panel of ``kernels.registers.accumulate_panel`` for out's dtype."""
    return PANEL_VECTORS * VECTOR_BITS // (8 * out.itemsize)


#: Whether register panels multiply faster than BLAS (``kernels.blas``: OpenBLAS, its
#: Haswell kernels on AMD), for the products whose order of summation is
#: free (the analysis walks): with AVX-512 they run at twice its rate (float64, 256 x
#: 256 on one Zen 5 core: 103 GFLOP/s against 55), with AVX2 at 0.6-0.7 of it (float64,
#: 200 x 200 on one Zen 3 core: 0.58 ms against 0.40; the full Lyapunov spectrum of
#: N = 200 in 0.72-0.84 s with BLAS, 0.91-1.48 s with the panels).
PANELS_BEAT_BLAS = VECTOR_BITS >= 512


@jit
def fits_panels(out):
    """Whether out += a @ b is worth doing in register panels: at least one panel of
    columns, and ``out`` contiguous along its rows (else BLAS is the better choice)."""
    return out.shape[1] >= panel_width(out) and out.strides[1] == out.itemsize


@jit
def pack_panel(b, panel, packed):
    """Copy panel number ``panel`` of ``b`` (k, m), the columns from ``panel * width``,
    into ``packed`` (k, width); columns past m are set to zero."""
    n_terms, width = packed.shape
    first = panel * width
    n = min(width, b.shape[1] - first)
    for k in range(n_terms):  # row by row: one 2-D loop does not vectorise (4x slower)
        copy_into(b[k, first:first + n], packed[k, :n])
        fill(packed[k, n:], 0.0)


@jit
def pack_panels(b, width):
    """``b`` (k, m) of any strides as ceil(m / width) panels of ``width`` columns, each
    one contiguous block (k, width): the layout ``add_packed_product`` reads.

    A panel's rows then follow each other in memory, so the k rows of a sum stream
    from cache instead of touching k pages and a few cache sets (a (32, 1024) @ (1024,
    4096) float32 product: 183 GFLOP/s packed, 103 unpacked, on one Zen 5 core).
    """
    n_panels = (b.shape[1] + width - 1) // width
    packed = aligned_buffer(n_panels * b.shape[0] * width, b).reshape(
        (n_panels, b.shape[0], width))
    for panel in range(packed.shape[0]):
        pack_panel(any_layout(b), panel, packed[panel])
    return packed


def pack_member_panels(b, width):
    """``pack_panels`` of every b[e] of a stack (E, k, m), in parallel over the panels:
    (E, panels, k, width). Each matrix is packed once per call and used for every step."""
    n_members, n_terms, n_columns = b.shape
    n_panels = (n_columns + width - 1) // width
    packed = aligned_empty((n_members, n_panels, n_terms, width), b.dtype)
    run_items(_pack_member_panel, n_members * n_panels, b, packed)
    return packed


@jit
def _pack_member_panel(item, b, packed):
    """Item ``item`` of ``pack_member_panels``: one panel of one member."""
    e = item // packed.shape[1]
    panel = item - e * packed.shape[1]
    pack_panel(any_layout(b[e]), panel, packed[e, panel])


@jit
def terms_per_part(width, itemsize):
    """Terms k of one part of a sum: a part of a packed panel is ``PRODUCT_PART_BYTES``."""
    return max(1, PRODUCT_PART_BYTES // (width * itemsize))


def column_panel(b, panel, first, k0, k1, n):
    """Rows k0:k1 of the n columns of panel number ``panel`` (from column ``first``) of
    ``add_packed_product``'s ``b``, packed (``pack_panels``) or as it is (k, m)."""


@overload(column_panel)
def _column_panel(b, panel, first, k0, k1, n):
    if b.ndim == 3:
        return lambda b, panel, first, k0, k1, n: b[panel, k0:k1, :n]
    return lambda b, panel, first, k0, k1, n: b[k0:k1, first:first + n]


@jit(inline=True)
def add_packed_product(a, b, out):
    """out += a @ b with every out[i, j] summed over k in order: the bits of
    ``accumulate_rows(b, a[i], out[i])``. ``b`` is packed (``pack_panels(b,
    panel_width(out))``), or as it is when its rows are contiguous and close together;
    ``a`` is (n, k), of any strides. ``out`` must not overlap ``a`` or ``b``.

    Four rows of ``out`` at a time share each loaded row of a panel
    (``kernels.registers.accumulate_panel``), and the last panel when it is partial a
    vector of columns at a time (``accumulate_panel_vector``); the rows and the columns
    left over, and an ``out`` with strided rows, go row by row (``accumulate_rows``).
    Long sums go in parts of a panel that stay in cache.
    """
    add_packed_product_any_layout(any_layout(a), any_layout(b), any_layout(out))


@jit
def add_packed_product_any_layout(a, b, out):
    """``add_packed_product`` compiled once per dtype and shape of ``a`` and ``b``,
    whatever their layouts: each compiled copy is re-optimised inside every kernel that
    calls it, and the loads go by run-time strides anyway."""
    n_rows, n_columns = out.shape
    n_terms = b.shape[-2]
    width = panel_width(out)
    lanes = VECTOR_BITS // (8 * out.itemsize)
    in_panels = n_rows - n_rows % PANEL_ROWS if out.strides[1] == out.itemsize else 0
    part = terms_per_part(width, out.itemsize)
    for k0 in range(0, n_terms, part):
        k1 = min(k0 + part, n_terms)
        for panel in range((n_columns + width - 1) // width):
            first = panel * width
            n = min(width, n_columns - first)
            rows = column_panel(b, panel, first, k0, k1, n)
            columns = out[:, first:first + n]
            vectors = n - n % lanes  # whole vectors of columns (all of a whole panel)
            panel_rows = in_panels if vectors else 0  # their rows go four at a time
            for i in range(0, panel_rows, PANEL_ROWS):
                coefficients = a[i:i + PANEL_ROWS, k0:k1]
                block = columns[i:i + PANEL_ROWS]
                if vectors == width:
                    accumulate_panel(rows, coefficients, block, 0)
                else:
                    for start in range(0, vectors, lanes):
                        accumulate_panel_vector(rows, coefficients, block, start)
            for i in range(n_rows):  # what is left: the rows past the panels, and the
                done = vectors if i < panel_rows else 0  # columns that do not fill a vector
                if done < n:
                    accumulate_rows(rows[:, done:], a[i, k0:k1], columns[i, done:])


#: Rows of a matrix at least this far apart (a page) are packed before a product reads
#: them: else every term of a sum touches a new page. Closer rows are read in place.
PAGE_BYTES = 4096


@jit(inline=True)
def reads_in_place(b):
    """Whether a product reads its factor ``b`` (k, m) in place rather than packed a part
    of the sum at a time (``add_product``, ``kernels.projections.add_transposed_product``):
    contiguous rows less than a page apart. Measured on one Zen 4 core, (1000 x m)^T
    (1000 x m) in parts of 128 rows, in place and packed (GFLOP/s): float32 m = 64,
    93-96 and 70; m = 128, 96 and 86; m = 256, 92-99 and 79-80; float64 m = 64, 35-39
    and 33-37; m = 256, 45 and 43."""
    return b.strides[1] == b.itemsize and b.strides[0] < PAGE_BYTES


@jit
def add_product(a, b, out):
    """out += a @ b with every out[i, j] summed over k in order (the bits of
    ``accumulate_rows(b, a[i], out[i])`` for each row i), in register panels
    (``add_packed_product``). ``b`` is read in place when its rows are contiguous and
    less than a page apart, else packed (``pack_panels``) a part of the sum at a time.
    Pack once yourself when the same ``b`` serves many products. ``out`` must not
    overlap ``a`` or ``b``.

    >>> import numpy as np
    >>> a, b, out = np.ones((5, 3)), np.arange(6.0).reshape(3, 2), np.zeros((5, 2))
    >>> add_product(a, b, out); out[0]
    array([6., 9.])
    """
    if reads_in_place(b):
        add_packed_product(a, b, out)
        return
    width = panel_width(out)
    part = terms_per_part(width, out.itemsize)
    for k0 in range(0, b.shape[0], part):
        k1 = min(k0 + part, b.shape[0])
        add_packed_product(a[:, k0:k1], pack_panels(b[k0:k1], width), out)


@jit(inline=True)
def input_matvec(w, x, bias, out):
    """out[:G*H] = W x + bias for ``w = W`` of shape (G*H, D) (``matvec``, then the bias)."""
    matvec(w, x, out)
    for i in range(w.shape[0]):
        out[i] += bias[i]


@jit(inline=True)
def matvec(w, x, out):
    """out = w @ x, one dot product per row summed in vector lanes (``row_dots``); ``w``
    with strided columns, or a strided ``x``, is copied first: the same bits for any
    strides (strided rows are read in place)."""
    if w.strides[1] != w.itemsize or x.strides[0] != x.itemsize:
        row_dots(np.ascontiguousarray(w), np.ascontiguousarray(x), out)
    else:
        row_dots(w, x, out)


@jit
def row_dots(w, x, out):
    """out[i] = the dot product of row i of ``w`` with ``x`` (both with contiguous rows),
    by ``kernels.registers.dot_rows``: eight rows at a time, then one at a time."""
    i = 0
    while i + DOT_ROWS <= w.shape[0]:
        sums = dot_rows(w, x, i, DOT_ROWS)
        for r in range(DOT_ROWS):
            out[i + r] = sums[r]
        i += DOT_ROWS
    for i in range(i, w.shape[0]):
        out[i] = dot_rows(w, x, i, 1)[0]


@jit
def saved_gates(row, n_units, u):
    """Unit u's four saved values of a gated cell: LSTM (i, f, g, o), GRU (r, z, n, W_hn h + b)."""
    return row[u], row[n_units + u], row[2 * n_units + u], row[3 * n_units + u]


@jit(inline=True)
def rnn_unit(cell, a):
    """A vanilla RNN unit's new state from its pre-activation ``a``."""
    return tanh(a) if cell == RNN_TANH else relu(a)


@jit(inline=True)
def rnn_unit_slope(cell, h):
    """dh/da of a vanilla RNN unit, from its new state ``h``."""
    return dtanh(h) if cell == RNN_TANH else drelu(h)


@jit(inline=True)
def lstm_unit(a_i, a_f, a_g, a_o, c_prev):
    """One LSTM unit: gates i, f, g, o from their pre-activations, then (c, h).
    Returns (i, f, g, o, c, h)."""
    i, f, g, o = (lstm_gate(0, a_i), lstm_gate(1, a_f), lstm_gate(2, a_g), lstm_gate(3, a_o))
    c, h = lstm_state(i, f, g, o, c_prev)
    return i, f, g, o, c, h


@jit(inline=True)
def lstm_gate(k, a):
    """Gate k (0 input, 1 forget, 2 candidate, 3 output) of an LSTM unit from its
    pre-activation: tanh for the candidate, the logistic sigmoid for the others."""
    return tanh(a) if k == 2 else sigmoid(a)


@jit(inline=True)
def lstm_state(i, f, g, o, c_prev):
    """(c, h) of an LSTM unit from its gates and previous cell state."""
    c = f * c_prev + i * g
    return c, o * tanh(c)


@jit(inline=True)
def lstm_unit_backward(i, f, g, o, c, c_prev, dh, dc):
    """Backward through one LSTM unit given its gates, new and previous cell state and
    dL/dh, dL/dc: returns dL/d(pre-activation) of i, f, g, o and dL/dc_prev."""
    tc = tanh(c)
    dct = dc + dh * o * dtanh(tc)
    return (dct * g * dsigmoid(i), dct * c_prev * dsigmoid(f), dct * i * dtanh(g),
            dh * tc * dsigmoid(o), dct * f)


@jit(inline=True)
def lstm_unit_linearisation(i, f, g, o, c, c_prev):
    """d(h, c)/d(pre-activations) of one LSTM unit: (dh/da_i, dh/da_f, dh/da_g, dh/da_o,
    dc/da_i, dc/da_f, dc/da_g, dh/dc_prev, dc/dc_prev)."""
    tc = tanh(c)
    through_c = o * dtanh(tc)
    dc_i = g * dsigmoid(i)
    dc_f = c_prev * dsigmoid(f)
    dc_g = i * dtanh(g)
    return (through_c * dc_i, through_c * dc_f, through_c * dc_g, tc * dsigmoid(o),
            dc_i, dc_f, dc_g, through_c * f, f)


@jit(inline=True)
def gru_unit(a_r, a_z, a_n, hn, h_prev):
    """One GRU unit: r and z from their pre-activations, n = tanh(a_n + r * hn) with
    hn = (W_hn h_prev + b_hn)_u, h = n + z (h_prev - n). Returns (r, z, n, h)."""
    r = sigmoid(a_r)
    z = sigmoid(a_z)
    n, h = gru_state(r, z, a_n, hn, h_prev)
    return r, z, n, h


@jit(inline=True)
def gru_state(r, z, a_n, hn, h_prev):
    """(n, h) of a GRU unit from its gates r, z (see ``gru_unit``)."""
    n = tanh(a_n + r * hn)
    return n, n + z * (h_prev - n)


@jit(inline=True)
def gru_unit_backward(r, z, n, hn, h_prev, dh):
    """Backward through one GRU unit: dL/d(pre-activation) of r, z and of the input part
    of n, dL/dhn, and the direct part of dL/dh_prev (dh z)."""
    dn_pre = (dh - dh * z) * dtanh(n)
    return dn_pre * hn * dsigmoid(r), dh * (h_prev - n) * dsigmoid(z), dn_pre, dn_pre * r, dh * z


@jit(inline=True)
def gru_unit_linearisation(r, z, n, hn, h_prev):
    """dh/d(hidden pre-activations r, z, n) and dh/dh_prev (direct) of one GRU unit."""
    through_n = dtanh(n) - z * dtanh(n)
    return through_n * hn * dsigmoid(r), (h_prev - n) * dsigmoid(z), through_n * r, z


@jit
def cell_forward(cell, p, ph, h_prev, c_prev, h, c):
    """One step of ``cell`` for one sequence, given both pre-activations.

    ``p`` holds W_ih x + b_ih on entry and what the backward pass needs on exit;
    ``ph`` = W_hh h_prev + b_hh (G*H,). Writes ``h`` (H,) and, for LSTM, ``c`` (H,).
    ``h`` may alias ``h_prev`` and ``c`` may alias ``c_prev`` (unit u reads only
    index u before writing it).

    The gated cells run ``lstm_unit`` and ``gru_unit`` a gate (or two) at a time over
    all units, then the states: loops over few arrays vectorise, one loop doing
    everything did not (per unit, same bits: LSTM 2.1 ns instead of 3.1 in float32, 5.8
    instead of 7.2 in float64; GRU 1.4 instead of 2.1 and 3.6 instead of 5.4).
    """
    n_units = h.shape[0]
    if cell == RNN_TANH or cell == RNN_RELU:
        for u in range(n_units):
            h[u] = rnn_unit(cell, p[u] + ph[u])
    elif cell == LSTM:
        for k in range(4):
            gate, hidden = p[k * n_units:(k + 1) * n_units], ph[k * n_units:(k + 1) * n_units]
            for u in range(n_units):
                gate[u] = lstm_gate(k, gate[u] + hidden[u])
        for u in range(n_units):
            i, f, g, o = saved_gates(p, n_units, u)
            c[u], h[u] = lstm_state(i, f, g, o, c_prev[u])
    else:  # r and z, then n and h
        for u in range(2 * n_units):
            p[u] = sigmoid(p[u] + ph[u])
        for u in range(n_units):
            hn = ph[2 * n_units + u]
            p[2 * n_units + u], h[u] = gru_state(p[u], p[n_units + u], p[2 * n_units + u], hn,
                                                 h_prev[u])
            p[3 * n_units + u] = hn


@jit(inline=True)
def rnn_backward(cell, p, dh, h):
    """``cell_backward`` of a vanilla RNN: p = dL/da = dh * phi'(a), for both W_ih's
    and W_hh's side. Inlined where a walk steps a vanilla RNN: there the call of
    ``cell_backward`` (not inlined, which keeps the gated cells' loops vectorised in the
    batched recurrence: inlined, an LSTM's took three times as long) costs more than
    the cell (a float32 64-unit backward step on one Zen 4 core: 177-208 ns with the
    call, 148-152 inlined and without the copy of dL/da into ``dph``)."""
    for u in range(dh.shape[0]):
        p[u] = dh[u] * rnn_unit_slope(cell, h[u])


@jit
def cell_backward(cell, p, dh, dc, h_prev, c_prev, h, c, dph, dh_prev):
    """Backward through one step of ``cell`` for one sequence.

    On entry ``p`` holds what ``cell_forward`` saved, ``dh`` = dL/dh_t (H,) and, for
    LSTM, ``dc`` = dL/dc_t from later steps. On exit ``p[:G*H]`` = dL/d(W_ih x + b_ih)
    (GRU also ``p[3H:4H]`` = dL/d(W_hn h + b_hn)), ``dph`` (G*H,) = dL/d(W_hh h + b_hh),
    ``dc`` = dL/dc_{t-1} through the cell state, and ``dh_prev`` (H,) = the part of
    dL/dh_{t-1} that does not pass through W_hh (non-zero for GRU only).
    """
    n_units = dh.shape[0]
    # Each loop touches few arrays, so that LLVM can prove (at run time) that they do
    # not overlap and vectorise it; one loop doing everything stays scalar.
    if cell == RNN_TANH or cell == RNN_RELU:
        rnn_backward(cell, p, dh, h)
    elif cell == LSTM:
        for u in range(n_units):
            i, f, g, o = saved_gates(p, n_units, u)
            p[u], p[n_units + u], p[2 * n_units + u], p[3 * n_units + u], dc[u] = \
                lstm_unit_backward(i, f, g, o, c[u], c_prev[u], dh[u], dc[u])
    else:
        for u in range(n_units):
            r, z, n, hn = saved_gates(p, n_units, u)
            p[u], p[n_units + u], p[2 * n_units + u], p[3 * n_units + u], dh_prev[u] = \
                gru_unit_backward(r, z, n, hn, h_prev[u], dh[u])
    if cell == GRU:  # the hidden parts: r, z as the inputs', n scaled by r
        for j in range(2 * n_units):
            dph[j] = p[j]
        for u in range(n_units):
            dph[2 * n_units + u] = p[3 * n_units + u]
    else:
        for j in range(dph.shape[0]):
            dph[j] = p[j]
        for u in range(n_units):
            dh_prev[u] = 0.0


#: Rows of the linearisation array ``lin`` (LIN_ROWS, H) filled by ``cell_linearisation``:
#: ``lin[LIN_H + k, u]`` = dh_u/da_(kH+u) and ``lin[LIN_C + k, u]`` = dc_u/da_(kH+u) for
#: gate k, where a = W_hh h_prev is the hidden part of the pre-activations; the direct
#: terms ``lin[LIN_HH, u]`` = dh_u/dh_prev_u (GRU's z), ``lin[LIN_HC, u]`` = dh_u/dc_prev_u
#: and ``lin[LIN_CC, u]`` = dc_u/dc_prev_u (LSTM's f).
LIN_H, LIN_C, LIN_HH, LIN_HC, LIN_CC, LIN_ROWS = 0, 4, 8, 9, 10, 11


@jit
def n_gates(cell):
    """G, the number of gate blocks of ``cell`` (rows of W_hh = G * H)."""
    return 4 if cell == LSTM else 3 if cell == GRU else 1


@jit
def cell_linearisation(cell, saved, h_prev, c_prev, h, c, lin):
    """The derivative of one step of ``cell`` with respect to the previous state.

    ``saved`` is the row ``cell_forward`` left in ``p`` (unused by vanilla RNNs, which
    need only ``h``); fills ``lin`` (LIN_ROWS, H) as described at ``LIN_ROWS``. With
    a = W_hh h_prev, the state Jacobian is

        dh/dh_prev = sum_k diag(lin[LIN_H + k]) W_k + diag(lin[LIN_HH]),
        dh/dc_prev = diag(lin[LIN_HC]),
        dc/dh_prev = sum_k diag(lin[LIN_C + k]) W_k,   dc/dc_prev = diag(lin[LIN_CC]),

    W_k being gate k's rows of W_hh. ``cell_backward`` is this map transposed.
    """
    n_units = h.shape[0]
    lin[:] = 0.0
    if cell == RNN_TANH or cell == RNN_RELU:
        for u in range(n_units):
            lin[LIN_H, u] = rnn_unit_slope(cell, h[u])
    elif cell == LSTM:
        for u in range(n_units):
            i, f, g, o = saved_gates(saved, n_units, u)
            (lin[LIN_H, u], lin[LIN_H + 1, u], lin[LIN_H + 2, u], lin[LIN_H + 3, u],
             lin[LIN_C, u], lin[LIN_C + 1, u], lin[LIN_C + 2, u], lin[LIN_HC, u],
             lin[LIN_CC, u]) = lstm_unit_linearisation(i, f, g, o, c[u], c_prev[u])
    else:
        for u in range(n_units):
            r, z, n, hn = saved_gates(saved, n_units, u)
            lin[LIN_H, u], lin[LIN_H + 1, u], lin[LIN_H + 2, u], lin[LIN_HH, u] = \
                gru_unit_linearisation(r, z, n, hn, h_prev[u])


@jit
def _step(cell, x, h, c, weight_ih, weight_hh, bias_ih, bias_hh, h_out, c_out):
    """One step (h, c) -> (h_out, c_out); returns the row it saved (``cell_forward``)."""
    width = saved_width(cell, h.shape[0])
    work = np.empty(width + weight_hh.shape[0], h.dtype)   # one allocation: p, then ph
    p, ph = work[:width], work[width:]
    input_matvec(weight_ih, x, bias_ih, p)
    input_matvec(weight_hh, h, bias_hh, ph)
    cell_forward(cell, p, ph, h, c, h_out, c_out)
    return p


@jit
def step_linearisation(cell, x, h, c, weight_ih, weight_hh, bias_ih, bias_hh, h_out, c_out,
                       lin):
    """One step of ``cell`` (a code of ``CELL_CODES``) from the state (h, c) with input x
    into (h_out, c_out), and its linearisation into ``lin`` (LIN_ROWS, H): what
    ``kernels.state_jvp``, ``state_vjp`` and ``state_jacobian`` need. Arguments as for
    the step functions, but the outputs must not alias (h, c): both states are read.
    ``c`` and ``c_out`` have length 0 unless the cell is an LSTM.

    >>> import numpy as np, kernels
    >>> H = 3
    >>> w_ih, w_hh, b = np.full((H, 1), 0.5), np.eye(H), np.zeros(H)
    >>> h, x, lin = np.array([0.1, 0.2, 0.3]), np.ones(1), np.empty((kernels.LIN_ROWS, H))
    >>> h_out = np.empty(H)
    >>> kernels.step_linearisation(kernels.CELL_CODES["rnn_tanh"], x, h, h[:0], w_ih, w_hh,
    ...                            b, b, h_out, h_out[:0], lin)
    >>> jac = np.empty((H, H))
    >>> kernels.state_jacobian(lin, w_hh, jac)
    >>> bool(np.allclose(h_out, np.tanh(0.5 + h))), bool(np.allclose(jac, np.diag(1 - h_out ** 2)))
    (True, True)
    """
    saved = _step(cell, x, h, c, weight_ih, weight_hh, bias_ih, bias_hh, h_out, c_out)
    cell_linearisation(cell, saved, h, c, h_out, c_out, lin)


_STEP_DOC = """One step of a {name} cell for one sequence, callable from your own ``@njit`` code.

    Computes ``{formula}`` with PyTorch's layout and gate order.

    Parameters
    ----------
    x : (D,) input;  h{c_in} : (H,) previous state{c_note}
    weight_ih : (G*H, D), weight_hh : (G*H, H), bias_ih, bias_hh : (G*H,) with G = {gates}
    h_out{c_out} : (H,) written with the new state; may alias the previous state.

    Assumes, without checking: all arrays of one float dtype (float32 or float64) and
    the shapes above. Any strides give the same bits; contiguous weight rows and a
    contiguous x and h are fastest (the products then sum in vector registers).
    Returns nothing.

    Examples
    --------
    >>> import numpy as np, numba, kernels
    >>> H, D = 3, 2
    >>> w_ih, w_hh, b = np.full(({gates} * H, D), 0.1), np.eye({gates} * H, H), np.zeros({gates} * H)
    >>> @numba.njit
    ... def run(xs, h{c_in}):
    ...     for t in range(xs.shape[0]):
    ...         kernels.{name}_step(xs[t], h,{c_arg} w_ih, w_hh, b, b, h,{c_arg} )
    ...     return h
    >>> run(np.ones((5, D)), np.zeros(H){c_zero}).shape
    (3,)
"""


def _document(function, name, formula, gates, lstm=False):
    function.__doc__ = _STEP_DOC.format(
        name=name, formula=formula, gates=gates,
        c_in=", c" if lstm else "", c_note=" and cell state" if lstm else "",
        c_out=", c_out" if lstm else "", c_arg=" c," if lstm else "",
        c_zero=", np.zeros(H)" if lstm else "")
    return function


@jit
def rnn_tanh_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh, h_out):
    _step(RNN_TANH, x, h, h[:0], weight_ih, weight_hh, bias_ih, bias_hh, h_out, h_out[:0])


@jit
def rnn_relu_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh, h_out):
    _step(RNN_RELU, x, h, h[:0], weight_ih, weight_hh, bias_ih, bias_hh, h_out, h_out[:0])


@jit
def lstm_step(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh, h_out, c_out):
    _step(LSTM, x, h, c, weight_ih, weight_hh, bias_ih, bias_hh, h_out, c_out)


@jit
def gru_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh, h_out):
    _step(GRU, x, h, h[:0], weight_ih, weight_hh, bias_ih, bias_hh, h_out, h_out[:0])


_document(rnn_tanh_step, "rnn_tanh", "h_out = tanh(W_ih x + b_ih + W_hh h + b_hh)", 1)
_document(rnn_relu_step, "rnn_relu", "h_out = relu(W_ih x + b_ih + W_hh h + b_hh)", 1)
_document(lstm_step, "lstm", "c_out = f*c + i*g, h_out = o*tanh(c_out)", 4, lstm=True)
_document(gru_step, "gru", "h_out = (1-z)*n + z*h, n = tanh(W_in x + b_in + r*(W_hn h + b_hn))", 3)
