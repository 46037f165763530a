"""Plain NumPy float64 reference implementation: the oracle every test compares against.

Written independently of ``kernels`` and ``dynamics``, for readability rather than speed,
with PyTorch's formulas, layout and gate order:

- RNN:  h' = phi(W_ih x + b_ih + W_hh h + b_hh), phi = tanh or relu
- LSTM: gates i, f, g, o (rows 0:H, H:2H, 2H:3H, 3H:4H);
        c' = f * c + i * g,  h' = o * tanh(c')
- GRU:  gates r, z, n;  n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),
        h' = (1 - z) * n + z * h

Public names (kept stable; other test files import them):

- ``KINDS``, ``GATES``
- ``cell_step(kind, x, h, c, weight_ih, weight_hh, bias_ih, bias_hh) -> (h', c')``
- ``run_direction(kind, params, x, h0, c0, reverse) -> (hs, h_n, c_n)``
- ``forward(params_by_layer, kind, x, h0, c0, bidirectional) -> (output, h_n, c_n)``
- ``preactivations(params_by_layer, kind, x, h0, c0, bidirectional)``: every step's
  W_ih x + b_ih + W_hh h + b_hh (to keep finite differences away from relu's kink)
- ``params_from_network(net)``: a ``dynamics.Network``'s parameters as ``params_by_layer``
- ``central_difference(f, array, eps=1e-6)``
- ``relative_error(got, expected)``

>>> import numpy as np
>>> p = {"weight_ih": np.zeros((4, 1)), "weight_hh": np.zeros((4, 1)),
...      "bias_ih": np.zeros(4), "bias_hh": np.zeros(4)}
>>> out, h_n, c_n = forward([[p]], "lstm", np.zeros((3, 2, 1)), None, None, False)
>>> out.shape, h_n.shape, c_n.shape
((3, 2, 1), (1, 2, 1), (1, 2, 1))
>>> central_difference(lambda a: float((a ** 2).sum()), np.array([1.0, -2.0])).round(6)
array([ 2., -4.])
"""
import numpy as np

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}


