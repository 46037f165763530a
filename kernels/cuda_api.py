"""The one module that imports numba's CUDA target; every GPU kernel gets ``cuda`` here.

Moving to a successor of ``numba-cuda`` is a change to the import below. Importing this
module does not touch a GPU (``numba.cuda`` probes for a driver only when a kernel is
launched or ``cuda.is_available()`` is called), and nothing imports it until a caller
asks for ``backend="cuda"``. With ``NUMBA_ENABLE_CUDASIM=1`` the kernels run in numba's
CUDA simulator (pure Python: slow, for tests at small sizes).

The cell arithmetic is the CPU kernels' own: ``device`` recompiles the Python source of
an ``@njit`` function of ``kernels.cells`` as a CUDA device function, with the scalar
activations it calls bound to device versions (libdevice's ``tanh`` and ``exp``, which
the GPU evaluates in hardware-friendly form; the CPU's arithmetic-only ``exp`` exists to
make LLVM vectorise, which a GPU does not need).
"""
import math
import types

import numpy as np
from numba import cuda, float32, float64
from numba.cuda.cudadrv.dummyarray import Array as Layout

from kernels import activations, cells

__all__ = ["cuda", "device", "numba_float", "require_gpu", "view", "TILE"]

#: Side of the square tiles of the matrix-product kernels (TILE x TILE threads).
TILE = 16


def require_gpu():
    """Raise a clear error unless numba can use a CUDA GPU (or its simulator)."""
    if not cuda.is_available():
        raise RuntimeError(
            "backend='cuda' needs an NVIDIA GPU with its driver and the numba-cuda package "
            "(pip install 'recurrent-dynamics[cuda]'); numba found no usable CUDA device "
            "(numba.cuda.detect() says why). Use backend='cpu', or set "
            "NUMBA_ENABLE_CUDASIM=1 to run the CUDA kernels in numba's simulator.")


def view(array, index):
    """``array[index]`` (integers and slices) of a device array, in time independent of
    its size. numba-cuda's own indexing lists every contiguous run of a strided result in
    Python: 1.5 s for a column slice of a tape of 4 million rows. The simulator's arrays
    (and NumPy's) are indexed as they are."""
    if not hasattr(array, "gpu_data"):
        return array[index]
    layout = Layout.from_desc(0, array.shape, array.strides, array.dtype.itemsize)[index]
    begin, end = layout.extent
    return type(array)(layout.shape, layout.strides, array.dtype, stream=array.stream,
                       gpu_data=array.gpu_data.view(begin, end if layout.size else begin))


def numba_float(dtype):
    """numba's scalar type for float32 or float64 (shared arrays need it at compile time)."""
    return {np.dtype(np.float32): float32, np.dtype(np.float64): float64}[np.dtype(dtype)]


def device(function, **bindings):
    """``function`` (an ``@njit`` dispatcher) recompiled as a CUDA device function, its
    global names rebound to ``bindings`` (the device versions of what it calls). The
    ``@njit`` functions it calls are recompiled the same way, recursively, so the bindings
    reach every level (``lstm_unit`` calls ``lstm_gate``, which calls ``sigmoid``)."""
    source = function.py_func
    names = dict(source.__globals__)
    for name in source.__code__.co_names:
        callee = names.get(name)
        if name not in bindings and hasattr(callee, "py_func"):
            names[name] = device(callee, **bindings)
    names.update(bindings)
    rebound = types.FunctionType(source.__code__, names, source.__name__, source.__defaults__,
                                 source.__closure__)
    return cuda.jit(device=True)(rebound)


@cuda.jit(device=True)
def _tanh(x):
    return math.tanh(x)


@cuda.jit(device=True)
def _sigmoid(x):
    one = type(x)(1.0)
    return one / (one + math.exp(-x))


ACTIVATIONS = dict(tanh=_tanh, sigmoid=_sigmoid, relu=device(activations.relu),
                   dtanh=device(activations.dtanh), dsigmoid=device(activations.dsigmoid),
                   drelu=device(activations.drelu))

# The per-unit arithmetic of ``kernels.cells``, as device functions.
rnn_unit = device(cells.rnn_unit, **ACTIVATIONS)
rnn_unit_slope = device(cells.rnn_unit_slope, **ACTIVATIONS)
lstm_unit = device(cells.lstm_unit, **ACTIVATIONS)
lstm_unit_backward = device(cells.lstm_unit_backward, **ACTIVATIONS)
lstm_unit_linearisation = device(cells.lstm_unit_linearisation, **ACTIVATIONS)
gru_unit = device(cells.gru_unit, **ACTIVATIONS)
gru_unit_backward = device(cells.gru_unit_backward, **ACTIVATIONS)
gru_unit_linearisation = device(cells.gru_unit_linearisation, **ACTIVATIONS)
