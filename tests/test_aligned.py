"""``kernels.memory``: cache-line aligned arrays, the loop copies of the hot loops,
prefetching, which must never change a value, and the any-layout view."""
import numba
import numpy as np
from hypothesis import given, settings, strategies as st

import dynamics
from dynamics.layer import layer_forward
from kernels.cells import pack_member_panels, pack_panels
from kernels.memory import (CACHE_LINE_BYTES, add_into, aligned_buffer, aligned_copy,
                            aligned_empty, any_layout, copy_array, copy_into, fill, prefetch)

shapes = st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple)
dtypes = st.sampled_from([np.float32, np.float64])


@numba.njit
def buffer_of(size, like):
    return aligned_buffer(size, like)


@numba.njit
def copy_fill_prefetch(source, target, value, filled, fetched, added):
    copy_into(source, target)
    fill(filled, value)
    prefetch(fetched)
    add_into(source, added)


@numba.njit
def copy_whole(source, target):
    copy_array(source, target)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**31))
def test_copy_array_copies_every_element(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    source, target = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
    copy_whole(source, target)
    np.testing.assert_array_equal(target, source)


@numba.njit
def through_any_layout(a, value):
    """Write ``value`` into a[0, 0] through the any-layout view; return that view."""
    view = any_layout(a)
    view[0, 0] = value
    return view


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
    added = rng.standard_normal(n).astype(dtype)
    before = (source.copy(), fetched.copy(), added.copy())
    copy_fill_prefetch(source, target, dtype(2.5), filled, fetched, added)
    np.testing.assert_array_equal(target, source)
    np.testing.assert_array_equal(added, before[2] + source)
    np.testing.assert_array_equal(filled, np.full(n, 2.5, dtype))
    np.testing.assert_array_equal(source, before[0])
    np.testing.assert_array_equal(fetched, before[1])
    copy_fill_prefetch(source, target, dtype(0.0), filled, fetched[:, ::2], added)  # not C
    np.testing.assert_array_equal(fetched, before[1])


@settings(max_examples=20, deadline=None)
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 6)), dtype=dtypes,
       view=st.sampled_from(["C", "F", "strided"]))
def test_any_layout_is_the_same_array(shape, dtype, view):
    """``any_layout`` changes only the type: same values, strides and memory (a write
    through it shows in the original, and the original outlives the call)."""
    base = np.arange(4 * shape[0] * shape[1], dtype=dtype).reshape(2 * shape[0], 2 * shape[1])
    a = {"C": base[:shape[0], :shape[1]].copy(), "F": base[:shape[1], :shape[0]].T,
         "strided": base[::2, ::2]}[view]
    expected = a.copy()
    expected[0, 0] = -1
    result = through_any_layout(a, dtype(-1))
    np.testing.assert_array_equal(a, expected)
    np.testing.assert_array_equal(result, expected)
    assert result.strides == a.strides
    assert np.shares_memory(result, a)


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
