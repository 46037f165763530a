"""pytest setup for every test path (tests/, the packages' doctests, README.md).

On a machine without an NVIDIA driver the CUDA kernels run in numba's CUDA simulator:
``NUMBA_ENABLE_CUDASIM=1`` is set here, before anything imports numba, unless the
environment sets it. With a GPU they run on it (and ``pytest -m gpu`` adds the tests at
realistic sizes). The test suite's helpers are in ``tests/conftest.py``.
"""
import glob
import os

if not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/proc/driver/nvidia/version")):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
