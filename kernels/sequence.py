"""Sequence forward and backward (BPTT) of one layer-direction, for ensembles.

Arrays are member-major: ``p`` (E, T, B, W), states ``hs``/``cs`` (E, T, B, H). One
work item is one sequence (member e, batch element b); items run in parallel
(``prange``) and each walks through time on its own, so its member's recurrent weights
stay in cache for all T steps and no floating-point sum is ever split across threads:
results are bitwise identical for any number of threads.

The non-recurrent work (input projections, parameter and input gradients) is matrix
products over all steps at once, done by BLAS in ``kernels.projections``.

What the kernels assume (checked by ``dynamics``, not here): every array C-contiguous
and of one float dtype; ``p`` (E, T, B, saved_width), ``w_hh_t`` (E, H, G*H) = W_hh
transposed, ``w_hh`` (E, G*H, H), ``b_hh`` (E, G*H), ``h0`` (E, B, H), ``hs`` (E, T, B, H);
for LSTM ``c0`` (E, B, H) and ``cs`` (E, T, B, H), for the other cells zero-width
arrays (E, B, 0) and (E, T, B, 0). ``reverse`` walks from t = T-1 down to 0 (the
reverse direction of a bidirectional layer); states are always stored at their real
time index.
"""
import numpy as np
from numba import prange

from kernels._jit import jit
from kernels.cells import cell_backward, cell_forward, recurrent_matvec, transposed_matvec


@jit
def time_index(step, n_steps, reverse):
    """Real time index of processing step ``step``."""
    return n_steps - 1 - step if reverse else step


@jit(parallel=True)
def sequence_forward(cell, reverse, p, w_hh_t, b_hh, h0, c0, hs, cs):
    """Run ``cell`` over the sequence: fills ``hs`` (and ``cs``), turns ``p`` into saved values.

    On entry ``p[..., :G*H]`` holds W_ih x_t + b_ih for every step.
    """
    n_members, n_steps, batch, _ = p.shape
    for item in prange(n_members * batch):
        e = item // batch
        b = item - e * batch
        ph = np.empty(w_hh_t.shape[2], p.dtype)
        h_prev = h0[e, b]
        c_prev = c0[e, b]
        for s in range(n_steps):
            t = time_index(s, n_steps, reverse)
            recurrent_matvec(w_hh_t[e], h_prev, b_hh[e], ph)
            cell_forward(cell, p[e, t, b], ph, h_prev, c_prev, hs[e, t, b], cs[e, t, b])
            h_prev = hs[e, t, b]
            c_prev = cs[e, t, b]


@jit(parallel=True)
def sequence_backward(cell, reverse, truncation, p, w_hh, h0, c0, hs, cs, grad_hs, dh0, dc0):
    """Backpropagate through time; the adjoint recurrence of ``sequence_forward``.

    ``grad_hs`` (E, T, B, H) is dL/dh_t arriving from outside at every step. On entry
    ``dh0``/``dc0`` hold dL/dh_T, dL/dc_T of the final state; on exit dL/dh0, dL/dc0.
    ``p`` must hold what the forward pass saved; on exit it holds the gradients of the
    pre-activations (see ``kernels.cells``). With ``truncation = k > 0`` the gradient
    carried to the previous state is dropped at the start of every chunk of k
    processing steps (the forward state still crossed the boundary), so dL/dh0 only
    collects from the first chunk.
    """
    n_members, n_steps, batch, _ = p.shape
    n_units = hs.shape[3]
    for item in prange(n_members * batch):
        e = item // batch
        b = item - e * batch
        dh = dh0[e, b].copy()
        dc = dc0[e, b].copy()
        dph = np.empty(w_hh.shape[1], p.dtype)
        dh_prev = np.empty(n_units, p.dtype)
        for s in range(n_steps - 1, -1, -1):
            t = time_index(s, n_steps, reverse)
            if s > 0:
                t_prev = time_index(s - 1, n_steps, reverse)
                h_prev = hs[e, t_prev, b]
                c_prev = cs[e, t_prev, b]
            else:
                h_prev = h0[e, b]
                c_prev = c0[e, b]
            for u in range(n_units):
                dh[u] += grad_hs[e, t, b, u]
            cell_backward(cell, p[e, t, b], dh, dc, h_prev, c_prev, hs[e, t, b], cs[e, t, b],
                          dph, dh_prev)
            if truncation > 0 and s > 0 and s % truncation == 0:
                dh[:] = 0.0
                dc[:] = 0.0
            else:
                transposed_matvec(w_hh[e], dph, dh_prev)
                dh[:] = dh_prev
        dh0[e, b] = dh
        dc0[e, b] = dc
