"""``kernels.blas``: C = op(A) op(B) + beta C by NumPy's BLAS from numba, on views of
any offset and row stride, and the fallback to SciPy's BLAS."""
import ctypes

import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.lib.stride_tricks import as_strided
from numba import types

from kernels.blas import (ROW_MAJOR, AS_IT_IS, TRANSPOSED, add_product_transposed_by_blas,
                          add_transposed_product_by_blas, gemm, numpy_gemm_addresses,
                          rows_for_blas, scipy_gemm)


@numba.njit
def product(a, b, out, transposed_a):
    if transposed_a:
        add_transposed_product_by_blas(a, b, out)
    else:
        add_product_transposed_by_blas(a, b, out)


@numba.njit
def readable(a):
    return rows_for_blas(a)


def view(rng, rows, columns, offset, pad, dtype):
    """A view that starts past its buffer's first row and column, rows ``pad`` apart."""
    buffer = rng.normal(size=(rows + offset, columns + offset + pad)).astype(dtype)
    return buffer[offset:, offset:offset + columns]


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), k=st.integers(0, 40),
       m=st.integers(0, 30), n=st.integers(0, 30), pad=st.integers(0, 5),
       offset=st.integers(0, 3), transposed_a=st.booleans(), seed=st.integers(0, 2**31))
def test_adds_the_product_to_views(dtype, k, m, n, pad, offset, transposed_a, seed):
    rng = np.random.default_rng(seed)
    a = view(rng, k, m, offset, pad, dtype) if transposed_a else view(rng, m, k, offset, pad, dtype)
    b = view(rng, k, n, offset, pad, dtype) if transposed_a else view(rng, n, k, offset, pad, dtype)
    out = rng.normal(size=(m, n + pad)).astype(dtype)[:, :n]
    assert readable(a) and readable(b) and readable(out)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected = out + (a64.T @ b64 if transposed_a else a64 @ b64.T)
    before = out.base.copy()
    product(a, b, out, transposed_a)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance * (k + 1))
    np.testing.assert_array_equal(out.base[:, n:], before[:, n:])  # the padding untouched


def test_strided_columns_are_not_for_blas():
    a = np.zeros((4, 6))
    assert not readable(a[:, ::2])
    assert readable(a[:, :3]) and readable(a[1:, 1:])


@numba.njit([f"void({t}[:, :], b1, {t}[:, :], b1, f8, {t}[:, :])" for t in ("f4", "f8")])
def general_product(a, transpose_a, b, transpose_b, beta, out):  # any layout: one compile
    gemm(a, transpose_a, b, transpose_b, beta, out)


def operand(rng, shape, transpose, layout, dtype):
    """A matrix whose op() has ``shape``, stored transposed where asked, as a view laid
    out as ``layout`` says: "rows" (readable by BLAS as it is), "strided" (every other
    column: BLAS cannot read it) or "columns" (column-major: neither can it)."""
    stored = shape[::-1] if transpose else shape
    if layout == "strided":
        return rng.normal(size=(stored[0], 2 * stored[1])).astype(dtype)[:, ::2]
    if layout == "columns":
        return np.asfortranarray(rng.normal(size=stored).astype(dtype))
    return rng.normal(size=stored).astype(dtype)


layouts = st.sampled_from(["rows", "strided", "columns"])


@settings(max_examples=80, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), k=st.integers(0, 20),
       m=st.integers(0, 12), n=st.integers(0, 12), transposes=st.tuples(st.booleans(), st.booleans()),
       beta=st.sampled_from([0.0, 1.0]), layout=st.tuples(layouts, layouts, layouts),
       seed=st.integers(0, 2**31))
