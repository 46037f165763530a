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


def cell(kind, dtype, ensemble=None, inputs=3, hidden=4):
    import dynamics

    cls = {"lstm": dynamics.LSTM, "gru": dynamics.GRU}.get(kind, dynamics.RNN)
    options = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    return cls.init(inputs, hidden, ensemble=ensemble, seed=1, dtype=dtype, **options)


def main():
    from numba import cuda

    try:
        cuda.compile_ptx(lambda a: None, (numba.float64[:],), cc=COMPUTE_CAPABILITY)
    except Exception as error:  # numba-cuda finds no NVVM / NVRTC library
        print(f"no CUDA compiler: {error}")
        return NO_COMPILER
    compiled, failed = set(), {}
    compile_launches(compiled, failed)
    import analysis  # after the patches: nothing may reach a driver
    import dynamics
    from dynamics import gpu
    from kernels import cuda_sequence

    walk_threads, shared_bytes = cuda_sequence.walk_threads, cuda_sequence.SHARED_BYTES

    def use_path(path):
        """As ``tests/test_cuda.py``'s ``use_path``: the walk, the strided walk (W_hh read
        from global memory) or the batched recurrence."""
        gpu.WALK_MIN_SEQUENCES = 10 ** 9 if path == "batched" else 1
        gpu.BATCHED_MIN_BATCH = 1
        strided = path == "walk_strided"
        cuda_sequence.walk_threads = (lambda n_rows: min(n_rows, 2)) if strided else walk_threads
        cuda_sequence.SHARED_BYTES = 0 if strided else shared_bytes

    rng = np.random.default_rng(0)
    kinds, dtypes = ("rnn_tanh", "rnn_relu", "lstm", "gru"), (np.float32, np.float64)
    for kind, dtype, path, ensemble in itertools.product(
            kinds, dtypes, ("walk", "walk_strided", "batched"), (None, 2)):
        use_path(path)
        model = cell(kind, dtype, ensemble)
        x = rng.normal(size=(4, 2, 3)).astype(dtype)
        grad_output = np.ones((4, 2, 2, 4) if ensemble else (4, 2, 4), dtype)
        dynamics.bptt(model, x, grad_output, truncation=2, backend="cuda")
        dynamics.bptt(model, x, grad_output, backend="cuda", input_gradient=False)
    use_path("walk")
    for kind, dtype, drive in itertools.product(kinds, dtypes, ("none", "x", "drive")):
        model = cell(kind, dtype, inputs=2, hidden=3)
        options = dict(n_exponents=2, interval=2, burn_in=1, dtype=dtype)
        if drive == "x":
            options["x"] = rng.normal(size=(5, 2, 2))
        elif drive == "drive":
            options["drive"] = rng.normal(size=(5, 2, model.gates * 3))
        else:
            options.update(steps=5, batch=2)
        analysis.lyapunov_spectrum(model, **options, backend="cuda")
        if dtype == np.float64 and drive != "none":
            inputs = {drive: options[drive]}
            analysis.gradient_norm_vs_lag(model, **inputs, max_lag=3, products=False,
                                          backend="cuda")
    for key, error in failed.items():
        print(f"FAILED {key[0]} {key[1]}\n{error}")
    print(f"{len(compiled)} kernel specialisations compiled, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
