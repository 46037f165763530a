"""Training: tasks, losses, readout, optimisers, the training loop, divergence, bad input.

Optimisers are checked against textbook formulas (tests/naive.py) and, step by step,
against ``torch.optim``; the whole loop (readout, loss, BPTT, clipping, update) against
a torch training loop on the same weights and batches.
"""
import importlib.util

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dynamics
import naive
from conftest import examples, random_cell, seeds, torch_module
from dynamics import losses
from dynamics.optim import SGD, Adam
from dynamics.readout import Readout
from dynamics.tasks import (ADDING_BASELINE_MSE, adding_problem, copy_task, copy_task_baseline,
                            minibatches)

# ----------------------------------------------------------------------------------------
# tasks


@examples(30)
@given(seq_len=st.integers(2, 300), batch=st.integers(1, 40), seed=seeds,
       dtype=st.sampled_from(["float32", "float64"]))
def test_adding_problem_structure(seq_len, batch, seed, dtype):
    x, y = adding_problem(seq_len, batch, seed, dtype=dtype)
    assert x.shape == (seq_len, batch, 2) and y.shape == (batch, 1)
    assert x.dtype == dtype and y.dtype == dtype
    values, markers = x[..., 0], x[..., 1]
    assert ((values >= 0) & (values < 1)).all()
    assert set(np.unique(markers)) <= {0.0, 1.0}
    half = seq_len // 2
    assert (markers[:half].sum(axis=0) == 1).all() and (markers[half:].sum(axis=0) == 1).all()
    np.testing.assert_allclose(y[:, 0], (values * markers).sum(axis=0), rtol=1e-6)
    again, _ = adding_problem(seq_len, batch, seed, dtype=dtype)
    np.testing.assert_array_equal(x, again)


def test_adding_problem_constant_prediction_has_mse_one_sixth():
    _, y = adding_problem(20, 400_000, seed=5)
    squared = (y[:, 0] - 1.0) ** 2
    standard_error = squared.std() / np.sqrt(squared.size)
    assert abs(squared.mean() - ADDING_BASELINE_MSE) < 4 * standard_error
    assert abs(y.mean() - 1.0) < 4 * y.std() / np.sqrt(y.size)  # 1 is the best constant


@examples(30)
@given(seq_len=st.integers(1, 60), batch=st.integers(1, 8), n_symbols=st.integers(1, 12),
       n_categories=st.integers(1, 9), seed=seeds)
def test_copy_task_structure_and_memoryless_baseline(seq_len, batch, n_symbols, n_categories,
                                                     seed):
    x, labels = copy_task(seq_len, batch, seed, n_symbols, n_categories)
    n_steps = seq_len + 2 * n_symbols
    assert x.shape == (n_steps, batch, n_categories + 2) and labels.shape == (n_steps, batch)
    assert (x.sum(axis=-1) == 1).all()
    inputs = x.argmax(axis=-1)
    assert ((inputs[:n_symbols] >= 1) & (inputs[:n_symbols] <= n_categories)).all()
    assert (inputs[n_symbols + seq_len - 1] == n_categories + 1).all()
    assert (np.delete(inputs[n_symbols:], seq_len - 1, axis=0) == 0).all()
    assert (labels[:-n_symbols] == 0).all()
    np.testing.assert_array_equal(labels[-n_symbols:], inputs[:n_symbols])
    # the best memoryless prediction: blank until recall, then uniform over the symbols
    log_p = np.full((n_steps, 1, batch, n_categories + 1), -np.inf)
    log_p[:-n_symbols, ..., 0] = 0.0
    log_p[-n_symbols:, ..., 1:] = -np.log(n_categories)
    with np.errstate(invalid="ignore"):
        loss, _ = losses.cross_entropy(np.maximum(log_p, -1e300), labels)
    assert loss[0] == pytest.approx(copy_task_baseline(seq_len, n_symbols, n_categories),
                                    rel=1e-12)


