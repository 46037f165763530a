"""The linearised step: Jacobian-vector and vector-Jacobian products, and the Jacobian.

The state s of a cell is h (vanilla RNN, GRU; S = H) or h and c stacked (LSTM; S = 2H).
``kernels.cells.cell_linearisation`` turns what one step saved into ``lin``, the
per-unit derivatives of the new state with respect to the gate pre-activations
a = W_hh h_prev and to the previous state directly. With ``lin`` and W_hh:

- a tangent vector q (a column) moves forward as q' = J q: first a = W_hh q_h, a
  matrix product, then ``tangent_combine``;
- an adjoint vector l (a row) moves backward as l' = l J: ``adjoint_gates`` forms the
  gate-space row, a matrix product with W_hh, then ``adjoint_direct`` adds the direct
  terms. This is the backward pass of BPTT (``cell_backward``) on the state alone;
- ``state_jacobian`` forms J (S, S) itself.

Blocks of k vectors are (S, k) arrays for tangents and (k, S) for adjoints, so each
product with W_hh is one matrix product; for one vector, ``state_jvp`` and ``state_vjp``
sum in vector registers (``kernels.cells.matvec`` and ``accumulate_rows``).
``tangent_combine`` also works on a block of units (rows u0:u1 of q and the matching
rows of each gate), which is how the Lyapunov kernel splits one large network across
threads.

All functions are ``@njit`` and callable from your own code; they assume one float
dtype throughout, C-contiguous ``w_hh`` (G*H, H) and the shapes given, and check nothing.

Examples
--------
>>> import numpy as np, kernels
>>> from kernels.cells import RNN_TANH, LIN_ROWS, cell_forward, cell_linearisation
>>> H = 3
>>> w, h_prev = np.eye(H) * 0.5, np.array([0.1, 0.2, 0.3])
>>> p, h, none = np.zeros(H), np.empty(H), np.empty(0)
>>> cell_forward(RNN_TANH, p, w @ h_prev, h_prev, none, h, none)
>>> lin = np.empty((LIN_ROWS, H))
>>> cell_linearisation(RNN_TANH, p, h_prev, none, h, none, lin)
>>> jac = np.empty((H, H))
>>> kernels.state_jacobian(lin, w, jac)
>>> np.allclose(jac, np.diag(1 - h ** 2) @ w)
True
>>> q, q_out = np.ones(H), np.empty(H)
>>> kernels.state_jvp(lin, w, q, none, q_out, none)
>>> np.allclose(q_out, jac @ q)
True
"""
import numpy as np

from kernels._jit import jit
from kernels.cells import (LIN_C, LIN_CC, LIN_H, LIN_HC, LIN_HH, accumulate_rows,
                           matvec)
from kernels.memory import fill


@jit
def tangent_combine(lin, a, qh, qc, qh_out, qc_out):
    """q_out = J q for a block of n units, given ``a`` = the block's gate rows of W_hh q_h.

    ``lin`` (LIN_ROWS, n); ``a`` (G*n, k), gate g in rows g*n:(g+1)*n; ``qh`` (n, k) and
    ``qc`` (n, k) the block's rows of q's h and c parts (``qc`` has 0 rows unless the
    cell is an LSTM), likewise the outputs, which must not alias the inputs.
    """
    n, k = qh.shape
    n_gates = a.shape[0] // n
    for u in range(n):
        for j in range(k):
            qh_out[u, j] = lin[LIN_HH, u] * qh[u, j]
        for g in range(n_gates):
            for j in range(k):
                qh_out[u, j] += lin[LIN_H + g, u] * a[g * n + u, j]
    if qc.shape[0] > 0:
        for u in range(n):
            for j in range(k):
                qc_out[u, j] = lin[LIN_CC, u] * qc[u, j]
                qh_out[u, j] += lin[LIN_HC, u] * qc[u, j]
            for g in range(n_gates):
                for j in range(k):
                    qc_out[u, j] += lin[LIN_C + g, u] * a[g * n + u, j]


