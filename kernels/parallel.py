"""Parallel work items whose code is compiled once: ``run_items(item, n, *args)``.

A parallel kernel here is an ordinary ``@jit`` function ``item(i, *args)`` that does
work item ``i``, and ``run_items`` runs items 0 .. n-1 on numba's threads. The items'
code is not compiled inside a ``prange`` loop: numba compiles a parallel loop's body,
with every function it calls, four times (the loop body, numba's gufunc wrapper, its
parallel wrapper and the function around the loop, each linking the one before and
optimising it again). Here ``item`` is compiled once per argument types (and cached
like every kernel), and calls go by address:

- ``_drive`` (one per argument types, small) copies the arguments to its stack and
  launches;
- ``_launch``, the one parallel loop, takes only integers (addresses and counts), so it
  is compiled once for every kernel and dtype;
- each of its items calls a trampoline (``_call_item``, one per argument types, a few
  lines) with the address of the copy; the trampoline reads the arguments back and
  calls the item.

On the 2-core Zen 3, items brought the cold compile of forward and BPTT (four cells,
two dtypes) from 110 s to 55-79 s while the parallel loop was still compiled once per
argument types; compiling it once for all took about 6 % off that, and 14 % off the
first analysis calls. A call costs about 7 microseconds more in Python than the item's
own work (a fingerprint of each argument's type, to find the compiled functions).

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
from numba.core.typing import signature
from numba.core.typing.typeof import Purpose, typeof
from numba.extending import intrinsic

from kernels._jit import jit


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


@intrinsic
def _stack_copy(typingctx, args):
    """The address of a copy of ``args`` on the calling function's stack, valid until it
    returns, with every array's reference count and parent object left out (the copy
    borrows the arrays: the caller holds them)."""
    def borrowed(context, builder, ty, value):
        if isinstance(ty, types.Array):
            array = context.make_array(ty)(context, builder, value)
            array.meminfo = cgutils.get_null_value(array.meminfo.type)
            array.parent = cgutils.get_null_value(array.parent.type)
            return array._getvalue()
        if isinstance(ty, types.BaseTuple):
            for k, t in enumerate(ty.types):
                value = builder.insert_value(
                    value, borrowed(context, builder, t, builder.extract_value(value, k)), k)
        return value

    def codegen(context, builder, sig, llargs):
        model = context.data_model_manager[args]
        slot = cgutils.alloca_once(builder, model.get_data_type())
        builder.store(model.as_data(builder, borrowed(context, builder, args, llargs[0])), slot)
        return builder.ptrtoint(slot, context.get_value_type(types.int64))

    return types.int64(args), codegen


@intrinsic
def _load(typingctx, address, kind):
    """The value of type ``kind`` that ``_stack_copy`` left at ``address``."""
    ty = kind.instance_type

    def codegen(context, builder, sig, llargs):
        model = context.data_model_manager[ty]
        pointer = builder.inttoptr(llargs[0], model.get_data_type().as_pointer())
        return model.load_from_data_pointer(builder, pointer)

    return ty(address, kind), codegen


@jit(parallel=True)
def _launch(trampoline, item_address, n_items, step, args_address):
    """Items 0 .. n_items-1 in parallel, each ``trampoline(item, step, item_address,
    args_address)``: all integers, so this parallel loop is compiled once for every
    kernel."""
    for item in prange(n_items):
        call_address(trampoline, (np.int64(item), step, item_address, args_address))


@jit
def _call_item(item, step, item_address, args_address, kind=None):
    """``item_address``'s function(item, *args), args of type ``kind`` (given at compile
    time, no argument at run time) read from ``args_address``."""
    call_address(item_address, (item,) + _load(args_address, kind))


@jit
def _call_step_item(item, step, item_address, args_address, kind=None):
    """``item_address``'s function(item, step, fixed), ``fixed`` of type ``kind`` read from
    ``args_address``."""
    call_address(item_address, (item, step, _load(args_address, kind)))


@jit
def _drive(launch, trampoline, step, n_step_items, finish, n_finish_items, first, end, every,
           args):
    """The launches of ``run_steps`` (and of ``run_items``: one step, no finish), given the
    addresses of ``_launch``, of a trampoline for the type of ``args`` and of the items."""
    address = _stack_copy(args)
    for s in range(first, end):
        call_address(launch, (trampoline, step, n_step_items, s, address))
        if every > 0 and ((s + 1 - first) % every == 0 or s + 1 == end):
            call_address(launch, (trampoline, finish, n_finish_items, s, address))


_addresses = {}


def _compiled_address(function, key, argument_types):
    """Address of ``function`` compiled for ``argument_types()`` (compiled, or loaded from
    the cache, the first time ``key`` is seen)."""
    address = _addresses.get(key)
    if address is None:
        result = function.get_compile_result(signature(types.none, *argument_types()))
        address = result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
        _addresses[key] = address
    return address


def _types(args):
    return [typeof(a, Purpose.argument) for a in args]


def function_address(function, args):
    """Address of the ``@jit`` function ``function`` (returning nothing) compiled for the
    types of ``args``, compiling it (or loading it from the cache) the first time."""
    return _compiled_address(function, (function, tuple(map(compute_fingerprint, args))),
                             lambda: _types(args))


def _item_and_trampoline(item, call, item_args, args):
    """Addresses of ``item`` compiled for (int64, *types of ``item_args``) and of ``call``
    (``_call_item`` or ``_call_step_item``) for the tuple ``args`` (one of them), found by
    one fingerprint of ``item_args``."""
    prints = tuple(map(compute_fingerprint, item_args))
    return (_compiled_address(item, (item, prints),
                              lambda: [types.int64] + _types(item_args)),
            _compiled_address(call, (call, prints), lambda: [types.int64] * 4 + [
                types.Omitted(typeof(args, Purpose.argument))]))


def _launch_address():
    return function_address(_launch, (0,) * 5)


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
        address, trampoline = _item_and_trampoline(item, _call_item, args, args)
        _drive(_launch_address(), trampoline, address, n_items, 0, 0, 0, 1, 0, args)


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
    item_args = (first, fixed)
    address, trampoline = _item_and_trampoline(step, _call_step_item, item_args, fixed)
    finish_address = _item_and_trampoline(finish, _call_step_item, item_args, fixed)[0] \
        if every > 0 else 0
    _drive(_launch_address(), trampoline, address, n_step_items, finish_address,
           n_finish_items, first, end, every, fixed)