def test_minibatches_give_each_step_its_own_reproducible_batch():
    data = minibatches(copy_task, seed=4, seq_len=5, batch=3)
    np.testing.assert_array_equal(data(2)[0], data(2)[0])
    assert not np.array_equal(data(2)[1], data(3)[1])
    first = minibatches(copy_task, seed=4, seq_len=5, batch=3)(9)
    np.testing.assert_array_equal(first[1], data(9)[1])  # independent of what came before

# ----------------------------------------------------------------------------------------
# losses and readout against central differences


@examples(15)
@given(seed=seeds, E=st.integers(1, 3), B=st.integers(1, 4), O=st.integers(1, 4),
       every=st.booleans(), kind=st.sampled_from(["mse", "cross_entropy"]))
def test_loss_and_readout_gradients_match_finite_differences(seed, E, B, O, every, kind):
    rng = np.random.default_rng(seed)
    H, lead = 3, (2,) if every else ()
    features = rng.normal(size=lead + (E, B, H))
    readout = Readout(rng.normal(size=(E, O, H)), rng.normal(size=(E, O)))
    target = (rng.normal(size=lead + (B, O)) if kind == "mse"
              else rng.integers(0, O, lead + (B,)))
    loss_function = losses.LOSSES[kind]

    def total(f=features, w=readout.weight, b=readout.bias):
        return loss_function(Readout(w, b)(f), target)[0].sum()

    loss, grad_out = loss_function(readout(features), target)
    grad_features, grads = readout.backward(features, grad_out)
    for got, array, f in ((grad_features, features, lambda a: total(f=a)),
                          (grads["readout_weight"], readout.weight, lambda a: total(w=a)),
                          (grads["readout_bias"], readout.bias, lambda a: total(b=a))):
        expected = naive.central_difference(f, array)
        assert naive.relative_error(got, expected, tiny=1e-3) < 1e-6

# ----------------------------------------------------------------------------------------
# optimisers


def torch_optimizer_steps(name, parameter, grads, **options):
    """torch.optim's ``name`` applied to one tensor for each gradient; every step's value."""
    import torch

    p = torch.nn.Parameter(torch.from_numpy(parameter.copy()))
    optimizer = getattr(torch.optim, name)([p], **options)
    values = []
    for g in grads:
        p.grad = torch.from_numpy(g.copy())
        optimizer.step()
        values.append(p.detach().numpy().copy())
    return values


optimizer_cases = st.fixed_dictionaries({
    "seed": seeds, "steps": st.integers(1, 6), "shape": st.sampled_from([(3,), (4, 5), (2, 3, 2)]),
    "dtype": st.sampled_from([np.float32, np.float64]),
    "lr": st.sampled_from([1e-3, 0.05, 0.7]),
    "weight_decay": st.sampled_from([0.0, 1e-2])})


@examples(25)
@given(case=optimizer_cases, momentum=st.sampled_from([0.0, 0.5, 0.9]),
       dampening=st.sampled_from([0.0, 0.3]), nesterov=st.booleans())
def test_sgd_matches_the_formula_and_torch_step_by_step(case, momentum, dampening, nesterov):
    if nesterov and (momentum == 0 or dampening):
        nesterov = False
    options = dict(lr=case["lr"], momentum=momentum, dampening=dampening, nesterov=nesterov,
                   weight_decay=case["weight_decay"])
    check_optimizer("SGD", SGD(**options), naive.sgd_steps, options, case)


@examples(25)
@given(case=optimizer_cases, betas=st.sampled_from([(0.9, 0.999), (0.5, 0.9), (0.0, 0.99)]),
       eps=st.sampled_from([1e-8, 1e-3]))
def test_adam_matches_the_formula_and_torch_step_by_step(case, betas, eps):
    options = dict(lr=case["lr"], betas=betas, eps=eps, weight_decay=case["weight_decay"])
    check_optimizer("Adam", Adam(**options), naive.adam_steps, options, case)


