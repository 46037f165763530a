"""Helpers shared by the benchmark scripts: timing, machine rates, FLOPs, memory, tables.

Every script measures the machine's own reference rates in the same run (``gemm_rate``,
``copy_bandwidth``) so that achieved GFLOP/s can be read as a fraction of what this
machine's BLAS reaches, and prints plain-text tables with ``print_table``.

>>> t = measure(lambda: sum(range(100)), repeats=3)
>>> t.n, t.median > 0
(3, True)
>>> matmul_flops(2, 3, 4), rnn_flops(steps=10, batch=2, input_size=3, hidden_size=4, gates=1)
(48, 1120)
"""
import argparse
import atexit
import gc
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass

import numba
import numpy as np

MB = 2.0 ** 20

#: glibc gives freed blocks above its mmap threshold (at most 32 MiB) back to the system,
#: so each call's large arrays start on fresh pages, which a virtual machine may have to
#: fault in from its host: measured on the 2-core VM, 0 to 230 ms of system time per
#: forward+BPTT call of an ensemble of 256 RNNs (a 130 ms call), changing from call to
#: call. The benchmarks therefore run with freed memory kept for reuse, for every peer
#: alike; a value of these variables already in the environment is left as it is.
REUSE_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 32),
                      "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}


def reuse_freed_memory():
    """Re-execute this process (same interpreter arguments) with ``REUSE_FREED_MEMORY``
    in its environment, unless the environment sets either variable already; returns
    only when nothing needs to change."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in REUSE_FREED_MEMORY):
        return
    sys.stdout.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, **REUSE_FREED_MEMORY})


# -- timing -------------------------------------------------------------------------------

@dataclass
class Timing:
    """Wall-clock seconds of the timed calls of one measurement."""

    times: list

    n = property(lambda self: len(self.times))
    median = property(lambda self: statistics.median(self.times))
    best = property(lambda self: min(self.times))

    @property
    def spread(self):
        """(max - min) / median: a rough noise indicator."""
        return (max(self.times) - min(self.times)) / self.median


def measure(fn, repeats=5, warmup=1, min_seconds=0.0, max_seconds=None, min_repeats=3,
            max_repeats=1000):
    """Time ``fn()``: ``warmup`` untimed calls, then timed ones; report their median.

    At least ``repeats`` calls are timed, and more (up to ``max_repeats``) until they
    have taken ``min_seconds`` in total, so that short calls get enough samples to ride
    out noise. ``max_seconds`` bounds slow cases: timing stops once the calls have taken
    that long and ``min(min_repeats, repeats)`` were made, or as soon as one call alone
    took that long (then the one sample, a warm one: warm-up calls are never kept, as a
    first call may run cold). The garbage collector is off meanwhile, as in ``timeit``.
    """
    return measure_interleaved({"fn": fn}, repeats, warmup, min_seconds, max_seconds,
                               min_repeats, max_repeats, pause=0.0)["fn"]


def measure_interleaved(functions, repeats=5, warmup=1, min_seconds=0.0, max_seconds=None,
                        min_repeats=3, max_repeats=1000, turn_seconds=0.5, pause=0.25, seed=0):
    """``measure`` for each of ``functions`` ({name: fn}, all doing the same work), taking
    turns: every round gives each function still timed one turn, in a fresh random
    order, after ``pause`` seconds of sleep; a turn is one call, or as many as fit in
    ``turn_seconds``. Returns {name: Timing}.

    The pause lets the worker threads of the runtime that ran before go to sleep: after
    its last product, NumPy's OpenBLAS keeps its threads spinning for 2^28 cycles (about
    0.1 s), torch's OpenMP pool for 10-50 ms. On 2 cores they take a core from the next
    contender: a float32 LSTM forward (H = 256, B = 32, T = 256) that takes 60 ms alone
    took 102-157 ms right after NumPy's products, 110 ms after torch's, and with the
    10 ms pause used before, 127 ms (median) in ``core.py``, where it now takes 61.

    A shared virtual machine's speed drifts within a run: on the 2-core VM the same
    kernel took 44 ms and 78 ms in two processes a minute apart. Timed one after another,
    each function would see a different machine; randomised interleaved trials (Abedi and
    Brecht, ICPE 2017) give them all the same mix of conditions, so that the ratios of
    their medians hold even while the times do not.

    >>> t = measure_interleaved({"a": lambda: sum(range(100)), "b": lambda: sum(range(9))},
    ...                         repeats=3)
    >>> sorted(t), t["a"].n >= 3
    (['a', 'b'], True)
    """
    def slow(seconds):
        return max_seconds is not None and seconds >= max_seconds

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def finished(samples):
        total = sum(samples)
        return (len(samples) >= max_repeats or slow(samples[-1])
                or (slow(total) and len(samples) >= min(min_repeats, repeats))
                or (len(samples) >= repeats and total >= min_seconds))

    times = {name: [] for name in functions}
    order, rng = list(functions), random.Random(seed)
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name in order:  # warm-ups are never kept: a first call may be cold
            for _ in range(warmup):
                time.sleep(pause)
                timed(functions[name])
        while order:
            rng.shuffle(order)
            for name in list(order):
                time.sleep(pause)
                turn = 0.0
                while turn < turn_seconds:
                    times[name].append(timed(functions[name]))
                    turn += times[name][-1]
                    if finished(times[name]):
                        order.remove(name)
                        break
    finally:
        if enabled:
            gc.enable()
    return {name: Timing(samples) for name, samples in times.items()}


# -- machine reference rates --------------------------------------------------------------

def gemm_rate(dtype, n=2048, repeats=3):
    """Best GFLOP/s of ``a @ b`` for n x n ``dtype`` matrices with numpy's BLAS (2 n^3 FLOPs),
    over ``repeats`` calls after a warm-up (more for small n, until 0.2 s)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    out = np.empty((n, n), dtype)
    timing = measure(lambda: np.matmul(a, b, out=out), repeats=repeats, min_seconds=0.2)
    return matmul_flops(n, n, n) / timing.best / 1e9