def sigmoid(a):
    """1 / (1 + exp(-a)) in float64 (overflow of exp gives exactly 0, as it should)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-a))


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def cell_step(kind, x, h, c, weight_ih, weight_hh, bias_ih, bias_hh):
    """One step of a cell, in float64.

    ``x`` is (D,) or (B, D), ``h`` and ``c`` (H,) or (B, H); ``c`` is ignored (may be
    None) except for LSTM; ``bias_ih``/``bias_hh`` may be None (no bias). Returns
    ``(h_new, c_new)``, with ``c_new`` None for the cells without a cell state.
    """
    x, h, c = _f64(x), _f64(h), _f64(c)
    weight_ih, weight_hh = _f64(weight_ih), _f64(weight_hh)
    rows = weight_hh.shape[0]
    bias_ih = np.zeros(rows) if bias_ih is None else _f64(bias_ih)
    bias_hh = np.zeros(rows) if bias_hh is None else _f64(bias_hh)
    gi = x @ weight_ih.T + bias_ih      # input part of every gate, (..., G*H)
    gh = h @ weight_hh.T + bias_hh      # hidden part of every gate, (..., G*H)
    H = weight_hh.shape[1]
    if kind == "rnn_tanh":
        return np.tanh(gi + gh), None
    if kind == "rnn_relu":
        return np.maximum(gi + gh, 0.0), None
    if kind == "lstm":
        a = gi + gh
        i = sigmoid(a[..., 0:H])
        f = sigmoid(a[..., H:2 * H])
        g = np.tanh(a[..., 2 * H:3 * H])
        o = sigmoid(a[..., 3 * H:4 * H])
        c_new = f * c + i * g
        return o * np.tanh(c_new), c_new
    if kind == "gru":
        r = sigmoid(gi[..., 0:H] + gh[..., 0:H])
        z = sigmoid(gi[..., H:2 * H] + gh[..., H:2 * H])
        n = np.tanh(gi[..., 2 * H:3 * H] + r * gh[..., 2 * H:3 * H])
        return (1.0 - z) * n + z * h, None
    raise ValueError(f"unknown kind {kind!r}")


def run_direction(kind, params, x, h0, c0, reverse=False):
    """Run one cell over ``x`` (T, B, D) from ``h0``/``c0`` (B, H), in float64.

    ``params`` is a dict with ``weight_ih``, ``weight_hh`` and optionally ``bias_ih``,
    ``bias_hh``. Returns ``(hs (T, B, H), h_n (B, H), c_n (B, H) or None)``; states are
    stored at their real time index also when ``reverse`` walks from T-1 down to 0.
    """
    x = _f64(x)
    T, B = x.shape[0], x.shape[1]
    H = np.shape(params["weight_hh"])[1]
    h = np.zeros((B, H)) if h0 is None else _f64(h0).copy()
    c = np.zeros((B, H)) if c0 is None else _f64(c0).copy()
    hs = np.zeros((T, B, H))
    for t in (reversed(range(T)) if reverse else range(T)):
        h, c_new = cell_step(kind, x[t], h, c, params["weight_ih"], params["weight_hh"],
                             params.get("bias_ih"), params.get("bias_hh"))
        if c_new is not None:
            c = c_new
        hs[t] = h
    return hs, h, (c if kind == "lstm" else None)


def forward(params_by_layer, kind, x, h0, c0, bidirectional):
    """A stacked (optionally bidirectional) network, as ``torch.nn.RNN/LSTM/GRU``.

    ``params_by_layer[l][d]`` is the parameter dict of layer ``l``, direction ``d``
    (0 forward, 1 reverse); ``x`` is time-major (T, B, D); ``h0``/``c0`` are
    (layers*dirs, B, H) or None (zeros). Layer l > 0 takes the concatenation of layer
    l-1's directions. Returns ``(output (T, B, dirs*H), h_n, c_n)`` in float64, with
    ``c_n`` None except for LSTM.
    """
    dirs = 2 if bidirectional else 1
    layer_input = _f64(x)
    h_n, c_n = [], []
    for l, layer in enumerate(params_by_layer):
        if len(layer) != dirs:
            raise ValueError(f"layer {l} has {len(layer)} directions, expected {dirs}")
        outputs = []
        for d, params in enumerate(layer):
            k = l * dirs + d
            hs, h, c = run_direction(kind, params, layer_input,
                                     None if h0 is None else h0[k],
                                     None if c0 is None else c0[k], reverse=bool(d))
            outputs.append(hs)
            h_n.append(h)
            c_n.append(c)
        layer_input = np.concatenate(outputs, axis=-1)
    return layer_input, np.stack(h_n), (np.stack(c_n) if kind == "lstm" else None)


def preactivations(params_by_layer, kind, x, h0, c0, bidirectional):
    """W_ih x_t + b_ih + W_hh h_{t-1} + b_hh, (T, B, G*H), for every layer-direction.

    A list in torch's order (layer 0 forward, layer 0 reverse, layer 1 ...). For relu
    networks, ``min(abs(a).min() for a in ...)`` is the distance to the kink.
    """
    dirs = 2 if bidirectional else 1
    layer_input = _f64(x)
    result = []
    for l, layer in enumerate(params_by_layer):
        outputs = []
        for d, params in enumerate(layer):
            k = l * dirs + d
            rows = np.shape(params["weight_hh"])[0]
            b_ih = params.get("bias_ih")
            b_hh = params.get("bias_hh")
            b = (np.zeros(rows) if b_ih is None else _f64(b_ih)) + \
                (np.zeros(rows) if b_hh is None else _f64(b_hh))
            hs, _, _ = run_direction(kind, params, layer_input,
                                     None if h0 is None else h0[k],
                                     None if c0 is None else c0[k], reverse=bool(d))
            T, B = layer_input.shape[:2]
            H = hs.shape[-1]
            start = np.zeros((B, H)) if h0 is None else _f64(h0[k])
            if d:   # the state before step t is h_{t+1} (h0 before t = T-1)
                previous = np.concatenate([hs[1:], start[None]], axis=0)
            else:
                previous = np.concatenate([start[None], hs[:-1]], axis=0)
            a = (layer_input @ _f64(params["weight_ih"]).T
                 + previous[:T] @ _f64(params["weight_hh"]).T + b)
            result.append(a)
            outputs.append(hs)
        layer_input = np.concatenate(outputs, axis=-1)
    return result


def params_from_network(net):
    """``params_by_layer`` (float64 copies) of a ``dynamics.Network`` or single cell."""
    layers = getattr(net, "layers", None)
    if layers is None:
        layers = [[net]]
    return [[{name: np.array(value, dtype=np.float64)
              for name, value in cell.parameters().items()} for cell in layer]
            for layer in layers]


def central_difference(f, array, eps=1e-6):
    """Gradient of the scalar function ``f()`` / ``f(array)`` w.r.t. every entry of ``array``.

    ``array`` is perturbed in place (entry by entry, by +-eps, and restored exactly), so
    ``f`` may read it through a closure; ``f`` is called with ``array`` as its only
    argument if it accepts one. Returns a float64 array of ``array``'s shape:
    (f(a + eps e_i) - f(a - eps e_i)) / (2 eps).
    """
    if not isinstance(array, np.ndarray) or not array.flags.writeable:
        raise TypeError("central_difference needs a writeable ndarray to perturb in place")
    try:
        import inspect
        takes_arg = len(inspect.signature(f).parameters) >= 1
    except (TypeError, ValueError):
        takes_arg = True
    call = (lambda: float(f(array))) if takes_arg else (lambda: float(f()))
    grad = np.zeros(array.shape, dtype=np.float64)
    flat = array.reshape(-1)  # a view: the array is contiguous or reshape would copy
    if not np.shares_memory(flat, array) and array.size:
        raise ValueError("central_difference needs a contiguous array")
    for i in range(array.size):
        original = flat[i]
        flat[i] = original + eps
        plus = call()
        flat[i] = original - eps
        minus = call()
        flat[i] = original
        grad.reshape(-1)[i] = (plus - minus) / (2.0 * eps)
    return grad


def relative_error(got, expected, tiny=1e-300):
    """max|got - expected| / max(max|expected|, tiny); 0 for empty arrays."""
    got, expected = _f64(got), _f64(expected)
    if got.shape != expected.shape:
        raise ValueError(f"shapes differ: {got.shape} vs {expected.shape}")
    if expected.size == 0:
        return 0.0
    return float(np.max(np.abs(got - expected)) / max(float(np.max(np.abs(expected))), tiny))


# -- optimisers, as the papers write them (Polyak momentum as torch; Kingma & Ba 2015) --

def sgd_steps(parameter, grads, lr, momentum=0.0, dampening=0.0, nesterov=False,
              weight_decay=0.0):
    """``parameter`` after one SGD step per gradient in ``grads``, in float64."""
    p, buffer = _f64(parameter).copy(), None
    for step, g in enumerate(grads):
        d = _f64(g) + weight_decay * p
        if momentum:
            buffer = d.copy() if step == 0 else momentum * buffer + (1 - dampening) * d
            d = d + momentum * buffer if nesterov else buffer
        p = p - lr * d
    return p


def adam_steps(parameter, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """``parameter`` after one Adam step per gradient in ``grads``, in float64."""
    p = _f64(parameter).copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        d = _f64(g) + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * d
        v = betas[1] * v + (1 - betas[1]) * d * d
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p
