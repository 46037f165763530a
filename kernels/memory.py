"""Memory for the step loops: aligned arrays, loop copies and prefetching.

NumPy's arrays start wherever ``malloc`` puts them (16-byte aligned) and numba's on 32
bytes, so a 64-byte vector load from them can span two cache lines, which costs a
second access. Weights read at every step, and the states beside them, are allocated
here instead (measured on one Zen 5 core, a float32 64 x 64 matrix-vector product and
tanh: 105 ns aligned, 123 ns 16 bytes off; a float32 128 x 128, 640 and 800 ns).
``copy_into``, ``copy_array``, ``add_into`` and ``fill`` replace numba's slice
assignment and in-place operators in the kernels (faster in step loops, and a small
fraction of their code to compile: a broadcasting ``a[r] = b[r, :n]`` is 2,800 lines of
LLVM IR, the loop 650), and ``prefetch`` asks for rows that the hardware prefetcher does
not foresee.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic

from kernels._jit import jit

#: Bytes of a cache line (and of an AVX-512 vector).
CACHE_LINE_BYTES = 64


def aligned_empty(shape, dtype):
    """``np.empty(shape, dtype)`` with its data on a cache line (NumPy side)."""
    dtype = np.dtype(dtype)
    n_bytes = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(n_bytes + CACHE_LINE_BYTES, np.uint8)
    skip = -buffer.ctypes.data % CACHE_LINE_BYTES
    return buffer[skip:skip + n_bytes].view(dtype).reshape(shape)


def aligned_copy(array):
    """A C-contiguous copy of ``array`` with its data on a cache line."""
    copy = aligned_empty(array.shape, array.dtype)
    copy[...] = array
    return copy


@jit
def aligned_buffer(size, like):
    """A 1-D array of ``size`` elements of ``like``'s dtype whose data starts on a cache
    line (numba side; reshape it as needed)."""
    per_line = CACHE_LINE_BYTES // like.itemsize
    buffer = np.empty(size + per_line, like.dtype)
    skip = (-(buffer.ctypes.data // like.itemsize)) % per_line
    return buffer[skip:skip + size]


@jit(inline=True)
def copy_into(source, target):
    """target[:] = source for 1-D arrays of one length, as the explicit loop that LLVM
    vectorises (numba's slice assignment spends 15-35 ns per call on broadcasting checks:
    more than a step of a small network's cell)."""
    for i in range(target.shape[0]):
        target[i] = source[i]


@jit(inline=True)
def copy_array(source, target):
    """target[...] = source for contiguous arrays of one shape, any number of dimensions
    (flattened: numba's ``reshape`` refuses arrays that are not contiguous)."""
    copy_into(source.reshape(source.size), target.reshape(target.size))


@jit(inline=True)
def add_into(source, target):
    """target[:] += source for 1-D arrays of one length (see ``copy_into``)."""
    for i in range(target.shape[0]):
        target[i] += source[i]


@jit(inline=True)
def fill(target, value):
    """target[:] = value for a 1-D array (see ``copy_into``)."""
    for i in range(target.shape[0]):
        target[i] = value


@intrinsic
def any_layout(typingctx, array):
    """``array`` itself, typed as of any layout ('A'): a function called with it is
    compiled once for all layouts instead of once per layout (C, F, A), where knowing
    the layout gains nothing (loads at run-time strides, as in the register products).
    """
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):  # the same array struct, one more owner
        return impl_ret_borrowed(context, builder, signature.return_type, args[0])

    return array.copy(layout="A")(array), codegen


@intrinsic
def prefetch(typingctx, array):
    """Ask the cache to fetch the lines of a C-contiguous array that a loop will read a
    few iterations later (LLVM's ``llvm.prefetch``; nothing is read now, nothing can
    fault). For rows the hardware prefetcher does not foresee: a walk back through time,
    or a time-major array read one member at a time, whose rows lie pages apart.
    An array that numba does not know to be C-contiguous is left to the hardware.
    """
    if not isinstance(array, types.Array):
        return None

    def codegen(context, builder, signature, args):
        if signature.args[0].layout != "C":
            return context.get_dummy_value()
        data = context.make_array(signature.args[0])(context, builder, args[0])
        bytes_ = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [bytes_, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        start = builder.bitcast(data.data, bytes_)
        size = builder.mul(data.nitems, data.itemsize)
        line = ir.Constant(size.type, CACHE_LINE_BYTES)
        with cgutils.for_range_slice(builder, ir.Constant(size.type, 0), size, line) as (offset, _):
            # read, keep in all cache levels, data cache
            builder.call(fetch, [builder.gep(start, [offset]), ir.Constant(i32, 0),
                                 ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(array), codegen
