"""Numba kernels over plain arrays: cell arithmetic, step functions, sequence passes.

The four step functions are public and callable from your own ``@njit`` code::

    rnn_tanh_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh, h_out)
    rnn_relu_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh, h_out)
    lstm_step(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh, h_out, c_out)
    gru_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh, h_out)

and so is the linearised step (``kernels.jacobians``), with ``cell`` a code of
``CELL_CODES`` and ``lin`` a (``LIN_ROWS``, H) array::

    step_linearisation(cell, x, h, c, weight_ih, weight_hh, bias_ih, bias_hh, h_out, c_out, lin)
    state_jacobian(lin, w_hh, jac)                              # J = d s_t / d s_(t-1)
    state_jvp(lin, w_hh, qh, qc, qh_out, qc_out)                # J q
    state_vjp(lin, w_hh, lh, lc, lh_out, lc_out)                # l J

(``cell_linearisation`` does the same from what ``dynamics.forward`` saved: the gate
row ``result.tapes[0].p[e, t, b]`` of an LSTM or GRU, or the states alone of a vanilla
RNN.)

Two products that any ``@njit`` code can use too keep their partial sums in vector
registers (``kernels.registers``) and add in a fixed order, each term one fused
multiply-add where the CPU has it: the bits of a plain loop of
``kernels.registers.multiply_add``.
Like the step functions they trust their arguments: one float dtype, ``rows`` (k, m),
``coefficients`` (k,), ``out`` (m,); ``a`` (n, k), ``b`` (k, m), ``out`` (n, m); ``out``
must not overlap any input (``h += h @ w`` in place reads values already updated)::

    kernels.cells.accumulate_rows(rows, coefficients, out)   # out += coefficients @ rows
    kernels.cells.add_product(a, b, out)                     # out += a @ b

and when one ``b`` serves many products (a weight matrix, step after step), pack it once
into contiguous panels of columns and reuse it (the same bits)::

    packed = kernels.cells.pack_panels(b, kernels.cells.panel_width(out))
    kernels.cells.add_packed_product(a, packed, out)         # out += a @ b

Weights and states that a loop reads at every step are best allocated on a cache line
(``kernels.memory.aligned_empty``; NumPy's arrays may start 16 bytes into one, and a
small network's step is then 15-25 % slower).

The per-unit arithmetic of each cell (``kernels.cells.lstm_unit``, ``gru_unit`` and their
backward and linearised forms) is shared by the CPU kernels and the GPU kernels of
``kernels.cuda_sequence`` and ``kernels.cuda_tangents``, which are not imported here:
only ``backend="cuda"`` loads them (``kernels.cuda_api`` holds the one CUDA import).

Kernels trust their arguments; ``dynamics`` and ``analysis`` validate before calling them.
"""
from kernels.cells import (CELL_CODES, LIN_ROWS, cell_linearisation, gru_step, lstm_step,
                           rnn_relu_step, rnn_tanh_step, step_linearisation)
from kernels.jacobians import state_jacobian, state_jvp, state_vjp

__all__ = ["rnn_tanh_step", "rnn_relu_step", "lstm_step", "gru_step", "step_linearisation",
           "cell_linearisation", "CELL_CODES", "LIN_ROWS", "state_jacobian", "state_jvp",
           "state_vjp"]
