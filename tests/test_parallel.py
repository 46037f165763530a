"""kernels.parallel: items compiled once and run in parallel by address."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels._jit import jit
from kernels.parallel import (_launch, call_address, function_address, run_items,
                              run_steps)


@jit
def _square_into(item, values, out, offset):
    out[item] = values[item] * values[item] + offset


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 40), dtype=st.sampled_from(["float32", "float64"]),
       step=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_every_item_runs_once_for_any_dtype_and_layout(n, dtype, step, seed):
    values = np.random.default_rng(seed).standard_normal(n * step).astype(dtype)[::step]
    out = np.full(n, np.nan, dtype)
    run_items(_square_into, n, values, out, 1.5)
    np.testing.assert_array_equal(out, values * values + np.asarray(1.5, dtype))


def test_each_argument_type_gets_its_own_compiled_function():
    values = np.arange(4.0)

    def address(v, offset=1.0):
        return function_address(_square_into, (0, v, values.copy(), offset))

    contiguous = address(values)
    assert address(values, 2.0) == contiguous
    assert address(values.astype("float32")) != contiguous
    assert address(np.arange(8.0)[::2]) != contiguous
    read_only = values.copy()
    read_only.flags.writeable = False
    assert address(read_only) != contiguous


@jit
def _mixed(item, pair, flag, scale, out):
    (values, offset), counts = pair
    out[item] = (values[item] + offset) * scale if flag else -1.0
    counts[item] += 1


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 9), flag=st.booleans(), dtype=st.sampled_from(["float32", "float64"]))
def test_items_get_nested_tuples_flags_and_scalars_through_one_parallel_loop(n, flag, dtype):
    """Arguments of every kind reach the items as they were passed (through the launch's
    copy of them); and one parallel loop, compiled once, runs items of every type."""
    values = np.arange(n, dtype=dtype)
    out = np.zeros(n, dtype)
    counts = np.zeros(n, np.int64)
    run_items(_mixed, n, ((values, 0.5), counts), flag, np.float32(2.0), out)
    run_items(_square_into, n, values, out[::-1].copy(), 1.0)
    want = (values + np.asarray(0.5, dtype)) * np.asarray(2.0, dtype) if flag else -np.ones(n)
    np.testing.assert_array_equal(out, want.astype(dtype))
    np.testing.assert_array_equal(counts, 1)
    assert len(_launch.signatures) == 1


@jit
def _scale_step(item, s, fixed):
    """Step s: values[(s + 1) % 2] = factor * values[s % 2] (the pair by parity)."""
    (values, factor), _ = fixed
    values[(s + 1) % 2, item] = factor * values[s % 2, item]


@jit
def _record_step(item, s, fixed):
    (values, _), log = fixed
    log[s + 2, item] = values[(s + 1) % 2, item]  # (s >= -2)


@settings(max_examples=25, deadline=None)
@given(n_items=st.integers(0, 5), first=st.integers(-2, 3), n_steps=st.integers(0, 7),
       every=st.integers(0, 3))
def test_run_steps_runs_steps_in_order_and_finishes_every_few_steps(n_items, first, n_steps,
                                                                    every):
    """Each step sees the one before (the values double per step), and the finishing
    items run after every ``every``-th step and the last, with a nested tuple of
    arguments. (No namedtuple defined here: the cache index of ``_drive`` and of the
    trampolines would then import this module wherever it is loaded.)"""
    values = np.zeros((2, n_items))
    values[first % 2] = np.arange(1.0, n_items + 1)
    log = np.full((first + n_steps + 2, n_items), np.nan)
    run_steps(_scale_step, n_items, first, first + n_steps, ((values, 2.0), log),
              finish=_record_step, n_finish_items=n_items, every=every)
    start = np.arange(1.0, n_items + 1)
    np.testing.assert_array_equal(values[(first + n_steps) % 2], start * 2.0 ** n_steps)
    for j in range(n_steps):
        s = first + j
        finished = every > 0 and ((j + 1) % every == 0 or j + 1 == n_steps)
        want = start * 2.0 ** (j + 1) if finished else np.full(n_items, np.nan)
        np.testing.assert_array_equal(log[s + 2], want)


@jit
def _scaled_add(x, pair):
    y, factor = pair
    if factor < 0:
        raise ValueError("negative factor")
    for i in range(x.shape[0]):
        y[i] += factor * x[i]


@jit
def _add_scaled_by(address, x, y, factors):
    for factor in factors:
        call_address(address, (x, (y, factor)))


def test_call_address_calls_one_compiled_function_with_nested_arguments_and_errors():
    x, y = np.arange(4.0), np.zeros(4)
    address = function_address(_scaled_add, (x, (y, 1.0)))
    assert function_address(_scaled_add, (x, (y, 5.0))) == address
    _add_scaled_by(address, x, y, np.array([2.0, 3.0]))
    np.testing.assert_array_equal(y, 5 * x)
    with pytest.raises(ValueError, match="negative factor"):
        _add_scaled_by(address, x, y, np.array([1.0, -1.0]))
    np.testing.assert_array_equal(y, 6 * x)  # (the call before the error was made)
