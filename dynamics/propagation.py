"""``forward`` and ``bptt`` over networks: validation, layout, and the layer loop.

Users see time-major arrays: ``x (T, B, D)`` (or ``(T, E, B, D)`` for an ensemble with
its own inputs), ``output (T, B, dirs*H)`` (``(T, E, B, dirs*H)`` for ensembles),
states ``(layers*dirs, B, H)`` (``(layers*dirs, E, B, H)``). Internally every layer runs
member-major; the conversions happen here and nowhere else.

Behaviour on unusual input: nan/inf in ``x`` or ``h0`` are data and propagate; T = 0
gives an empty output, ``h_n = h0``, zero parameter gradients and dL/dh0 = grad_h_n;
strided and read-only arrays are accepted (copied where the kernels need contiguity);
B = 0, wrong shapes and non-float dtypes are refused before any kernel runs. A run
takes ``x``'s dtype: weights, ``h0`` and ``grad_output`` are cast to it (a float64
network given float32 ``x`` runs in float32). An LSTM's ``h0=(h0, None)`` means c0 = 0.
"""
from dataclasses import dataclass, field

import numpy as np

from dynamics import layer
from dynamics.network import as_network
from dynamics.validation import check_choice, check_float_array, check_positive_int, check_shape

BACKENDS = ("cpu", "cuda")


@dataclass
class ForwardResult:
    """Result of ``dynamics.forward``: torch's ``output``, ``h_n`` and (LSTM) ``c_n``."""

    output: np.ndarray
    h_n: np.ndarray
    c_n: np.ndarray = None
    tapes: list = field(default=None, repr=False)
    backend: str = "cpu"


def _user_layout(array, ensemble):
    """Internal (E, T, B, k) -> user (T, B, k), or (T, E, B, k) for an ensemble (a view)."""
    return array.transpose(1, 0, 2, 3) if ensemble else array[0]


def check_input(net, x):
    """x as used internally: (T, B, D) shared, or member-major (E, T, B, D)."""
    x = check_float_array("x", x)
    D, E, given = net.input_size, net.ensemble_size, x.shape
    if E is not None and x.ndim == 4:
        check_shape("x", x, ("T", E, "B", D))
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3))
        batch = x.shape[2]
    else:
        check_shape("x", x, ("T", "B", D))
        x = np.ascontiguousarray(x)
        batch = x.shape[1]
    if batch == 0:
        raise ValueError(f"x must have a batch of at least 1, got shape {given}")
    return x, batch


def check_state(name, value, net, batch, dtype):
    """An initial state (or its gradient) as (layers*dirs, E, B, H) in ``dtype``."""
    n_states = net.num_layers * net.num_directions
    E, H = net.ensemble_size, net.hidden_size
    shape = (n_states, batch, H) if E is None else (n_states, E, batch, H)
    if value is None:
        return np.zeros((n_states, E or 1, batch, H), dtype)
    value = check_shape(name, check_float_array(name, value), shape)
    value = value.astype(dtype, copy=False)
    return np.ascontiguousarray(value[:, None] if E is None else value)


def check_states(net, h0, batch, dtype):
    lstm = net.kind == "lstm"
    if lstm and h0 is not None:
        if not (isinstance(h0, tuple) and len(h0) == 2):
            raise TypeError("h0 of an LSTM must be a tuple (h0, c0), as torch takes it")
        h0, c0 = h0
    else:
        if isinstance(h0, tuple):
            raise TypeError(f"h0 of a {net.kind} network must be an array, not a tuple")
        c0 = None
    h0 = check_state("h0", h0, net, batch, dtype)
    c0 = check_state("c0", c0, net, batch, dtype) if lstm else h0[..., :0]
    return h0, c0


def engine(backend):
    """The module that runs layers on ``backend``: ``dynamics.layer`` (cpu) or
    ``dynamics.gpu`` (cuda, imported only now; a clear error where no GPU is usable)."""
    check_choice("backend", backend, BACKENDS)
    if backend == "cpu":
        return layer
    from dynamics import gpu
    gpu.require_gpu()
    return gpu