def check_optimizer(name, optimizer, reference, options, case):
    rng = np.random.default_rng(case["seed"])
    dtype, shape = case["dtype"], case["shape"]
    start = rng.normal(size=shape).astype(dtype)
    grads = [(rng.normal(size=shape) * rng.choice([1e-3, 1.0, 10.0])).astype(dtype)
             for _ in range(case["steps"])]
    parameters = {"w": start[None].copy()}  # one member
    ours = []
    for g in grads:
        optimizer.step(parameters, {"w": g[None]}, np.array([True]))
        ours.append(parameters["w"][0].copy())
    assert ours[-1].dtype == dtype
    scale = np.abs(start).max() + case["lr"] * case["steps"]
    tol = 1e-13 if dtype == np.float64 else 2e-6
    expected = reference(start, grads, **options)
    assert np.abs(ours[-1] - expected).max() <= 10 * tol * scale
    if importlib.util.find_spec("torch") is None:  # the formula above is then the oracle
        return
    for got, want in zip(ours, torch_optimizer_steps(name, start, grads, **options)):
        assert np.abs(got - want).max() <= tol * scale


@pytest.mark.parametrize("make", [lambda lr: SGD(lr, momentum=0.9),
                                  lambda lr: Adam(lr, betas=(0.8, 0.99))])
def test_members_with_own_learning_rates_equal_separate_runs(make):
    rng = np.random.default_rng(0)
    rates, shape = [0.1, 0.01, 0.3], (3, 4, 2)
    start = rng.normal(size=shape)
    grads = [rng.normal(size=shape) for _ in range(4)]
    together = {"w": start.copy()}
    optimizer = make(rates)
    for g in grads:
        optimizer.step(together, {"w": g}, np.ones(3, bool))
    for e, lr in enumerate(rates):
        alone, single = {"w": start[e:e + 1].copy()}, make(lr)
        for g in grads:
            single.step(alone, {"w": g[e:e + 1]}, np.ones(1, bool))
        np.testing.assert_array_equal(together["w"][e], alone["w"][0])


def test_inactive_members_keep_their_values_and_state():
    optimizer, start = Adam(0.1), np.ones((3, 2))
    parameters = {"w": start.copy()}
    optimizer.step(parameters, {"w": np.full((3, 2), np.nan)}, np.array([False, True, False]))
    np.testing.assert_array_equal(parameters["w"][[0, 2]], start[[0, 2]])
    assert np.isnan(parameters["w"][1]).all()
    assert (optimizer.state["w"]["exp_avg"][[0, 2]] == 0).all()

# ----------------------------------------------------------------------------------------
# the training loop


def torch_training(module, linear, batches, optimizer_options, clip, loss, target):
    """Parameters (numpy, by our names) after torch trains ``module`` + ``linear``, and
    each step's loss and gradient norm before clipping."""
    import torch

    params = list(module.parameters()) + list(linear.parameters())
    name, options = optimizer_options
    optimizer = getattr(torch.optim, name)(params, **options)
    losses, norms = [], []
    for x, y in batches:
        optimizer.zero_grad()
        output, _ = module(torch.from_numpy(x))
        features = output[-1] if target == "last" else output
        prediction = linear(features)
        y = torch.from_numpy(y)
        if loss == "mse":
            value = torch.nn.functional.mse_loss(prediction, y)
        else:
            value = torch.nn.functional.cross_entropy(
                prediction.reshape(-1, prediction.shape[-1]), y.reshape(-1))
        value.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, float("inf") if clip is None else clip)
        losses.append(value.item())
        norms.append(norm.item())
        optimizer.step()
    result = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    result["readout_weight"] = linear.weight.detach().numpy()
    result["readout_bias"] = linear.bias.detach().numpy()
    return result, np.array(losses), np.array(norms)


