"""The one place where compilation choices for CPU kernels are made.

Every CPU kernel is compiled with ``cache=True`` (compiled code is reused across
processes), ``error_model="numpy"`` (division by zero gives inf/nan as data, never an
exception) and without ``fastmath``: the kernels are written so that LLVM vectorises
them without reassociating any sum, which keeps results bitwise identical for every
``NUMBA_NUM_THREADS``.
"""
import numba


def jit(function=None, *, parallel=False, inline=False):
    """Compile ``function`` with the toolkit's CPU settings (usable bare or with args).

    ``inline=True`` inlines it into its callers before LLVM sees them (numba's
    ``inline="always"``): for the per-unit cell arithmetic, which LLVM's own inliner
    leaves as calls inside the callers' unit loops, so that they would not vectorise;
    and for thin layers between a kernel and the products it calls: numba links each
    compiled callee into its caller, whose module LLVM then optimises and compiles
    again whole, so every level of calls repeats the work of all the levels below it.
    ``parallel=True`` compiles a ``prange`` loop's body and all it calls four times:
    large parallel work goes through ``kernels.parallel.run_items`` instead.
    """
    decorate = numba.njit(cache=True, error_model="numpy", parallel=parallel,
                          inline="always" if inline else "never")
    return decorate if function is None else decorate(function)
