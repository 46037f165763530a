"""One layer-direction on the CPU: allocate, launch the kernels, keep the tape.

Everything here works on validated, member-major arrays (see ``kernels.sequence``);
``dynamics.propagation`` converts from and to the user's time-major layout.
"""
import functools
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from kernels.cells import (GRU, LSTM, pack_column_blocks, pack_member_panels, panel_width,
                           saved_width)
from kernels.memory import aligned_copy, aligned_empty
from kernels.projections import parameter_and_input_gradients, project_inputs
from kernels.sequence import (sequence_backward, sequence_backward_gemm, sequence_forward,
                              sequence_forward_gemm)

#: The batched recurrence (blocks of batch rows, one product per step) is used when one
#: member's W_hh is at least this large (it no longer stays in a core's L1 across steps)
#: and the batch at least ``GEMM_MIN_BATCH``; below, each sequence walks through time on
#: its own with its weights in cache. The choice depends on shapes only, never on the
#: thread count, so results stay bitwise reproducible.
#: Tuned on a 2-core Zen 5 (48 KiB L1, 1 MiB L2 per core), B = 32: the walk wins for a
#: 16 KiB W_hh (tanh RNN, H = 64), the batched path from 64 KiB (tanh H = 128, LSTM
#: H = 64). (With the register-blocked product of ``kernels.cells`` the batched path is
#: about as fast below 64 KiB too, but the walk of a vanilla RNN saves nothing per step.)
GEMM_MIN_WEIGHT_BYTES = 64 << 10
GEMM_MIN_BATCH = 8
#: The batched recurrence computes each step's input projection in the step when the
#: input has at most this many features (``kernels.sequence.sequence_forward_gemm``),
#: else all of them in one product beforehand (same bits). Forward of float32 LSTMs,
#: H = 128, B = 32, T = 200, ensembles of 8, beforehand / in the step: D = 2 28.8 /
#: 27.3 ms, D = 32 32.4 / 31.6, D = 128 43.0 / 44.7 (and H = D = 64, one network: 2.41 /
#: 2.69): the weights of many inputs read every step cost more than a pass over p.
PROJECT_IN_STEP_INPUTS = 32
#: Batch rows per work item of the batched recurrence: ``GEMM_ROWS`` in float32, twice
#: as many in float64 where that still leaves ``GEMM_MIN_ITEMS`` items (see
#: ``gemm_rows``). Any blocking gives the same bits.
GEMM_ROWS = 16
GEMM_MIN_ITEMS = 8


