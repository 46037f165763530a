"""Sequence forward and BPTT on an NVIDIA GPU (``numba.cuda``), for ensembles.

Arrays are laid out as for the CPU kernels (``kernels.sequence``): member-major
``p`` (E, T, B, saved width), ``hs``/``cs`` (E, T, B, H), W_hh as (E, G*H, H), its
transpose ``w_hh_t`` (E, H, G*H). The per-unit arithmetic is the CPU kernels' own
(``kernels.cuda_api`` compiles ``kernels.cells``' unit functions for the device), and
every floating-point sum is done by one thread in a fixed order (no atomics), so a run
gives the same bits every time.

Two ways to run the recurrence, chosen by ``dynamics`` from shapes:

- the walk (``walk_forward``, ``walk_backward``): one thread block per sequence
  (member e, batch element b) runs all T steps in one launch. Thread i computes gate row
  i of W_hh h (reading W_hh^T row by row: consecutive threads read consecutive
  addresses), the state and the gate values live in shared memory, and so does W_hh
  itself when it fits (``weights_fit``). For ensembles: thousands of small networks.
- the batched recurrence (``step_forward``, ``step_backward`` with ``matmul``): per
  step one tiled matrix product (B, H) x (H, G*H) per member and one elementwise cell
  kernel. For few, large networks with a batch (H = 1024, B = 256).

Input projections, parameter gradients and dL/dx are matrix products over all steps
(``matmul``: a BLOCK_SIDE x BLOCK_SIDE tile of c per block of TILE x TILE threads, 4 x 4
outputs per thread, through shared memory; long sums split into a fixed number of
chunks, from shapes only, added in order by ``add_chunks``).
"""
import functools
import math

from kernels import sequence
from kernels.cells import GRU, LSTM
from kernels.cuda_api import (TILE, cuda, device, gru_unit, gru_unit_backward, lstm_unit,
                              lstm_unit_backward, numba_float, rnn_unit, rnn_unit_slope)

#: Threads per block of a walk at most (the size of its reduction buffer). The walks
#: need up to 154 registers per thread (the float64 Lyapunov walk, compiled for sm_90),
#: and a block has 64K: 1,024 threads could not launch ("too many resources
#: requested"), 256 always can (255 registers at most).
MAX_THREADS = 256
#: Dynamic shared memory a walk's block may use: the 48 KiB a block gets without opting
#: in, less the reduction buffer of ``MAX_THREADS`` float64 values.
SHARED_BYTES = 48 * 1024 - 8 * MAX_THREADS
FLOAT64 = numba_float("float64")


def state_fits(n_gate_rows, n_units, itemsize):
    """Whether a walk's block can hold its state and gate rows in shared memory (the
    backward walk's three state rows, the most); beyond, layers run as the batched
    recurrence (float64 LSTM: H > 841)."""
    return (3 * n_units + n_gate_rows) * itemsize <= SHARED_BYTES


def weights_fit(n_gate_rows, n_units, itemsize):
    """Whether a walk keeps W_hh in shared memory, beside its state and gate rows."""
    return (n_gate_rows * n_units + 3 * n_units + n_gate_rows) * itemsize <= SHARED_BYTES


def walk_threads(n_gate_rows):
    """Threads per block of a walk: one per gate row, at most ``MAX_THREADS``."""
    return min(MAX_THREADS, n_gate_rows)


@cuda.jit(device=True)
def unit_forward(cell, u, n_units, row, ph, h_prev, c_prev):
    """Unit u of one step: reads W_ih x + b_ih from ``row`` and W_hh h + b_hh from ``ph``,
    leaves in ``row`` what the backward pass needs (as ``cell_forward``); returns (h, c)."""
    if cell == LSTM:
        i, f, g, o, c, h = lstm_unit(row[u] + ph[u], row[n_units + u] + ph[n_units + u],
                                     row[2 * n_units + u] + ph[2 * n_units + u],
                                     row[3 * n_units + u] + ph[3 * n_units + u], c_prev)
        row[u] = i
        row[n_units + u] = f
        row[2 * n_units + u] = g
        row[3 * n_units + u] = o
        return h, c
    if cell == GRU:
        hn = ph[2 * n_units + u]
        r, z, n, h = gru_unit(row[u] + ph[u], row[n_units + u] + ph[n_units + u],
                              row[2 * n_units + u], hn, h_prev)
        row[u] = r
        row[n_units + u] = z
        row[2 * n_units + u] = n
        row[3 * n_units + u] = hn
        return h, c_prev
    return rnn_unit(cell, row[u] + ph[u]), c_prev


