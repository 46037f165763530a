"""The CUDA backend agrees with the CPU kernels.

Without an NVIDIA GPU these tests run in numba's CUDA simulator (``tests/conftest.py``
sets ``NUMBA_ENABLE_CUDASIM=1``): every GPU thread is a Python thread, so sizes are tiny
and examples few. Tests marked ``gpu`` repeat the comparison at realistic sizes and run
only on a real GPU. Tolerances (the issue's): float64 1e-12, float32 1e-5, on
max |gpu - cpu| / max(1, max |cpu|).
"""
import os

import numba
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import analysis
import dynamics
from conftest import examples, finish, net_configs, random_cell, start_python
from cuda_paths import PATHS, use_path

pytest.importorskip("numba_cuda", reason="the cuda backend needs the numba-cuda package")
from dynamics import gpu  # noqa: E402

SIMULATED = bool(numba.config.ENABLE_CUDASIM)  # the root conftest.py chose
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
gpu_only = pytest.mark.skipif(SIMULATED, reason="needs a real NVIDIA GPU")


def assert_agree(got, want, dtype, what):
    """Within the dtype's tolerance; equal infinities and nans (a log of 0, a diverged
    run) count as agreeing."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, what
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    scale = max(1.0, float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0)))
    error = float(np.max(np.where(same, 0.0, np.abs(got - want)), initial=0.0)) / scale
    assert error <= TOLERANCE[np.dtype(dtype)], f"{what}: relative error {error:.2e}"


def run_both(model, x, h0, grad_output, truncation, monkeypatch, path):
    """(cpu, cuda) pairs of (forward result, gradients)."""
    results = []
    for backend in ("cpu", "cuda"):
        with monkeypatch.context() as patch:
            if backend == "cuda":
                use_path(patch, path)
            forward = dynamics.forward(model, x, h0, backend=backend)
            grads = dynamics.bptt(model, x, grad_output, h0, truncation=truncation,
                                  backend=backend)
        results.append((forward, grads))
    return results


@examples(5)
@given(config=net_configs(T=(0, 4), B=(1, 3), D=(1, 3), H=(1, 4), num_layers=(1, 2)),
       ensemble=st.sampled_from([None, 2]), own_inputs=st.booleans(),
       truncation=st.sampled_from([None, 1, 2]), path=st.sampled_from(PATHS))
def test_forward_and_bptt_agree_with_cpu(config, ensemble, own_inputs, truncation, path):
    own_inputs = own_inputs and ensemble is not None
    model = config.network(ensemble)
    x, h0, c0 = config.inputs(ensemble=ensemble, own_inputs=own_inputs)
    rng = np.random.default_rng(config.seed)
    out_shape = x.shape[:-1] + (config.dirs * config.H,)
    if ensemble is not None and not own_inputs:
        out_shape = (x.shape[0], ensemble) + x.shape[1:-1] + (config.dirs * config.H,)
    grad_output = rng.normal(size=out_shape).astype(config.dtype)
    with pytest.MonkeyPatch.context() as monkeypatch:
        (cpu, cpu_grads), (cuda, cuda_grads) = run_both(
            model, x, config.h0_arg(h0, c0), grad_output, truncation, monkeypatch, path)
    assert cuda.output.dtype == cpu.output.dtype
    for name in ("output", "h_n", "c_n"):
        if getattr(cpu, name) is not None:
            assert_agree(getattr(cuda, name), getattr(cpu, name), config.dtype, name)
    assert cuda_grads.keys() == cpu_grads.keys()
    for name in cpu_grads:
        assert_agree(cuda_grads[name], cpu_grads[name], config.dtype, f"gradient {name}")


@examples(2)
@given(config=net_configs(T=(1, 3), B=(1, 2), D=(1, 2), H=(1, 3), num_layers=(1, 2)),
       path=st.sampled_from(PATHS))
def test_without_the_input_gradient_the_rest_is_the_same(config, path):
    model = config.network(2)
    x, h0, c0 = config.inputs(ensemble=2)
    grad_output = np.ones((config.T, 2, config.B, config.dirs * config.H), config.dtype)
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_path(monkeypatch, path)
        full, without = (dynamics.bptt(model, x, grad_output, config.h0_arg(h0, c0),
                                       backend="cuda", input_gradient=flag)
                         for flag in (True, False))
    assert set(without) == set(full) - {"x"}
    for name in without:
        np.testing.assert_array_equal(without[name], full[name], err_msg=name)


def test_long_sums_split_into_chunks(monkeypatch):
    """T * B rows beyond ``SPLIT_MIN_TERMS``: the parameter gradients are summed in chunks
    (``add_chunks``) and still agree (a GRU: its W_hh gradient comes in two blocks)."""
    monkeypatch.setattr(gpu, "SPLIT_MIN_TERMS", 4)
    cell = random_cell("gru", 2, 3, seed=5)
    x = np.random.default_rng(1).normal(size=(6, 3, 2))
    grad_output = np.random.default_rng(2).normal(size=(6, 3, 3))
    cpu = dynamics.bptt(cell, x, grad_output)
    cuda = dynamics.bptt(cell, x, grad_output, backend="cuda")
    assert gpu._chunks(18, 1) > 1
    for name in cpu:
        assert_agree(cuda[name], cpu[name], np.float64, name)


@examples(4)
@given(shape=st.tuples(st.integers(1, 70), st.integers(1, 70), st.integers(1, 40)),
       members=st.sampled_from([(2, 2), (1, 2), (2, 1)]), trans_a=st.booleans(),
       trans_b=st.booleans(), accumulate=st.booleans(), bias=st.booleans(),
       sum_members=st.booleans(), split=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
def test_matmul_agrees_with_numpy(shape, members, trans_a, trans_b, accumulate, bias,
                                  sum_members, split, seed):
    """Every option of ``gpu.matmul`` (transposes, a broadcast operand, accumulation, a
    bias, the sum over members, sums split into chunks that may cut across members)
    against NumPy, on shapes that end inside a block's tile and span more than one
    (M, N up to 70 > BLOCK_SIDE)."""
    assume(not (bias and (accumulate or sum_members)))  # as the toolkit calls it
    (M, N, K), rng = shape, np.random.default_rng(seed)
    a = rng.normal(size=(members[0],) + ((K, M) if trans_a else (M, K)))
    b = rng.normal(size=(members[1],) + ((N, K) if trans_b else (K, N)))
    products = (np.swapaxes(a, 1, 2) if trans_a else a) @ (np.swapaxes(b, 1, 2) if trans_b else b)
    want = products.sum(axis=0, keepdims=True) if sum_members else products
    start = rng.normal(size=want.shape)
    offset = rng.normal(size=(want.shape[0], N)) if bias else None
    c = gpu.to_device(start)
    with pytest.MonkeyPatch.context() as patch:
        if split:  # chunks of 3 or more terms, up to 8 blocks in all
            patch.setattr(gpu, "SPLIT_MIN_TERMS", 3)
            patch.setattr(gpu, "SPLIT_BELOW_BLOCKS", 8)
        gpu.matmul(gpu.to_device(a), gpu.to_device(b), c, trans_a, trans_b, accumulate,
                   None if offset is None else gpu.to_device(offset), sum_members)
    want = want + (start if accumulate else 0) + (offset[:, None, :] if bias else 0)
    np.testing.assert_allclose(gpu.to_host(c), want, rtol=1e-12, atol=1e-12)


def test_products_of_more_members_than_the_grid_allows_run_in_groups(monkeypatch):
    """More members than CUDA's grid z extent (65,535; 2 here): ``matmul`` launches them
    in groups, with the same bits (a broadcast operand and a bias included)."""
    rng = np.random.default_rng(0)
    a, b, bias = rng.normal(size=(1, 2, 3)), rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 2))

    def product():
        c = gpu.zeros((5, 2, 2), np.float64)
        gpu.matmul(gpu.to_device(a), gpu.to_device(b), c, bias=gpu.to_device(bias))
        return gpu.to_host(c)

    whole = product()
    np.testing.assert_allclose(whole, a @ b + bias[:, None, :], rtol=1e-12)
    monkeypatch.setattr(gpu, "MAX_GRID_Z", 2)
    np.testing.assert_array_equal(product(), whole)


def test_runs_are_bitwise_reproducible():
    cell = random_cell("lstm", 2, 3, seed=1, ensemble=2)
    x = np.random.default_rng(0).normal(size=(3, 1, 2))
    first = dynamics.bptt(cell, x, np.ones((3, 2, 1, 3)), backend="cuda")
    second = dynamics.bptt(cell, x, np.ones((3, 2, 1, 3)), backend="cuda")
    for name in first:
        assert np.array_equal(first[name], second[name]), name


@examples(3)  # the slowest test in CI (166-288 s at 6 examples, with the simulator)
@given(kind=st.sampled_from(["rnn_tanh", "rnn_relu", "lstm", "gru"]),
       dtype=st.sampled_from([np.float32, np.float64]), n_exponents=st.integers(1, 2),
       interval=st.integers(1, 3), burn_in=st.integers(0, 2),
       drive=st.sampled_from(["none", "x", "drive"]), ensemble=st.sampled_from([None, 2]),
       seed=st.integers(0, 2 ** 32 - 1))
def test_lyapunov_spectrum_agrees_with_cpu(kind, dtype, n_exponents, interval, burn_in, drive,
                                           ensemble, seed):
    cell = random_cell(kind, 2, 2, seed=seed, gain=0.8, ensemble=ensemble)
    steps, batch = 6, 2
    rng = np.random.default_rng(seed)
    options = dict(n_exponents=n_exponents, interval=interval, burn_in=burn_in, seed=seed,
                   dtype=dtype)
    if drive == "x":
        options["x"] = rng.normal(size=(steps, batch, 2))
    elif drive == "drive":
        options["drive"] = rng.normal(size=(steps, batch, cell.gates * 2))
    else:
        options.update(steps=steps, batch=batch)
    cpu = analysis.lyapunov_spectrum(cell, **options)
    # a direction that collapses (a ReLU unit switching off makes J singular) leaves
    # rounding noise in LAPACK's QR (log |R_jj| ~ log eps) and exactly 0 in ours (-inf):
    # compare only trajectories without one (test_annihilated_direction covers them).
    # And ours orthonormalises by Gram-Schmidt, LAPACK by Householder reflections: the two
    # agree to about eps |R_11 / R_kk| of each QR, so compare only frames conditioned well
    # enough for the tolerance (a seed with R_11 / R_22 = e^9 differed by 1.9e-12)
    log_r = cpu.finite_time_exponents.values * interval
    eps = np.finfo(dtype).eps
    assume(bool(np.all(log_r > np.log(np.sqrt(eps)))))
    assume(bool(np.all(log_r[..., 0] - log_r[..., -1] < np.log(TOLERANCE[np.dtype(dtype)] / eps))))
    cuda = analysis.lyapunov_spectrum(cell, **options, backend="cuda")
    assert cuda.attrs["backend"] == "cuda"
    for name in ("lyapunov_exponents", "finite_time_exponents", "running_estimate"):
        assert_agree(cuda[name], cpu[name], dtype, name)
    assert np.array_equal(cuda.diverged, cpu.diverged)


def test_annihilated_direction_gives_minus_infinity_and_a_fresh_frame():
    """W_hh = diag(1, 0), ReLU, positive state: J = diag(1, 0) kills the second tangent
    direction at every QR (log |R_11| = -inf) and keeps the first (exponent 0); the frame
    is renewed each time, as LAPACK's Householder QR renews it. (The first record also
    holds the random initial frame's projection.)"""
    cell = dynamics.RNN(weight_ih=np.zeros((2, 1)), weight_hh=np.diag([1.0, 0.0]),
                        nonlinearity="relu")
    h0 = np.array([[[0.5, 0.25]]])
    records = {}
    for backend in ("cpu", "cuda"):
        ly = analysis.lyapunov_spectrum(cell, steps=4, h0=h0, backend=backend)
        records[backend] = finite_time = ly.finite_time_exponents.values[0]
        assert np.all(finite_time[:, 1] == -np.inf), backend
        assert np.allclose(finite_time[1:, 0], 0.0, atol=1e-15), backend
    assert_agree(records["cuda"], records["cpu"], np.float64, "finite-time exponents")


