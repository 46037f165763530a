"""Losses of a network's outputs, per ensemble member, with their gradients.

Outputs carry the member axis third from the end: ``(E, B, O)`` for a loss on the
last step, ``(T, E, B, O)`` for a loss on every step. Targets have the outputs' shape
without the member axis (shared by all members). Each loss is the mean over
everything but the member axis, as torch's ``reduction="mean"``; it returns the loss
``(E,)`` and its gradient with respect to the outputs.

>>> import numpy as np
>>> loss, grad = mse(np.zeros((2, 4, 1)), np.ones((4, 1)))
>>> loss.tolist(), grad.shape
([1.0, 1.0], (2, 4, 1))
"""
import numpy as np

from dynamics.validation import check_float_array, check_shape


def _without_member(outputs):
    return outputs.shape[:-3] + outputs.shape[-2:]


def _member_mean(values):
    """Mean over every axis but the member axis (third from the end)."""
    return np.moveaxis(values, -3, 0).reshape(values.shape[-3], -1).mean(axis=1)


@np.errstate(over="ignore", invalid="ignore")  # a diverging member's inf/nan are data
def mse(outputs, targets):
    """Mean squared error ``mean((outputs - targets)^2)`` per member, and its gradient."""
    targets = check_shape("targets", check_float_array("targets", targets),
                          _without_member(outputs))
    error = outputs - np.expand_dims(targets, -3).astype(outputs.dtype, copy=False)
    count = error.size // error.shape[-3]
    return _member_mean(error * error), error * (2.0 / count)


@np.errstate(over="ignore", invalid="ignore")
def cross_entropy(outputs, labels):
    """Softmax cross-entropy of the logits ``outputs (..., E, B, C)`` against the integer
    class ``labels (..., B)``, mean per member, and its gradient ``(softmax - onehot) / N``.

    >>> loss, grad = cross_entropy(np.zeros((1, 2, 4)), np.array([0, 3]))
    >>> round(float(loss[0]), 6) == round(float(np.log(4)), 6), grad[0, 0].tolist()
    (True, [-0.375, 0.125, 0.125, 0.125])
    """
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    check_shape("labels", labels, _without_member(outputs)[:-1])
    n_classes = outputs.shape[-1]
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{labels.min()}, "
                         f"{labels.max()}]")
    shifted = outputs - outputs.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    index = np.broadcast_to(np.expand_dims(labels, -2)[..., None], outputs.shape[:-1] + (1,))
    chosen = np.take_along_axis(log_p, index, axis=-1)           # (..., E, B, 1)
    grad = np.exp(log_p)
    np.put_along_axis(grad, index, np.take_along_axis(grad, index, axis=-1) - 1.0, axis=-1)
    return -_member_mean(chosen), grad / labels.size


LOSSES = {"mse": mse, "cross_entropy": cross_entropy}