@pytest.mark.parametrize("kind,num_layers,loss,target,optimizer,clip", [
    ("lstm", 1, "mse", "last", ("Adam", dict(lr=0.01)), 0.5),
    ("rnn_relu", 2, "mse", "last", ("SGD", dict(lr=0.05, momentum=0.9)), None),
    ("gru", 1, "cross_entropy", "every", ("Adam", dict(lr=0.02, betas=(0.8, 0.99))), 1.0),
    ("rnn_tanh", 1, "cross_entropy", "every", ("SGD", dict(lr=0.1, nesterov=True,
                                                            momentum=0.5)), 0.1),
])
def test_training_matches_a_torch_training_loop(kind, num_layers, loss, target, optimizer,
                                                clip, one_torch_thread):
    torch = pytest.importorskip("torch")
    if loss == "mse":
        # lengths that change from step to step (the "last" target's gradient buffer)
        batches = [adding_problem(12 - 3 * (s % 2), 5, seed=s) for s in range(6)]
        n_out = 1
    else:
        batches = [copy_task(4, 5, seed=s, n_symbols=3, n_categories=3) for s in range(6)]
        n_out = 4
    D = batches[0][0].shape[-1]
    module = torch_module(kind, D, 6, num_layers=num_layers, seed=1)
    torch.manual_seed(2)
    linear = torch.nn.Linear(6, n_out).double()
    net = dynamics.from_torch(module)
    readout = Readout(linear.weight.detach().numpy()[None].copy(),
                      linear.bias.detach().numpy()[None].copy())
    name, options = optimizer
    run = dynamics.train(net, lambda step: batches[step], steps=len(batches), readout=readout,
                         loss=loss, target=target, clip=clip,
                         optimizer=getattr(dynamics.optim, name)(**options))
    expected, losses, norms = torch_training(module, linear, batches, optimizer, clip, loss,
                                             target)
    got = {**run.model.parameters(), "readout_weight": run.readout.weight[0],
           "readout_bias": run.readout.bias[0]}
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert naive.relative_error(got[key], value, tiny=1.0) < 1e-10, key
    assert run.history.loss.dims == run.history.grad_norm.dims == ("step",)
    np.testing.assert_allclose(run.history.loss, losses, rtol=1e-10)
    np.testing.assert_allclose(run.history.grad_norm, norms, rtol=1e-10)


@examples(6)
@given(kind=st.sampled_from(["rnn_tanh", "rnn_relu", "lstm", "gru"]), seed=seeds,
       E=st.integers(2, 3), dtype=st.sampled_from([np.float32, np.float64]))
def test_training_an_ensemble_equals_training_each_member_alone(kind, seed, E, dtype):
    ensemble = random_cell(kind, 2, 5, seed=seed, gain=0.8, ensemble=E, dtype=dtype)
    readout = Readout.init(5, 1, ensemble=E, seed=seed, dtype=dtype)
    data = minibatches(adding_problem, seed=seed, seq_len=8, batch=4, dtype=dtype)
    options = dict(steps=4, clip=0.3, truncation=3)
    together = dynamics.train(ensemble, data, readout=readout,
                              optimizer=Adam(lr=[0.01, 0.03, 0.02][:E]), **options)
    for e in range(E):
        alone = dynamics.train(ensemble.member(e), data, optimizer=Adam(lr=[0.01, 0.03, 0.02][e]),
                               readout=Readout(readout.weight[e:e + 1], readout.bias[e:e + 1]),
                               **options)
        for key, value in alone.model.parameters().items():
            np.testing.assert_array_equal(together.model.parameters()[key][e], value)
        np.testing.assert_array_equal(together.readout.weight[e], alone.readout.weight[0])
        np.testing.assert_array_equal(together.history.loss[e], alone.history.loss)


