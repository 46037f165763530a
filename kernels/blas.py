"""Matrix products by NumPy's own BLAS, from ``@njit`` code: C = A B, C += A^T B, ...

numba's ``np.dot(a, b, out)`` calls SciPy's BLAS and overwrites ``out``; summing a
product into an existing matrix then takes a temporary as large as the result (for a
parameter gradient, as large as the weights) and a second pass over it. ``gemm`` here
takes beta (0: write, 1: add) and calls the BLAS that NumPy itself uses, found at
import: the wheels' OpenBLAS with 64-bit integers (``scipy_cblas_?gemm64_``). On one
Zen 3 core, float32, GFLOP/s, SciPy 1.17's OpenBLAS 0.3.30 against NumPy 2.4's
0.3.31: (1000 x 64)^T (1000 x 64), a parameter gradient of an ensemble
member, 58.7 / 84.1; (6400 x 512)^T (6400 x 128), an LSTM's, 77.8 / 86.2;
(256 x 256)^2 88.4 / 95.2 (float64 within 1-13 %, never slower). Where NumPy's BLAS
is something else (MKL, Accelerate, a system library), the same entry point forwards
to SciPy's through numba's ``numba_xxgemm`` (``scipy_gemm``), so compiled kernels
(cached on disk, naming the entry point only) run with either.

Call it with BLAS limited to one thread (``dynamics.layer.single_threaded_blas``): its
result then depends on nothing but the input.
"""
import ctypes

import numpy as np
from llvmlite import binding
from numba import cfunc, types
from numba.extending import overload
from numba.np.linalg import ensure_blas
from threadpoolctl import threadpool_info

from kernels._jit import jit
from kernels.memory import any_layout, copy_into

#: CBLAS's enums: row-major storage, a factor as it is or transposed.
ROW_MAJOR, AS_IT_IS, TRANSPOSED = 101, 111, 112


def _cblas_signature(dtype):
    """cblas_?gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    with 64-bit integers."""
    integer, pointer = types.int64, types.CPointer(dtype)
    return types.void(types.intc, types.intc, types.intc, integer, integer, integer, dtype,
                      pointer, integer, pointer, integer, dtype, pointer, integer)


#: The entry point the kernels call, per dtype (its address is registered at import).
ENTRY_POINTS = {types.float32: "recurrent_dynamics_sgemm",
                types.float64: "recurrent_dynamics_dgemm"}
_GEMM = {dtype: types.ExternalFunction(name, _cblas_signature(dtype))
         for dtype, name in ENTRY_POINTS.items()}


def numpy_gemm_addresses():
    """{"s": address, "d": address} of the ILP64 CBLAS gemm of the OpenBLAS that NumPy
    loaded, or None where NumPy's BLAS is another library."""
    for library in threadpool_info():
        if library["user_api"] != "blas" or library["internal_api"] != "openblas":
            continue
        loaded = ctypes.CDLL(library["filepath"])
        try:
            return {kind: ctypes.cast(getattr(loaded, f"scipy_cblas_{kind}gemm64_"),
                                      ctypes.c_void_p).value for kind in "sd"}
        except AttributeError:  # not the scipy-openblas64 build NumPy's wheels carry
            continue
    return None


def _scipy_signature(dtype):
    pointer = types.CPointer(dtype)
    return types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp,
                      pointer, pointer, types.intp, pointer, types.intp, pointer, pointer,
                      types.intp)


def scipy_gemm(dtype):
    """A C function with ``cblas_?gemm``'s row-major interface (``_cblas_signature``)
    that calls SciPy's BLAS through numba's ``numba_xxgemm`` (column-major: it computes
    C^T = op(B)^T op(A)^T)."""
    ensure_blas()
    xxgemm = types.ExternalFunction("numba_xxgemm", _scipy_signature(dtype))
    kind = ord("s" if dtype == types.float32 else "d")
    as_it_is, transposed = ord("n"), ord("t")

    def gemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        factors = np.array([alpha, beta], dtype)
        xxgemm(kind, transposed if trans_b == TRANSPOSED else as_it_is,
               transposed if trans_a == TRANSPOSED else as_it_is, n, m, k, factors.ctypes,
               b, ldb, a, lda, factors[1:].ctypes, c, ldc)

    return cfunc(_cblas_signature(dtype), cache=True)(gemm)


