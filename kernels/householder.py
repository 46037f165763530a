"""Householder QR in blocks of columns, with the products in registers.

The Lyapunov kernels re-orthonormalise their tangents by QR, and for a full spectrum
that QR costs as much as several steps of the tangents: LAPACK's ``dgeqrf`` and
``dorgqr`` (OpenBLAS's, called from numba's ``np.linalg.qr``) take 0.8 ms for a
float64 200 x 200 matrix on one Zen 5 core, a quarter of the core's product rate. Here
the reflectors of a block of ``QR_BLOCK`` columns are gathered into the compact WY
form H_1 ... H_nb = I - V T V^T (Schreiber & Van Loan 1989), so that all but the
reflectors' own columns is matrix products in registers (``kernels.cells.add_product``):
0.47-0.54 ms, measured side by side (float32: as fast as LAPACK). Every sum has a fixed
order: the bits depend on nothing but the input, and no work array's old contents.

The reflectors are LAPACK's (``dlarfg``): H = I - tau v v^T with v_0 = 1 maps a column
x to (beta, 0, ..., 0), beta = -sign(x_0) ||x||, so R's diagonal is beta and Q's columns
are those ``np.linalg.qr`` returns (up to rounding).
"""
import math

import numpy as np

from kernels._jit import jit
from kernels.cells import accumulate_rows, add_product
from kernels.memory import fill

#: Columns per block of reflectors: the products that apply a block have this inner
#: size (larger: more flops in the block's own columns, smaller: shorter products).
#: Measured at 200 x 200 float64: 8 columns 0.53 ms, 16 0.47-0.54, 32 0.58, 64 0.77.
QR_BLOCK = 16

#: Rows of a block's columns summed at a time when a reflector is applied to them
#: (measured at 200 x 200 float64: 455-487 us per QR, against 516-533 in one sum).
CHUNK_ROWS = 64


@jit
def qr_workspaces(n, n_rows, n_columns, dtype):
    """``n`` sets of the work arrays of ``orthonormalise`` for (n_rows, n_columns)
    matrices (allocated once: a set is as large as two such matrices); set i is
    ``qr_workspace(workspaces, i)``."""
    return (np.empty((n, n_rows, n_columns), dtype),    # V: the reflectors, unit diagonal
            np.empty((n, n_columns, QR_BLOCK), dtype),  # (-T)^T of each block, in its rows
            np.empty((n, QR_BLOCK, n_columns), dtype),  # V_b^T a
            np.empty((n, QR_BLOCK, n_columns), dtype),  # -T' V_b^T a
            np.empty((n, QR_BLOCK, QR_BLOCK), dtype))   # -T of one block


@jit
def qr_workspace(workspaces, i):
    """Set i of ``qr_workspaces``."""
    return (workspaces[0][i], workspaces[1][i], workspaces[2][i], workspaces[3][i],
            workspaces[4][i])


@jit
def _column_norm(a, j, first):
    """||a[first:, j]||, without over- or underflow (squares summed in float64, scaled
    when float64 itself would over- or underflow)."""
    total = 0.0
    for i in range(first, a.shape[0]):
        total += np.float64(a[i, j]) ** 2
    if 1e-290 < total < np.inf:
        return np.sqrt(total)
    largest = 0.0
    for i in range(first, a.shape[0]):
        largest = max(largest, abs(np.float64(a[i, j])))
    if largest == 0.0:
        return 0.0
    total = 0.0
    for i in range(first, a.shape[0]):
        total += (np.float64(a[i, j]) / largest) ** 2
    return largest * np.sqrt(total)


