"""Linearised dynamics along trajectories: Jacobians, their products, Lyapunov vectors.

Two kinds of kernel:

- over a forward tape (``p``, ``hs``, ``cs`` as ``kernels.sequence.sequence_forward``
  leaves them, forward direction): ``trajectory_jacobians`` (every step's J),
  ``tangent_chain`` (J_t1 ... J_t0+1 applied to a block of tangents) and
  ``adjoint_chain`` (the products d s_T / d s_(T-l) for l = 0..L, kept as a scale and a
  normalised matrix so that no product over- or underflows, with their norms);
- ``tangent_walk``: the state and k tangent vectors advanced together from the
  parameters, with re-orthonormalisation (QR, ``kernels.householder``) every
  ``interval`` steps and the log stretch factors written out in float64. It keeps
  nothing per step, so its memory does not depend on the number of steps (Benettin et
  al. 1980; Shimada & Nagashima 1979);
- ``spectrum_walk``: the same for all S tangents (the full spectrum) with QR every
  interval > 1 steps, by interval products: each interval's Jacobians are multiplied
  together while the interval before is QR-ed, so that the QRs, which cost as much as
  several steps, run beside the products instead of between them.

States are indexed by time: ``hs[:, t]`` is s_t, the state after step t, and s_(-1) is
the initial state; J_t = d s_t / d s_(t-1) uses what step t saved. Items (ensemble
member e, batch element b, or blocks of them) run in parallel, as plain ``@jit``
functions compiled once (``kernels.parallel``: the cold first call of a float64 LSTM's
largest exponent took 18 s instead of 38, of its full spectrum 26 s instead of 46, of
its gradient norm against lag 11 s instead of 17, on the 2-core Zen 3); each does its
own sums in a fixed order and calls BLAS single-threaded, so results do not depend on
the thread count.
"""
from collections import namedtuple

import numba
import numpy as np

from kernels._jit import jit
from kernels.blas import product_by_blas
from kernels.cells import (LIN_ROWS, PANELS_BEAT_BLAS, add_packed_product, add_product,
                           cell_forward, cell_linearisation, fits_panels, n_gates,
                           pack_member_panels, panel_width, saved_width)
from kernels.householder import orthonormalise, qr_workspace, qr_workspaces
from kernels.jacobians import (add_c_column_terms, adjoint_direct, adjoint_gates,
                               jacobian_h_columns, state_jacobian, tangent_combine)
from kernels.memory import add_into, copy_array, copy_into, fill
from kernels.parallel import call_address, function_address, run_items, run_steps
from kernels.registers import PAIR_VECTORS, VECTOR_BITS, accumulate_pair

#: ``tangent_walk`` splits each network into blocks of units (all their gate rows), so
#: that a few large networks can use every core. Blocks hold at least ``MIN_UNIT_BLOCK``
#: units, a multiple of 8 (whole SIMD registers). Every unit's
#: arithmetic is the same whatever the blocks (each sum runs over the columns of W_hh in
#: their order, in our loops and in BLAS's products alike), so results do not depend on
#: the thread count; ``tests/test_threads.py`` checks it.
MIN_UNIT_BLOCK = 64