@jit
def adjoint_gates(lin, lh, lc, out):
    """out (k, G*H) = the adjoint rows (``lh`` (k, H), ``lc`` (k, H) or (k, 0)) carried
    to the gate pre-activations a = W_hh h_prev: out[:, g*H + u] = dh_u/da * lh[:, u] +
    dc_u/da * lc[:, u]."""
    n = lin.shape[1]
    lstm = lc.shape[1] > 0
    for m in range(lh.shape[0]):
        for g in range(out.shape[1] // n):
            for u in range(n):
                value = lin[LIN_H + g, u] * lh[m, u]
                if lstm:
                    value += lin[LIN_C + g, u] * lc[m, u]
                out[m, g * n + u] = value


@jit
def adjoint_direct(lin, lh, lc, through_w, lh_out, lc_out):
    """The adjoint of the previous state: ``lh_out`` = ``through_w`` (the gate rows times
    W_hh) + the direct term, ``lc_out`` = the terms through c; outputs must not alias."""
    for m in range(lh.shape[0]):
        for u in range(lh.shape[1]):
            lh_out[m, u] = through_w[m, u] + lin[LIN_HH, u] * lh[m, u]
        for u in range(lc.shape[1]):
            lc_out[m, u] = lin[LIN_HC, u] * lh[m, u] + lin[LIN_CC, u] * lc[m, u]


@jit
def state_jvp(lin, w_hh, qh, qc, qh_out, qc_out):
    """(qh_out, qc_out) = J (qh, qc) for one tangent vector (1-D arrays, strided ones
    too, such as a column ``q[:, j]``; qc, qc_out of length 0 unless LSTM). Outputs must
    not alias inputs."""
    a = np.empty(w_hh.shape[0], qh.dtype)
    matvec(w_hh, qh, a)
    tangent_combine(lin, a[:, None], qh[:, None], qc[:, None], qh_out[:, None],
                    qc_out[:, None])


@jit
def state_vjp(lin, w_hh, lh, lc, lh_out, lc_out):
    """(lh_out, lc_out) = (lh, lc) J for one adjoint vector (the state part of one BPTT
    step). 1-D arrays, strided ones too; outputs must not alias inputs."""
    gates = np.empty((1, w_hh.shape[0]), lh.dtype)
    adjoint_gates(lin, lh[None, :], lc[None, :], gates)
    through_w = np.zeros((1, w_hh.shape[1]), lh.dtype)
    accumulate_rows(w_hh, gates[0], through_w[0])
    adjoint_direct(lin, lh[None, :], lc[None, :], through_w, lh_out[None, :], lc_out[None, :])


@jit
def state_jacobian(lin, w_hh, jac):
    """jac (S, S) = d(h, c)/d(h_prev, c_prev), S = H, or 2H for an LSTM (h rows first)."""
    n = w_hh.shape[1]
    jacobian_h_columns(lin, w_hh, jac[:, :n])
    for u in range(jac.shape[0] - n):  # an LSTM's c columns: two diagonal blocks
        fill(jac[u, n:], 0.0)
        fill(jac[n + u, n:], 0.0)
        jac[u, n + u] = lin[LIN_HC, u]
        jac[n + u, n + u] = lin[LIN_CC, u]


@jit
def jacobian_h_columns(lin, w_hh, jac):
    """jac (S, H) = d(h, c)/d h_prev, the first H columns of ``state_jacobian`` (all of
    them unless the cell is an LSTM)."""
    n = w_hh.shape[1]
    n_gates = w_hh.shape[0] // n
    for u in range(n):
        fill(jac[u], 0.0)
        for g in range(n_gates):
            for v in range(n):
                jac[u, v] += lin[LIN_H + g, u] * w_hh[g * n + u, v]
        jac[u, u] += lin[LIN_HH, u]
    for u in range(jac.shape[0] - n):
        fill(jac[n + u], 0.0)
        for g in range(n_gates):
            for v in range(n):
                jac[n + u, v] += lin[LIN_C + g, u] * w_hh[g * n + u, v]


@jit
def add_c_column_terms(lin, qc, qh_out, qc_out):
    """(qh_out, qc_out) += J's c columns times ``qc`` (k columns): the part of J q that
    ``jacobian_h_columns`` leaves out (an LSTM's; nothing for other cells, whose qc has
    no rows)."""
    for u in range(qc.shape[0]):
        for j in range(qc.shape[1]):
            qh_out[u, j] += lin[LIN_HC, u] * qc[u, j]
            qc_out[u, j] += lin[LIN_CC, u] * qc[u, j]