def test_the_model_passed_in_is_not_modified():
    cell = dynamics.GRU.init(2, 4, seed=3)
    before = {k: v.copy() for k, v in cell.parameters().items()}
    run = dynamics.train(cell, adding_problem(6, 4, seed=0), steps=3, readout=1)
    for key, value in cell.parameters().items():
        np.testing.assert_array_equal(value, before[key])
    assert isinstance(run.model, dynamics.GRU) and run.model.ensemble_size is None
    assert not np.array_equal(run.model.weight_hh, cell.weight_hh)


def test_a_small_irnn_learns_the_adding_problem():
    rnn = dynamics.RNN.init(2, 32, init="identity", nonlinearity="relu", seed=0)
    data = minibatches(adding_problem, seed=1, seq_len=20, batch=32)
    run = dynamics.train(rnn, data, steps=400, readout=1, optimizer=Adam(lr=3e-3), clip=1.0)
    x, y = adding_problem(20, 2000, seed=123)
    test_mse = dynamics.evaluate(run.model, run.readout, x, y)
    assert test_mse < ADDING_BASELINE_MSE / 5, test_mse
    assert float(run.history.loss[:20].mean()) > 2 * float(run.history.loss[-20:].mean())


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("kind", ["lstm", "irnn"])
def test_divergence_is_data_not_a_warning(kind):
    """A member that overflows is flagged; nothing warns (so ``-W error`` runs too)."""
    options = dict(init="identity", nonlinearity="relu") if kind == "irnn" else {}
    ensemble = (dynamics.RNN if kind == "irnn" else dynamics.LSTM).init(2, 16, ensemble=3,
                                                                        **options)
    run = dynamics.train(ensemble, minibatches(adding_problem, seq_len=20, batch=16, seed=1),
                         steps=40, readout=1, optimizer=SGD([1e-2, 1e8, 1e-3], momentum=0.9))
    assert run.history.diverged.values.tolist() == [False, True, False]


def test_a_diverging_member_stops_and_the_others_go_on():
    ensemble = random_cell("rnn_relu", 2, 6, seed=2, gain=0.5, ensemble=3)
    readout = Readout.init(6, 1, ensemble=3, seed=0)
    data = minibatches(adding_problem, seed=3, seq_len=10, batch=8)
    rates = [0.01, 1e40, 0.02]
    run = dynamics.train(ensemble, data, steps=30, readout=readout,
                         optimizer=SGD(rates, momentum=0.9))
    history = run.history
    assert history.diverged.values.tolist() == [False, True, False]
    stopped = int(history.stopped_at[1])
    assert 0 <= stopped < 30 and np.isnan(history.loss[1, stopped + 1:]).all()
    assert np.isfinite(history.loss[[0, 2]]).all()
    for value in run.model.parameters().values():
        assert np.isfinite(value).all()  # the stopped member kept its last finite values
    for e in (0, 2):
        alone = dynamics.train(ensemble.member(e), data, steps=30, optimizer=SGD(rates[e], momentum=0.9),
                               readout=Readout(readout.weight[e:e + 1], readout.bias[e:e + 1]))
        np.testing.assert_array_equal(run.model.weight_hh[e], alone.model.weight_hh)
        assert int(history.stopped_at[e]) == -1


