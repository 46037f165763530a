"""Tangent propagation for Lyapunov exponents on an NVIDIA GPU (``numba.cuda``).

``tangent_walk(dtype)`` is ``kernels.tangents.tangent_walk`` for the GPU: one thread
block per sequence (ensemble member e, batch element b) advances the state and k
tangent vectors together, q <- J_t q, for all steps in one launch, and
re-orthonormalises the tangents every ``interval`` steps, accumulating log |R_jj| in
float64 (Benettin et al. 1980). The state lives in shared memory (2H values: up to
H = 2,944 in float64); the gate values and pre-activations (8H), the tangents (S, k) and
their products with W_hh (G*H, k) in global memory, one slice per block (each step reads
W_hh k + 1 times, G*H*H*(k + 1) values, against 8H for the rows). The QR is modified
Gram-Schmidt, each projection done twice ("twice is enough", Giraud et al. 2005), its
dot products reduced in a fixed order by ``kernels.cuda_sequence.block_sum``: the same
bits on every run.
"""
import functools
import math

from kernels.cells import GRU, LSTM
from kernels.cuda_api import (cuda, gru_unit_linearisation, lstm_unit_linearisation,
                              numba_float, rnn_unit_slope)
from kernels.cuda_sequence import (FLOAT64, MAX_THREADS, block_sequence, block_sum, load_state,
                                    unit_forward)

__all__ = ["tangent_walk", "tangent_shared_bytes"]


def tangent_shared_bytes(n_units, itemsize):
    """Dynamic shared memory of a ``tangent_walk`` block: h and c."""
    return 2 * n_units * itemsize


@cuda.jit(device=True)
def _tangent_unit(cell, u, n_units, saved, h_prev, c_prev, h, c, a, q):
    """q <- J q for unit u's rows (h row u, and c row H + u for an LSTM), all k columns,
    given ``a`` (G*H, k) = W_hh q_h and what the step saved for the unit."""
    n_vectors = q.shape[1]
    if cell == LSTM:
        i, f, g, o = saved[u], saved[n_units + u], saved[2 * n_units + u], saved[3 * n_units + u]
        h_i, h_f, h_g, h_o, c_i, c_f, c_g, h_c, c_c = lstm_unit_linearisation(i, f, g, o, c,
                                                                              c_prev)
        for m in range(n_vectors):
            a_i, a_f = a[u, m], a[n_units + u, m]
            a_g, a_o = a[2 * n_units + u, m], a[3 * n_units + u, m]
            qc = q[n_units + u, m]
            q[u, m] = h_c * qc + h_i * a_i + h_f * a_f + h_g * a_g + h_o * a_o
            q[n_units + u, m] = c_c * qc + c_i * a_i + c_f * a_f + c_g * a_g
    elif cell == GRU:
        r, z, n, hn = saved[u], saved[n_units + u], saved[2 * n_units + u], saved[3 * n_units + u]
        h_r, h_z, h_n, h_h = gru_unit_linearisation(r, z, n, hn, h_prev)
        for m in range(n_vectors):
            q[u, m] = (h_h * q[u, m] + h_r * a[u, m] + h_z * a[n_units + u, m]
                       + h_n * a[2 * n_units + u, m])
    else:
        slope = rnn_unit_slope(cell, h)
        for m in range(n_vectors):
            q[u, m] = slope * a[u, m]