def unit_block_size(n_units, n_items=1):
    """Units (or adjoint rows) per block for numba's current thread count: whole
    sequences when there are at least as many as threads, else each split across them."""
    threads = numba.get_num_threads()
    if n_items >= threads:
        return n_units
    size = max(MIN_UNIT_BLOCK, -(-n_units // (threads // n_items)))
    return (size + 7) // 8 * 8


@jit
def _linearise(cell, p, hs, cs, h0, c0, e, t, b, lin):
    """``lin`` of step t of item (e, b) on a forward tape."""
    _tape_linearise(cell, (hs[e, :, b], cs[e, :, b], p[e, :, b], h0[e, b], c0[e, b]), t, lin)


@jit
def _tape_linearise(cell, tape, t, lin):
    """``lin`` of step t of one item's tape: hs (T, H), cs (T, H or 0), p (T or 0, saved
    width; vanilla RNNs save nothing) and the state before step 0, h (H,) and c."""
    hs, cs, p, h_start, c_start = tape
    h_prev = hs[t - 1] if t > 0 else h_start
    c_prev = cs[t - 1] if t > 0 else c_start
    saved = p[t] if p.shape[0] > 0 else hs[t, :0]
    cell_linearisation(cell, saved, h_prev, c_prev, hs[t], cs[t], lin)


def trajectory_jacobians(cell, p, w_hh, h0, c0, hs, cs, jac):
    """jac[e, t, b] (S, S) = J_t of item (e, b), for every step of the tape."""
    n_members, n_steps, batch, _ = hs.shape
    run_items(_jacobian_item, n_members * n_steps * batch, cell, p, w_hh, h0, c0, hs, cs, jac)


@jit
def _jacobian_item(task, cell, p, w_hh, h0, c0, hs, cs, jac):
    """Task ``task`` of ``trajectory_jacobians``: one step of one item."""
    n_members, n_steps, batch, n_units = hs.shape
    e = task // (n_steps * batch)
    t = (task // batch) % n_steps
    b = task % batch
    lin = np.empty((LIN_ROWS, n_units), hs.dtype)
    _linearise(cell, p, hs, cs, h0, c0, e, t, b, lin)
    state_jacobian(lin, w_hh[e], jac[e, t, b])


def column_blocks(n_columns, n_items, dtype):
    """Blocks of tangents (columns) per item for ``tangent_chain`` at numba's current
    thread count: one when there are at least as many items as threads, else up to one
    per thread, each at least a register panel wide (so every block's product runs in
    panels, whose bits do not depend on the blocks)."""
    threads = numba.get_num_threads()
    n_panels = n_columns // int(panel_width(np.empty((1, 1), dtype)))
    return max(1, min(threads // n_items, n_panels))


@jit
def _column_block(block, n_blocks, n_columns, width):
    """(first, end) column of block ``block``: whole panels, the last block to the end."""
    n_panels = n_columns // width
    c0 = block * n_panels // n_blocks * width
    return c0, n_columns if block == n_blocks - 1 else (block + 1) * n_panels // n_blocks * width


def tangent_chain(cell, p, w_hh, h0, c0, hs, cs, t_from, t_to, q, n_blocks):
    """q[e, b] (S, k) <- J_(t_to) ... J_(t_from + 1) q[e, b]; -1 <= t_from <= t_to < T.
    Each item's k tangents go in ``n_blocks`` blocks of columns in parallel
    (``column_blocks``)."""
    n_members, _, batch, _ = hs.shape
    run_items(_chain_task, n_members * batch * n_blocks, cell, p, w_hh, h0, c0, hs, cs, t_from,
              t_to, q, n_blocks)


@jit
def _chain_task(task, cell, p, w_hh, h0, c0, hs, cs, t_from, t_to, q, n_blocks):
    """Task ``task`` of ``tangent_chain``: one block of columns of one item."""
    batch, n_units = hs.shape[2], hs.shape[3]
    e = task // (batch * n_blocks)
    b = (task // n_blocks) % batch
    first, end = _column_block(task % n_blocks, n_blocks, q.shape[3], panel_width(q))
    lin = np.empty((LIN_ROWS, n_units), hs.dtype)
    here = np.ascontiguousarray(q[e, b, :, first:end])
    there = np.empty_like(here)
    a = np.empty((w_hh.shape[1], end - first), hs.dtype)
    for t in range(t_from + 1, t_to + 1):
        _linearise(cell, p, hs, cs, h0, c0, e, t, b, lin)
        _product_into(w_hh[e], here[:n_units], a)
        tangent_combine(lin, a, here[:n_units], here[n_units:], there[:n_units],
                        there[n_units:])
        here, there = there, here
    q[e, b, :, first:end] = here


@jit
def _log_norm(m):
    """log of the Frobenius norm of ``m``, in float64."""
    total = 0.0
    for value in m.ravel():
        total += np.float64(value) * np.float64(value)
    return 0.5 * np.log(total)


#: ``adjoint_chain``'s arguments and work arrays, as its items receive them: ``weights``
#: (E, ...) each member's W_hh as ``_adjoint_rows`` multiplies by it, ``rows`` (2, E, B,
#: m, S) the adjoint rows of each lag, in the half of the lag's parity, ``scale`` and
#: ``done`` (E, B) the log scale of each item's rows and whether it has stopped.
AdjointChain = namedtuple("AdjointChain", "cell p weights h0 c0 hs cs t_end rows v spectral "
                          "log_frobenius log_spectral log_adjoint block_size scale done")


def adjoint_chain(cell, p, w_hh, h0, c0, hs, cs, t_end, start, v, spectral, log_frobenius,
                  log_spectral, log_adjoint, block_size):
    """Norms of M P_l, where P_l = d s_(t_end) / d s_(t_end - l), l = 0..L, L + 1 =
    ``log_frobenius.shape[2]`` (L <= t_end + 1) and M = ``start[e, b]`` (m, S): the
    identity for the products themselves, or one adjoint vector (m = 1).

    M P_l = M P_(l-1) J_(t_end - l + 1) is carried backward as exp(scale) * A with A
    rescaled to unit Frobenius norm at every lag; its rows, each an adjoint vector, are
    advanced in blocks of ``block_size`` (``unit_block_size``) in parallel. Writes, per
    item (e, b) and lag, in float64: ``log_frobenius`` = log ||M P_l||_F,
    ``log_spectral`` = log ||M P_l||_2 (only if ``spectral``, an SVD per lag) and, if
    ``v`` (E, B, S) is not empty, ``log_adjoint`` = log ||v[e, b] M P_l||. Non-finite or
    zero products give nan or -inf from the first lag where they appear.

    Where one block holds all rows, each item runs all lags on one thread, its weights
    in cache (``_adjoint_item``), else lag by lag with the blocks in parallel
    (``_adjoint_block``, then ``_record_item``).
    """
    n_members, _, batch, _ = hs.shape
    # W_hh packed once for register panels, or as it is where BLAS is faster
    weights = (pack_member_panels(w_hh, panel_width(w_hh)) if PANELS_BEAT_BLAS
               else np.ascontiguousarray(w_hh))
    rows = np.empty((2,) + start.shape, start.dtype)
    rows[0] = start
    chain = AdjointChain(cell, p, weights, h0, c0, hs, cs, t_end, rows, v, spectral,
                         log_frobenius, log_spectral, log_adjoint, block_size,
                         np.zeros((n_members, batch)), np.zeros((n_members, batch), np.bool_))
    n_items = n_members * batch
    if block_size >= start.shape[2]:
        run_items(_adjoint_item, n_items, chain)
        return
    n_blocks = -(-start.shape[2] // block_size)
    run_items(_record_item, n_items, 0, chain)
    run_steps(_adjoint_block, n_items * n_blocks, 1, log_frobenius.shape[2], chain,
              finish=_record_item, n_finish_items=n_items, every=1)


@jit
def _adjoint_rows(chain, e, b, lag, rows, rows_out):
    """rows_out = rows J_t, t = t_end - lag + 1, for a block of adjoint rows (m, S) of
    item (e, b)."""
    n_units = chain.hs.shape[3]
    weights = chain.weights[e]
    lin = np.empty((LIN_ROWS, n_units), rows.dtype)
    _linearise(chain.cell, chain.p, chain.hs, chain.cs, chain.h0, chain.c0, e,
               chain.t_end - lag + 1, b, lin)
    gates = np.empty((rows.shape[0], weights.shape[-2]), rows.dtype)
    adjoint_gates(lin, rows[:, :n_units], rows[:, n_units:], gates)
    through_w = np.zeros((rows.shape[0], n_units), rows.dtype)
    if PANELS_BEAT_BLAS:
        add_packed_product(gates, weights, through_w)
    else:
        product_by_blas(gates, weights, through_w)
    adjoint_direct(lin, rows[:, :n_units], rows[:, n_units:], through_w, rows_out[:, :n_units],
                   rows_out[:, n_units:])


@jit
def _adjoint_item(item, chain):
    """Item ``item`` of ``adjoint_chain`` when one block holds all rows: all lags."""
    batch = chain.hs.shape[2]
    e = item // batch
    b = item % batch
    mine, spare = chain.rows[0, e, b], chain.rows[1, e, b]
    my_scale = np.zeros(1)  # private: items writing one shared array would contend
    for lag in range(chain.log_frobenius.shape[2]):
        if lag > 0:
            _adjoint_rows(chain, e, b, lag, mine, spare)
            mine, spare = spare, mine
        if not _record_lag(mine, chain.v[e, b], chain.spectral, my_scale, lag,
                           chain.log_frobenius[e, b], chain.log_spectral[e, b],
                           chain.log_adjoint[e, b]):
            break


@jit
def _adjoint_block(task, lag, chain):
    """Task ``task`` of lag ``lag`` of ``adjoint_chain``: one block of one item's rows."""
    batch, size, block_size = chain.hs.shape[2], chain.rows.shape[3], chain.block_size
    n_blocks = (size + block_size - 1) // block_size
    e = task // (n_blocks * batch)
    b = (task // n_blocks) % batch
    r0 = (task % n_blocks) * block_size
    r1 = min(r0 + block_size, size)
    if not chain.done[e, b]:
        _adjoint_rows(chain, e, b, lag, chain.rows[(lag - 1) % 2, e, b, r0:r1],
                      chain.rows[lag % 2, e, b, r0:r1])


@jit
def _record_item(item, lag, chain):
    """``_record_lag`` of lag ``lag`` of item ``item`` of ``adjoint_chain``."""
    batch = chain.hs.shape[2]
    e = item // batch
    b = item % batch
    # (done is written only when it changes: items share its cache line)
    if not (chain.done[e, b] or _record_lag(chain.rows[lag % 2, e, b], chain.v[e, b],
                                            chain.spectral, chain.scale[e, b:b + 1], lag,
                                            chain.log_frobenius[e, b],
                                            chain.log_spectral[e, b],
                                            chain.log_adjoint[e, b])):
        chain.done[e, b] = True


@jit
def _record_lag(rows, v, spectral, scale, lag, log_frobenius, log_spectral, log_adjoint):
    """Rescale ``rows`` to unit Frobenius norm (``scale[0]`` += the log of its norm) and
    record the lag's log norms; False (and nan or -inf from this lag on) if the product
    stopped being finite or became 0."""
    log_norm = _log_norm(rows)
    if not np.isfinite(log_norm):  # overflowed to inf/nan, or the product is 0
        value = -np.inf if np.isfinite(rows).all() else np.nan
        fill(log_frobenius[lag:], value)
        fill(log_spectral[lag:], value)
        fill(log_adjoint[lag:], value)
        return False
    norm = np.exp(log_norm)
    for r in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            rows[r, j] /= norm
    scale[0] += log_norm
    log_frobenius[lag] = scale[0]
    if spectral:
        log_spectral[lag] = scale[0] + np.log(np.linalg.norm(rows, 2))
    if v.shape[0] > 0:
        log_adjoint[lag] = scale[0] + _log_norm(np.dot(v, rows))
    return True


@jit
def pair_tile(a):
    """Units per tile of ``_transposed_tiles``: the columns of one ``accumulate_pair``
    for a's dtype."""
    return PAIR_VECTORS * VECTOR_BITS // (8 * a.itemsize)


@jit
def _block_products(tiles, h, q, ph, a, coefficients, sums):
    """ph += W h and a = W q over one block of n rows of W, given as ``tiles`` (n_tiles,
    H, tile) = those rows transposed, a tile of rows at a time: each tile is read once
    for both sums, which stay in registers over all H terms, summed in the order j = 0,
    1, ... (``kernels.registers.accumulate_pair``). q (H,) is the one tangent vector;
    ``coefficients`` (2, H) and ``sums`` (2, >= n_tiles * tile) are scratch."""
    n = ph.shape[0]
    width = tiles.shape[2]
    copy_into(h, coefficients[0])
    copy_into(q, coefficients[1])
    copy_into(ph, sums[0, :n])
    fill(sums[1, :n], 0.0)
    for k in range(tiles.shape[0]):
        accumulate_pair(tiles[k], coefficients, sums[:, k * width:(k + 1) * width], 0)
    copy_into(sums[0, :n], ph)
    copy_into(sums[1, :n], a)


@jit
def _product_into(a, b, out):
    """out = a @ b, in register panels when they fit and beat BLAS here
    (``kernels.cells.add_product``, ``PANELS_BEAT_BLAS``), else by BLAS
    (``kernels.blas``)."""
    if PANELS_BEAT_BLAS and fits_panels(out):
        for row in out:
            fill(row, 0.0)
        add_product(a, b, out)
    else:
        product_by_blas(a, b, out)


@jit
def _transposed_tiles(w_hh, block_size):
    """(E, blocks, G, tiles, H, tile): each unit block's gate rows of W_hh, transposed a
    tile of ``pair_tile`` rows at a time (the last padded with zeros), each tile
    contiguous, so that ``_block_products`` streams through memory."""
    n_members, n_rows, n_units = w_hh.shape
    n_g = n_rows // n_units
    n_blocks = (n_units + block_size - 1) // block_size
    width = pair_tile(w_hh)
    n_tiles = (block_size + width - 1) // width
    tiles = np.zeros((n_members, n_blocks, n_g, n_tiles, n_units, width), w_hh.dtype)
    for e in range(n_members):
        for blk in range(n_blocks):
            for g in range(n_g):
                for i in range(min(block_size, n_units - blk * block_size)):
                    row = w_hh[e, g * n_units + blk * block_size + i]
                    for j in range(n_units):  # (a loop: no broadcasting checks to compile)
                        tiles[e, blk, g, i // width, j, i % width] = row[j]
    return tiles


@jit
def _scratch(n_tasks, n, n_units, n_tangents, dtype):
    """Work arrays of ``_block_step`` for ``n_tasks`` tasks on blocks of up to n units,
    allocated once (a tangent block is large: allocating it per step costs page faults);
    with one tangent also those of ``_block_products``."""
    pairs = n_tangents == 1
    width = pair_tile(np.empty(0, dtype))
    padded = (n + width - 1) // width * width if pairs else 0
    return (np.empty((n_tasks, 4 * n), dtype), np.empty((n_tasks, 4 * n), dtype),
            np.empty((n_tasks, 4 * n * n_tangents), dtype),
            np.empty((n_tasks, LIN_ROWS, n), dtype),
            np.empty((n_tasks, 2, n_units if pairs else 0), dtype),
            np.zeros((n_tasks, 2, padded), dtype))


@jit
def _task_scratch(scratch, task):
    return (scratch[0][task], scratch[1][task], scratch[2][task], scratch[3][task],
            scratch[4][task], scratch[5][task])


@jit
def _block_step(cell, x, additive, w_ih, b_ih, w_hh, panels, b_hh, e_x, b, s, u0, u1, h,
                c, q, h_next, c_next, q_next, scratch):
    """One step of units u0:u1 of one sequence: state and tangents, into the ``*_next``;
    returns what the step saved for those units (gate g in entries g*n:(g+1)*n).
    ``scratch`` comes from ``_scratch`` (reused: no allocation per step)."""
    n_units = h.shape[0]
    n = u1 - u0
    n_g = n_gates(cell)
    k = q.shape[1]
    p = scratch[0][:4 * n]
    ph = scratch[1][:n_g * n]
    a_flat = scratch[2][:n_g * n * k]
    a = a_flat.reshape((n_g * n, k))
    lin = scratch[3][:, :n]
    for g in range(n_g):
        first = g * n_units + u0
        block = slice(g * n, (g + 1) * n)
        copy_into(b_hh[first:first + n], ph[block])
        if k == 1:  # one tangent (lambda_max): W read once, for state and tangent
            _block_products(panels[g], h, q[:n_units].reshape(n_units), ph[block],
                            a_flat[block], scratch[4], scratch[5])
        else:  # many tangents (or none): a matrix product
            rows = w_hh[first:first + n]
            _product_into(rows, q[:n_units], a[block])
            add_into(np.dot(rows, h), ph[block])
        copy_into(b_ih[first:first + n], p[block])
        if x.shape[1] > 0:
            if additive:
                add_into(x[e_x, s, b, first:first + n], p[block])
            else:
                add_into(np.dot(w_ih[first:first + n], x[e_x, s, b]), p[block])
    # slices past the end of a zero-width c (and of q for S = H) are empty, as needed
    cell_forward(cell, p, ph, h[u0:u1], c[u0:u1], h_next[u0:u1], c_next[u0:u1])
    cell_linearisation(cell, p, h[u0:u1], c[u0:u1], h_next[u0:u1], c_next[u0:u1], lin)
    tangent_combine(lin, a, q[u0:u1], q[n_units + u0:n_units + u1], q_next[u0:u1],
                    q_next[n_units + u0:n_units + u1])
    return p


@jit
def _record(saved, u0, h_new, c_new, record, hs_rec, cs_rec, p_rec):
    """Store the new state of units u0:u0+n and their saved values as step ``record`` of
    a forward tape (``hs_rec`` (T, H), ``cs_rec``, ``p_rec`` (T, saved width))."""
    n = h_new.shape[0]
    n_units = hs_rec.shape[1]
    copy_into(h_new, hs_rec[record, u0:u0 + n])
    copy_into(c_new, cs_rec[record, u0:u0 + c_new.shape[0]])
    if p_rec.shape[0] > 0:  # vanilla RNNs keep no saved values (T = 0)
        for g in range(p_rec.shape[1] // n_units):
            first = g * n_units + u0
            copy_into(saved[g * n:(g + 1) * n], p_rec[record, first:first + n])


@jit
def _normalise(q):
    """q <- q / ||q|| for one tangent (q (S, 1)); returns log ||q||. A tangent annihilated
    to 0 (log -inf) restarts from e_0, as LAPACK's QR would."""
    log_norm = _log_norm(q)
    if log_norm > -np.inf:
        scale = np.exp(-log_norm)
        for i in range(q.shape[0]):
            q[i, 0] = q[i, 0] * scale
    else:
        q[:] = 0.0
        q[0, 0] = 1.0
    return log_norm


def qr_sets(n, q, log_r):
    """(address, work): ``kernels.householder.orthonormalise`` compiled for tangents like
    q's (E, B, S, k) and records like ``log_r``'s (E, B, R, k), and ``n`` sets of its work
    arrays. ``_orthonormalise`` calls it by address: compiled once, not again into every
    kernel that QRs (a third of a cold first Lyapunov exponent's compile went to the QR
    that it linked in), and not at all for one tangent, whose QR is a normalisation (then
    the address is 0)."""
    if not (q.flags.c_contiguous and log_r.flags.c_contiguous):
        raise ValueError("tangents and their records must be C-contiguous arrays")
    work = qr_workspaces(n, q.shape[2], q.shape[3], q.dtype)
    if q.shape[3] == 1:
        return 0, work
    one = qr_workspaces(1, q.shape[2], q.shape[3], q.dtype)  # (arguments of its types)
    return function_address(orthonormalise, (one[0][0], np.empty(q.shape[3]),
                                             tuple(a[0] for a in one))), work


@jit(inline=True)
def _orthonormalise(q, log_r, record, sets, i):
    """q <- Q of q = QR; log |R_jj| into ``log_r[record]``; by the QR of ``sets``
    (``qr_sets``) with its work set i."""
    if q.shape[1] == 1:  # a single vector: QR is normalisation
        log_r[record, 0] = _normalise(q)
        return
    qr, work = sets
    call_address(qr, (q, log_r[record], qr_workspace(work, i)))


@jit
def _qr_due(s, n_steps, interval):
    """Whether step s (of n_steps) ends with a QR: every ``interval`` steps and the last."""
    return interval > 0 and ((s + 1) % interval == 0 or s + 1 == n_steps)


@jit
def _all_finite(a):
    """Whether a C-contiguous array holds no inf or nan (without allocating)."""
    for value in a.reshape(a.size):
        if not np.isfinite(value):
            return False
    return True


@jit
def _renormalise(h, q, log_r, record, sets, i):
    """QR of the tangents q (``_orthonormalise``) if state and tangents are finite (then
    True), else False."""
    if not (_all_finite(h) and _all_finite(q)):
        return False
    _orthonormalise(q, log_r, record, sets, i)
    return True


@jit
def _normalised_copy(h, q, copy):
    """copy = q normalised (``_normalise``) and log ||q||, if h and q are finite; else nan
    (``copy`` left undefined)."""
    if not (_all_finite(h) and _all_finite(q)):
        return np.nan
    copy_array(q, copy)
    return _normalise(copy)


#: What the items of ``tangent_walk`` and ``spectrum_walk`` receive of their arguments
#: (see ``tangent_walk``), with ``panels`` W_hh as ``_transposed_tiles`` made them.
Walk = namedtuple("Walk", "cell x additive w_ih b_ih w_hh panels b_hh t0 n_steps interval "
                  "diverged log_r record_from hs_rec cs_rec p_rec h_before c_before")


def tangent_walk(cell, x, additive, w_ih, b_ih, w_hh, b_hh, t0, n_steps, interval, h, c, q,
                 diverged, log_r, block_size, record_from, hs_rec, cs_rec, p_rec, h_before,
                 c_before):
    """Advance states and tangents ``n_steps`` steps from input step ``t0``.

    ``x`` (1 or E, T, B, D): input per step, shared by all members or per member; with
    T = 0 the network is autonomous (x_t = 0). ``additive`` adds ``x`` (D = G*H) to the
    pre-activations instead of multiplying by W_ih. ``w_ih`` (E, G*H, D), ``w_hh``
    (E, G*H, H) as in torch (not transposed), ``b_ih``, ``b_hh`` (E, G*H). ``h``
    (E, B, H), ``c`` (E, B, H or 0) and ``q`` (E, B, S, k), orthonormal columns, are
    advanced in place, in blocks of ``block_size`` units (``unit_block_size``).
    With ``interval`` > 0, q is re-orthonormalised by QR every ``interval`` steps and
    after the last, and the log |R_jj| of QR number r go to ``log_r[:, :, r]``
    (E, B, >= ceil(n_steps / interval), k) float64; an item whose state or tangents
    stop being finite is then marked in ``diverged`` (E, B), its records left nan.

    The trajectory from step ``record_from`` on is kept as a forward tape (as
    ``kernels.sequence.sequence_forward`` leaves it) when ``hs_rec`` (E, R, B, H) has
    R > 0 steps: states in ``hs_rec``/``cs_rec``, saved values in ``p_rec``
    (E, R, B, saved width), and the state before it in ``h_before``/``c_before``.

    Where one block holds all units, each sequence walks all steps on one thread, its
    weights in cache (``_walk_sequence``), else step by step with the blocks in parallel
    (``_walk_block``, and ``_walk_qr`` after the steps that end with a QR).
    """
    # one tangent: W_hh as transposed tiles for ``_block_products``, else BLAS on W_hh
    panels = _transposed_tiles(w_hh if q.shape[3] == 1 else w_hh[:, :0], block_size)
    log_r[:] = np.nan
    walk = Walk(cell, x, additive, w_ih, b_ih, w_hh, panels, b_hh, t0, n_steps, interval,
                diverged, log_r, record_from, hs_rec, cs_rec, p_rec, h_before, c_before)
    n_members, batch, n_units = h.shape
    if block_size >= n_units:
        run_items(_walk_sequence, n_members * batch, walk, h, c, q, qr_sets(0, q, log_r))
        return
    n_tasks = n_members * batch * -(-n_units // block_size)
    states = []  # each (2, ...): the state before a step in the half of the step's parity
    for a in (h, c, q):
        pair = np.empty((2,) + a.shape, a.dtype)
        pair[0] = a
        states.append(pair)
    # one tangent: the normalisation due after step s is done at step s + 1 by every block
    # of the item, each on its own copy (the same sums: the same bits), not in a parallel
    # pass of its own between the steps (one launch per step instead of two: float64,
    # N = 500, QR every step, on 2 Zen 3 cores in alternating runs: 5,500 steps in 256-263
    # ms instead of 272-289)
    deferred = q.shape[3] == 1 and interval > 0
    own = np.empty((n_tasks if deferred else 0, q.shape[2], 1), q.dtype)
    run_steps(_walk_block, n_tasks, 0, n_steps,
              (walk, block_size, *states, _scratch(n_tasks, block_size, n_units, q.shape[3],
                                                   h.dtype), own,
               qr_sets(n_members * batch if interval > 0 else 0, q, log_r)),
              finish=_walk_qr, n_finish_items=n_members * batch,
              every=n_steps if deferred else interval)
    for a, pair in zip((h, c, q), states):
        a[...] = pair[n_steps % 2]


@jit
def _walk_sequence(item, walk, h, c, q, sets):
    """Item ``item`` of ``tangent_walk`` when one block holds all units: one sequence,
    all steps, with the QR of ``sets`` (``qr_sets``, no work sets: it makes its own)."""
    batch, n_units = h.shape[1], h.shape[2]
    e = item // batch
    b = item % batch
    here = (h[e, b].copy(), c[e, b].copy(), q[e, b].copy())
    there = (np.empty_like(here[0]), np.empty_like(here[1]), np.empty_like(here[2]))
    scratch = _task_scratch(_scratch(1, n_units, n_units, q.shape[3], h.dtype), 0)
    qr = (sets[0], qr_workspaces(1, q.shape[2], q.shape[3], q.dtype))
    for s in range(walk.n_steps):
        if walk.diverged[e, b]:
            break
        if walk.t0 + s == walk.record_from:
            copy_into(here[0], walk.h_before[e, b])
            copy_into(here[1], walk.c_before[e, b])
        saved = _walk_step(walk, e, b, s, 0, n_units, 0, here[0], here[1], here[2], there[0],
                           there[1], there[2], scratch)
        here, there = there, here
        if walk.hs_rec.shape[1] > 0 and walk.t0 + s >= walk.record_from:
            _record(saved, 0, here[0], here[1], walk.t0 + s - walk.record_from,
                    walk.hs_rec[e, :, b], walk.cs_rec[e, :, b], walk.p_rec[e, :, b])
        # (diverged is written only when it changes: items share its cache line)
        if _qr_due(s, walk.n_steps, walk.interval) and not _renormalise(
                here[0], here[2], walk.log_r[e, b], s // walk.interval, qr, 0):
            walk.diverged[e, b] = True
    copy_into(here[0], h[e, b])
    copy_into(here[1], c[e, b])
    copy_array(here[2], q[e, b])


@jit
def _walk_step(walk, e, b, s, u0, u1, block, h, c, q, h_next, c_next, q_next, scratch):
    """``_block_step`` of step s of the walk for units u0:u1 (unit block ``block``) of
    item (e, b)."""
    return _block_step(walk.cell, walk.x, walk.additive, walk.w_ih[e], walk.b_ih[e],
                       walk.w_hh[e], walk.panels[e, block], walk.b_hh[e],
                       0 if walk.x.shape[0] == 1 else e, b, walk.t0 + s, u0, u1, h, c, q,
                       h_next, c_next, q_next, scratch)


@jit
def _walk_block(task, s, blocks):
    """Task ``task`` of step s of ``tangent_walk`` by blocks: one block of units of one
    sequence, from the states in the half of s's parity into the other."""
    walk, block_size, h_pair, c_pair, q_pair, scratch, own, _ = blocks
    h, c, q = h_pair[s % 2], c_pair[s % 2], q_pair[s % 2]
    batch, n_units = h.shape[1], h.shape[2]
    n_blocks = (n_units + block_size - 1) // block_size
    item = task // n_blocks
    block = task % n_blocks
    e = item // batch
    b = item % batch
    if block == 0 and walk.t0 + s == walk.record_from:  # the state before the tape
        copy_into(h[e, b], walk.h_before[e, b])
        copy_into(c[e, b], walk.c_before[e, b])
    if walk.diverged[e, b]:
        return
    tangents = q[e, b]
    if own.shape[0] > 0 and s > 0 and _qr_due(s - 1, walk.n_steps, walk.interval):
        tangents = own[task]  # (one tangent, normalised here: see ``tangent_walk``)
        log_norm = _normalised_copy(h[e, b], q[e, b], tangents)
        if block == 0:  # one writer per item
            if np.isnan(log_norm):
                walk.diverged[e, b] = True
            else:
                walk.log_r[e, b, (s - 1) // walk.interval, 0] = log_norm
        if np.isnan(log_norm):
            return
    u0 = block * block_size
    u1 = min(u0 + block_size, n_units)
    after = 1 - s % 2
    h_next, c_next = h_pair[after, e, b], c_pair[after, e, b]
    saved = _walk_step(walk, e, b, s, u0, u1, block, h[e, b], c[e, b], tangents, h_next, c_next,
                       q_pair[after, e, b], _task_scratch(scratch, task))
    if walk.hs_rec.shape[1] > 0 and walk.t0 + s >= walk.record_from:
        _record(saved, u0, h_next[u0:u1], c_next[u0:u1], walk.t0 + s - walk.record_from,
                walk.hs_rec[e, :, b], walk.cs_rec[e, :, b], walk.p_rec[e, :, b])


@jit
def _walk_qr(item, s, blocks):
    """The QR after step s of ``tangent_walk`` by blocks, for item ``item``."""
    walk, _, h_pair, _, q_pair, _, _, sets = blocks
    batch = h_pair.shape[2]
    e = item // batch
    b = item % batch
    after = 1 - s % 2
    if not (walk.diverged[e, b] or _renormalise(h_pair[after, e, b], q_pair[after, e, b],
                                                walk.log_r[e, b], s // walk.interval,
                                                sets, item)):
        walk.diverged[e, b] = True


#: ``spectrum_walk`` multiplies each interval's Jacobians in pieces of about this many
#: steps: the pieces of one interval are formed while the interval before is QR-ed.
PIECE_STEPS = 5

#: The last steps of each interval that ``spectrum_walk``'s finishing task applies to
#: the tangents itself, after the pieces: moved from the pieces' tasks to balance the
#: two (measured at N = 200, QR every 10 steps, on 2 cores: pieces of 4 and 5 steps
#: against the finishing task's 3 products, QR and walk).
FINISH_STEPS = 1


@jit
def _n_pieces(n_steps):
    """Pieces of the first ``n_steps`` steps of an interval (none for none)."""
    return min(n_steps, max(1, (n_steps + PIECE_STEPS // 2) // PIECE_STEPS))


@jit
def _piece_steps(n_steps):
    """Steps of an interval of ``n_steps`` steps that its pieces cover."""
    return max(0, n_steps - FINISH_STEPS)


@jit
def _interval_tape(tapes, parity, slot):
    """One item's interval tape (see ``_tape_linearise``) out of ``spectrum_walk``'s."""
    hs, cs, p, h_start, c_start = tapes
    return (hs[parity, slot], cs[parity, slot], p[parity, slot], h_start[parity, slot],
            c_start[parity, slot])


@jit(inline=True)
def _walk_interval(walk, e, b, s_first, n_steps, h, c, tape, no_tangents, scratch):
    """Advance the state (h, c) of item (e, b), in place, ``n_steps`` steps of the walk
    from step ``s_first``, keeping the steps on its interval ``tape`` (and on the forward
    tape from step ``record_from`` on, as ``tangent_walk`` does)."""
    hs, cs, p, h_start, c_start = tape
    copy_into(h, h_start)
    copy_into(c, c_start)
    for j in range(n_steps):
        h_prev = hs[j - 1] if j > 0 else h_start
        c_prev = cs[j - 1] if j > 0 else c_start
        t = walk.t0 + s_first + j
        if t == walk.record_from:
            copy_into(h_prev, walk.h_before[e, b])
            copy_into(c_prev, walk.c_before[e, b])
        saved = _walk_step(walk, e, b, s_first + j, 0, h.shape[0], 0, h_prev, c_prev,
                           no_tangents, hs[j], cs[j], no_tangents, scratch)
        if p.shape[0] > 0:
            copy_into(saved[:p.shape[1]], p[j])
        if walk.hs_rec.shape[1] > 0 and t >= walk.record_from:
            _record(saved, 0, hs[j], cs[j], t - walk.record_from, walk.hs_rec[e, :, b],
                    walk.cs_rec[e, :, b], walk.p_rec[e, :, b])
    copy_into(hs[n_steps - 1], h)
    copy_into(cs[n_steps - 1], c)


@jit(inline=True)
def _apply_steps(cell, w_hh, tape, t_from, t_to, here, there, jac, lin):
    """J_(t_to - 1) ... J_(t_from) ``here`` (S, S) for steps of an interval ``tape``, with
    ``there`` as the other buffer: the product ends in ``here`` after an even number of
    steps, in ``there`` after an odd one.

    Each step forms J's dense columns (d s / d h_prev) and multiplies by them: with S
    tangents that is cheaper than multiplying by W_hh (G H rows) and combining the gates.
    """
    n_units = w_hh.shape[1]
    for t in range(t_from, t_to):
        _tape_linearise(cell, tape, t, lin)
        jacobian_h_columns(lin, w_hh, jac)
        _product_into(jac, here[:n_units], there)
        add_c_column_terms(lin, here[n_units:], there[:here.shape[0] - n_units],
                           there[n_units:])
        here, there = there, here


@jit
def _interval_piece(cell, w_hh, tape, t_from, t_to, out, spare, jac, lin):
    """out (S, S) = J_(t_to - 1) ... J_(t_from), the product of steps t_from..t_to - 1 of
    an interval ``tape``; ``spare`` (S, S), ``jac`` (S, H) and ``lin`` are work arrays."""
    here, there = (out, spare) if (t_to - t_from) % 2 == 1 else (spare, out)
    _tape_linearise(cell, tape, t_from, lin)
    state_jacobian(lin, w_hh, here)
    _apply_steps(cell, w_hh, tape, t_from + 1, t_to, here, there, jac, lin)


@jit
def _interval_length(r, interval, n_steps):
    return min(interval, n_steps - r * interval)


@jit(inline=True)
def _piece_of_interval(cell, w_hh, tapes, pieces, spares, jac, lin, slot, part, r,
                       interval, n_steps):
    """Piece ``part`` of interval r of the item in ``slot`` (if the interval has one)."""
    n = _piece_steps(_interval_length(r, interval, n_steps))
    n_parts = _n_pieces(n)
    if part < n_parts:
        _interval_piece(cell, w_hh, _interval_tape(tapes, r % 2, slot), part * n // n_parts,
                        (part + 1) * n // n_parts, pieces[r % 2, slot, part],
                        spares[slot, part], jac[slot, part], lin[slot, part])


@jit(inline=True)
def _finish_interval(cell, w_hh, tapes, pieces, spares, jac, lin, work, slot, r, interval,
                     n_steps, q, log_r):
    """q <- Q of J_n ... J_(n - FINISH_STEPS + 1) M_P ... M_1 q = QR, with the pieces M_j
    of interval r of the item in ``slot`` and its last steps, and log |R_jj| into
    ``log_r[r]``; False if the state or the tangents stopped being finite."""
    n = _interval_length(r, interval, n_steps)
    tape = _interval_tape(tapes, r % 2, slot)
    spare = spares[slot, spares.shape[1] - 1]
    here, there = q, spare
    n_parts = _n_pieces(_piece_steps(n))
    for j in range(n_parts):
        _product_into(pieces[r % 2, slot, j], here, there)
        here, there = there, here
    _apply_steps(cell, w_hh, tape, _piece_steps(n), n, here, there,
                 jac[slot, jac.shape[1] - 1], lin[slot, lin.shape[1] - 1])
    if (n_parts + n - _piece_steps(n)) % 2 == 1:  # the product ended in the spare
        copy_array(spare, q)
    return _renormalise(tape[0][n - 1], q, log_r, r, work, slot)


def spectrum_walk(cell, x, additive, w_ih, b_ih, w_hh, b_hh, t0, n_steps, interval, h, c, q,
                  diverged, log_r, group, record_from, hs_rec, cs_rec, p_rec, h_before,
                  c_before):
    """``tangent_walk`` for a full set of tangents (k = S) and QR every ``interval`` > 1
    steps, by interval products. The same arguments, with ``group`` in place of the block
    size: how many items are in flight at once (memory grows with it; a few per thread).

    Each interval's Jacobian product M = J_t1 ... J_t0 is formed on its own, in
    pieces of about ``PIECE_STEPS`` steps that are then applied in order, q <- QR(M q).
    That costs as many flops as advancing q step by step, but an interval's products no
    longer wait for the QR before them: the state runs one interval ahead, and the pieces
    of one interval are formed while the previous one is multiplied out and QR-ed, by
    other threads (the task that QRs also applies the interval's last ``FINISH_STEPS``
    steps itself, which balances the two). Every item's arithmetic is the same for any
    thread count. An item that diverges keeps the state where its walk stopped (up to an
    interval later).
    """
    n_members, batch, n_units = h.shape
    n_items = n_members * batch
    size = q.shape[2]
    dtype = h.dtype
    n_pieces = _n_pieces(_piece_steps(interval))
    tapes = (np.empty((2, group, interval, n_units), dtype),
             np.empty((2, group, interval, c.shape[2]), dtype),
             np.empty((2, group, interval if n_gates(cell) > 1 else 0,
                       saved_width(cell, n_units)), dtype),
             np.empty((2, group, n_units), dtype), np.empty((2, group, c.shape[2]), dtype))
    work = (tapes, np.empty((2, group, n_pieces, size, size), dtype),  # the pieces
            np.empty((group, n_pieces + 1, size, size), dtype),  # their spares
            np.empty((group, n_pieces + 1, size, n_units), dtype),  # jac (the last: the
            np.empty((group, n_pieces + 1, LIN_ROWS, n_units), dtype),  # finish's), lin
            qr_sets(group, q, log_r),
            _scratch(group, n_units, n_units, 0, dtype),  # the state's walk, which has
            np.empty((size, 0), dtype))  # no tangents to touch
    log_r[:] = np.nan
    no_panels = _transposed_tiles(w_hh[:, :0], n_units)  # (the one-tangent path is not taken)
    walk = Walk(cell, x, additive, w_ih, b_ih, w_hh, no_panels, b_hh, t0, n_steps, interval,
                diverged, log_r, record_from, hs_rec, cs_rec, p_rec, h_before, c_before)
    n_intervals = -(-n_steps // interval)
    for first in range(0, n_items, group):  # round r: pieces of interval r, end of r - 1
        run_steps(_spectrum_task, min(group, n_items - first) * (n_pieces + 1), -1,
                  n_intervals + 1, (walk, h, c, q, first, work))


@jit
def _spectrum_task(task, r, fixed):
    """Task ``task`` of round r of ``spectrum_walk``: for the item in one slot of the
    group from item ``first`` on, one piece of interval r, or (the last task) the end of
    interval r - 1 (its products and QR) and the walk of the state through interval
    r + 1."""
    walk, h, c, q, first, work = fixed
    tapes, pieces, spares, jac, lin, qr_work, scratch, no_tangents = work
    batch = h.shape[1]
    n_pieces = pieces.shape[2]
    slot = task // (n_pieces + 1)
    part = task % (n_pieces + 1)
    e = (first + slot) // batch
    b = (first + slot) % batch
    interval, n_steps = walk.interval, walk.n_steps
    n_intervals = (n_steps + interval - 1) // interval
    if walk.diverged[e, b]:
        return
    if part < n_pieces:
        if 0 <= r < n_intervals:
            _piece_of_interval(walk.cell, walk.w_hh[e], tapes, pieces, spares, jac, lin, slot,
                               part, r, interval, n_steps)
    elif r >= 1 and not _finish_interval(walk.cell, walk.w_hh[e], tapes, pieces, spares, jac,
                                         lin, qr_work, slot, r - 1, interval, n_steps,
                                         q[e, b], walk.log_r[e, b]):
        walk.diverged[e, b] = True
    elif r + 1 < n_intervals:  # walk the state through interval r + 1
        s0 = (r + 1) * interval
        _walk_interval(walk, e, b, s0, min(interval, n_steps - s0), h[e, b], c[e, b],
                       _interval_tape(tapes, (r + 1) % 2, slot), no_tangents,
                       _task_scratch(scratch, slot))
