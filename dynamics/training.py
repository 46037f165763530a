"""Training a network, or an ensemble of networks at once.

``train`` drives ``forward`` and ``backward`` over minibatches: a linear readout
(``dynamics.readout``) on the last step or on every step, a loss
(``dynamics.losses``), global-norm clipping per member, and an optimiser
(``dynamics.optim``). The recurrent network runs on the CPU cores or, with
``backend="cuda"``, on an NVIDIA GPU; the readout, the loss and the optimiser always run
on the CPU. An ensemble (every parameter with a leading axis E: E
initialisations, seeds or learning rates) trains in one kernel launch per step, all
members on the same minibatches; member e's result is exactly what training it alone
gives. A member whose loss or gradient becomes inf/nan, or whose update would make a
parameter non-finite, stops there (its parameters keep their last finite values) and
is flagged ``diverged``; the others go on. The model passed in is never modified.

>>> import dynamics
>>> from dynamics.tasks import adding_problem, minibatches
>>> rnn = dynamics.RNN.init(2, 8, init="identity", nonlinearity="relu", ensemble=2)
>>> run = train(rnn, minibatches(adding_problem, seq_len=10, batch=16), steps=5,
...             readout=1, optimizer=dynamics.optim.Adam(lr=1e-2), clip=1.0)
>>> run.history.loss.dims, run.model.ensemble_size, bool(run.history.diverged.any())
(('member', 'step'), 2, False)
"""
import json
from dataclasses import dataclass

import numpy as np
import xarray as xr

from dynamics.clipping import INPUT_KEYS, check_clip, clip_grad_norm, grad_norm
from dynamics.losses import LOSSES
from dynamics.network import Network, as_network
from dynamics.optim import Adam, Optimizer
from dynamics.propagation import BACKENDS, backward, forward
from dynamics.readout import Readout
from dynamics.validation import check_choice, check_float_array, check_positive_int

TARGETS = ("last", "every")


@dataclass
class Training:
    """What ``train`` returns: the trained ``model`` and ``readout`` (new objects, in the
    form the model was given) and the ``history`` Dataset: ``loss`` and ``grad_norm``
    per step (``(member, step)`` for ensembles), ``diverged`` and ``stopped_at``."""

    model: object
    readout: Readout
    history: xr.Dataset


def _ensemble_copy(net):
    """A copy of ``net`` in which every parameter has a member axis (E = 1 if single)."""
    def copy(cell):
        single = cell.ensemble_size is None
        return cell._like({k: np.array(v[None] if single else v)
                           for k, v in cell.parameters().items()})
    return Network([[copy(cell) for cell in layer] for layer in net.layers])


def _like_given(net, model):
    """``net`` (an ensemble copy) in the form of ``model``, the one the user gave."""
    if model.ensemble_size is None:
        net = Network([[cell.member(0) for cell in layer] for layer in net.layers])
    return net if isinstance(model, Network) else net.first


def _check_readout(readout, net, seed):
    E, width = net.ensemble_size, net.num_directions * net.hidden_size
    if isinstance(readout, Readout):
        if (readout.ensemble_size, readout.hidden_size) != (E, width):
            raise ValueError(f"readout must have weight (E={E}, O, {width}), got "
                             f"{readout.weight.shape}")
        return Readout(readout.weight.astype(net.dtype), readout.bias.astype(net.dtype))
    size = check_positive_int("readout (the output size)", readout)
    return Readout.init(width, size, ensemble=E, seed=seed, dtype=net.dtype)


def _outputs(net, readout, x, target, backend):
    """(forward result, readout input, readout output) for the batch ``x``."""
    x = check_float_array("x", x).astype(net.dtype, copy=False)
    if x.ndim and x.shape[0] == 0:
        raise ValueError(f"x must have at least one step, got shape {x.shape}")
    result = forward(net, x, backend=backend)
    features = result.output[-1] if target == "last" else result.output
    return result, features, readout(features)


def _finite_members(parameters, n_members):
    finite = np.ones(n_members, bool)
    for value in parameters.values():
        finite &= np.isfinite(value.reshape(n_members, -1)).all(axis=1)
    return finite