@numba.njit(parallel=True)
def _parallel_copy(src, dst):
    parts = numba.get_num_threads()
    for part in numba.prange(parts):
        first, end = part * src.size // parts, (part + 1) * src.size // parts
        dst[first:end] = src[first:end]


def copy_bandwidth(nbytes=2 ** 28, repeats=5):
    """Best GB/s of a large array copy, counting the bytes read plus those written, on
    all of numba's threads (each copies its own part): the streaming bandwidth to memory
    that our kernels can have."""
    src = np.ones(nbytes // 8)
    dst = np.empty_like(src)
    timing = measure(lambda: _parallel_copy(src, dst), repeats=repeats, min_seconds=0.2)
    return 2 * src.nbytes / timing.best / 1e9


# -- FLOP counting ------------------------------------------------------------------------

def matmul_flops(m, k, n):
    """FLOPs of an (m, k) @ (k, n) product: one multiply and one add per term."""
    return 2 * m * k * n


def matvec_flops(rows, cols):
    """FLOPs of a (rows, cols) matrix times a vector."""
    return matmul_flops(rows, cols, 1)


def rnn_flops(steps, batch, input_size, hidden_size, gates, ensemble=1, backward=False,
              input_gradient=True):
    """Matrix-product FLOPs of a recurrent layer over a sequence.

    Per step and sequence, a forward pass does the input projection W_ih x
    (G*H x D) and the recurrent product W_hh h (G*H x H); element-wise work is not
    counted. The backward pass is counted as twice the forward (the products with W^T
    for dL/dh and dL/dx, and the outer products for dL/dW), so forward + backward = 3x;
    without ``input_gradient`` the product for dL/dx is left out.
    """
    rows = gates * hidden_size
    per_step = matvec_flops(rows, input_size) + matvec_flops(rows, hidden_size)
    forward = steps * batch * ensemble * per_step
    if not backward:
        return forward
    skipped = 0 if input_gradient else steps * batch * ensemble * matvec_flops(rows, input_size)
    return 3 * forward - skipped


def gflops(flops, seconds):
    return flops / seconds / 1e9


# -- memory -------------------------------------------------------------------------------

def peak_memory(fn):
    """Peak bytes allocated (and traced by ``tracemalloc``) while ``fn()`` runs, above
    what was allocated before it started. NumPy reports its array buffers to tracemalloc;
    memory allocated inside numba-compiled code or by other libraries (torch) is not seen.
    """
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        if not was_tracing:
            tracemalloc.stop()


# -- reporting ----------------------------------------------------------------------------

def fmt(value, digits=3):
    """``value`` with ``digits`` significant digits in fixed notation; ints and str as is."""
    if value is None:
        return "-"
    if isinstance(value, (str, int, np.integer)):
        return str(value)
    if value == 0 or not np.isfinite(value):
        return str(value)
    rounded = float(f"{value:.{digits}g}")  # so that 0.9996 counts as 1.00
    decimals = max(digits - 1 - int(np.floor(np.log10(abs(rounded)))), 0)
    return f"{value:.{decimals}f}"


def print_table(headers, rows, title=None, digits=3):
    """Print ``rows`` (lists of str or numbers) under ``headers`` as an aligned table.

    Numbers are right-aligned with ``digits`` significant digits, strings left-aligned.
    """
    cells = [[fmt(v, digits) for v in row] for row in rows]
    numeric = [all(not isinstance(row[i], str) for row in rows) for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric)).rstrip()

    if title:
        print(f"\n{title}")
    print(line(headers))
    print(line(["-" * w for w in widths]))
    for row in cells:
        print(line(row))
    print(flush=True)