def test_lyapunov_flags_divergence_like_cpu():
    cell = dynamics.RNN(weight_ih=np.ones((2, 1)), weight_hh=np.eye(2) * 1e200,
                        nonlinearity="relu")
    cpu = analysis.lyapunov_spectrum(cell, steps=5, batch=2, n_exponents=1)
    cuda = analysis.lyapunov_spectrum(cell, steps=5, batch=2, n_exponents=1, backend="cuda")
    assert cpu.diverged.values.any()
    assert np.array_equal(cuda.diverged, cpu.diverged)
    assert np.array_equal(np.isnan(cuda.lyapunov_exponents), np.isnan(cpu.lyapunov_exponents))


@examples(4)
@given(kind=st.sampled_from(["rnn_tanh", "lstm", "gru"]), drive=st.booleans(),
       max_lag=st.integers(0, 5), seed=st.integers(0, 2 ** 32 - 1))
def test_adjoint_gradient_norm_agrees_with_cpu(kind, drive, max_lag, seed):
    cell = random_cell(kind, 2, 3, seed=seed, gain=1.2)
    rng = np.random.default_rng(seed)
    width = cell.gates * 3 if drive else 2
    inputs = {"drive" if drive else "x": rng.normal(size=(5, 2, width))}
    cpu = analysis.gradient_norm_vs_lag(cell, **inputs, max_lag=max_lag, products=False)
    cuda = analysis.gradient_norm_vs_lag(cell, **inputs, max_lag=max_lag, products=False,
                                         backend="cuda")
    assert_agree(cuda.log_gradient_norm.sel(norm="adjoint"),
                 cpu.log_gradient_norm.sel(norm="adjoint"), np.float64, "log adjoint norm")
    assert np.array_equal(cuda.diverged, cpu.diverged)