@jit
def _reflector(a, j, v):
    """Householder reflector of a[j:, j] (LAPACK's ``dlarfg``): v (the rows from j on)
    <- the reflector with v[0] = 1, a[j, j] <- beta, a[j+1:, j] <- 0. Returns (tau,
    beta), tau = 0 when the column is already (alpha, 0, ...): then H = I. The scalars
    are float64, so that no float32 column's norm over- or underflows."""
    alpha = np.float64(a[j, j])
    rest = _column_norm(a, j, j + 1)
    v[0] = 1.0
    if rest == 0.0:
        fill(v[1:], 0.0)
        return 0.0, alpha
    beta = -np.copysign(np.hypot(alpha, rest), alpha)
    denominator = alpha - beta  # |alpha - beta| >= |beta| > 0
    if abs(denominator) > 1e-300:  # multiply by its inverse (finite)
        scale = 1.0 / denominator
        for i in range(1, v.shape[0]):
            v[i] = np.float64(a[j + i, j]) * scale
    else:
        for i in range(1, v.shape[0]):
            v[i] = np.float64(a[j + i, j]) / denominator
    _fill_column(a, j, j + 1, 0.0)
    a[j, j] = beta
    return (beta - alpha) / beta, beta


@jit
def _fill_column(a, j, first, value):
    """a[first:, j] = value."""
    for i in range(first, a.shape[0]):
        a[i, j] = value


@jit
def _factor_block(a, j0, j1, v, w, log_r):
    """Reflectors of columns j0..j1 - 1 of ``a``, each applied to the block's columns
    after it (leaving R's part of them), into the same columns of ``v`` (zero above the
    diagonal), and their log |R_jj| into ``log_r``; returns their taus. ``w``
    (>= j1 - j0) is work space.

    Each reflector is applied to the whole width of the block, with v^T a set to 0 in the
    columns up to its own: x - tau v 0 = x leaves them as they are, and every row is
    then whole vectors."""
    taus = np.empty(j1 - j0)
    w = w[:j1 - j0]
    for j in range(j0, j1):
        _fill_column(v[:j], j, j0, 0.0)
        reflector = v[j:, j]
        tau, beta = _reflector(a, j, reflector)
        taus[j - j0] = tau
        log_r[j] = np.log(np.abs(beta))
        if j + 1 < j1 and tau != 0.0:  # a[j:, j0:j1] -= tau v (v^T a[j:, j0:j1])
            fill(w, 0.0)
            for i0 in range(0, reflector.shape[0], CHUNK_ROWS):
                i1 = min(i0 + CHUNK_ROWS, reflector.shape[0])
                accumulate_rows(a[j + i0:j + i1, j0:j1], reflector[i0:i1], w)
            fill(w[:j + 1 - j0], 0.0)
            for i in range(reflector.shape[0]):
                scaled = -tau * reflector[i]
                row = a[j + i, j0:j1]
                for c in range(w.shape[0]):
                    row[c] += scaled * w[c]
    return taus


@jit
def _block_t(v, taus, g, t_neg_t, j0, j1):
    """(-T)^T of the block j0..j1 - 1 into ``t_neg_t[j0:j1]`` (LAPACK's ``dlarft``,
    forward, columnwise: T[:c, c] = -tau_c T[:c, :c] V^T v_c), a row at a time;
    ``g`` (>= nb, >= nb) is work space for V^T V (symmetric)."""
    nb = j1 - j0
    g = g[:nb, :nb]
    for row in g:
        fill(row, 0.0)
    add_product(v[j0:, j0:j1].T, v[j0:, j0:j1], g)
    block = t_neg_t[j0:j1, :nb]
    for c in range(nb):
        row = block[c]
        fill(row, 0.0)
        accumulate_rows(block[:c, :c], g[c, :c], row[:c])
        for r in range(c):
            row[r] *= -taus[c]
        row[c] = -taus[c]


