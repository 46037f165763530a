"""The non-recurrent half of a layer: matrix products over all steps at once (BLAS).

Input projections before the recurrence, and parameter and input gradients after the
backward recurrence, are each one (batched) matrix product over all T*B rows, so they
run at the machine's GEMM rate. They depend on BLAS alone, never on numba's thread
count. Same layout and assumptions as ``kernels.sequence``; ``x`` is either shared by
all members, (T, B, D), or member-major, (E, T, B, D).
"""
import numpy as np

from kernels.cells import GATES, GRU


def _rows(a):
    """View (E, T, B, k) as (E, T*B, k) without copying (raises if that is impossible)."""
    return np.reshape(a, (a.shape[0], a.shape[1] * a.shape[2], a.shape[3]), copy=False)


def _input_rows(x):
    if x.ndim == 3:
        return np.reshape(x, (x.shape[0] * x.shape[1], x.shape[2]), copy=False)
    return _rows(x)


def hidden_gradient_blocks(cell, hidden_size):
    """Pairs (rows of W_hh, columns of the backward's ``p``) holding dL/d(W_hh h + b_hh).

    They are the columns of dL/d(W_ih x + b_ih), except GRU's candidate gate n, whose
    hidden part is scaled by the reset gate and kept in columns 3H:4H.
    """
    H = hidden_size
    if cell == GRU:
        return [(slice(0, 2 * H), slice(0, 2 * H)), (slice(2 * H, 3 * H), slice(3 * H, 4 * H))]
    return [(slice(0, GATES[cell] * H), slice(0, GATES[cell] * H))]


@np.errstate(over="ignore", invalid="ignore")  # inf/nan are data, flagged downstream
def project_inputs(x, weight_ih, bias_ih, p):
    """p[..., :G*H] = x W_ih^T + b_ih for every member, step and batch element."""
    n_rows = weight_ih.shape[1]
    out = _rows(p[..., :n_rows])
    np.matmul(_input_rows(x), weight_ih.transpose(0, 2, 1), out=out)
    out += bias_ih[:, None, :]


@np.errstate(over="ignore", invalid="ignore")
def parameter_and_input_gradients(cell, reverse, x, p, hs, h0, weight_ih, grad_x_accumulate,
                                  grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh,
                                  grad_x_fresh=False):
    """Fill parameter gradients from the pre-activation gradients left in ``p``.

    ``grad_x_accumulate`` (shape of ``x``) receives dL/dx added to what it holds; with
    ``grad_x_fresh`` it holds zeros and is written directly (the same bits, without a
    temporary as large as x).
    """
    n_steps, n_units = p.shape[1], hs.shape[3]
    n_rows = weight_ih.shape[1]
    d_in = _rows(p[..., :n_rows])
    x_rows = _input_rows(x)
    np.matmul(d_in.transpose(0, 2, 1), x_rows, out=grad_weight_ih)
    np.sum(d_in, axis=1, out=grad_bias_ih)
    if x.ndim == 3:
        grad_x_rows = grad_x_accumulate.reshape(x_rows.shape)
        for e in range(p.shape[0]):
            if grad_x_fresh and e == 0:
                np.matmul(d_in[e], weight_ih[e], out=grad_x_rows)
            else:
                grad_x_rows += d_in[e] @ weight_ih[e]
    elif grad_x_fresh:
        np.matmul(d_in, weight_ih, out=_rows(grad_x_accumulate))
    else:
        _rows(grad_x_accumulate)[...] += np.matmul(d_in, weight_ih)
    if reverse:
        later, earlier, first = p[:, :-1], hs[:, 1:], n_steps - 1
    else:
        later, earlier, first = p[:, 1:], hs[:, :-1], 0
    for w_rows, p_cols in hidden_gradient_blocks(cell, n_units):
        d_hid = _rows(later[..., p_cols])
        grad = np.matmul(d_hid.transpose(0, 2, 1), _rows(earlier))
        grad += np.matmul(p[:, first, :, p_cols].transpose(0, 2, 1), h0)
        grad_weight_hh[:, w_rows] = grad
        grad_bias_hh[:, w_rows] = np.sum(_rows(p[..., p_cols]), axis=1)
