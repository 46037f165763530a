"""Compile every CUDA kernel the toolkit launches to PTX for a Hopper GPU, without a GPU.

The CUDA simulator runs the kernels as Python, so code that the real CUDA target cannot
compile (a NumPy ufunc that numba-cuda does not implement, say) passes every simulated
test and fails on the first real GPU. This script closes that gap where no GPU exists:
it drives ``dynamics`` and ``analysis`` with ``backend="cuda"`` through every cell,
dtype and recurrence path, with NumPy arrays standing in for device arrays, and at each
launch compiles the kernel for the launch's argument types (numba-cuda and NVVM, which
``pip install nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12`` provides) instead of
running it. Run it from the repository root in a process without
``NUMBA_ENABLE_CUDASIM``, as ``tests/test_cuda.py::test_every_kernel_compiles_for_a_real_gpu``
does. It prints one line per compiled specialisation and exits 1 if any failed.
"""
import itertools
import os
import sys
import traceback

import numba
import numpy as np

#: The GPU the kernels are compiled for (compute capability of an H100).
COMPUTE_CAPABILITY = (9, 0)
#: The exit status when this machine has no NVVM to compile with (the test then skips).
NO_COMPILER = 77


class DeviceArray:
    """A NumPy array in the place of a device array (views stay wrapped)."""

    def __init__(self, array):
        self.array = array

    def __getattr__(self, name):
        return getattr(self.array, name)

    def __getitem__(self, index):
        return DeviceArray(self.array[index])

    def reshape(self, *shape):
        return DeviceArray(self.array.reshape(*shape))

    def copy_to_host(self):
        return np.array(self.array)


class Hopper:
    compute_capability = COMPUTE_CAPABILITY


def host(value):
    return value.array if isinstance(value, DeviceArray) else value


def compile_launches(compiled, failed):
    """Make every kernel launch compile the kernel for its arguments' types instead of
    running it (into the sets ``compiled`` and ``failed``), and every device array a
    NumPy one. Only for this script's process: nothing is run on, or asked of, a GPU."""
    from numba import cuda
    from numba.cuda import dispatcher

    def configure(kernel, configuration):
        def launch(*args):
            types = tuple(numba.typeof(host(a)) for a in args)
            key = (kernel.py_func.__qualname__, types)
            if key in compiled or key in failed:
                return
            try:
                cuda.compile_ptx(kernel.py_func, types, cc=COMPUTE_CAPABILITY)
                compiled.add(key)
                print("compiled", key[0], flush=True)
            except Exception:
                failed[key] = traceback.format_exc(limit=-4)
        return launch

    cuda.is_available = lambda: True
    cuda.to_device = lambda array: DeviceArray(np.array(array))
    cuda.device_array = lambda shape, dtype=np.float64: DeviceArray(np.zeros(shape, dtype))
    dispatcher.CUDADispatcher.__getitem__ = configure
    dispatcher.get_current_device = Hopper  # device functions compile for this GPU


def main():
    from numba import cuda

    try:
        cuda.compile_ptx(lambda a: None, (numba.float64[:],), cc=COMPUTE_CAPABILITY)
    except Exception as error:  # numba-cuda finds no NVVM / NVRTC library
        print(f"no CUDA compiler: {error}")
        return NO_COMPILER
    compiled, failed = set(), {}
    compile_launches(compiled, failed)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the tests' helpers
    import pytest
    from conftest import random_cell
    from cuda_paths import PATHS, use_path

    import analysis
    import dynamics

    rng = np.random.default_rng(0)
    kinds, dtypes = ("rnn_tanh", "rnn_relu", "lstm", "gru"), (np.float32, np.float64)
    for kind, dtype, path, ensemble in itertools.product(kinds, dtypes, PATHS, (None, 2)):
        model = random_cell(kind, 3, 4, seed=1, ensemble=ensemble, dtype=dtype)
        x = rng.normal(size=(4, 2, 3)).astype(dtype)
        grad_output = np.ones((4, 2, 2, 4) if ensemble else (4, 2, 4), dtype)
        with pytest.MonkeyPatch.context() as monkeypatch:
            use_path(monkeypatch, path)
            dynamics.bptt(model, x, grad_output, truncation=2, backend="cuda")
            dynamics.bptt(model, x, grad_output, backend="cuda", input_gradient=False)
    for kind, dtype, drive in itertools.product(kinds, dtypes, ("none", "x", "drive")):
        model = random_cell(kind, 2, 3, seed=1, dtype=dtype)
        options = dict(n_exponents=2, interval=2, burn_in=1, dtype=dtype)
        if drive == "x":
            options["x"] = rng.normal(size=(5, 2, 2))
        elif drive == "drive":
            options["drive"] = rng.normal(size=(5, 2, model.gates * 3))
        else:
            options.update(steps=5, batch=2)
        analysis.lyapunov_spectrum(model, **options, backend="cuda")
        if dtype == np.float64 and drive != "none":
            analysis.gradient_norm_vs_lag(model, **{drive: options[drive]}, max_lag=3,
                                          products=False, backend="cuda")
    for key, error in failed.items():
        print(f"FAILED {key[0]} {key[1]}\n{error}")
    print(f"{len(compiled)} kernel specialisations compiled, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
