"""GPU benchmark: the CUDA backend against torch on the same GPU, side by side in one run.

Run on a machine with an NVIDIA GPU, from the repository root::

    PYTHONPATH=. python benchmarks/gpu.py             # full run
    PYTHONPATH=. python benchmarks/gpu.py --quick     # small sizes (a smoke test; it also
        # runs in numba's CUDA simulator, NUMBA_ENABLE_CUDASIM=1, with torch on the CPU:
        # its numbers then mean nothing)

Sections (each row: median time, ratio torch/ours, GB/s and GFLOP/s with their fraction
of the ceilings measured at the start of the run):

ensemble  E independent tanh RNNs of N units (own W_ih, W_hh, biases; Gaussian gain 1),
          T = 1,000 steps, B = 1, all driven by one white-noise input (D = N): forward,
          and forward + BPTT of L = sum(g * output). Ours: ``dynamics.gpu.layer_forward``
          / ``layer_backward`` on device-resident inputs (the walk kernels: one block per
          network, W_hh in shared memory where it fits); the parameters are copied to the
          device in every call, as ``dynamics.forward(..., backend="cuda")`` does (torch's
          stay resident: that copy counts against us).
          torch: the input projection as one batched product, then per step one
          ``baddbmm`` + ``tanh`` on (E, N, 1), backward by autograd; sizes whose tape
          does not fit in memory are skipped (the row says so).
single    one LSTM, B = 256, H = D = 1024, T = 256, float32: ours (the batched
          recurrence: per step one tiled product and one cell kernel) against
          ``torch.nn.LSTM`` (cuDNN, with TF32 off: float32 against float32), forward
          and forward + BPTT.
lyapunov  lambda_max of E = 4,096 tanh networks of N = 256, g = 1.5, float64, 1,000
          steps after 100 of burn-in, renormalising every step: ours
          (``analysis.lyapunov_spectrum(..., backend="cuda")``, end to end, including
          moving the weights to the GPU) against a torch loop (bmm for state and tangent,
          norm, log, rescale).
profile   where one warm call of each of our three workloads spends its time: each
          kernel launch synchronised and timed alone, and the host's share (allocations,
          transfers, Python) as the rest of the wall time.
ceilings  device-to-device copy bandwidth (``clone`` of 2 GiB) and the GEMM rate
          (``torch.matmul`` of two 8192^2 matrices) in float32 and float64.

FLOPs are the matrix products' (``benchmarks.common.rnn_flops``: forward + BPTT = 3x
forward). Bytes are the compulsory traffic: parameters and inputs read once, the tape
(states, and the gates an LSTM saves) written in the forward pass and read in the
backward pass, gradients written once. "bound %" is the larger of the two fractions:
how close a row gets to the ceiling that limits it.
"""
import argparse
import time

import numba
import numpy as np

from benchmarks import common

FULL = dict(ensembles=((4096, 64), (16384, 64), (65536, 64), (4096, 128), (16384, 128),
                       (4096, 256)), steps=1000, single=(256, 1024, 256),
            lyapunov=(4096, 256, 1000, 100), repeats=3, copy_bytes=2 ** 31, gemm_n=8192,
            memory_fraction=0.9)
QUICK = dict(ensembles=((4, 8),), steps=6, single=(4, 8, 4), lyapunov=(2, 8, 6, 2),
             repeats=1, copy_bytes=2 ** 20, gemm_n=64, memory_fraction=0.9)


def free_memory(torch, device):
    """Bytes free on the GPU now, after numba-cuda and torch hand back what they hold
    (without a GPU for torch: a nominal 16 GiB)."""
    if device != "cuda":
        return 2 ** 34
    from numba import cuda

    cuda.current_context().deallocations.clear()  # numba-cuda frees in batches
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info()[0]


def synchronise(torch, device):
    from numba import cuda

    cuda.synchronize()
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, torch, device, repeats):
    """Median seconds of ``fn()`` (one warm-up call), GPU work included."""
    def call():
        fn()
        synchronise(torch, device)
    return common.measure(call, repeats=repeats, warmup=1, min_repeats=1).median