def test_analysis_refuses_what_the_gpu_does_not_compute():
    cell = random_cell("rnn_tanh", 1, 2)
    with pytest.raises(ValueError, match="products=False"):
        analysis.gradient_norm_vs_lag(cell, np.zeros((3, 1, 1)), backend="cuda")
    with pytest.raises(ValueError, match="gradient_lags"):
        analysis.lyapunov_spectrum(cell, steps=4, gradient_lags=2, backend="cuda")


def test_layers_too_large_for_a_walk_run_as_the_batched_recurrence(monkeypatch):
    """A walk holds its state and gate rows in a block's shared memory: 3H + G*H values
    within ``SHARED_BYTES`` (float64 LSTM: H <= 841). Larger layers take the batched
    recurrence, whatever the number of sequences, and still agree with the CPU; up to
    there, the walks' launches ask for no more than ``SHARED_BYTES``."""
    from kernels import cuda_sequence

    for itemsize, largest in ((8, 841), (4, 1682)):
        assert gpu.uses_walk(4096, 1, 4 * largest, largest, itemsize)
        assert not gpu.uses_walk(4096, 1, 4 * (largest + 1), largest + 1, itemsize)
        for state_rows in (2, 3):   # the forward walk's and the backward walk's
            launch, cache = gpu._walk_launch(4096, 1, 4 * largest, largest, itemsize,
                                             state_rows)
            assert not cache and launch[3] <= cuda_sequence.SHARED_BYTES
    cell = random_cell("lstm", 2, 3, seed=1)
    x = np.random.default_rng(1).normal(size=(4, 2, 2))
    grad_output = np.ones((4, 2, 3))
    cpu, cpu_grads = dynamics.forward(cell, x), dynamics.bptt(cell, x, grad_output)
    monkeypatch.setattr(gpu, "WALK_MIN_SEQUENCES", 1)
    monkeypatch.setattr(cuda_sequence, "SHARED_BYTES", 7 * 3 * 8 - 1)
    monkeypatch.setattr(cuda_sequence, "walk_forward", None)   # never reached
    monkeypatch.setattr(cuda_sequence, "walk_backward", None)
    cuda = dynamics.forward(cell, x, backend="cuda")
    cuda_grads = dynamics.bptt(cell, x, grad_output, backend="cuda")
    assert_agree(cuda.output, cpu.output, np.float64, "output")
    for name in cpu_grads:
        assert_agree(cuda_grads[name], cpu_grads[name], np.float64, f"gradient {name}")