def forward(model, x, h0=None, backend="cpu"):
    """Run ``model`` over the sequence ``x``; the result has ``x``'s dtype.

    Parameters
    ----------
    model : dynamics.RNN, LSTM, GRU or Network
    x : (T, B, D) array, or (T, E, B, D) for an ensemble whose members have own inputs
    h0 : (layers*dirs, B, H) array (with E after the first axis for ensembles);
        for LSTM a tuple (h0, c0). Zeros if omitted.
    backend : "cpu", or "cuda" for an NVIDIA GPU (``dynamics.gpu``): the run and its
        tape stay on the GPU; the result's arrays are NumPy arrays

    Returns
    -------
    ForwardResult with ``output``, ``h_n`` and, for LSTM, ``c_n``.

    Examples
    --------
    >>> import numpy as np, dynamics
    >>> lstm = dynamics.LSTM.init(3, 5, seed=1)
    >>> r = dynamics.forward(lstm, np.ones((7, 2, 3)))
    >>> r.output.shape, r.h_n.shape, r.c_n.shape
    ((7, 2, 5), (1, 2, 5), (1, 2, 5))
    """
    run = engine(backend)
    net = as_network(model)
    x, batch = check_input(net, x)
    h0, c0 = (run.to_device(state) for state in check_states(net, h0, batch, x.dtype))
    tapes, layer_input = [], run.to_device(x)
    for suffix, l, d, cell in net.named_cells():
        k = l * net.num_directions + d
        tapes.append(run.layer_forward(cell, layer_input, h0[k], c0[k], reverse=bool(d)))
        if d == net.num_directions - 1:
            outputs = [tape.hs for tape in tapes[-net.num_directions:]]
            layer_input = outputs[0] if len(outputs) == 1 else run.concatenate_units(outputs)
    ensemble = net.ensemble_size is not None
    h_n = np.stack([run.to_host(tape.h_n) for tape in tapes])
    c_n = np.stack([run.to_host(tape.c_n) for tape in tapes]) if net.kind == "lstm" else None
    squeeze = (lambda a: a) if ensemble else (lambda a: a[:, 0])
    return ForwardResult(_user_layout(run.to_host(layer_input), ensemble), squeeze(h_n),
                         None if c_n is None else squeeze(c_n), tapes, backend)


def bptt(model, x, grad_output, h0=None, truncation=None, backend="cpu", grad_h_n=None,
         grad_c_n=None, input_gradient=True):
    """Gradients of ``L = sum(grad_output * output) [+ sum(grad_h_n * h_n) + ...]``.

    Parameters
    ----------
    model, x, h0, backend : as for ``forward``
    grad_output : array of the shape of ``forward(model, x).output``
    truncation : None for full BPTT, or k >= 1: gradients flow only within consecutive
        chunks of k steps (in each direction's processing order) while the forward
        state carries across chunks; k >= T equals full BPTT
    grad_h_n, grad_c_n : optional gradients of the final states (shape of ``h_n``)
    input_gradient : False leaves out dL/dx (no ``"x"`` key), as torch does for an
        input that does not require grad: one matrix product over all steps less
        (training on data needs none)

    Returns
    -------
    dict keyed by torch's parameter names (``weight_ih_l0``, ``bias_hh_l1_reverse``...)
    plus ``"x"``, ``"h0"`` (and ``"c0"`` for LSTM), each shaped like what it is the
    gradient of (h0/c0 as torch's state shape, also when h0 was omitted).

    Examples
    --------
    >>> import numpy as np, dynamics
    >>> rnn = dynamics.RNN.init(2, 4, seed=0)
    >>> x = np.random.default_rng(0).normal(size=(10, 3, 2))
    >>> g = dynamics.bptt(rnn, x, np.ones((10, 3, 4)), truncation=5)
    >>> sorted(g)
    ['bias_hh_l0', 'bias_ih_l0', 'h0', 'weight_hh_l0', 'weight_ih_l0', 'x']
    """
    return backward(model, forward(model, x, h0, backend), grad_output, truncation,
                    grad_h_n, grad_c_n, input_gradient)


