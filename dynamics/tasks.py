"""Benchmark tasks for long-range memory, drawn reproducibly from a seed.

The adding problem (Hochreiter & Schmidhuber 1997; Le, Jaitly & Hinton 2015): two
input channels, values U[0, 1] and a marker with exactly one 1 in each half of the
sequence; the target is the sum of the two marked values. Predicting the constant 1
(the target's mean) has MSE Var(U1 + U2) = 1/6: a network that beats it remembers.

The copy task (Arjovsky, Shah & Bengio 2016): ``n_symbols`` symbols drawn from
``n_categories`` categories, ``seq_len`` blanks, then recall. A memoryless network can
do no better than predicting a blank until recall and a uniform guess during it, a
cross-entropy of ``n_symbols ln(n_categories) / (seq_len + 2 n_symbols)`` per step.

``seed`` is an int or a ``numpy.random.SeedSequence``; ``minibatches`` gives every
training step its own child sequence, so step k's batch does not depend on how many
batches were drawn before it (a resumed or reordered run sees the same data).

>>> x, y = adding_problem(seq_len=6, batch=2, seed=0)
>>> x.shape, y.shape, x[:, :, 1].sum(axis=0).tolist()
((6, 2, 2), (2, 1), [2.0, 2.0])
"""
import functools

import numpy as np

from dynamics.init import child, seed_sequence
from dynamics.validation import FLOAT_DTYPES, check_positive_int

#: MSE of the best constant prediction of the adding problem's target.
ADDING_BASELINE_MSE = 1.0 / 6.0


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def adding_problem(seq_len, batch, seed=0, dtype="float64"):
    """One batch of the adding problem.

    Returns
    -------
    x : (seq_len, batch, 2): channel 0 the values U[0, 1], channel 1 the markers, one 1
        in steps [0, seq_len // 2) and one in [seq_len // 2, seq_len)
    y : (batch, 1), the sum of the two marked values

    Examples
    --------
    >>> x, y = adding_problem(4, 3, seed=1)
    >>> bool(np.allclose(y[:, 0], (x[:, :, 0] * x[:, :, 1]).sum(axis=0)))
    True
    """
    seq_len = check_positive_int("seq_len", seq_len, minimum=2)
    batch = check_positive_int("batch", batch)
    dtype = _float_dtype(dtype)
    rng = np.random.default_rng(seed_sequence(seed))
    values = rng.uniform(0.0, 1.0, (seq_len, batch))
    half = seq_len // 2
    first = rng.integers(0, half, batch)
    second = rng.integers(half, seq_len, batch)
    markers = np.zeros((seq_len, batch))
    columns = np.arange(batch)
    markers[first, columns] = markers[second, columns] = 1.0
    x = np.stack([values, markers], axis=-1).astype(dtype)
    y = (values[first, columns] + values[second, columns])[:, None].astype(dtype)
    return x, y


def copy_task_baseline(seq_len, n_symbols=10, n_categories=8):
    """Cross-entropy per step of the best memoryless prediction of ``copy_task``.

    >>> round(copy_task_baseline(100), 6)       # 10 ln 8 / 120
    0.173287
    """
    return n_symbols * float(np.log(n_categories)) / (seq_len + 2 * n_symbols)


def copy_task(seq_len, batch, seed=0, n_symbols=10, n_categories=8, dtype="float64"):
    """One batch of the copy task, ``seq_len + 2 * n_symbols`` steps long.

    Input classes (one-hot, ``n_categories + 2`` channels): 0 blank, 1..n_categories the
    symbols, ``n_categories + 1`` the delimiter. The input shows the symbols in steps
    ``[0, n_symbols)``, blanks, the delimiter at step ``n_symbols + seq_len - 1``, then
    blanks; the target is blank (class 0) until the last ``n_symbols`` steps, which
    must repeat the symbols. Targets are class indices in ``[0, n_categories]``.

    Returns
    -------
    x : (seq_len + 2 n_symbols, batch, n_categories + 2), one-hot
    labels : (seq_len + 2 n_symbols, batch) int64

    Examples
    --------
    >>> x, labels = copy_task(seq_len=3, batch=1, seed=0, n_symbols=2, n_categories=4)
    >>> x.argmax(axis=-1)[:, 0].tolist()[2:], labels[:, 0].tolist()[:5]
    ([0, 0, 5, 0, 0], [0, 0, 0, 0, 0])
    >>> bool((labels[-2:, 0] == x.argmax(axis=-1)[:2, 0]).all())
    True
    """
    seq_len = check_positive_int("seq_len", seq_len)
    batch = check_positive_int("batch", batch)
    n_symbols = check_positive_int("n_symbols", n_symbols)
    n_categories = check_positive_int("n_categories", n_categories)
    dtype = _float_dtype(dtype)
    rng = np.random.default_rng(seed_sequence(seed))
    symbols = rng.integers(1, n_categories + 1, (n_symbols, batch))
    n_steps = seq_len + 2 * n_symbols
    inputs = np.zeros((n_steps, batch), np.int64)
    inputs[:n_symbols] = symbols
    inputs[n_symbols + seq_len - 1] = n_categories + 1
    labels = np.zeros((n_steps, batch), np.int64)
    labels[-n_symbols:] = symbols
    x = np.eye(n_categories + 2, dtype=dtype)[inputs]
    return x, labels


def _batch_for_step(task, root, kwargs, step):
    return task(seed=child(root, step), **kwargs)


def minibatches(task, seed=0, **kwargs):
    """A function ``step -> task(**kwargs, seed=child step of seed)``: the training data
    of ``dynamics.training.train``.

    >>> data = minibatches(adding_problem, seed=3, seq_len=10, batch=4)
    >>> bool(np.array_equal(data(7)[0], data(7)[0])), bool(np.array_equal(data(7)[1], data(8)[1]))
    (True, False)
    """
    return functools.partial(_batch_for_step, task, seed_sequence(seed), kwargs)