def machine_info():
    """Lines describing the machine and the libraries, for a benchmark's header."""
    import numba

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {k: v for k, v in sorted(os.environ.items())
           if k.startswith(("NUMBA_", "OMP_", "OPENBLAS_", "MKL_", "MALLOC_"))}
    lines = [f"cpu: {cpu}, {os.cpu_count()} logical cores, numba threads: "
             f"{numba.get_num_threads()}",
             f"python {platform.python_version()}, numpy {np.__version__}, "
             f"numba {numba.__version__}"]
    if env:
        lines.append("env: " + " ".join(f"{k}={v}" for k, v in env.items()))
    return lines


def cpu_jiffies():
    """(stolen, total) CPU time of all cores since boot, in jiffies, from Linux's
    /proc/stat; None elsewhere. Stolen time is time a virtual machine's cores were ready
    to run but the hypervisor ran something else."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return fields[7], sum(fields)


def print_steal(start):
    """Print the share of CPU time stolen since ``start`` (``cpu_jiffies()``)."""
    end = cpu_jiffies()
    if start is None or end is None or end[1] <= start[1]:
        return
    share = (end[0] - start[0]) / (end[1] - start[1])
    print(f"cpu time stolen by the hypervisor during this run: {100 * share:.1f}% "
          f"(the timings are noisier for it)", flush=True)


def begin(script, docstring, full, quick, argv=None, torch=None):
    """Parse ``--quick``, print the run's header (script, machine) and return the sizes:
    ``quick`` or ``full``. torch, when given, gets the machine's 2 threads. Run as a
    script, the run ends with the CPU time stolen meanwhile (``print_steal``)."""
    parser = argparse.ArgumentParser(description=docstring.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = parser.parse_args(argv)
    if argv is None:  # run as a script, not called
        reuse_freed_memory()
        atexit.register(print_steal, cpu_jiffies())
    if torch is not None:
        torch.set_num_threads(2)
    print(script + (" --quick" if args.quick else ""))
    for line in machine_info():
        print(line)
    return quick if args.quick else full