def gemm_rows(dtype, n_members, batch):
    """Batch rows per work item of the batched recurrence, from shapes alone.

    A float64 panel of weight columns is half as wide as a float32 one
    (``kernels.cells.panel_width``), so a block of twice the rows reads each panel from
    cache as often per multiply-add. Measured on a 2-core Zen 3 (AVX2), training
    ensembles of 8 networks (H = 128, B = 32, T = 200), ms per step with 16 / 32 rows:
    float64 IRNN 142-147 / 104-110, float64 LSTM 541-724 / 476-494; float32 IRNN
    72-84 / 69-80, float32 LSTM 218-268 / 260-312.

    >>> gemm_rows(np.float64, 8, 32), gemm_rows(np.float64, 1, 32), gemm_rows(np.float32, 8, 32)
    (32, 16, 16)
    """
    wide = 2 * GEMM_ROWS
    if np.dtype(dtype).itemsize == 8 and n_members * -(-batch // wide) >= GEMM_MIN_ITEMS:
        return wide
    return GEMM_ROWS


def recurrence_kernels(weight_hh, batch):
    """(forward, backward) sequence kernels suited to this weight size and batch."""
    weight_bytes = weight_hh[0].nbytes
    if weight_bytes >= GEMM_MIN_WEIGHT_BYTES and batch >= GEMM_MIN_BATCH:
        return sequence_forward_gemm, sequence_backward_gemm
    return sequence_forward, sequence_backward


@functools.lru_cache(maxsize=None)
def _blas_controller():
    import scipy.linalg.cython_blas  # noqa: F401 -- the BLAS that numba's np.dot calls
    return ThreadpoolController()


def single_threaded_blas():
    """A context in which every loaded BLAS (NumPy's, and SciPy's that numba's np.dot
    calls) runs on the calling thread only.

    Needed around numba-parallel kernels: a multi-threaded OpenBLAS called from inside
    numba's OpenMP workers corrupts its results ("Detect OpenMP Loop"), and BLAS's own
    threads, still spinning after a product, fight numba's for the cores (measured:
    8 ms instead of 0.14 ms for a small LSTM on 2 cores). So every product of a layer
    runs inside numba's items on single-threaded BLAS (``kernels.projections``), and no
    BLAS thread pool ever runs beside numba's.
    """
    return _blas_controller().limit(limits=1, user_api="blas")


def member_major(parameter, dtype, ensemble_size):
    """A parameter as a C-contiguous (E, ...) array in ``dtype`` (E = 1 for one network)."""
    parameter = np.asarray(parameter, dtype=dtype)
    return np.ascontiguousarray(parameter if ensemble_size else parameter[None])


@dataclass
class LayerTape:
    """What one layer-direction's forward pass leaves for its backward pass."""

    cell: object
    reverse: bool
    x: np.ndarray        # (T, B, D) shared by all members, or (E, T, B, D)
    weight_ih: np.ndarray
    weight_hh: np.ndarray
    bias_hh: np.ndarray
    h0: np.ndarray       # (E, B, H)
    c0: np.ndarray       # (E, B, H) for LSTM, (E, B, 0) otherwise
    p: np.ndarray        # (E, T, B, saved width); T = 0 where nothing is saved
    hs: np.ndarray       # (E, T, B, H)
    cs: np.ndarray       # (E, T, B, H) for LSTM, (E, T, B, 0) otherwise

    @property
    def h_n(self):
        """The state after the last processed step (h0 when T = 0)."""
        return self._final(self.hs, self.h0)

    @property
    def c_n(self):
        return self._final(self.cs, self.c0)

    def _final(self, states, initial):
        if states.shape[1] == 0:
            return initial
        return self.index(states, np.s_[:, 0 if self.reverse else -1])

    #: ``index(array, index)``: array[index] (``dynamics.gpu`` indexes device arrays)
    index = staticmethod(lambda array, index: array[index])


def member_major_parameters(cell, dtype):
    """(W_ih, b_ih, W_hh, b_hh) as C-contiguous (E, ...) arrays in ``dtype``; zero
    biases for a cell without them."""
    E = cell.ensemble_size
    weight_ih, weight_hh = (member_major(w, dtype, E) for w in (cell.weight_ih, cell.weight_hh))
    if cell.bias:
        bias_ih, bias_hh = (member_major(b, dtype, E) for b in (cell.bias_ih, cell.bias_hh))
    else:
        bias_ih = bias_hh = np.zeros(weight_hh.shape[:2], dtype)
    return weight_ih, bias_ih, weight_hh, bias_hh


def layer_forward(cell, x, h0, c0, reverse):
    """Run ``cell`` over ``x``; ``h0``/``c0`` are (E, B, H) in the run's dtype."""
    dtype = h0.dtype
    n_members, batch, hidden = h0.shape
    n_steps = x.shape[-3]
    weight_ih, bias_ih, weight_hh, bias_hh = member_major_parameters(cell, dtype)
    cell_width = hidden if cell.code == LSTM else 0
    hs = aligned_empty((n_members, n_steps, batch, hidden), dtype)
    cs = aligned_empty((n_members, n_steps, batch, cell_width), dtype)
    run_forward, _ = recurrence_kernels(weight_hh, batch)
    batched = run_forward is sequence_forward_gemm
    keep = batched or cell.code in (LSTM, GRU)  # a vanilla RNN's walk saves nothing
    p = aligned_empty((n_members, n_steps if keep else 0, batch,
                       saved_width(cell.code, hidden)), dtype)
    if n_steps and batched:  # the weights transposed and packed for the products
        width = panel_width(hs)
        packed_ih_t = pack_member_panels(weight_ih.transpose(0, 2, 1), width)
        in_step = x.shape[-1] <= PROJECT_IN_STEP_INPUTS
        with single_threaded_blas():
            if not in_step:
                project_inputs(x, packed_ih_t, weight_ih, bias_ih, p)
            run_forward(cell.code, reverse, x if x.ndim == 4 else x[None],
                        packed_ih_t if in_step else packed_ih_t[:, :0], bias_ih, p,
                        pack_member_panels(weight_hh.transpose(0, 2, 1), width), bias_hh, h0,
                        c0, hs, cs, gemm_rows(dtype, n_members, batch))
    elif n_steps:
        w_hh_t = pack_column_blocks(weight_hh.transpose(0, 2, 1))
        w_ih_t = aligned_copy(weight_ih.transpose(0, 2, 1))
        with single_threaded_blas():
            run_forward(cell.code, reverse, x if x.ndim == 4 else x[None], w_ih_t, bias_ih, p,
                        w_hh_t, bias_hh, h0, c0, hs, cs)
    return LayerTape(cell, reverse, x, weight_ih, weight_hh, bias_hh, h0, c0, p, hs, cs)


#: A vanilla RNN's walk saves nothing for its backward pass, which then needs a buffer
#: for dL/d(pre-activation) as large as the saved states: one group's buffer, for this
#: many groups of ensemble members in turn, rather than one for all at once. Members are
#: independent and every sum keeps its order, so the results are the same bits.
MEMBER_GROUPS = 4


def member_groups(n_members, n_groups):
    """Consecutive slices of at most ceil(n_members / n_groups) members."""
    size = -(-n_members // n_groups)
    return [slice(e, min(e + size, n_members)) for e in range(0, n_members, size)]


def layer_backward(tape, grad_hs, grad_time_major, grad_h_n, grad_c_n, truncation, grad_x,
                   grad_x_fresh=False):
    """Backpropagate through one layer-direction; consumes ``tape.p``.

    ``grad_hs`` is dL/dh_t from above, (T, E, B, H) if ``grad_time_major`` else
    (E, T, B, H), C-contiguous; ``grad_h_n``/``grad_c_n`` (E, B, H)
    the gradients of the final state. Adds dL/dx into ``grad_x`` (which holds zeros if
    ``grad_x_fresh``; None: no dL/dx) and returns (parameter gradients as (E, ...) arrays keyed by
    torch's names, dL/dh0, dL/dc0).
    """
    dh0 = np.array(grad_h_n, dtype=tape.h0.dtype, order="C")
    dc0 = np.array(grad_c_n, dtype=tape.h0.dtype, order="C")
    grads = {"weight_ih": np.zeros_like(tape.weight_ih),
             "weight_hh": np.zeros_like(tape.weight_hh),
             "bias_ih": np.zeros_like(tape.bias_hh),  # both biases are (E, G*H)
             "bias_hh": np.zeros_like(tape.bias_hh)}
    n_members, batch = tape.h0.shape[:2]
    _, run_backward = recurrence_kernels(tape.weight_hh, batch)
    if run_backward is sequence_backward_gemm:
        weight_hh = pack_member_panels(tape.weight_hh, panel_width(tape.weight_hh))
        blocks = (gemm_rows(tape.h0.dtype, n_members, batch),)
    else:
        weight_hh = pack_column_blocks(tape.weight_hh)
        blocks = ()
    nothing_saved = tape.p.shape[1] != tape.hs.shape[1]
    groups = member_groups(tape.hs.shape[0], MEMBER_GROUPS) if nothing_saved else [slice(None)]
    if nothing_saved:  # room for dL/d(pre-activation), one group's worth, reused
        group_p = np.empty(tape.hs[groups[0]].shape[:3] + tape.p.shape[3:], tape.p.dtype)
    for group, members in enumerate(groups if tape.hs.shape[1] else []):
        p = group_p[:members.stop - members.start] if nothing_saved else tape.p
        if tape.x.ndim == 3:  # x shared by the members: one dL/dx that all add into
            x, gx, fresh = tape.x, grad_x, grad_x_fresh and group == 0
        else:
            x, fresh = tape.x[members], grad_x_fresh
            gx = None if grad_x is None else grad_x[members]
        with single_threaded_blas():
            run_backward(tape.cell.code, tape.reverse, truncation, p, weight_hh[members],
                         tape.h0[members], tape.c0[members], tape.hs[members],
                         tape.cs[members], grad_hs, grad_time_major, members.start or 0,
                         dh0[members], dc0[members], *blocks)
            parameter_and_input_gradients(
                tape.cell.code, tape.reverse, x, p, tape.hs[members], tape.h0[members],
                tape.weight_ih[members], gx, *(grads[name][members] for name in
                                               ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
                grad_x_fresh=fresh)
    if not tape.cell.bias:
        del grads["bias_ih"], grads["bias_hh"]
    return grads, dh0, dc0


# The array operations ``dynamics.propagation`` needs around the layers, for this
# backend; ``dynamics.gpu`` has the same names for device arrays.

def to_device(array):
    """The CPU backend works on NumPy arrays as they are."""
    return array


to_host = to_device
zeros_like = np.zeros_like


def units(array, start, stop):
    """array[..., start:stop], C-contiguous."""
    return np.ascontiguousarray(array[..., start:stop])


def concatenate_units(arrays):
    """Arrays joined along their last axis (the directions of a layer)."""
    return np.concatenate(arrays, axis=-1)
