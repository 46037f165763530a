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
writes. Which thread runs which item does not change any result. Work that goes step
by step, each step's items in parallel, runs its step loop compiled too
(``run_steps``): a launch costs a few microseconds, a Python loop around it several
times more. A large routine that several kernels call is called by address the same
way (``call_address``), compiled once instead of copied into each of them.
"""
import numpy as np
from numba import prange, types
from numba._dispatcher import compute_fingerprint
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.core.typing import signature
from numba.core.typing.typeof import Purpose, typeof
from numba.extending import intrinsic

from kernels._jit import jit


def _leaves(ty):
    """The types of a nested tuple's elements that are not tuples, in order."""
    if isinstance(ty, types.BaseTuple):
        return [leaf for t in ty.types for leaf in _leaves(t)]
    return [ty]


@intrinsic
def _flatten(typingctx, args):
    """A nested tuple as the flat tuple of its elements that are not tuples (numba's
    parallel loops take no tuple inside a tuple). A function whose arguments are the
    nested tuple's elements is called with the same machine-level arguments as with the
    flat one: numba's calling convention flattens tuples."""
    def codegen(context, builder, sig, llargs):
        values = []

        def collect(ty, value):
            if isinstance(ty, types.BaseTuple):
                for k, t in enumerate(ty.types):
                    collect(t, builder.extract_value(value, k))
            else:
                values.append(value)

        collect(args, llargs[0])
        flat = context.make_tuple(builder, sig.return_type, values)
        return impl_ret_borrowed(context, builder, sig.return_type, flat)

    return types.Tuple(_leaves(args))(args), codegen


@intrinsic
def call_address(typingctx, address, args):
    """Call the compiled function at ``address`` as ``f(*args)``, from ``@jit`` code
    (numba's calling convention; errors propagate). ``address`` must be that of a
    function compiled for exactly these argument types, or for a nesting of them into
    tuples (``function_address``): a callee called so is compiled once, where a direct
    call links a copy of it into every caller, which LLVM then optimises again."""
    argument_types = tuple(args.types)

    def codegen(context, builder, sig, llargs):
        function_address, packed = llargs
        function_type = context.call_conv.get_function_type(types.none, argument_types)
        function = builder.inttoptr(function_address, function_type.as_pointer())
        values = [builder.extract_value(packed, k) for k in range(len(argument_types))]
        status, _ = context.call_conv.call_function(builder, function, types.none,
                                                    argument_types, values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return types.none(address, args), codegen


@jit(parallel=True)
def launch(address, n_items, args):
    """Items 0 .. n_items-1 of the function at ``address`` (see ``item_address``), in
    parallel. Callable from ``@jit`` code, for kernels that run items step after step."""
    leaves = _flatten(args)
    for item in prange(n_items):
        call_address(address, (np.int64(item),) + leaves)


_addresses = {}


def function_address(function, args):
    """Address of the ``@jit`` function ``function`` (returning nothing) compiled for the
    types of ``args``, compiling it (or loading it from the cache) the first time."""
    key = (function, tuple(map(compute_fingerprint, args)))
    address = _addresses.get(key)
    if address is None:
        argument_types = tuple(typeof(a, Purpose.argument) for a in args)
        result = function.get_compile_result(signature(types.none, *argument_types))
        address = result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
        _addresses[key] = address
    return address


def item_address(item, args):
    """Address of ``item`` compiled for (int64, *types of ``args``)."""
    return function_address(item, (0,) + tuple(args))


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


@jit
def _steps(step, n_step_items, finish, n_finish_items, first, end, every, fixed):
    """The step loop of ``run_steps``, given the items' addresses."""
    for s in range(first, end):
        launch(step, n_step_items, (s, fixed))
        if every > 0 and ((s + 1 - first) % every == 0 or s + 1 == end):
            launch(finish, n_finish_items, (s, fixed))


def run_steps(step, n_step_items, first, end, fixed, finish=None, n_finish_items=0, every=0):
    """For s = first .. end-1: ``step(i, s, fixed)`` for i = 0 .. n_step_items-1 in
    parallel, then, after every ``every``-th step and the last (``every`` > 0),
    ``finish(i, s, fixed)`` for i = 0 .. n_finish_items-1; each launch waits for the one
    before. ``fixed`` (a tuple) holds everything else: arrays that the items of one step
    read and those of the next write come in pairs, chosen by the parity of s (step s
    reads half s % 2 and writes the other).

    >>> import numba, numpy as np
    >>> @numba.njit
    ... def double(i, s, fixed):
    ...     values = fixed[0]
    ...     values[1 - s % 2, i] = 2 * values[s % 2, i]
    >>> values = np.ones((2, 3))
    >>> run_steps(double, 3, 0, 4, (values,)); values[0]
    array([16., 16., 16.])
    """
    address = item_address(step, (first, fixed))
    finish_address = item_address(finish, (first, fixed)) if every > 0 else 0
    _steps(address, n_step_items, finish_address, n_finish_items, first, end, every, fixed)