@pytest.mark.parametrize("call, what", [
    (lambda: analysis.lyapunov_spectrum(random_cell("rnn_tanh", 1, 2945), steps=4,
                                        backend="cuda"), "Lyapunov"),
    (lambda: analysis.gradient_norm_vs_lag(random_cell("lstm", 1, 842), np.zeros((3, 1, 1)),
                                           products=False, backend="cuda"), "adjoint")])
def test_analysis_refuses_networks_too_large_for_a_block_before_any_work(call, what,
                                                                         monkeypatch):
    """The GPU Lyapunov walk holds 2H values in a block's shared memory (float64: H <=
    2,944), the adjoint walk 3H + G*H (float64 LSTM: H <= 841): larger networks get a
    clear error naming the backend to use, before any trajectory."""
    monkeypatch.setattr(dynamics, "forward", None)
    monkeypatch.setattr(gpu, "tangent_walk", None)
    with pytest.raises(ValueError, match=f"GPU {what}.*too large; use backend='cpu'"):
        call()


def test_every_kernel_can_launch_with_its_largest_block():
    """A block has 64K registers and 48 KiB of shared memory without opting in. No
    kernel is launched with more than 256 threads (walks ``MAX_THREADS``, the others
    ``THREADS`` or TILE x TILE), so even one at ptxas's maximum of 255 registers per
    thread launches (1,024-thread walks needed 121-154 registers: too many); and a
    walk's dynamic shared memory and its reduction buffer fit together."""
    from kernels import cuda_sequence

    largest_block = max(cuda_sequence.MAX_THREADS, gpu.THREADS, cuda_sequence.TILE ** 2)
    assert largest_block * 255 <= 64 * 1024
    assert cuda_sequence.walk_threads(10 ** 6) == cuda_sequence.MAX_THREADS
    assert cuda_sequence.SHARED_BYTES + 8 * cuda_sequence.MAX_THREADS <= 48 * 1024


