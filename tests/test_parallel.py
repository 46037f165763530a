"""kernels.parallel: items compiled once and run in parallel by address."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels._jit import jit
from kernels.parallel import item_address, launch, run_items


@jit
def _square_into(item, values, out, offset):
    out[item] = values[item] * values[item] + offset


@jit
def _add(item, values, out):
    out[item] += values[item]


@jit
def _steps(address, n_steps, values, out):
    """``_add``'s items launched once per step, as a kernel that runs items step after
    step does."""
    for _ in range(n_steps):
        launch(address, values.shape[0], (values, out))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 40), dtype=st.sampled_from(["float32", "float64"]),
       step=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_every_item_runs_once_for_any_dtype_and_layout(n, dtype, step, seed):
    values = np.random.default_rng(seed).standard_normal(n * step).astype(dtype)[::step]
    out = np.full(n, np.nan, dtype)
    run_items(_square_into, n, values, out, 1.5)
    np.testing.assert_array_equal(out, values * values + np.asarray(1.5, dtype))


def test_each_argument_type_gets_its_own_compiled_item():
    values = np.arange(4.0)
    contiguous = item_address(_square_into, (values, values.copy(), 1.0))
    assert item_address(_square_into, (values, values.copy(), 2.0)) == contiguous
    assert item_address(_square_into, (values.astype("float32"), values.copy(), 1.0)) != contiguous
    assert item_address(_square_into, (np.arange(8.0)[::2], values.copy(), 1.0)) != contiguous
    read_only = values.copy()
    read_only.flags.writeable = False
    assert item_address(_square_into, (read_only, values.copy(), 1.0)) != contiguous


def test_launch_runs_items_step_by_step_inside_jit_code():
    values = np.arange(1.0, 6.0)
    out = np.zeros_like(values)
    _steps(item_address(_add, (values, out)), 3, values, out)
    np.testing.assert_array_equal(out, 3 * values)