@cuda.jit(device=True)
def unit_backward(cell, u, n_units, row, dh, dc, h_prev, c_prev, h, c, dph):
    """Backward through unit u of one step (as ``cell_backward``): ``row`` holds what the
    forward pass saved and receives dL/d(pre-activations); the unit's gate rows of
    ``dph`` receive dL/d(W_hh h + b_hh). Returns (dL/dc_prev, direct part of dL/dh_prev)."""
    zero = dh - dh
    if cell == LSTM:
        row[u], row[n_units + u], row[2 * n_units + u], row[3 * n_units + u], dc_prev = \
            lstm_unit_backward(row[u], row[n_units + u], row[2 * n_units + u],
                               row[3 * n_units + u], c, c_prev, dh, dc)
        for g in range(4):
            dph[g * n_units + u] = row[g * n_units + u]
        return dc_prev, zero
    if cell == GRU:
        row[u], row[n_units + u], row[2 * n_units + u], row[3 * n_units + u], direct = \
            gru_unit_backward(row[u], row[n_units + u], row[2 * n_units + u],
                              row[3 * n_units + u], h_prev, dh)
        dph[u] = row[u]
        dph[n_units + u] = row[n_units + u]
        dph[2 * n_units + u] = row[3 * n_units + u]  # the hidden part of n is scaled by r
        return zero, direct
    row[u] = dh * rnn_unit_slope(cell, h)
    dph[u] = row[u]
    return zero, zero


time_index = device(sequence.time_index)


@cuda.jit(device=True)
def block_sequence(batch):
    """(member e, batch element b) of this block: block i runs sequence i of the E * B."""
    e = cuda.blockIdx.x // batch
    return e, cuda.blockIdx.x - e * batch


@cuda.jit(device=True)
def load_state(h0, c0, e, b, h, c):
    """h <- h0[e, b] and c <- c0[e, b] (zeros for a cell without c), by the block's threads."""
    for u in range(cuda.threadIdx.x, h.shape[0], cuda.blockDim.x):
        h[u] = h0[e, b, u]
        c[u] = c0[e, b, u] if c0.shape[2] > 0 else h0[e, b, u] - h0[e, b, u]