@pytest.mark.parametrize("call", [
    lambda cell: analysis.lyapunov_spectrum(cell, steps=4, backend="gpu"),
    lambda cell: analysis.gradient_norm_vs_lag(cell, np.zeros((3, 1, 1)), products=False,
                                               backend="gpu")])
def test_analysis_refuses_an_unknown_backend(call):
    with pytest.raises(ValueError, match="backend"):
        call(random_cell("rnn_tanh", 1, 2))


def _start(*arguments):
    """Start ``python *arguments`` without the CUDA simulator."""
    environment = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    return start_python(*arguments, env=environment)


def _python(*arguments):
    """Run ``python *arguments`` to its end without the CUDA simulator."""
    return finish(_start(*arguments))


COMPILER = []


def start_in_background():
    """Start ``compile_cuda_kernels.py`` as soon as the session is collected (a minute
    of NVVM; tests/conftest.py)."""
    COMPILER.append(_start("-c", "import runpy; runpy.run_path("
                                 "'tests/compile_cuda_kernels.py', run_name='__main__')"))


def test_every_kernel_compiles_for_a_real_gpu():
    """The simulator runs the kernels as Python, so it accepts code that the real CUDA
    target refuses (it accepted ``np.floor``, which numba-cuda does not implement, until
    the first run on a GPU): ``compile_cuda_kernels.py`` compiles every kernel the
    toolkit launches to PTX for sm_90, in a process without the simulator."""
    if not COMPILER:
        start_in_background()
    done = finish(COMPILER[0])
    if done.returncode == 77:  # compile_cuda_kernels.NO_COMPILER: no NVVM here
        pytest.skip(done.stdout.strip() + " (pip install nvidia-cuda-nvcc-cu12 "
                    "nvidia-cuda-nvrtc-cu12)")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "0 failed" in done.stdout


@pytest.mark.parametrize("array", [np.zeros((10, 1, 3))[None],  # a zero stride
                                   np.zeros((10, 1, 3)).transpose(1, 0, 2),
                                   np.zeros((4, 1, 0), np.float32),  # empty: zero strides
                                   np.zeros((4, 6))[:, :2]])  # not contiguous
def test_arrays_go_to_the_gpu_with_fresh_strides(array):
    """numba-cuda keeps the strides it is given: on a real GPU it refused to reshape a
    ``drive[None]`` (stride 0 on its length-1 axis) and to slice an empty array with zero
    strides. ``c_order`` gives every array the C strides of its shape (the simulator
    copies arrays, so only this test sees the strides)."""
    ordered = gpu.c_order(array)
    np.testing.assert_array_equal(ordered, array)
    c_strides = np.cumprod((1,) + array.shape[:0:-1])[::-1] * array.itemsize
    assert ordered.strides == tuple(int(s) for s in c_strides)


VIEW_CHECK = """
import numpy as np
from numba.cuda.cudadrv.devicearray import DeviceNDArray
from kernels.cuda_api import view

class Memory:  # stands in for device memory: the byte range a view covers
    def __init__(self, begin, end):
        self.begin, self.end = begin, end
    def view(self, begin, end):
        return Memory(self.begin + begin, self.begin + end)

rng = np.random.default_rng(0)
for _ in range(2000):
    host = np.empty(tuple(rng.integers(1, 6, size=rng.integers(1, 5))), np.float32)
    index = []
    for n in host.shape[:rng.integers(1, host.ndim + 1)]:
        start = int(rng.integers(0, n))
        index.append(start if rng.random() < 0.3 else
                     slice(start, int(rng.integers(start + 1, n + 1))))
    if len(index) == host.ndim and all(isinstance(i, int) for i in index):
        index[-1] = slice(index[-1], index[-1] + 1)  # an array, not an element
    want = host[tuple(index)]
    got = view(DeviceNDArray(host.shape, host.strides, host.dtype,
                             gpu_data=Memory(0, host.nbytes)), tuple(index))
    begin = want.__array_interface__["data"][0] - host.__array_interface__["data"][0]
    assert got.shape == want.shape, (host.shape, index)
    assert all(a == b for n, a, b in zip(want.shape, got.strides, want.strides) if n > 1)
    assert got.gpu_data.begin == begin, (host.shape, index)
    span = sum((n - 1) * stride for n, stride in zip(want.shape, want.strides))
    assert got.gpu_data.end == begin + span + want.itemsize, (host.shape, index)
print("ok")
"""