def train(model, data, *, steps, readout=1, loss="mse", target="last", optimizer=None,
          clip=None, truncation=None, seed=0, progress=False, backend="cpu"):
    """Train ``model`` (and a linear readout) for ``steps`` minibatches.

    Parameters
    ----------
    model : dynamics.RNN, LSTM, GRU or Network, one network or an ensemble
    data : a function ``step -> (x, y)`` (e.g. ``dynamics.tasks.minibatches``), or one
        ``(x, y)`` used at every step. ``x`` is (T, B, D), cast to the model's dtype;
        ``y`` is the target of the readout's output: (B, O) for ``target="last"``,
        (T, B, O) for "every"; integer classes (B,) / (T, B) for cross-entropy.
    steps : number of updates
    readout : the output size O of a new readout (torch.nn.Linear's initialisation,
        drawn from ``seed``), or a ``Readout`` (copied) whose weight is (E, O, dirs*H)
    loss : "mse" or "cross_entropy"
    target : "last" (the loss reads the last step's output) or "every" step
    optimizer : a ``dynamics.optim.SGD`` or ``Adam`` (default ``Adam()``); its state
        carries over if it is passed to ``train`` again
    clip : None, or the max norm of ``clip_grad_norm`` applied to each member
    truncation : None for full BPTT, or the chunk length k of truncated BPTT
    seed : seed of the readout's initialisation
    progress : show a tqdm progress bar
    backend : "cpu" or "cuda": where the recurrent network's forward pass and BPTT run;
        the readout, the loss and the optimiser stay on the CPU

    Returns
    -------
    Training with ``model``, ``readout`` and ``history``.
    """
    given = as_network(model)
    steps = check_positive_int("steps", steps)
    check_choice("backend", backend, BACKENDS)
    loss_function = LOSSES[check_choice("loss", loss, tuple(LOSSES))]
    check_choice("target", target, TARGETS)
    optimizer = Adam() if optimizer is None else optimizer
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a dynamics.optim.SGD or Adam, got {optimizer!r}")
    check_clip(clip)
    if truncation is not None:
        truncation = check_positive_int("truncation", truncation)
    if not callable(data):
        batch = data
        data = lambda step: batch  # noqa: E731 -- one fixed minibatch
    net = _ensemble_copy(given)
    readout = _check_readout(readout, net, seed)
    E = net.ensemble_size
    parameters = {**net.parameters(), **readout.parameters()}
    optimizer.check_parameters(parameters)
    losses, norms = np.full((E, steps), np.nan), np.full((E, steps), np.nan)
    diverged, stopped_at = np.zeros(E, bool), np.full(E, -1)
    iterator = range(steps)
    last_only = None  # dL/d(output) of target "last"
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc="train", unit="step")
    for step in iterator:
        x, y = data(step)
        result, features, predictions = _outputs(net, readout, x, target, backend)
        step_loss, grad_predictions = loss_function(predictions, y)
        grad_features, grads = readout.backward(features, grad_predictions)
        if target == "last":  # zeros but at the last step: one buffer for all steps
            if last_only is None or last_only.shape != result.output.shape:
                last_only = np.zeros_like(result.output)
            last_only[-1] = grad_features
            grad_output = last_only
        else:
            grad_output = grad_features
        grads.update({k: v for k, v in backward(net, result, grad_output, truncation,
                                                input_gradient=False).items()
                      if k not in INPUT_KEYS})
        step_norm = grad_norm(grads, ensemble=True)
        stopping = ~diverged & ~(np.isfinite(step_loss) & np.isfinite(step_norm))
        if clip is not None:
            with np.errstate(invalid="ignore"):
                clip_grad_norm(grads, clip, ensemble=True)
        active = ~(diverged | stopping)
        before = {k: v.copy() for k, v in parameters.items()}
        with np.errstate(over="ignore", invalid="ignore"):
            optimizer.step(parameters, grads, active)
        broken = active & ~_finite_members(parameters, E)
        for name, value in parameters.items():  # undo an update that overflowed
            value[broken] = before[name][broken]
        stopping |= broken
        running = ~diverged
        losses[running, step], norms[running, step] = step_loss[running], step_norm[running]
        stopped_at[stopping] = step
        diverged |= stopping
    history = _history(losses, norms, diverged, stopped_at, loss, target, optimizer, clip,
                       truncation, backend, given.ensemble_size is None)
    return Training(_like_given(net, model), readout, history)


def evaluate(model, readout, x, y, loss="mse", target="last", backend="cpu"):
    """The loss of ``model`` with ``readout`` on one batch, per member ``(E,)`` (a float
    for one network), without training.

    Parameters
    ----------
    model, readout, loss, target : as for ``train`` (``readout`` a ``Readout``)
    x, y : one batch, as ``data`` gives it to ``train``
    backend : "cpu" or "cuda": where the recurrent network's forward pass runs; the
        readout and the loss stay on the CPU

    Examples
    --------
    >>> import numpy as np, dynamics
    >>> from dynamics.tasks import adding_problem
    >>> rnn = dynamics.RNN.init(2, 4)
    >>> x, y = adding_problem(20, 20000, seed=1)
    >>> round(evaluate(rnn, Readout(np.zeros((1, 1, 4)), np.ones((1, 1))), x, y), 2)  # 1/6
    0.17
    """
    net = as_network(model)
    loss_function = LOSSES[check_choice("loss", loss, tuple(LOSSES))]
    check_choice("target", target, TARGETS)
    if not isinstance(readout, Readout):
        raise TypeError(f"readout must be a dynamics.Readout, got {type(readout).__name__}")
    wrapped = _ensemble_copy(net) if net.ensemble_size is None else net
    readout = _check_readout(readout, wrapped, 0)
    _, _, predictions = _outputs(wrapped, readout, x, target, backend)
    value, _ = loss_function(predictions, y)
    return float(value[0]) if net.ensemble_size is None else value


def _history(losses, norms, diverged, stopped_at, loss, target, optimizer, clip, truncation,
             backend, single):
    dataset = xr.Dataset(
        {"loss": (("member", "step"), losses, {
            "long_name": f"training loss ({loss}, {target} step) on the step's minibatch, "
                         "before the step's update (nan after a member stopped)", "units": "1"}),
         "grad_norm": (("member", "step"), norms, {
             "long_name": "global L2 norm of the parameter gradients (readout included), "
                          "before clipping", "units": "1"}),
         "diverged": ("member", diverged, {
             "long_name": "true where training stopped on a non-finite loss, gradient or "
                          "update", "units": "1"}),
         "stopped_at": ("member", stopped_at, {
             "long_name": "step at which the member stopped (-1: never)", "units": "1"})},
        coords={"member": ("member", np.arange(len(diverged)),
                           {"long_name": "ensemble member", "units": "1"}),
                "step": ("step", np.arange(losses.shape[1]),
                         {"long_name": "training step", "units": "1"})},
        attrs={"training": json.dumps({"loss": loss, "target": target, "optimizer": repr(optimizer),
                                       "clip": clip, "truncation": truncation,
                                       "backend": backend})})
    return dataset.isel(member=0, drop=True) if single else dataset
