"""C += A^T B and C += A B^T by BLAS's gemm, from ``@njit`` code.

numba's ``np.dot(a, b, out)`` overwrites ``out``; summing a product into an existing
matrix then takes a temporary as large as the result (for a parameter gradient, as
large as the weights) and a second pass over it. This calls the same BLAS (SciPy's,
through numba's ``numba_xxgemm`` helper, so the kernels that use it stay cacheable)
with beta = 1. Call it with BLAS limited to one thread
(``dynamics.layer.single_threaded_blas``): its result then depends on nothing but the
input.
"""
import numpy as np
from numba import types
from numba.extending import overload
from numba.np.linalg import ensure_blas

from kernels._jit import jit

ensure_blas()


def _gemm_signature(dtype):
    pointer = types.CPointer(dtype)
    return types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp,
                      pointer, pointer, types.intp, pointer, types.intp, pointer, pointer,
                      types.intp)


#: numba's gemm helper, per dtype: (kind, transa, transb, m, n, k, alpha, a, lda, b, ldb,
#: beta, c, ldc), column-major as BLAS is.
_GEMM = {types.float32: types.ExternalFunction("numba_xxgemm", _gemm_signature(types.float32)),
         types.float64: types.ExternalFunction("numba_xxgemm", _gemm_signature(types.float64))}


@jit
def rows_for_blas(a):
    """Whether BLAS can read 2-D ``a`` as it is: empty, or unit stride along its rows
    and rows at least a row's length apart (a whole number of elements)."""
    size = a.itemsize
    return a.size == 0 or ((a.shape[1] <= 1 or a.strides[1] == size)
                           and a.strides[0] % size == 0
                           and a.strides[0] >= max(1, a.shape[1]) * size)


def _gemm_add(a, transpose_a, b, transpose_b, out):
    """out += op(a) op(b), op a transpose where asked: one gemm with beta = 1."""


@overload(_gemm_add)
def _gemm_add_impl(a, transpose_a, b, transpose_b, out):
    gemm = _GEMM[out.dtype]
    kind = ord("s" if out.dtype == types.float32 else "d")

    def impl(a, transpose_a, b, transpose_b, out):
        m, n = out.shape
        n_terms = a.shape[0] if transpose_a else a.shape[1]
        if m == 0 or n == 0 or n_terms == 0:
            return
        one = np.ones(1, out.dtype)
        size = out.itemsize
        # BLAS is column-major: a row-major matrix is its transpose there, so BLAS
        # computes out^T = op(b)^T op(a)^T, and a factor that is transposed here is not
        # transposed there
        gemm(kind, ord("t") if transpose_b else ord("n"), ord("t") if transpose_a else ord("n"),
             n, m, n_terms, one.ctypes, b.ctypes, b.strides[0] // size, a.ctypes,
             a.strides[0] // size, one.ctypes, out.ctypes, out.strides[0] // size)

    return impl


@jit
def add_transposed_product_by_blas(a, b, out):
    """out += a^T b for a (k, m), b (k, n), out (m, n) whose rows BLAS can read
    (``rows_for_blas``; the caller checks)."""
    _gemm_add(a, True, b, False, out)


@jit
def add_product_transposed_by_blas(a, b, out):
    """out += a b^T for a (m, k), b (n, k), out (m, n) whose rows BLAS can read
    (``rows_for_blas``; the caller checks)."""
    _gemm_add(a, False, b, True, out)
