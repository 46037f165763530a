"""A linear readout ``y = W h + b`` on top of a recurrent network, for one network or an
ensemble (``W (E, O, H)``: member e reads its own states).

Features are the network's states with the member axis third from the end:
``(E, B, H)`` for the last step, ``(T, E, B, H)`` for every step; the result puts O
in place of H.

>>> import numpy as np
>>> readout = Readout.init(4, 2, ensemble=3, seed=0)
>>> readout(np.ones((5, 3, 8, 4))).shape
(5, 3, 8, 2)
"""
import numpy as np

from dynamics.init import children
from dynamics.validation import (check_finite, check_float_array, check_positive_int,
                                 check_shape)


class Readout:
    """``weight (E, O, H)`` and ``bias (E, O)`` of E linear readouts (E = 1 for one)."""

    def __init__(self, weight, bias):
        weight = check_float_array("weight", weight)
        if weight.ndim != 3:
            raise ValueError(f"weight must have shape (E, O, H), got {weight.shape}")
        bias = check_shape("bias", check_float_array("bias", bias), weight.shape[:2])
        if bias.dtype != weight.dtype:
            raise TypeError(f"weight and bias must share a dtype, got {weight.dtype} and "
                            f"{bias.dtype}")
        self.weight, self.bias = check_finite("weight", weight), check_finite("bias", bias)

    ensemble_size = property(lambda self: self.weight.shape[0])
    output_size = property(lambda self: self.weight.shape[1])
    hidden_size = property(lambda self: self.weight.shape[2])

    @classmethod
    def init(cls, hidden_size, output_size, ensemble=1, seed=0, dtype="float64"):
        """torch.nn.Linear's default: W and b ~ U(-1/sqrt(H), 1/sqrt(H)); member e draws
        from child e of ``SeedSequence(seed)``."""
        H = check_positive_int("hidden_size", hidden_size)
        O = check_positive_int("output_size", output_size)
        E = check_positive_int("ensemble", ensemble)
        bound = 1.0 / np.sqrt(H)
        rngs = [np.random.default_rng(child) for child in children(seed, E)]
        draws = [(rng.uniform(-bound, bound, (O, H)), rng.uniform(-bound, bound, O))
                 for rng in rngs]
        return cls(np.stack([w for w, _ in draws]).astype(dtype),
                   np.stack([b for _, b in draws]).astype(dtype))

    def parameters(self):
        """``{"readout_weight": W, "readout_bias": b}``, the arrays themselves."""
        return {"readout_weight": self.weight, "readout_bias": self.bias}

    @np.errstate(over="ignore", invalid="ignore")  # a diverging member's inf/nan are data
    def __call__(self, features):
        """Outputs ``features @ W^T + b`` with the member axis third from the end."""
        return np.matmul(features, self.weight.transpose(0, 2, 1)) + self.bias[:, None, :]

    @np.errstate(over="ignore", invalid="ignore")
    def backward(self, features, grad_outputs):
        """(dL/dfeatures, {"readout_weight": dL/dW, "readout_bias": dL/db}) from
        ``grad_outputs``, the gradient of the outputs of ``self(features)``."""
        E = self.ensemble_size
        g = np.moveaxis(grad_outputs, -3, 0).reshape(E, -1, self.output_size)
        f = np.moveaxis(features, -3, 0).reshape(E, -1, self.hidden_size)
        grads = {"readout_weight": np.matmul(g.transpose(0, 2, 1), f),
                 "readout_bias": g.sum(axis=1)}
        return np.matmul(grad_outputs, self.weight), grads