@cuda.jit(device=True)
def _all_finite(h, c, q, partial):
    """Whether the block's state and tangents are all finite (every thread gets it)."""
    first, stride = cuda.threadIdx.x, cuda.blockDim.x
    bad = 0.0
    for u in range(first, h.shape[0], stride):
        if not math.isfinite(h[u]):
            bad += 1.0
    for u in range(first, c.shape[0], stride):
        if not math.isfinite(c[u]):
            bad += 1.0
    for k in range(first, q.shape[0] * q.shape[1], stride):
        if not math.isfinite(q[k // q.shape[1], k % q.shape[1]]):
            bad += 1.0
    return block_sum(partial, bad) == 0.0


@cuda.jit(device=True)
def _project_out(q, m, partial):
    """Column m of q minus its projections on columns 0..m-1 (each projection twice); the
    norm of what is left, in float64."""
    first, stride = cuda.threadIdx.x, cuda.blockDim.x
    size = q.shape[0]
    for _ in range(2):
        for l in range(m):
            dot = 0.0
            for i in range(first, size, stride):
                dot += float(q[i, l]) * float(q[i, m])
            dot = block_sum(partial, dot)
            for i in range(first, size, stride):
                q[i, m] -= dot * q[i, l]
    squares = 0.0
    for i in range(first, size, stride):
        squares += float(q[i, m]) * float(q[i, m])
    return math.sqrt(block_sum(partial, squares))


@cuda.jit(device=True)
def _orthonormalise(q, log_r, partial):
    """q <- Q of q = QR by modified Gram-Schmidt; log |R_jj| into ``log_r`` (k,) float64.
    A column annihilated by the dynamics (R_jj = 0, log -inf) is replaced, as Q's column
    is in a Householder QR, by a unit vector orthogonal to the columns before it (the
    first of e_0, e_1, ... that leaves one), so the tangents stay an orthonormal frame."""
    first, stride = cuda.threadIdx.x, cuda.blockDim.x
    size, n_vectors = q.shape
    for m in range(n_vectors):
        norm = _project_out(q, m, partial)
        if first == 0:
            log_r[m] = math.log(norm) if norm > 0.0 else -math.inf
        candidate = 0
        annihilated = not norm > 0.0
        while annihilated and candidate < size:  # a fresh direction: e_candidate's residue
            for i in range(first, size, stride):
                q[i, m] = 1.0 if i == candidate else 0.0
            cuda.syncthreads()
            norm = _project_out(q, m, partial)
            annihilated = not norm > 0.5
            candidate += 1
        if norm > 0.0:  # (else the state was not finite: the caller stops)
            for i in range(first, size, stride):
                q[i, m] = q[i, m] / norm
        cuda.syncthreads()


@functools.lru_cache(maxsize=None)
def tangent_walk(dtype):
    """The kernel for ``dtype``: launch ``[E * B, threads, 0, tangent_shared_bytes(H)]``
    as ``kernel(cell, x, additive, w_ih, b_ih, w_hh_t, b_hh, t0, n_steps, interval, h, c,
    q, a, rows, diverged, log_r)``. Arguments as ``kernels.tangents.tangent_walk``
    (``x`` (1 or E, T, B, D), T = 0 for an autonomous network; ``h``, ``c``, ``q``
    (E, B, S, k), ``diverged`` (E, B) and ``log_r`` (E, B, records, k) float64, nan on
    entry), except: W_hh comes transposed, ``w_hh_t`` (E, H, G*H), ``a`` (E, B, G*H, k)
    and ``rows`` (E, B, 8H) are scratch, and nothing is recorded but the log |R_jj|.
    """
    scalar = numba_float(dtype)

    @cuda.jit
    def kernel(cell, x, additive, w_ih, b_ih, w_hh_t, b_hh, t0, n_steps, interval, h, c, q, a,
               rows, diverged, log_r):
        batch, n_units = h.shape[1], h.shape[2]
        n_rows = w_hh_t.shape[2]
        n_vectors = q.shape[3]
        e, b = block_sequence(batch)
        e_x = 0 if x.shape[0] == 1 else e
        first, stride = cuda.threadIdx.x, cuda.blockDim.x
        lstm = c.shape[2] > 0
        shared = cuda.shared.array(0, scalar)
        hh = shared[:n_units]
        cc = shared[n_units:2 * n_units]
        p = rows[e, b, :4 * n_units]
        ph = rows[e, b, 4 * n_units:]
        partial = cuda.shared.array(MAX_THREADS, FLOAT64)
        qq, aa = q[e, b], a[e, b]
        load_state(h, c, e, b, hh, cc)
        cuda.syncthreads()
        for s in range(n_steps):
            if diverged[e, b]:
                break
            for i in range(first, n_rows, stride):
                acc = b_hh[e, i]
                for j in range(n_units):
                    acc += w_hh_t[e, j, i] * hh[j]
                ph[i] = acc
                for m in range(n_vectors):
                    product = acc - acc
                    for j in range(n_units):
                        product += w_hh_t[e, j, i] * qq[j, m]
                    aa[i, m] = product
                drive = b_ih[e, i]
                if x.shape[1] > 0:
                    if additive:
                        drive += x[e_x, t0 + s, b, i]
                    else:
                        for d in range(x.shape[3]):
                            drive += w_ih[e, i, d] * x[e_x, t0 + s, b, d]
                p[i] = drive
            cuda.syncthreads()
            for u in range(first, n_units, stride):
                h_prev, c_prev = hh[u], cc[u]
                h_new, c_new = unit_forward(cell, u, n_units, p, ph, h_prev, c_prev)
                _tangent_unit(cell, u, n_units, p, h_prev, c_prev, h_new, c_new, aa, qq)
                hh[u] = h_new
                if lstm:
                    cc[u] = c_new
            cuda.syncthreads()
            if interval > 0 and ((s + 1) % interval == 0 or s + 1 == n_steps):
                if _all_finite(hh, cc[:c.shape[2]], qq, partial):
                    _orthonormalise(qq, log_r[e, b, s // interval], partial)
                else:
                    if first == 0:
                        diverged[e, b] = True
                    cuda.syncthreads()
        for u in range(first, n_units, stride):
            h[e, b, u] = hh[u]
            if lstm:
                c[e, b, u] = cc[u]

    return kernel
