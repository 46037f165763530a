"""Optimisers with the update rules of ``torch.optim.SGD`` and ``torch.optim.Adam``,
for ensembles: every parameter has a leading member axis E, and each member is a
separate network with its own optimiser state.

``lr`` is one number or one per member (a sweep over learning rates in one launch).
``step(parameters, grads, active)`` updates the arrays of ``parameters`` in place,
members where ``active`` is False untouched. The arithmetic follows torch's
single-tensor CPU implementation operation by operation (hyperparameters cast to the
parameters' dtype), so results agree with torch to rounding: torch fuses the update's
``p + (-lr) * d`` into one multiply-add, which NumPy cannot, so about a quarter of the
float64 elements differ from torch's by an ulp after an SGD step.

>>> import numpy as np
>>> w = {"w": np.ones((2, 3))}                       # two members, 3 numbers each
>>> SGD(lr=[0.1, 0.5]).step(w, {"w": np.ones((2, 3))}, np.array([True, True]))
>>> w["w"][:, 0].tolist()
[0.9, 0.5]
"""
import numbers

import numpy as np


def _check_number(name, value, low, high=np.inf, low_open=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            (value > low if low_open else value >= low) and value < high):
        bound = "(" if low_open else "["
        raise ValueError(f"{name} must be a number in {bound}{low}, {high}), got {value!r}")
    return float(value)


def _check_lr(lr):
    values = np.atleast_1d(np.asarray(lr))
    if (values.dtype.kind not in "iuf" or values.ndim != 1 or values.size == 0
            or not np.all(np.isfinite(values) & (values > 0))):
        raise ValueError(f"lr must be a positive finite number or one per member, got {lr!r}")
    return values.astype(float)


class Optimizer:
    """Common bookkeeping: learning rates per member and per-parameter state."""

    def __init__(self, lr):
        self.lr = _check_lr(lr)
        self.state = {}
        self.n_steps = 0

    def check_ensemble(self, n_members):
        """Refuse a per-member ``lr`` whose length is not the ensemble size."""
        if self.lr.size not in (1, n_members):
            raise ValueError(f"lr has {self.lr.size} values for an ensemble of {n_members}")

    def check_parameters(self, parameters):
        """Refuse ``parameters`` (name -> (E, ...)) this optimiser cannot update: a
        per-member ``lr`` of another length, or state kept from another model."""
        for name, parameter in parameters.items():
            self.check_ensemble(len(parameter))
            for key, value in self.state.get(name, {}).items():
                if (value.shape, value.dtype) != (parameter.shape, parameter.dtype):
                    raise ValueError(
                        f"the optimiser's {key} of {name} is {value.dtype} {value.shape}, the "
                        f"parameter {parameter.dtype} {parameter.shape}: its state carries "
                        "over only to the same model (use a new optimiser)")
        if self.state and set(self.state) != set(parameters):
            raise ValueError(f"the optimiser holds state for {sorted(self.state)}, not for "
                             f"{sorted(parameters)}: use a new optimiser for another model")

    def _member_lr(self, n_members, parameter):
        self.check_ensemble(n_members)
        shape = (n_members,) + (1,) * (parameter.ndim - 1)
        return np.broadcast_to(self.lr, (n_members,)).reshape(shape)  # float64, as torch's

    def step(self, parameters, grads, active):
        """One update of every array in ``parameters`` (name -> (E, ...)) from ``grads``
        (same names and shapes); members with ``active[e]`` False keep their values and
        state."""
        self.n_steps += 1
        members = np.flatnonzero(active)
        everyone = members.size == len(active)
        for name, parameter in parameters.items():
            grad = grads[name]
            if parameter.shape != grad.shape:
                raise ValueError(f"gradient of {name} has shape {grad.shape}, expected "
                                 f"{parameter.shape}")
            state = self.state.setdefault(name, self._initial_state(parameter))
            if everyone:
                self._update(parameter, grad, state, self._member_lr(len(active), parameter))
            elif members.size:
                sub_state = {k: v[members] for k, v in state.items()}
                sub_parameter = parameter[members]
                lr = self._member_lr(len(active), parameter)[members]
                self._update(sub_parameter, grad[members], sub_state, lr)
                parameter[members] = sub_parameter
                for k, v in sub_state.items():
                    state[k][members] = v


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``:
    ``b = momentum b + (1 - dampening) g`` (``b = g`` at the first step),
    ``p -= lr (g + momentum b if nesterov else b)``, with ``g += weight_decay p``.
    """

    def __init__(self, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(lr)
        self.momentum = _check_number("momentum", momentum, 0.0, 1.0)
        self.dampening = _check_number("dampening", dampening, 0.0, 1.0 + 1e-12)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise ValueError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        self.nesterov = bool(nesterov)

    def _initial_state(self, parameter):
        return {"momentum_buffer": np.zeros_like(parameter)} if self.momentum else {}

    def _update(self, parameter, grad, state, lr):
        dtype = parameter.dtype.type
        if self.weight_decay:
            grad = grad + dtype(self.weight_decay) * parameter
        if self.momentum:
            buffer = state["momentum_buffer"]
            if self.n_steps == 1:
                buffer[...] = grad
            else:
                buffer *= dtype(self.momentum)
                buffer += dtype(1.0 - self.dampening) * grad
            grad = grad + dtype(self.momentum) * buffer if self.nesterov else buffer
        parameter += (-lr).astype(parameter.dtype) * grad

    def __repr__(self):
        return (f"SGD(lr={self.lr.tolist()}, momentum={self.momentum}, dampening="
                f"{self.dampening}, nesterov={self.nesterov}, weight_decay={self.weight_decay})")


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the
    gradient, no amsgrad): ``m = lerp(m, g, 1 - beta1)``, ``v = beta2 v + (1 - beta2) g^2``,
    ``p -= lr / (1 - beta1^t) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)``.
    """

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = tuple(_check_number(f"betas[{i}]", b, 0.0, 1.0) for i, b in enumerate(betas))
        self.eps = _check_number("eps", eps, 0.0, low_open=True)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0)

    def _initial_state(self, parameter):
        return {"exp_avg": np.zeros_like(parameter), "exp_avg_sq": np.zeros_like(parameter)}

    def _update(self, parameter, grad, state, lr):
        dtype = parameter.dtype.type
        beta1, beta2 = self.betas
        if self.weight_decay:
            grad = grad + dtype(self.weight_decay) * parameter
        m, v = state["exp_avg"], state["exp_avg_sq"]
        weight = 1.0 - beta1                        # torch's lerp, in its two branches
        if weight < 0.5:
            m += dtype(weight) * (grad - m)
        else:
            m[...] = grad - (grad - m) * dtype(1.0 - weight)
        v *= dtype(beta2)
        v += dtype(1.0 - beta2) * grad * grad
        step = self.n_steps
        bias_correction1 = 1.0 - beta1 ** step
        bias_correction2_sqrt = np.sqrt(1.0 - beta2 ** step)
        step_size = (lr / bias_correction1).astype(parameter.dtype)
        denominator = np.sqrt(v) / dtype(bias_correction2_sqrt) + dtype(self.eps)
        parameter += (-step_size * m) / denominator

    def __repr__(self):
        return (f"Adam(lr={self.lr.tolist()}, betas={self.betas}, eps={self.eps}, "
                f"weight_decay={self.weight_decay})")