@jit
def orthonormalise(a, log_r, work):
    """a (m, k), m >= k, C-contiguous, finite <- Q of a = QR; ``log_r[j]`` <- log |R_jj|
    (float64; -inf for a column in the span of those before it). ``work`` is a
    ``qr_workspace`` for (m, k).

    >>> import numpy as np
    >>> a = np.random.default_rng(0).normal(size=(6, 4)); log_r = np.empty(4)
    >>> r = np.linalg.qr(a)[1]
    >>> orthonormalise(a, log_r, qr_workspace(qr_workspaces(1, 6, 4, a.dtype), 0))
    >>> np.allclose(log_r, np.log(np.abs(np.diag(r)))), np.allclose(a.T @ a, np.eye(4))
    (True, True)
    """
    m, k = a.shape
    v, t_neg_t, wa, wb, square = work
    exponents = _scale_columns(a)
    for j0 in range(0, k, QR_BLOCK):  # R, and the reflectors of each block
        j1 = min(j0 + QR_BLOCK, k)
        taus = _factor_block(a, j0, j1, v, wa[0], log_r)
        _block_t(v, taus, wa, t_neg_t, j0, j1)
        if j1 < k:  # a[j0:, j1:] <- H_nb ... H_1 a[j0:, j1:] = a - V T^T V^T a
            _apply_block(v, t_neg_t[j0:j1, :j1 - j0], a, j0, j1, j1, wa, wb)
    for i in range(m):  # Q = H_1 ... H_k I, from the last block to the first
        fill(a[i], 0.0)
        if i < k:
            a[i, i] = 1.0
    for j0 in range(((k - 1) // QR_BLOCK) * QR_BLOCK, -1, -QR_BLOCK):
        j1 = min(j0 + QR_BLOCK, k)  # a[j0:, j0:] <- a - V T V^T a
        t_neg = square[:j1 - j0, :j1 - j0]
        for r in range(j1 - j0):
            for c in range(j1 - j0):
                t_neg[r, c] = t_neg_t[j0 + c, r]
        _apply_block(v, t_neg, a, j0, j1, j0, wa, wb)
    for j in range(k):  # R of the scaled columns, scaled back
        log_r[j] += exponents[j] * np.log(2.0)


@jit
def _scale_columns(a):
    """Scale each column of ``a`` whose norm is outside 2^(+-e/2) (e: the dtype's
    largest exponent) by a power of two, exactly, to a norm near 1: far from 1 the
    reflectors' arithmetic would over- or underflow, or lose bits to subnormal numbers.
    Returns the k_j by which column j was divided by 2^k_j (0 where it was not).
    QR of A diag(2^-k) is Q, R diag(2^-k)."""
    m, k = a.shape
    sums = np.zeros(k)
    for i in range(m):  # row by row: vectorised across the columns
        row = a[i]
        for j in range(k):
            sums[j] += np.float64(row[j]) * np.float64(row[j])
    limit = 2.0 ** ((128 if a.itemsize == 4 else 1024) - 2)  # (the norm's limit squared)
    exponents = np.zeros(k)
    for j in range(k):
        if 1.0 / limit < sums[j] < limit:
            continue
        largest = 0.0
        for i in range(m):
            largest = max(largest, abs(np.float64(a[i, j])))
        if largest > 0.0:
            exponent = math.frexp(largest)[1]
            exponents[j] = exponent
            half = math.ldexp(1.0, -(exponent // 2))  # two factors: each stays finite
            rest = math.ldexp(1.0, -(exponent - exponent // 2))
            for i in range(m):
                a[i, j] = (np.float64(a[i, j]) * half) * rest
    return exponents


@jit
def _apply_block(v, coefficients, a, j0, j1, first, wa, wb):
    """a[j0:, first:] += V_b (coefficients (V_b^T a[j0:, first:])) for the reflectors
    V_b of the block j0..j1 - 1: with coefficients -T^T that is H_nb ... H_1 a, with
    -T it is H_1 ... H_nb a."""
    nb = j1 - j0
    n = a.shape[1] - first
    y, z = wa[:nb, :n], wb[:nb, :n]
    for rows in (y, z):
        for row in rows:
            fill(row, 0.0)
    add_product(v[j0:, j0:j1].T, a[j0:, first:], y)
    add_product(coefficients, y, z)
    add_product(v[j0:, j0:j1], z, a[j0:, first:])