def test_gemm_writes_or_adds_for_any_layout(dtype, k, m, n, transposes, beta, layout, seed):
    """Every layout gives op(a) op(b) + beta out: the ones BLAS cannot read are copied."""
    rng = np.random.default_rng(seed)
    a = operand(rng, (m, k), transposes[0], layout[0], dtype)
    b = operand(rng, (k, n), transposes[1], layout[1], dtype)
    out = operand(rng, (m, n), False, layout[2], dtype)
    if beta == 0.0:
        out[...] = np.nan  # overwritten, never read
    op = [x.T if t else x for x, t in zip((a, b), transposes)]
    expected = op[0].astype(np.float64) @ op[1].astype(np.float64)
    if beta:
        expected += out
    general_product(a, transposes[0], b, transposes[1], beta, out)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance * (k + 1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("row_stride", [0, 1, 2])
def test_single_rows_have_any_row_stride(dtype, row_stride):
    """NumPy gives a length-1 axis any stride (the weights of a one-unit RNN, permuted,
    had rows one element apart): BLAS must still be given a valid leading dimension."""
    rng = np.random.default_rng(1)
    size = np.dtype(dtype).itemsize

    def one_row(n):  # (1, n), its rows ``row_stride`` elements apart
        return as_strided(rng.normal(size=n).astype(dtype), (1, n), (row_stride * size, size))

    a, b, out = one_row(3), rng.normal(size=(3, 2)).astype(dtype), one_row(2)
    assert readable(a) and readable(out)
    general_product(a, False, b, False, 0.0, out)
    np.testing.assert_allclose(out, a.astype(np.float64) @ b, rtol=1e-5)
    b_row = one_row(2)  # a^T b_row: a column times a row
    out = np.zeros((3, 2), dtype)
    general_product(a, True, b_row, False, 0.0, out)
    np.testing.assert_allclose(out, a.T.astype(np.float64) @ b_row, rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_scipy_fallback_has_the_cblas_interface(dtype):
    """Where NumPy's BLAS is not the OpenBLAS of its wheels, the kernels' entry point is
    ``scipy_gemm``: row-major C = alpha op(A) op(B) + beta C, like cblas_?gemm."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)).astype(dtype), rng.normal(size=(4, 3)).astype(dtype)
    out = rng.normal(size=(5, 4)).astype(dtype)
    expected = 2.0 * a @ b.T + 0.5 * out
    function = scipy_gemm(types.float32 if dtype == np.float32 else types.float64)
    scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    pointer = ctypes.POINTER(scalar)
    call = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                            ctypes.c_int64, ctypes.c_int64, scalar, pointer, ctypes.c_int64,
                            pointer, ctypes.c_int64, scalar, pointer,
                            ctypes.c_int64)(function.address)
    call(ROW_MAJOR, AS_IT_IS, TRANSPOSED, 5, 4, 3, 2.0, a.ctypes.data_as(pointer), 3,
         b.ctypes.data_as(pointer), 3, 0.5, out.ctypes.data_as(pointer), 4)
    np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-13)


def test_numpys_own_blas_is_found_where_its_wheels_carry_it():
    """The fast path is not silently lost: with NumPy's wheel's OpenBLAS (scipy-openblas,
    64-bit integers) the kernels call it."""
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    if blas.get("name") != "scipy-openblas" or "USE64BITINT" not in blas.get(
            "openblas configuration", ""):
        pytest.skip(f"NumPy's BLAS here is {blas.get('name')}: the SciPy fallback is used")
    addresses = numpy_gemm_addresses()
    assert addresses is not None and all(addresses.values())


def test_shapes_that_do_not_match_are_refused():
    """BLAS would read past the end of a factor: a clear error instead."""
    a, b = np.ones((3, 2)), np.ones((3, 2))
    for transpose_a, transpose_b, out in ((False, False, np.zeros((3, 2))),  # 2 terms, 3 rows
                                          (True, False, np.zeros((3, 2))),   # out is 2 x 2
                                          (False, True, np.zeros((3, 2)))):  # out is 3 x 3
        with pytest.raises(ValueError, match="shapes"):
            general_product(a, transpose_a, b, transpose_b, 0.0, out)
    general_product(a, True, b, False, 0.0, np.zeros((2, 2)))  # a^T b fits