@cuda.jit(device=True)
def load_matrix(source, target):
    """target (flat, in shared memory) <- source (rows, cols), row by row."""
    n_cols = source.shape[1]
    for k in range(cuda.threadIdx.x, source.shape[0] * n_cols, cuda.blockDim.x):
        target[k] = source[k // n_cols, k % n_cols]


@functools.lru_cache(maxsize=None)
def walk_forward(dtype):
    """The forward walk for ``dtype``: launch ``[E * B, walk_threads(G*H), 0, shared]``
    with ``shared`` = (2H + G*H [+ H*G*H if cache_weights]) * itemsize bytes, as
    ``kernel(cell, reverse, p, w_hh_t, b_hh, h0, c0, hs, cs, cache_weights)``.
    On entry ``p[..., :G*H]`` holds W_ih x_t + b_ih."""
    scalar = numba_float(dtype)

    @cuda.jit
    def kernel(cell, reverse, p, w_hh_t, b_hh, h0, c0, hs, cs, cache_weights):
        n_steps, batch, n_units = hs.shape[1], hs.shape[2], hs.shape[3]
        n_rows = w_hh_t.shape[2]
        e, b = block_sequence(batch)
        first, stride = cuda.threadIdx.x, cuda.blockDim.x
        lstm = cs.shape[3] > 0
        shared = cuda.shared.array(0, scalar)
        h = shared[:n_units]
        c = shared[n_units:2 * n_units]
        ph = shared[2 * n_units:2 * n_units + n_rows]
        w = shared[2 * n_units + n_rows:]
        load_state(h0, c0, e, b, h, c)
        if cache_weights:
            load_matrix(w_hh_t[e], w)
        cuda.syncthreads()
        for s in range(n_steps):
            t = time_index(s, n_steps, reverse)
            for i in range(first, n_rows, stride):
                acc = b_hh[e, i]
                if cache_weights:
                    for j in range(n_units):
                        acc += w[j * n_rows + i] * h[j]
                else:
                    for j in range(n_units):
                        acc += w_hh_t[e, j, i] * h[j]
                ph[i] = acc
            cuda.syncthreads()
            row = p[e, t, b]
            for u in range(first, n_units, stride):
                h_new, c_new = unit_forward(cell, u, n_units, row, ph, h[u], c[u])
                h[u] = h_new
                hs[e, t, b, u] = h_new
                if lstm:
                    c[u] = c_new
                    cs[e, t, b, u] = c_new
            cuda.syncthreads()

    return kernel


@functools.lru_cache(maxsize=None)
def walk_backward(dtype):
    """The backward walk for ``dtype`` (launch as ``walk_forward``, with shared
    (3H + G*H [+ G*H*H]) * itemsize bytes), ``kernel(cell, reverse, truncation, p, w_hh,
    h0, c0, hs, cs, grad_hs, grad_time_major, dh0, dc0, cache_weights, log_norms)``:
    ``kernels.sequence.sequence_backward`` on the GPU, same arguments and meaning, but
    for ``grad_first`` (here ``grad_hs`` holds the launch's members only).

    With ``log_norms`` (E, B, L + 1) float64 not empty, it follows one adjoint instead:
    it records log ||(dh, dc)|| after each of the first L steps back (lag 0 = the final
    state), rescaling (dh, dc) to unit norm after each, so that nothing over- or
    underflows, and stops there (``grad_hs`` is then not read).
    """
    scalar = numba_float(dtype)

    @cuda.jit
    def kernel(cell, reverse, truncation, p, w_hh, h0, c0, hs, cs, grad_hs, grad_time_major,
               dh0, dc0, cache_weights, log_norms):
        n_steps, batch, n_units = hs.shape[1], hs.shape[2], hs.shape[3]
        n_rows = w_hh.shape[1]
        e, b = block_sequence(batch)
        first, stride = cuda.threadIdx.x, cuda.blockDim.x
        lstm = cs.shape[3] > 0
        shared = cuda.shared.array(0, scalar)
        dh = shared[:n_units]
        dc = shared[n_units:2 * n_units]
        direct = shared[2 * n_units:3 * n_units]
        dph = shared[3 * n_units:3 * n_units + n_rows]
        w = shared[3 * n_units + n_rows:]
        partial = cuda.shared.array(MAX_THREADS, FLOAT64)
        n_lags = log_norms.shape[2] - 1
        log_scale = 0.0
        load_state(dh0, dc0, e, b, dh, dc)
        if cache_weights:
            load_matrix(w_hh[e], w)
        cuda.syncthreads()
        if n_lags >= 0:
            log_scale = _record_norm(dh, dc, lstm, partial, log_scale, log_norms, e, b, 0)
        for s in range(n_steps - 1, -1, -1):
            if n_lags >= 0 and n_steps - s > n_lags:
                break
            t = time_index(s, n_steps, reverse)
            t_prev = time_index(s - 1, n_steps, reverse)
            row = p[e, t, b]
            for u in range(first, n_units, stride):
                grad = dh[u] - dh[u]  # an adjoint alone has no gradient from above
                if n_lags < 0:
                    grad = grad_hs[t, e, b, u] if grad_time_major else grad_hs[e, t, b, u]
                h_prev = hs[e, t_prev, b, u] if s > 0 else h0[e, b, u]
                c_prev = dc[u] - dc[u]
                c_new = c_prev
                if lstm:
                    c_prev = cs[e, t_prev, b, u] if s > 0 else c0[e, b, u]
                    c_new = cs[e, t, b, u]
                dc[u], direct[u] = unit_backward(cell, u, n_units, row, dh[u] + grad, dc[u],
                                                 h_prev, c_prev, hs[e, t, b, u], c_new, dph)
            cuda.syncthreads()
            cut = truncation > 0 and s > 0 and s % truncation == 0
            for j in range(first, n_units, stride):
                if cut:
                    dh[j] = direct[j] - direct[j]
                    dc[j] = dh[j]
                else:
                    acc = direct[j]
                    if cache_weights:
                        for i in range(n_rows):
                            acc += w[i * n_units + j] * dph[i]
                    else:
                        for i in range(n_rows):
                            acc += w_hh[e, i, j] * dph[i]
                    dh[j] = acc
            cuda.syncthreads()
            if n_lags >= 0:
                log_scale = _record_norm(dh, dc, lstm, partial, log_scale, log_norms, e, b,
                                         n_steps - s)
        for u in range(first, n_units, stride):
            dh0[e, b, u] = dh[u]
            if lstm:
                dc0[e, b, u] = dc[u]

    return kernel


@cuda.jit(device=True)
def block_sum(partial, value):
    """The sum of ``value`` over the block's threads, in a fixed tree order (all threads
    get it). ``partial`` is a shared float64 buffer of at least blockDim entries."""
    first, stride = cuda.threadIdx.x, cuda.blockDim.x
    partial[first] = value
    cuda.syncthreads()
    width = 1
    while width < stride:
        width *= 2
    width //= 2
    while width > 0:
        if first < width and first + width < stride:
            partial[first] += partial[first + width]
        cuda.syncthreads()
        width //= 2
    total = partial[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def _record_norm(dh, dc, lstm, partial, log_scale, log_norms, e, b, lag):
    """log_norms[e, b, lag] = log_scale + log ||(dh, dc)||; rescales (dh, dc) to unit
    norm (a zero or non-finite adjoint is left as it is). Returns the new log scale."""
    first, stride = cuda.threadIdx.x, cuda.blockDim.x
    squares = 0.0
    for u in range(first, dh.shape[0], stride):
        squares += float(dh[u]) * float(dh[u])
        if lstm:
            squares += float(dc[u]) * float(dc[u])
    norm = math.sqrt(block_sum(partial, squares))
    if first == 0:
        log_norms[e, b, lag] = log_scale + _log(norm)
    if norm > 0.0 and norm < math.inf:
        for u in range(first, dh.shape[0], stride):
            dh[u] = dh[u] / norm
            if lstm:
                dc[u] = dc[u] / norm
        log_scale += _log(norm)
    cuda.syncthreads()
    return log_scale


@cuda.jit(device=True)
def _log(x):
    """Natural log in float64, -inf at 0, nan for nan."""
    return math.log(x) if x > 0.0 else (-math.inf if x == 0.0 else math.nan)


@cuda.jit(device=True)
def thread_unit(batch, n_units):
    """(member, batch row, unit) of this thread, in a grid of one thread per unit."""
    index = cuda.grid(1)
    return index // (batch * n_units), (index // n_units) % batch, index % n_units


@cuda.jit
def step_forward(cell, t, p, ph, h_prev, c_prev, hs, cs):
    """One step of the batched recurrence, one thread per (member, batch row, unit):
    ``ph`` (E, B, G*H) = W_hh h_prev + b_hh from ``matmul``; ``h_prev``, ``c_prev``
    (E, B, H) views of the previous state (``c_prev`` (E, B, 0) unless LSTM)."""
    n_members, _, batch, n_units = hs.shape
    e, b, u = thread_unit(batch, n_units)
    if e >= n_members:
        return
    lstm = cs.shape[3] > 0
    c_old = c_prev[e, b, u] if lstm else h_prev[e, b, u]
    h_new, c_new = unit_forward(cell, u, n_units, p[e, t, b], ph[e, b], h_prev[e, b, u], c_old)
    hs[e, t, b, u] = h_new
    if lstm:
        cs[e, t, b, u] = c_new


@cuda.jit
def step_backward(cell, t, p, grad, dh, dc, h_prev, c_prev, hs, cs, dph, direct):
    """Backward through one step of the batched recurrence, one thread per (member,
    batch row, unit): ``dh`` += ``grad`` (E, B, H), then the cell; writes dL/dc_prev into
    ``dc``, the gate gradients into ``p[:, t]`` and ``dph`` (E, B, G*H), the direct part
    of dL/dh_prev into ``direct``, to which ``matmul`` then adds dph W_hh."""
    n_members, _, batch, n_units = hs.shape
    e, b, u = thread_unit(batch, n_units)
    if e >= n_members:
        return
    lstm = cs.shape[3] > 0
    c_old = c_prev[e, b, u] if lstm else h_prev[e, b, u]
    c_new = cs[e, t, b, u] if lstm else h_prev[e, b, u]
    dc_old = dc[e, b, u] if lstm else h_prev[e, b, u] - h_prev[e, b, u]
    dc_new, direct[e, b, u] = unit_backward(cell, u, n_units, p[e, t, b],
                                            dh[e, b, u] + grad[e, b, u], dc_old, h_prev[e, b, u],
                                            c_old, hs[e, t, b, u], c_new, dph[e, b])
    if lstm:
        dc[e, b, u] = dc_new


#: Outputs per thread along each side of a ``matmul_kernel`` block: its TILE x TILE
#: threads compute a BLOCK_SIDE x BLOCK_SIDE tile of c, each thread 4 x 4 of them (held
#: in registers), and read each loaded value of a and b 4 times from shared memory.
PER_THREAD = 4
BLOCK_SIDE = TILE * PER_THREAD
PADDED_SIDE = BLOCK_SIDE + 1  # a shared tile's row: the padding spreads stores over banks


@cuda.jit(device=True)
def load_tile(source, member, k_major, outer0, n_outer, kt, k1, index, tile, zero):
    """One of a ``matmul_kernel`` thread's loads of a shared tile: tile[k, i] =
    S[outer0 + i, kt + k] (zero outside S), S = source[member] (outer, K), or its
    transpose if ``k_major`` (source[member] is (K, outer)). Consecutive ``index`` values
    read consecutive addresses."""
    if k_major:
        i, k = index % BLOCK_SIDE, index // BLOCK_SIDE
    else:
        k, i = index % TILE, index // TILE
    if kt + k < k1 and outer0 + i < n_outer:
        tile[k, i] = source[member, kt + k, outer0 + i] if k_major else \
            source[member, outer0 + i, kt + k]
    else:
        tile[k, i] = zero


@functools.lru_cache(maxsize=None)
def matmul_kernel(dtype):
    """``kernel(a, b, c, bias, trans_a, trans_b, accumulate, sum_members, n_members,
    chunk_terms)``: c[e] (M, N) = [c[e] +] [bias[e] +] op(a[e]) op(b[e]), A_e = a[e]
    (M, K) or, if ``trans_a``, a[e].T; B_e likewise from ``b``; a leading axis of 1
    broadcasts over the ``n_members`` of the result; with ``sum_members`` the result has
    one member and its sum runs over every member's products (member by member, k in
    order). The terms of each sum, (member, k) in that order, are split into chunks of
    ``chunk_terms``: grid z = chunk * n_members + e, and ``c[z]`` receives chunk z's part
    (one chunk: ``c`` itself; more: partial sums, for ``add_chunks``). Grid x and y:
    ceil(N / BLOCK_SIDE), ceil(M / BLOCK_SIDE); block (TILE, TILE): thread (x, y)
    computes rows y + TILE i and columns x + TILE j of its block's tile."""
    scalar = numba_float(dtype)
    n_threads = TILE * TILE  # each loads PER_THREAD values of each tile per k step

    @cuda.jit
    def kernel(a, b, c, bias, trans_a, trans_b, accumulate, sum_members, n_members,
               chunk_terms):
        n_rows, n_cols = c.shape[1], c.shape[2]
        tile_a = cuda.shared.array((TILE, PADDED_SIDE), scalar)  # (k, row of c)
        tile_b = cuda.shared.array((TILE, PADDED_SIDE), scalar)  # (k, column of c)
        acc = cuda.local.array((PER_THREAD, PER_THREAD), scalar)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        thread = ty * TILE + tx
        m0, n0 = cuda.blockIdx.y * BLOCK_SIDE, cuda.blockIdx.x * BLOCK_SIDE
        z = cuda.blockIdx.z
        e = z % n_members
        zero = scalar(0)
        for j in range(PER_THREAD):
            n = n0 + tx + TILE * j
            start = zero
            if bias.shape[1] > 0 and n < n_cols:
                start = bias[0 if bias.shape[0] == 1 else e, n]
            for i in range(PER_THREAD):
                acc[i, j] = start
        n_k = a.shape[1] if trans_a else a.shape[2]
        n_summed = max(a.shape[0], b.shape[0]) if sum_members else 1
        first = (z // n_members) * chunk_terms
        last = min(first + chunk_terms, n_summed * n_k)
        term = first
        while term < last:  # (member, k) = divmod(term, n_k)
            member = term // n_k
            k0, k1 = term - member * n_k, min(n_k, last - member * n_k)
            em = member if sum_members else e
            ea = 0 if a.shape[0] == 1 else em
            eb = 0 if b.shape[0] == 1 else em
            for kt in range(k0, k1, TILE):
                # each thread loads PER_THREAD values of each tile; consecutive threads
                # read consecutive addresses of a row of memory
                for r in range(PER_THREAD):
                    index = thread + n_threads * r
                    load_tile(a, ea, trans_a, m0, n_rows, kt, k1, index, tile_a, zero)
                    load_tile(b, eb, not trans_b, n0, n_cols, kt, k1, index, tile_b, zero)
                cuda.syncthreads()
                for k in range(min(TILE, k1 - kt)):
                    for i in range(PER_THREAD):
                        row = tile_a[k, ty + TILE * i]
                        for j in range(PER_THREAD):
                            acc[i, j] += row * tile_b[k, tx + TILE * j]
                cuda.syncthreads()
            term = (member + 1) * n_k
        for i in range(PER_THREAD):
            m = m0 + ty + TILE * i
            for j in range(PER_THREAD):
                n = n0 + tx + TILE * j
                if m < n_rows and n < n_cols:
                    c[z, m, n] = c[z, m, n] + acc[i, j] if accumulate else acc[i, j]

    return kernel


@cuda.jit
def add_rows(source, bias, target):
    """target[e, r, n] = bias[e, n] + source[e or 0, r, n] (an additive drive's
    pre-activations)."""
    index = cuda.grid(1)
    n_members, n_rows, n_cols = target.shape
    if index >= n_members * n_rows * n_cols:
        return
    e = index // (n_rows * n_cols)
    r = (index // n_cols) % n_rows
    n = index % n_cols
    target[e, r, n] = bias[e, n] + source[0 if source.shape[0] == 1 else e, r, n]


@cuda.jit
def add_chunks(partial, c, accumulate):
    """c[e, m, n] = [c[e, m, n] +] sum over chunks z, in order, of partial[z, e, m, n]."""
    index = cuda.grid(1)
    n_members, n_rows, n_cols = c.shape
    if index >= n_members * n_rows * n_cols:
        return
    e = index // (n_rows * n_cols)
    m = (index // n_cols) % n_rows
    n = index % n_cols
    total = partial[0, e, m, n]
    for z in range(1, partial.shape[0]):
        total += partial[z, e, m, n]
    c[e, m, n] = c[e, m, n] + total if accumulate else total


@cuda.jit
def fill(a, value):
    """a[...] = value for a C-contiguous 1-D view."""
    index = cuda.grid(1)
    if index < a.shape[0]:
        a[index] = value


@cuda.jit
def copy4(source, target):
    """target[...] = source for two 4-D arrays of one shape (either may be a strided view)."""
    index = cuda.grid(1)
    n0, n1, n2, n3 = source.shape
    if index >= n0 * n1 * n2 * n3:
        return
    i3 = index % n3
    i2 = (index // n3) % n2
    i1 = (index // (n2 * n3)) % n1
    i0 = index // (n1 * n2 * n3)
    target[i0, i1, i2, i3] = source[i0, i1, i2, i3]


@cuda.jit
def transpose_members(source, target):
    """target[e, j, i] = source[e, i, j]: each member's matrix transposed (one thread per
    element, writing consecutive addresses)."""
    index = cuda.grid(1)
    n_members, n_cols, n_rows = target.shape
    if index >= n_members * n_cols * n_rows:
        return
    i = index % n_rows
    j = (index // n_rows) % n_cols
    e = index // (n_rows * n_cols)
    target[e, j, i] = source[e, i, j]