@pytest.mark.parametrize("make,message", [
    (lambda: SGD(lr=-0.1), "lr must be"),
    (lambda: SGD(lr=float("nan")), "lr must be"),
    (lambda: SGD(lr=0.1, momentum=1.0), "momentum must be"),
    (lambda: SGD(lr=0.1, nesterov=True), "nesterov"),
    (lambda: Adam(lr=[]), "lr must be"),
    (lambda: Adam(betas=(0.9, 1.0)), r"betas\[1\] must be"),
    (lambda: Adam(betas=0.9), "betas must be a pair"),
    (lambda: Adam(eps=0.0), "eps must be"),
    (lambda: Adam(weight_decay=-1.0), "weight_decay must be"),
    (lambda: Adam(lr="0.1"), "lr must be"),
    (lambda: Adam(lr=True), "lr must be"),
    (lambda: SGD(lr=0.1, momentum=0.5, nesterov="no"), "nesterov must be True or False"),
])
def test_invalid_optimiser_settings_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("options,error,message", [
    (dict(steps=0), ValueError, "steps must be"),
    (dict(loss="hinge"), ValueError, "loss must be one of"),
    (dict(target="first"), ValueError, "target must be one of"),
    (dict(clip=-1.0), ValueError, "clip must be"),
    (dict(clip=True), ValueError, "clip must be"),
    (dict(clip="1"), ValueError, "clip must be"),
    (dict(truncation=0), ValueError, "truncation must be"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
    (dict(optimizer="adam"), TypeError, "optimizer must be"),
    (dict(optimizer=Adam(lr=[0.1, 0.2, 0.3])), ValueError, "lr has 3 values for an ensemble of 2"),
    (dict(readout=Readout(np.zeros((2, 1, 5)), np.zeros((2, 1)))), ValueError,
     r"readout must have weight \(E=2, O, 4\)"),
    (dict(readout=0), ValueError, "readout"),
    (dict(data=adding_problem(6, 3, seed=0)[:1] + (np.zeros((4, 1)),)), ValueError,
     r"targets must have shape \(3, 1\)"),
    (dict(data=(np.zeros((6, 3, 2), np.int64), np.zeros((3, 1)))), TypeError, "x must be a float"),
    (dict(data=(np.zeros((0, 3, 2)), np.zeros((3, 1)))), ValueError,
     "x must have at least one step"),
    (dict(data=(np.zeros((6, 3, 2)), np.zeros((3, 1), complex))), TypeError,
     "targets must be a float"),
    (dict(data=(np.zeros((6, 3, 2)), np.zeros((3, 1), bool))), TypeError,
     "targets must be a float"),
    (dict(data=(np.zeros((22, 3, 2)), copy_task(2, 3, seed=0)[1] + 3), loss="cross_entropy",
          target="every", readout=3),
     ValueError, r"labels must lie in \[0, 3\)"),
    (dict(data=adding_problem(6, 3, seed=0), loss="cross_entropy"), TypeError,
     "labels must be integer"),
])
def test_invalid_training_arguments_are_refused(options, error, message):
    ensemble = dynamics.RNN.init(2, 4, ensemble=2)
    arguments = dict(data=adding_problem(6, 3, seed=0), steps=2, readout=1) | options
    with pytest.raises(error, match=message):
        dynamics.train(ensemble, **arguments)


def test_an_optimiser_carries_its_state_only_to_the_same_model():
    data = adding_problem(6, 3, seed=0)
    optimizer = Adam()
    ensemble = dynamics.train(dynamics.RNN.init(2, 4, ensemble=2), data, steps=2, readout=1,
                              optimizer=optimizer)
    dynamics.train(ensemble.model, data, steps=1, readout=ensemble.readout, optimizer=optimizer)
    for other in (dynamics.RNN.init(2, 4), dynamics.RNN.init(2, 4, ensemble=2, dtype="float32"),
                  dynamics.GRU.init(2, 4, ensemble=2)):
        with pytest.raises(ValueError, match="use a new optimiser"):
            dynamics.train(other, data, steps=1, readout=1, optimizer=optimizer)
    assert optimizer.n_steps == 3


@pytest.mark.parametrize("call,error,message", [
    (lambda: adding_problem(1, 4), ValueError, "seq_len must be an integer >= 2"),
    (lambda: adding_problem(10, 0), ValueError, "batch must be"),
    (lambda: adding_problem(10, 4, dtype="int32"), TypeError, "dtype must be float32"),
    (lambda: copy_task(0, 4), ValueError, "seq_len must be"),
    (lambda: copy_task(5, 4, n_symbols=0), ValueError, "n_symbols must be"),
    (lambda: copy_task(5, 4, n_categories=2.5), ValueError, "n_categories must be"),
    (lambda: Readout(np.zeros((1, 4)), np.zeros(1)), ValueError, r"weight must have shape \(E, O, H\)"),
    (lambda: Readout(np.zeros((2, 1, 4)), np.zeros((1, 1))), ValueError, r"bias must have shape \(2, 1\)"),
    (lambda: Readout(np.zeros((1, 1, 4)), np.zeros((1, 1), np.float32)), TypeError, "share a dtype"),
    (lambda: Readout(np.full((1, 1, 4), np.nan), np.zeros((1, 1))), ValueError, "weight must be finite"),
    (lambda: Readout(np.zeros((1, 1, 4), np.int64), np.zeros((1, 1))), TypeError, "weight must be a float"),
    (lambda: Readout.init(4, 0), ValueError, "output_size must be"),
    (lambda: dynamics.grad_norm({"x": np.ones(3)}), ValueError, "no parameter gradients"),
    (lambda: dynamics.grad_norm({"w": np.ones(3)}, norm_type=3), ValueError, "norm_type must be"),
    (lambda: losses.mse(np.zeros((1, 4, 1)), np.zeros((3, 1))), ValueError, r"targets must have shape"),
    (lambda: dynamics.clip_grad_norm({"w": np.array([3, 4])}, 1.0), TypeError, "w must be a float"),
    (lambda: dynamics.evaluate(dynamics.RNN.init(2, 4), Readout.init(4, 1), np.zeros((0, 3, 2)),
                               np.zeros((3, 1))), ValueError, "x must have at least one step"),
    (lambda: dynamics.backward(dynamics.RNN.init(2, 4), np.zeros((5, 3, 4)), np.zeros((5, 3, 4))),
     TypeError, "result must be the ForwardResult"),
    (lambda: dynamics.evaluate(dynamics.RNN.init(2, 4), 1, *adding_problem(6, 3, seed=0)),
     TypeError, "readout must be a dynamics.Readout"),
])
def test_invalid_task_readout_and_loss_arguments_are_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_training_on_the_gpu_equals_training_on_the_cpu():
    """backend="cuda" (numba's simulator without a GPU) moves the network's forward pass
    and BPTT, not the result."""
    rnn = dynamics.RNN.init(2, 3, init="gaussian", gain=1.2, seed=4)
    batch = adding_problem(5, 2, seed=0)
    runs = {backend: dynamics.train(rnn, batch, steps=3, readout=1, clip=1.0, seed=1,
                                    backend=backend) for backend in ("cpu", "cuda")}
    cpu, cuda = runs["cpu"], runs["cuda"]
    np.testing.assert_allclose(cuda.history.loss, cpu.history.loss, rtol=1e-10)
    np.testing.assert_allclose(cuda.history.grad_norm, cpu.history.grad_norm, rtol=1e-10)
    for key, value in cpu.model.parameters().items():
        np.testing.assert_allclose(cuda.model.parameters()[key], value, rtol=1e-10, atol=1e-14)
    assert '"backend": "cuda"' in cuda.history.attrs["training"]
    x, y = adding_problem(5, 3, seed=1)
    np.testing.assert_allclose(dynamics.evaluate(cuda.model, cuda.readout, x, y, backend="cuda"),
                               dynamics.evaluate(cpu.model, cpu.readout, x, y), rtol=1e-10)


def test_backward_refuses_a_used_or_foreign_forward_result():
    rnn, other = dynamics.RNN.init(2, 3, seed=0), dynamics.RNN.init(2, 3, seed=1)
    x = np.ones((4, 1, 2))
    result = dynamics.forward(rnn, x)
    with pytest.raises(ValueError, match="same model"):
        dynamics.backward(other, result, np.ones_like(result.output))
    dynamics.backward(rnn, result, np.ones_like(result.output))
    with pytest.raises(ValueError, match="already backpropagated"):
        dynamics.backward(rnn, result, np.ones_like(result.output))
