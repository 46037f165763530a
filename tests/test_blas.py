"""``kernels.blas``: C += A^T B and C += A B^T by gemm from numba, on views of any
offset and row stride."""
import numba
import numpy as np
from hypothesis import given, settings, strategies as st

from kernels.blas import (add_product_transposed_by_blas, add_transposed_product_by_blas,
                          rows_for_blas)


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
