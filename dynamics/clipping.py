"""Global-norm gradient clipping with the semantics of ``torch.nn.utils.clip_grad_norm_``."""
import numbers

import numpy as np

from dynamics.validation import check_choice, check_float_array

INPUT_KEYS = ("x", "h0", "c0")


def _parameter_gradients(grads):
    params = [check_float_array(k, g) for k, g in grads.items() if k not in INPUT_KEYS]
    if not params:
        raise ValueError("grads holds no parameter gradients")
    return params


def check_clip(clip):
    """``clip`` as ``train`` takes it: None (no clipping) or a positive number."""
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, numbers.Real)
                             or not clip > 0):
        raise ValueError(f"clip must be None or a positive number, got {clip!r}")
    return clip


def grad_norm(grads, norm_type=2.0, ensemble=False):
    """The joint ``norm_type``-norm of the parameter gradients in ``grads`` (the input
    gradients ``x``, ``h0``, ``c0`` excluded); per member, (E,), with ``ensemble=True``.

    >>> import numpy as np
    >>> float(grad_norm({"weight_hh_l0": np.full((2, 2), 3.0), "x": np.ones(5)}))
    6.0
    """
    norm_type = float(check_choice("norm_type", float(norm_type), (1.0, 2.0, float("inf"))))
    params = _parameter_gradients(grads)
    axes = (lambda g: tuple(range(1, g.ndim))) if ensemble else (lambda g: None)
    with np.errstate(over="ignore", invalid="ignore"):
        if norm_type == float("inf"):
            return np.max([np.max(np.abs(g), axis=axes(g)) for g in params], axis=0)
        return np.sum([np.sum(np.abs(g) ** norm_type, axis=axes(g)) for g in params],
                      axis=0) ** (1.0 / norm_type)


def clip_grad_norm(grads, max_norm, norm_type=2.0, ensemble=False):
    """Scale the parameter gradients in ``grads`` in place so their joint norm <= max_norm.

    As torch: ``total = norm(all parameter gradients)``, and every gradient is multiplied
    by ``min(1, max_norm / (total + 1e-6))``. The input gradients ``x``, ``h0``, ``c0``
    are neither counted nor scaled. With ``ensemble=True`` the leading axis indexes
    independent networks and each is clipped on its own; ``total`` is then (E,).

    Returns the total norm before clipping.

    >>> import numpy as np
    >>> g = {"weight_hh_l0": np.full((2, 2), 3.0), "bias_hh_l0": np.zeros(2)}
    >>> float(clip_grad_norm(g, 1.0)), round(float(np.linalg.norm(g["weight_hh_l0"])), 5)
    (6.0, 1.0)
    """
    max_norm = float(max_norm)
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    total = grad_norm(grads, norm_type, ensemble)
    scale = np.minimum(1.0, max_norm / (total + 1e-6))
    for key, g in grads.items():
        if key not in INPUT_KEYS:
            shape = (-1,) + (1,) * (np.ndim(g) - 1) if ensemble else ()
            grads[key] = (g * np.reshape(scale, shape)).astype(np.asarray(g).dtype, copy=False)
    return total