def test_device_views_index_as_numpy_does():
    """``cuda_api.view`` (which replaces numba-cuda's indexing, slow on strided views)
    gives NumPy's shape, strides and offset, on numba-cuda's real device arrays (over
    stand-in memory: no GPU needed; the simulator's arrays are NumPy's)."""
    done = _python("-c", VIEW_CHECK)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "ok"


def test_importing_the_toolkit_does_not_load_cuda():
    done = _python("-c", "import sys, dynamics, analysis, kernels, studies.edge_of_chaos\n"
                   "import numpy as np\n"
                   "dynamics.bptt(dynamics.RNN.init(1, 2), np.ones((3, 1, 1)), np.ones((3, 1, 2)))\n"
                   "print(sorted(m for m in sys.modules if m.startswith(('numba.cuda', "
                   "'numba_cuda', 'kernels.cuda', 'dynamics.gpu'))))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.skipif(not SIMULATED, reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    done = _python("-c", "import numpy as np, dynamics\n"
                   "dynamics.forward(dynamics.RNN.init(1, 2), np.ones((3, 1, 1)), backend='cuda')")
    assert done.returncode == 1
    assert "RuntimeError: backend='cuda' needs an NVIDIA GPU" in done.stderr
    assert "NUMBA_ENABLE_CUDASIM" in done.stderr


@pytest.mark.skipif(not SIMULATED, reason="this machine has a GPU")
def test_a_cuda_sweep_without_a_gpu_fails_before_storing_anything(tmp_path):
    store = tmp_path / "sweep.zarr"
    done = _python("-c", "import sys\n"
                   "from analysis.sweep import Output, Sweep\n"
                   "Sweep('s', {'a': [1.0]}, lambda points, seeds: {'y': points['a']},\n"
                   "      {'y': Output('y', '1')}, backend='cuda').run(sys.argv[1], progress=False)",
                   store)
    assert "RuntimeError: backend='cuda' needs an NVIDIA GPU" in done.stderr
    assert not store.exists()


# -- realistic sizes, on a real GPU only ----------------------------------------------------

@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ensemble_walk_at_scale(kind, dtype):
    cell = random_cell(kind, 64, 64, seed=3, ensemble=512, dtype=dtype)
    x = np.random.default_rng(0).normal(size=(200, 1, 64)).astype(dtype)
    grad_output = np.random.default_rng(1).normal(size=(200, 512, 1, 64)).astype(dtype)
    cpu = dynamics.bptt(cell, x, grad_output, truncation=50)
    cuda = dynamics.bptt(cell, x, grad_output, truncation=50, backend="cuda")
    for name in cpu:
        assert_agree(cuda[name], cpu[name], dtype, name)


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_lstm_at_scale(dtype):
    cell = random_cell("lstm", 256, 256, seed=4, dtype=dtype)
    x = np.random.default_rng(0).normal(size=(32, 256, 256)).astype(dtype)
    grad_output = np.ones((32, 256, 256), dtype)
    cpu = dynamics.bptt(cell, x, grad_output)
    cuda = dynamics.bptt(cell, x, grad_output, backend="cuda")
    for name in cpu:
        assert_agree(cuda[name], cpu[name], dtype, name)


@pytest.mark.gpu
@gpu_only
def test_lyapunov_at_scale():
    cell = random_cell("rnn_tanh", 1, 128, seed=5, gain=0.9, ensemble=64)
    cpu = analysis.lyapunov_spectrum(cell, steps=300, n_exponents=4, interval=5)
    cuda = analysis.lyapunov_spectrum(cell, steps=300, n_exponents=4, interval=5,
                                      backend="cuda")
    assert_agree(cuda.lyapunov_exponents, cpu.lyapunov_exponents, np.float64, "exponents")