def _register_entry_points():
    addresses = numpy_gemm_addresses()
    for dtype, name in ENTRY_POINTS.items():
        kind = "s" if dtype == types.float32 else "d"
        address = addresses[kind] if addresses else scipy_gemm(dtype).address
        binding.add_symbol(name, address)


_register_entry_points()


@jit
def rows_for_blas(a):
    """Whether BLAS can read 2-D ``a`` as it is: unit stride along its rows, and rows a
    whole number of elements apart, at least a row's length (a matrix of one row or
    none is readable whatever its row stride: NumPy gives length-1 axes any stride)."""
    size = a.itemsize
    return a.size == 0 or ((a.shape[1] <= 1 or a.strides[1] == size)
                           and (a.shape[0] <= 1 or (a.strides[0] % size == 0
                                                    and a.strides[0] >= a.shape[1] * size)))


@jit
def leading_dimension(a):
    """BLAS's row stride of non-empty, readable ``a`` (``rows_for_blas``), in elements:
    for a single row, whatever its stride, the row's length (BLAS insists on that)."""
    return a.strides[0] // a.itemsize if a.shape[0] > 1 else a.shape[1]


@jit(inline=True)
def gemm(a, transpose_a, b, transpose_b, beta, out):
    """out = op(a) op(b) + beta * out, op a transpose where asked, for 2-D arrays of one
    float dtype (shapes that do not match raise ValueError); an array whose rows BLAS
    cannot read as they are (``rows_for_blas``) is copied first, so BLAS never reads
    outside an array. Compiled once per dtype, whatever the layouts
    (``kernels.memory.any_layout``).

    >>> a, b, out = np.arange(6.0).reshape(3, 2), np.ones((3, 2)), np.ones((2, 2))
    >>> gemm(a, True, b, False, 1.0, out)  # out += a^T b
    >>> out.tolist()
    [[7.0, 7.0], [10.0, 10.0]]
    """
    _gemm(any_layout(a), transpose_a, any_layout(b), transpose_b, beta, any_layout(out))


@jit
def _gemm(a, transpose_a, b, transpose_b, beta, out):
    m, n = out.shape
    n_terms = a.shape[0] if transpose_a else a.shape[1]
    if ((a.shape[1] if transpose_a else a.shape[0]) != m
            or (b.shape[1] if transpose_b else b.shape[0]) != n_terms
            or (b.shape[0] if transpose_b else b.shape[1]) != n):
        raise ValueError("gemm: the shapes of op(a), op(b) and out do not match")
    if m == 0 or n == 0:
        return
    if n_terms == 0:  # nothing to multiply (and BLAS refuses empty factors)
        for i in range(m):
            for j in range(n):
                out[i, j] = beta * out[i, j] if beta != 0 else 0.0
        return
    readable = rows_for_blas(out)
    c_rows = out if readable else np.ascontiguousarray(out)
    _cblas_gemm(a if rows_for_blas(a) else np.ascontiguousarray(a), transpose_a,
                b if rows_for_blas(b) else np.ascontiguousarray(b), transpose_b, beta, c_rows)
    if not readable:
        for i in range(m):
            copy_into(c_rows[i], out[i])


def _cblas_gemm(a, transpose_a, b, transpose_b, beta, out):
    """The CBLAS call, for non-empty matrices whose rows BLAS can read."""


@overload(_cblas_gemm)
def _cblas_gemm_impl(a, transpose_a, b, transpose_b, beta, out):
    call = _GEMM[out.dtype]

    def impl(a, transpose_a, b, transpose_b, beta, out):
        m, n = out.shape
        call(ROW_MAJOR, TRANSPOSED if transpose_a else AS_IT_IS,
             TRANSPOSED if transpose_b else AS_IT_IS, m, n,
             a.shape[0] if transpose_a else a.shape[1], 1.0, a.ctypes, leading_dimension(a),
             b.ctypes, leading_dimension(b), beta, out.ctypes, leading_dimension(out))

    return impl


@jit(inline=True)
def product_by_blas(a, b, out):
    """out = a b."""
    gemm(a, False, b, False, 0.0, out)


@jit(inline=True)
def add_transposed_product_by_blas(a, b, out):
    """out += a^T b for a (k, m), b (k, n), out (m, n)."""
    gemm(a, True, b, False, 1.0, out)


@jit(inline=True)
def add_product_transposed_by_blas(a, b, out):
    """out += a b^T for a (m, k), b (n, k), out (m, n)."""
    gemm(a, False, b, True, 1.0, out)
