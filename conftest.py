"""pytest setup for every test path (tests/, the packages' doctests, README.md).

On a machine without an NVIDIA driver the CUDA kernels run in numba's CUDA simulator:
``NUMBA_ENABLE_CUDASIM=1`` is set here, before anything imports numba, unless the
environment sets it. With a GPU they run on it (and ``pytest -m gpu`` adds the tests at
realistic sizes). The test suite's helpers are in ``tests/conftest.py``.

The simulator runs every GPU thread as a Python thread, and its launcher polls them in a
busy loop: with Python's default switch interval (5 ms) every barrier waits out the
poller's time slice. At 1 ms a small simulated Lyapunov run took 1.6 s instead of 4.5
(0.8 s at 0.1 ms, but other simulated tests then spent more in system time); the same
bits.
"""
import glob
import os
import sys

if not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/proc/driver/nvidia/version")):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    sys.setswitchinterval(1e-3)
