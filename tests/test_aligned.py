"""``kernels.memory``: cache-line aligned arrays, the loop copies of the hot loops, and
prefetching, which must never change a value."""
import numba
import numpy as np
from hypothesis import given, settings, strategies as st

import dynamics
from dynamics.layer import layer_forward
from kernels.cells import pack_member_panels, pack_panels
from kernels.memory import (CACHE_LINE_BYTES, aligned_buffer, aligned_copy, aligned_empty,
                            copy_into, fill, prefetch)

shapes = st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple)
dtypes = st.sampled_from([np.float32, np.float64])


@numba.njit
def buffer_of(size, like):
    return aligned_buffer(size, like)


@numba.njit
def copy_fill_prefetch(source, target, value, filled, fetched):
    copy_into(source, target)
    fill(filled, value)
    prefetch(fetched)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dtype=dtypes)
def test_aligned_arrays_start_on_a_cache_line(shape, dtype):
    size = int(np.prod(shape))
    source = np.arange(size, dtype=dtype).reshape(shape)
    a, copy = aligned_empty(shape, dtype), aligned_copy(source)
    b = buffer_of(size, np.zeros(1, dtype))
    for array in (a, copy):
        assert array.shape == shape and array.dtype == dtype and array.flags.c_contiguous
    assert b.shape == (size,) and b.dtype == dtype
    np.testing.assert_array_equal(copy, source)
    if size:  # (an empty array has no data to align)
        for array in (a, copy, b):
            assert array.ctypes.data % CACHE_LINE_BYTES == 0


@settings(max_examples=20, deadline=None)
@given(n=st.integers(0, 40), dtype=dtypes, seed=st.integers(0, 2**31))
def test_loop_copies_and_prefetch_change_only_their_targets(n, dtype, seed):
    rng = np.random.default_rng(seed)
    source, target, filled = (rng.standard_normal(n).astype(dtype) for _ in range(3))
    fetched = rng.standard_normal((3, n)).astype(dtype)
    before = (source.copy(), fetched.copy())
    copy_fill_prefetch(source, target, dtype(2.5), filled, fetched)
    np.testing.assert_array_equal(target, source)
    np.testing.assert_array_equal(filled, np.full(n, 2.5, dtype))
    np.testing.assert_array_equal(source, before[0])
    np.testing.assert_array_equal(fetched, before[1])
    copy_fill_prefetch(source, target, dtype(0.0), filled, fetched[:, ::2])  # not C: no-op
    np.testing.assert_array_equal(fetched, before[1])


def test_packed_weights_and_the_tape_are_aligned():
    """What the kernels read at every step starts on a cache line (a 16-byte offset cost
    15-25 % of a small network's step)."""
    b = np.zeros((3, 130), np.float32)[:, 1:]  # a NumPy array off its cache line
    assert pack_panels(b, 64).ctypes.data % CACHE_LINE_BYTES == 0
    assert pack_member_panels(np.zeros((2, 5, 33)), 32).ctypes.data % CACHE_LINE_BYTES == 0
    cell = dynamics.LSTM.init(3, 5, seed=0)
    x = np.zeros((4, 2, 3))
    tape = layer_forward(cell, x, np.zeros((1, 2, 5)), np.zeros((1, 2, 5)), False)
    for array in (tape.p, tape.hs, tape.cs):
        assert array.ctypes.data % CACHE_LINE_BYTES == 0
