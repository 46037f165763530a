"""``kernels.blas``: C += A^T B by gemm from numba, on views of any offset and row stride."""
import numba
import numpy as np
from hypothesis import given, settings, strategies as st

from kernels.blas import add_transposed_product_by_blas, rows_for_blas


@numba.njit
def product(a, b, out):
    add_transposed_product_by_blas(a, b, out)


@numba.njit
def readable(a):
    return rows_for_blas(a)


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), k=st.integers(0, 40),
       m=st.integers(0, 30), n=st.integers(0, 30), pad=st.integers(0, 5),
       offset=st.integers(0, 3), seed=st.integers(0, 2**31))
def test_adds_the_transposed_product_to_views(dtype, k, m, n, pad, offset, seed):
    rng = np.random.default_rng(seed)
    # views that start past their buffer's first row and column, rows `pad` apart
    a = rng.normal(size=(k + offset, m + offset + pad)).astype(dtype)[offset:, offset:offset + m]
    b = rng.normal(size=(k + offset, n + offset + pad)).astype(dtype)[offset:, offset:offset + n]
    out = rng.normal(size=(m, n + pad)).astype(dtype)[:, :n]
    assert readable(a) and readable(b) and readable(out)
    expected = out.astype(np.float64) + a.T.astype(np.float64) @ b.astype(np.float64)
    before = out.base.copy()
    product(a, b, out)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance * (k + 1))
    np.testing.assert_array_equal(out.base[:, n:], before[:, n:])  # the padding untouched


def test_strided_columns_are_not_for_blas():
    a = np.zeros((4, 6))
    assert not readable(a[:, ::2])
    assert readable(a[:, :3]) and readable(a[1:, 1:])
