"""Numba kernels over plain arrays: cell arithmetic, step functions, sequence passes.

The four step functions are public and callable from your own ``@njit`` code::

    rnn_tanh_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh, h_out)
    rnn_relu_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh, h_out)
    lstm_step(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh, h_out, c_out)
    gru_step(x, h, weight_ih, weight_hh, bias_ih, bias_hh, h_out)

Kernels trust their arguments; ``dynamics`` validates before calling them.
"""
from kernels.cells import gru_step, lstm_step, rnn_relu_step, rnn_tanh_step

__all__ = ["rnn_tanh_step", "rnn_relu_step", "lstm_step", "gru_step"]