def backward(model, result, grad_output, truncation=None, grad_h_n=None, grad_c_n=None,
             input_gradient=True):
    """``bptt`` from a ``forward`` result: the gradients of ``L = sum(grad_output *
    result.output) [+ sum(grad_h_n * h_n) + ...]``, same arguments and returns.

    For loops that need the output before they know ``grad_output`` (training: the loss
    gradient comes from the output). The backward pass consumes what the forward pass
    kept, so each result can be backpropagated once.

    >>> import numpy as np, dynamics
    >>> gru = dynamics.GRU.init(2, 3, seed=0)
    >>> x = np.ones((4, 1, 2))
    >>> result = dynamics.forward(gru, x)
    >>> g = dynamics.backward(gru, result, 2 * result.output)   # L = sum(output ** 2)
    >>> bool(np.allclose(g["x"], dynamics.bptt(gru, x, 2 * result.output)["x"]))
    True
    """
    if not isinstance(result, ForwardResult):
        raise TypeError(f"result must be the ForwardResult of dynamics.forward, got "
                        f"{type(result).__name__}")
    if result.tapes is None:
        raise ValueError("this ForwardResult was already backpropagated; run forward again")
    run = engine(result.backend)
    if truncation is not None:
        truncation = check_positive_int("truncation", truncation)
    if not isinstance(input_gradient, (bool, np.bool_)):
        raise TypeError(f"input_gradient must be True or False, got {input_gradient!r}")
    net = as_network(model)
    if [tape.cell for tape in result.tapes] != [cell for *_, cell in net.named_cells()]:
        raise ValueError("result must come from dynamics.forward of this same model")
    ensemble = net.ensemble_size is not None
    dtype = result.output.dtype
    grad_output = check_shape("grad_output", check_float_array("grad_output", grad_output),
                              result.output.shape).astype(dtype, copy=False)
    batch = result.output.shape[-2]
    grad_h = check_state("grad_h_n", grad_h_n, net, batch, dtype)
    if net.kind == "lstm":
        grad_c = check_state("grad_c_n", grad_c_n, net, batch, dtype)
    elif grad_c_n is not None:
        raise ValueError(f"grad_c_n is only for LSTM networks, not {net.kind}")
    else:
        grad_c = grad_h[..., :0]
    # The top layer reads grad_output in the user's time-major layout, uncopied when
    # contiguous; layers below get dL/dx member-major, as their inputs are.
    grad_above = run.to_device(grad_output if ensemble else grad_output[:, None])
    time_major = True
    H, dirs = net.hidden_size, net.num_directions
    n_steps = result.output.shape[0]
    chunk = truncation if truncation is not None and truncation < n_steps else 0  # 0: full
    grads, grad_h0, grad_c0 = {}, np.zeros_like(grad_h), np.zeros_like(grad_c)
    for l in reversed(range(net.num_layers)):
        layer_x = result.tapes[l * dirs].x
        # T = 0 leaves it untouched: zeros
        grad_x = run.zeros_like(layer_x) if input_gradient or l > 0 else None
        for d in range(dirs):
            k = l * dirs + d
            grad_hs = grad_above if dirs == 1 else run.units(grad_above, d * H, (d + 1) * H)
            cell_grads, dh0, dc0 = run.layer_backward(
                result.tapes[k], grad_hs, time_major, grad_h[k], grad_c[k], chunk, grad_x,
                grad_x_fresh=d == 0)
            grad_h0[k], grad_c0[k] = run.to_host(dh0), run.to_host(dc0)
            for name, value in cell_grads.items():
                value = run.to_host(value)
                grads[name + net.suffix(l, d)] = value if ensemble else value[0]
        grad_above, time_major = grad_x, False
    result.tapes = None  # the backward pass overwrote the saved pre-activations
    if input_gradient:
        grad_above = run.to_host(grad_above)
        if layer_x.ndim == 4:
            grads["x"] = grad_above.transpose(1, 0, 2, 3) if ensemble else grad_above[0]
        else:
            grads["x"] = grad_above
    grads["h0"] = grad_h0 if ensemble else grad_h0[:, 0]
    if net.kind == "lstm":
        grads["c0"] = grad_c0 if ensemble else grad_c0[:, 0]
    return grads
