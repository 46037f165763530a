"""Parallel work items whose code is compiled once: ``run_items(item, n, *args)``.

A parallel kernel here is an ordinary ``@jit`` function ``item(i, *args)`` that does
work item ``i``, and ``run_items`` runs items 0 .. n-1 on numba's threads. The items'
code is not compiled inside a ``prange`` loop: numba compiles a parallel loop's body,
with every function it calls, four times (the loop body, numba's gufunc wrapper, its
parallel wrapper and the function around the loop, each linking the one before and
optimising it again). Here ``item`` is compiled once per argument types (and cached
like every kernel), and one small parallel loop calls it by its address: the cold
compile of forward and BPTT (four cells, two dtypes) took 55-79 s instead of 110 on
the 2-core Zen 3. A call costs about 5 microseconds more in Python (a fingerprint of each
argument's type, to find the compiled item).

Items must be independent: no two write the same memory, and none reads what another
writes. Which thread runs which item does not change any result.
"""
import numpy as np
from numba import prange, types
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.core.typing import signature
from numba.core.typing.typeof import Purpose, typeof
from numba.extending import intrinsic

from kernels._jit import jit


@intrinsic
def _call_item(typingctx, address, item, args):
    """Call the compiled function at ``address`` as ``f(item, *args)`` (numba's calling
    convention; ``address`` must be that of a function compiled for exactly these
    argument types, which ``run_items`` ensures)."""
    argument_types = (types.int64,) + tuple(args.types)

    def codegen(context, builder, sig, llargs):
        function_address, index, packed = llargs
        function_type = context.call_conv.get_function_type(types.none, argument_types)
        function = builder.inttoptr(function_address, function_type.as_pointer())
        values = [index] + [builder.extract_value(packed, k) for k in range(len(args.types))]
        status, _ = context.call_conv.call_function(builder, function, types.none,
                                                    argument_types, values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return types.none(address, item, args), codegen


@jit(parallel=True)
def launch(address, n_items, args):
    """Items 0 .. n_items-1 of the function at ``address`` (see ``item_address``), in
    parallel. Callable from ``@jit`` code, for kernels that run items step after step."""
    for item in prange(n_items):
        _call_item(address, np.int64(item), args)


_addresses = {}


def item_address(item, args):
    """Address of ``item`` compiled for (int64, *types of ``args``), compiling it (or
    loading it from the cache) the first time."""
    key = (item, tuple(map(compute_fingerprint, args)))
    address = _addresses.get(key)
    if address is None:
        argument_types = (types.int64,) + tuple(typeof(a, Purpose.argument) for a in args)
        result = item.get_compile_result(signature(types.none, *argument_types))
        address = result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
        _addresses[key] = address
    return address


def run_items(item, n_items, *args):
    """``item(i, *args)`` for i = 0 .. n_items-1, in parallel on numba's threads.

    >>> import numba, numpy as np
    >>> @numba.njit
    ... def square(i, values, out):
    ...     out[i] = values[i] ** 2
    >>> out = np.empty(4)
    >>> run_items(square, 4, np.arange(4.0), out)
    >>> out
    array([0., 1., 4., 9.])
    """
    if n_items > 0:
        launch(item_address(item, args), n_items, args)