def ceilings(torch, device, config):
    """(copy GB/s, {dtype: GEMM GFLOP/s}) of this GPU, measured now."""
    n_bytes, n = config["copy_bytes"], config["gemm_n"]
    source = torch.empty(n_bytes // 4, dtype=torch.float32, device=device)
    seconds = timed(lambda: source.clone(), torch, device, 5)
    bandwidth = 2 * n_bytes / seconds / 1e9  # read + write
    rates = {}
    for name in ("float32", "float64"):
        a = torch.randn(n, n, dtype=getattr(torch, name), device=device)
        rates[name] = common.gflops(common.matmul_flops(n, n, n),
                                    timed(lambda: a @ a, torch, device, 3))
    return bandwidth, rates


#: max |torch - ours| / max |ours| allowed before timing (the peers must do the same work)
TOLERANCE = {"float32": 1e-3, "float64": 1e-9}


def check_close(what, ours, theirs, dtype):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    error = np.max(np.abs(ours - theirs)) / max(np.max(np.abs(ours)), 1e-300)
    if not error <= TOLERANCE[dtype]:
        raise AssertionError(f"{what}: torch and ours differ by {error:.2e} (relative)")


def rates_row(seconds, flops, n_bytes, bandwidth, gemm):
    gb_s, gf_s = n_bytes / seconds / 1e9, common.gflops(flops, seconds)
    return [gb_s, gf_s, max(100 * gb_s / bandwidth, 100 * gf_s / gemm)]


# -- ensembles ---------------------------------------------------------------------------

def ensemble_case(E, N, T, dtype, seed=0):
    import dynamics

    rng = np.random.default_rng(seed)
    cell = dynamics.RNN.init(N, N, init="gaussian", gain=1.0, ensemble=E, seed=seed, dtype=dtype)
    x = rng.normal(size=(T, 1, N)).astype(dtype)
    h0 = rng.normal(size=(E, 1, N)).astype(dtype)
    grad = rng.normal(size=(T, E, 1, N)).astype(dtype)
    return cell, x, h0, grad


def ours_ensemble(cell, x, h0, grad):
    """(forward, forward + BPTT) closures on device-resident arrays."""
    from dynamics import gpu

    x_d, h0_d, grad_d = gpu.to_device(x), gpu.to_device(h0), gpu.to_device(grad)
    c0_d = gpu.to_device(np.zeros(h0.shape[:2] + (0,), h0.dtype))
    grad_h = np.zeros_like(h0)

    def forward():
        return gpu.layer_forward(cell, x_d, h0_d, c0_d, False)

    def forward_bptt():
        tape = forward()
        grad_x = gpu.zeros_like(x_d)
        return gpu.layer_backward(tape, grad_d, True, grad_h, grad_h[..., :0], 0, grad_x, True)

    return forward, forward_bptt


def torch_ensemble(torch, device, cell, x, h0, grad):
    """(forward, forward + BPTT) closures of the stacked-bmm formulation."""
    dtype = getattr(torch, str(x.dtype))

    def tensor(a, grad_needed=False):
        return torch.tensor(a, dtype=dtype, device=device, requires_grad=grad_needed)

    w_ih = tensor(cell.weight_ih, True)                       # (E, N, D)
    w_hh = tensor(cell.weight_hh, True)                       # (E, N, N)
    bias = tensor((cell.bias_ih + cell.bias_hh)[..., None], True)  # (E, N, 1)
    xs = tensor(x[:, 0].T, True)                              # (D, T)
    h_init = tensor(h0[:, 0, :, None])                        # (E, N, 1)
    g = tensor(grad[:, :, 0])                                 # (T, E, N)

    def run():
        projection = torch.baddbmm(bias, w_ih, xs.expand(w_ih.shape[0], -1, -1))  # (E, N, T)
        h, outputs = h_init, []
        for p in projection.unbind(2):
            h = torch.tanh(torch.baddbmm(p[..., None], w_hh, h))
            outputs.append(h)
        return torch.stack(outputs)[..., 0]                   # (T, E, N)

    def forward():
        with torch.no_grad():
            return run()

    def forward_bptt():
        for t in (w_ih, w_hh, bias, xs):
            t.grad = None
        (run() * g).sum().backward()

    return forward, forward_bptt


def ensemble_bytes(E, N, T, itemsize, backward):
    parameters = E * (2 * N * N + 2 * N) * itemsize
    inputs = (T * N + E * N) * itemsize
    tape = T * E * N * itemsize
    if not backward:
        return parameters + inputs + tape
    return parameters * 2 + inputs * 2 + tape * 2 + T * E * N * itemsize  # + grad_output read


def section_ensemble(torch, device, config, bandwidth, gemm):
    """Ours first, then torch, each freed before the other runs, so that ours can run
    where both together would not fit (E = 65,536 at T = 1,000); a contender that would
    not fit, or runs out of memory, is skipped with the GiB it would need."""
    rows = []
    for E, N in config["ensembles"]:
        for dtype in ("float32", "float64"):
            itemsize = np.dtype(dtype).itemsize
            T = config["steps"]
            array = T * E * N * itemsize  # one (T, E, N) array
            # ours: the tape (pre-activations, states) and grad_output; torch: autograd's
            # tape (each step's product and tanh), the stacked output, grad_output and
            # their product
            need = {"ours": 3.2 * array, "torch": 6 * array}
            budget = config["memory_fraction"] * free_memory(torch, device)
            if need["ours"] > budget:
                rows.append([E, N, dtype, "-", f"skipped: needs ~{need['ours'] / 2 ** 30:.0f} GiB"]
                            + [""] * 6)
                continue
            cell, x, h0, grad = ensemble_case(E, N, T, np.dtype(dtype))
            times = {}
            ours = ours_ensemble(cell, x, h0, grad)
            output = ours[0]().hs.copy_to_host()[:, :, 0].transpose(1, 0, 2)
            times["ours"] = [timed(run, torch, device, config["repeats"]) for run in ours]
            del ours
            if need["torch"] <= config["memory_fraction"] * free_memory(torch, device):
                try:
                    theirs = torch_ensemble(torch, device, cell, x, h0, grad)
                    check_close(f"ensemble E={E} N={N} {dtype} output", output,
                                theirs[0]().cpu().numpy(), dtype)
                    times["torch"] = [timed(run, torch, device, config["repeats"])
                                      for run in theirs]
                except torch.OutOfMemoryError:
                    pass
                theirs = None
            for name, backward in (("fwd", 0), ("fwd+bptt", 1)):
                mine = times["ours"][backward]
                flops = common.rnn_flops(T, 1, N, N, 1, ensemble=E, backward=bool(backward))
                n_bytes = ensemble_bytes(E, N, T, itemsize, backward)
                row = [E, N, dtype, name, mine * 1e3]
                if "torch" in times:
                    peer = times["torch"][backward]
                    row += [peer * 1e3, peer / mine]
                    peer_bound = rates_row(peer, flops, n_bytes, bandwidth, gemm[dtype])[2]
                else:
                    peer = None
                    row += [f"needs ~{need['torch'] / 2 ** 30:.0f} GiB", "-"]
                    peer_bound = "-"
                rows.append(row + rates_row(mine, flops, n_bytes, bandwidth, gemm[dtype])
                            + [peer_bound])
                print(f"  E={E} N={N} {dtype} {name}: ours {mine * 1e3:.3g} ms, torch "
                      + (f"{peer * 1e3:.3g} ms" if peer else "skipped"), flush=True)
    common.print_table(["E", "N", "dtype", "pass", "ours ms", "torch ms", "torch/ours",
                        "ours GB/s", "ours GF/s", "ours bound %", "torch bound %"], rows,
                       title=f"(ensemble) tanh RNNs, B = 1, T = {config['steps']}, driven")


# -- one large LSTM ----------------------------------------------------------------------

def single_case(config, seed=0):
    import dynamics

    B, H, T = config["single"]
    cell = dynamics.LSTM.init(H, H, seed=seed, dtype=np.float32)
    x = np.random.default_rng(seed).normal(size=(T, B, H)).astype(np.float32)
    return cell, x


def ours_single(cell, x):
    """(forward, forward + BPTT of L = sum(output)) closures on device-resident arrays."""
    from dynamics import gpu

    T, B, H = x.shape
    x_d = gpu.to_device(x)
    h0_d = gpu.zeros((1, B, H), x.dtype)
    grad_d = gpu.to_device(np.ones((T, 1, B, H), x.dtype))
    zeros = np.zeros((1, B, H), x.dtype)

    def forward():
        return gpu.layer_forward(cell, x_d, h0_d, h0_d, False)

    def forward_bptt():
        return gpu.layer_backward(forward(), grad_d, True, zeros, zeros, 0, gpu.zeros_like(x_d),
                                  True)

    return forward, forward_bptt


def section_single(torch, device, config, gemm):
    import dynamics

    B, H, T = config["single"]
    cell, x = single_case(config)
    ours_forward, ours_bptt = ours_single(cell, x)

    # cuDNN's float32 LSTM multiplies in TF32 (10-bit mantissas) unless told not to; ours
    # is float32 throughout, so compare float32 with float32
    torch.backends.cudnn.allow_tf32 = False
    lstm = torch.nn.LSTM(H, H)
    lstm.load_state_dict(dynamics.to_torch_state_dict(cell))
    lstm = lstm.to(device)
    xt = torch.tensor(x, device=device, requires_grad=True)

    def torch_forward():
        with torch.no_grad():
            return lstm(xt)

    def torch_bptt():
        lstm.zero_grad()
        xt.grad = None
        lstm(xt)[0].sum().backward()

    check_close("LSTM output", ours_forward().hs.copy_to_host()[0],
                torch_forward()[0].cpu().numpy(), "float32")
    rows = []
    for name, mine, peer, backward in (("fwd", ours_forward, torch_forward, False),
                                       ("fwd+bptt", ours_bptt, torch_bptt, True)):
        a = timed(mine, torch, device, config["repeats"])
        b = timed(peer, torch, device, config["repeats"])
        flops = common.rnn_flops(T, B, H, H, 4, backward=backward)
        rows.append([name, a * 1e3, b * 1e3, b / a, common.gflops(flops, a),
                     100 * common.gflops(flops, a) / gemm["float32"],
                     100 * common.gflops(flops, b) / gemm["float32"]])
    common.print_table(["pass", "ours ms", "cuDNN ms", "cuDNN/ours", "ours GF/s",
                        "ours %GEMM", "cuDNN %GEMM"], rows,
                       title=f"(single) LSTM B = {B}, H = D = {H}, T = {T}, float32")


# -- lambda_max ---------------------------------------------------------------------------

def lyapunov_case(config, seed=0):
    import dynamics

    E, N, T, burn_in = config["lyapunov"]
    cell = dynamics.RNN.init(1, N, init="gaussian", gain=1.5, ensemble=E, seed=seed)
    h0 = np.random.default_rng(seed + 1).normal(size=(1, E, 1, N))
    return cell, h0


def ours_lyapunov(cell, h0, steps, burn_in):
    import analysis

    def run():
        return analysis.lyapunov_spectrum(cell, steps=steps + burn_in, burn_in=burn_in,
                                          n_exponents=1, h0=h0, backend="cuda")
    return run


def section_lyapunov(torch, device, config, bandwidth, gemm):
    E, N, T, burn_in = config["lyapunov"]
    cell, h0 = lyapunov_case(config)
    ours = ours_lyapunov(cell, h0, T, burn_in)

    w = torch.tensor(cell.weight_hh, device=device)
    b = torch.tensor((cell.bias_ih + cell.bias_hh)[..., None], device=device)
    h_init = torch.tensor(h0[0, :, 0, :, None], device=device)

    def peer():
        h, q = h_init, torch.ones_like(h_init) / N ** 0.5
        total = torch.zeros(E, dtype=torch.float64, device=device)
        for s in range(T + burn_in):
            h = torch.tanh(torch.baddbmm(b, w, h))
            q = (1 - h * h) * torch.bmm(w, q)
            norm = q.norm(dim=1, keepdim=True)
            if s >= burn_in:
                total += norm[:, 0, 0].log()
            q = q / norm
        return total / T

    with torch.no_grad():
        # a chaotic trajectory amplifies rounding differences: the estimates agree only
        # statistically, to about 1e-2 after 1,000 steps
        difference = np.abs(ours().lyapunov_max.values[:, 0] - peer().cpu().numpy()).max()
        print(f"lambda_max: largest |ours - torch| over the ensemble {difference:.2e}")
        a = timed(ours, torch, device, config["repeats"])
        p = timed(peer, torch, device, config["repeats"])
    flops = 2 * common.matvec_flops(N, N) * E * (T + burn_in)  # state and tangent
    # W_hh read once per step (state and tangent share the read): E N^2 8 bytes (2 GiB at
    # the full size) cannot stay in the 50 MB of L2 between steps
    n_bytes = E * N * N * 8 * (T + burn_in)
    rows = [[E, N, T, a * 1e3, p * 1e3, p / a] + rates_row(a, flops, n_bytes, bandwidth,
                                                           gemm["float64"])]
    common.print_table(["E", "N", "T", "ours ms", "torch ms", "torch/ours", "ours GB/s",
                        "ours GF/s", "ours bound %"], rows,
                       title="(lyapunov) lambda_max, tanh, g = 1.5, float64, renormalised every "
                             "step (ours end to end, weights moved to the GPU included)")


# -- where the time goes ------------------------------------------------------------------

def kernel_profile(run):
    """(wall seconds of ``run()``, {"kernel grid": [launches, seconds]}): every launch
    made through numba-cuda is synchronised and timed on its own, so host work
    (allocations, transfers, Python) is the wall time less the kernels' sum. Launches are
    told apart by their grid, which tells which product of a pass a ``matmul`` is."""
    from numba import cuda
    from numba.cuda import dispatcher

    launch = dispatcher.CUDADispatcher.call
    kernels = {}

    def timed_launch(kernel, args, configuration):
        cuda.synchronize()
        start = time.perf_counter()
        result = launch(kernel, args, configuration)
        cuda.synchronize()
        name = f"{kernel.py_func.__qualname__.split('.')[0]} {configuration.griddim}"
        entry = kernels.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - start
        return result

    dispatcher.CUDADispatcher.call = timed_launch
    try:
        cuda.synchronize()
        start = time.perf_counter()
        run()
        cuda.synchronize()
        return time.perf_counter() - start, kernels
    finally:
        dispatcher.CUDADispatcher.call = launch


def section_profile(config):
    """Per-kernel times of one warm call of each of our workloads above."""
    if numba.config.ENABLE_CUDASIM:
        print("\n(profile) skipped: the simulator has no kernel launches to time")
        return
    E, N = config["ensembles"][0]
    _, _, T, burn_in = config["lyapunov"]
    workloads = {
        f"ensemble E = {E}, N = {N}, float32, fwd+bptt":
            ours_ensemble(*ensemble_case(E, N, config["steps"], np.dtype("float32")))[1],
        "single LSTM fwd+bptt": ours_single(*single_case(config))[1],
        "lyapunov": ours_lyapunov(*lyapunov_case(config), T, burn_in)}
    for label, run in workloads.items():
        run()  # compile and warm up
        wall, kernels = kernel_profile(run)
        rows = [[name, launches, seconds * 1e3, 100 * seconds / wall]
                for name, (launches, seconds) in sorted(kernels.items(),
                                                        key=lambda item: -item[1][1])]
        host = wall - sum(seconds for _, seconds in kernels.values())
        rows.append(["(host: allocations, transfers, Python)", "", host * 1e3,
                     100 * host / wall])
        common.print_table(["kernel", "launches", "ms", "% of wall"], rows,
                           title=f"(profile) {label}: {wall * 1e3:.1f} ms wall, each launch "
                                 "synchronised and timed alone")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--only", action="append",
                        choices=("ensemble", "single", "lyapunov", "profile"),
                        help="run only these")
    args = parser.parse_args(argv)
    if argv is None:  # run as a script, not called
        common.reuse_freed_memory()
    import torch
    from numba import cuda

    from kernels.cuda_api import require_gpu

    require_gpu()
    config = QUICK if args.quick else FULL
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print("benchmarks/gpu.py" + (" --quick" if args.quick else ""))
    for line in common.machine_info():
        print(line)
    simulated = numba.config.ENABLE_CUDASIM
    gpu_name = "numba CUDA simulator" if simulated else cuda.get_current_device().name
    print(f"gpu: {gpu_name}; torch {torch.__version__} on {device}"
          + ("" if device == "cuda" else " (no GPU for torch: numbers meaningless)"))
    start = time.time()
    bandwidth, gemm = ceilings(torch, device, config)
    print(f"ceilings: copy {bandwidth:.0f} GB/s, GEMM float32 {gemm['float32']:.0f} GFLOP/s, "
          f"float64 {gemm['float64']:.0f} GFLOP/s")
    sections = {"ensemble": lambda: section_ensemble(torch, device, config, bandwidth, gemm),
                "single": lambda: section_single(torch, device, config, gemm),
                "lyapunov": lambda: section_lyapunov(torch, device, config, bandwidth, gemm),
                "profile": lambda: section_profile(config)}
    for name, run in sections.items():
        if not args.only or name in args.only:
            run()
    print(f"\ntotal {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
