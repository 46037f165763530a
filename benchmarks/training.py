"""Training benchmark: steps per second on the adding problem, ours against torch training
loops doing the same work, in one run, taking turns (``common.measure_interleaved``).

Run from the repository root::

    PYTHONPATH=. python benchmarks/training.py            # full sizes (~3 min on 2 cores)
    PYTHONPATH=. python benchmarks/training.py --quick    # small sizes, smoke test

Workload: a 128-unit LSTM (forget bias 1) and a 128-unit IRNN (ReLU, W_hh = I), input
size 2, adding problem with B = 32, T = 200; a linear readout of the last state, MSE,
global-norm clipping at 1 per network, Adam (lr 1e-3); one network and ensembles of 8
(every network its own parameters and optimiser state, all on the same minibatches).
float32 (what torch users train in) and float64.

- ours: ``dynamics.train`` (the ensemble in one launch per step);
- torch nn: ``torch.nn.LSTM``/``RNN`` + ``Linear`` + ``torch.optim.Adam``, one training
  loop step per network (E of them in turn for an ensemble);
- torch bmm: the E networks' weights stacked, the cell written with ``torch.baddbmm``
  over (E, B, .) per step, autograd, the clipping per network, one Adam over the stacks.

A step's FLOPs count matrix products only (``common.rnn_flops`` with backward: 3x the
forward, less dL/dx, which training needs from neither side); GFLOP/s are compared
with numpy's GEMM rate measured at the start of the run.
"""
import functools

import numpy as np

import dynamics
from benchmarks import common
from dynamics.optim import Adam
from dynamics.tasks import adding_problem

try:
    import torch
except ImportError:  # the torch peers are then left out
    torch = None

FULL = dict(units=128, batch=32, seq_len=200, ensembles=(1, 8), dtypes=("float32", "float64"),
            steps=6)
QUICK = dict(units=16, batch=8, seq_len=20, ensembles=(1, 2), dtypes=("float32",), steps=2)
CELLS = {"lstm": ("lstm", 4), "irnn": ("rnn_relu", 1)}


def model(cell, units, ensemble, dtype):
    if cell == "lstm":
        return dynamics.LSTM.init(2, units, ensemble=ensemble, forget_bias=1.0, dtype=dtype)
    return dynamics.RNN.init(2, units, init="identity", nonlinearity="relu", ensemble=ensemble,
                             dtype=dtype)


def ours(net, batches, steps):
    dynamics.train(net, lambda step: batches[step % len(batches)], steps=steps, readout=1,
                   optimizer=Adam(1e-3), clip=1.0)


def torch_nn(cell, units, ensemble, dtype, batches):
    """A function running ``steps`` steps of E separate torch training loops."""
    kind = getattr(torch, dtype)
    loops = []
    for _ in range(ensemble):
        if cell == "lstm":
            rnn = torch.nn.LSTM(2, units).to(kind)
        else:
            rnn = torch.nn.RNN(2, units, nonlinearity="relu").to(kind)
            with torch.no_grad():
                rnn.weight_hh_l0.copy_(torch.eye(units))
                rnn.bias_hh_l0.zero_()
                rnn.bias_ih_l0.zero_()
        linear = torch.nn.Linear(units, 1).to(kind)
        params = list(rnn.parameters()) + list(linear.parameters())
        loops.append((rnn, linear, params, torch.optim.Adam(params, lr=1e-3)))
    data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def run(steps):
        for step in range(steps):
            x, y = data[step % len(data)]
            for rnn, linear, params, optimizer in loops:
                optimizer.zero_grad()
                output, _ = rnn(x)
                loss = torch.nn.functional.mse_loss(linear(output[-1]), y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
    return run


def torch_bmm(cell, units, ensemble, dtype, batches):
    """A function running ``steps`` steps of one batched-matmul training loop over E."""
    kind = getattr(torch, dtype)
    gates = CELLS[cell][1]
    E, H, bound = ensemble, units, 1 / np.sqrt(units)

    def uniform(*shape):
        return torch.nn.Parameter((torch.rand(*shape, dtype=kind) * 2 - 1) * bound)

    w_ih, b = uniform(E, 2, gates * H), uniform(E, 1, gates * H)
    w_hh = uniform(E, H, gates * H)
    if cell == "irnn":
        with torch.no_grad():
            w_hh.copy_(torch.eye(H).expand(E, H, H))
            b.zero_()
    w_out, b_out = uniform(E, H, 1), uniform(E, 1, 1)
    params = [w_ih, w_hh, b, w_out, b_out]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]

    def loss_of(x, y):
        T, B, _ = x.shape
        h = torch.zeros(E, B, H, dtype=kind)
        c = torch.zeros(E, B, H, dtype=kind)
        projected = (torch.matmul(x.unsqueeze(1), w_ih) + b).unbind(0)  # T x (E, B, G*H)
        for t in range(T):  # (unbind: indexing projected[t] costs O(T) each in backward)
            a = torch.baddbmm(projected[t], h, w_hh)
            if cell == "lstm":
                i, f, g, o = a.chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            else:
                h = torch.relu(a)
        prediction = torch.baddbmm(b_out, h, w_out)  # (E, B, 1)
        return ((prediction - y) ** 2).mean(dim=(1, 2)).sum()  # members independent

    def run(steps):
        for step in range(steps):
            optimizer.zero_grad()
            loss_of(*data[step % len(data)]).backward()
            with torch.no_grad():  # clip each network on its own
                norms = torch.sqrt(sum((p.grad.reshape(E, -1) ** 2).sum(1) for p in params))
                scale = torch.clamp(1.0 / (norms + 1e-6), max=1.0)
                for p in params:
                    p.grad.mul_(scale.reshape(E, *[1] * (p.ndim - 1)))
            optimizer.step()
    return run


def main(argv=None):
    sizes = common.begin("benchmarks/training.py", __doc__, FULL, QUICK, argv, torch)
    H, B, T, steps = sizes["units"], sizes["batch"], sizes["seq_len"], sizes["steps"]
    rates = {dtype: common.gemm_rate(dtype) for dtype in sizes["dtypes"]}
    print("numpy GEMM: " + ", ".join(f"{d} {r:.0f} GFLOP/s" for d, r in rates.items()))
    rows = []
    for dtype in sizes["dtypes"]:
        batches = [adding_problem(T, B, seed=s, dtype=dtype) for s in range(4)]
        for cell, (kind, gates) in CELLS.items():
            for E in sizes["ensembles"]:
                flops = common.rnn_flops(T, B, 2, H, gates, ensemble=E, backward=True,
                                         input_gradient=False)
                net = model(cell, H, E if E > 1 else None, dtype)
                runs = {"ours": lambda: ours(net, batches, steps)}
                if torch is not None:
                    for name, make in (("torch nn", torch_nn), ("torch bmm", torch_bmm)):
                        runs[name] = functools.partial(make(cell, H, E, dtype, batches), steps)
                times = common.measure_interleaved(runs, repeats=3)
                per_step = {k: t.median / steps for k, t in times.items()}
                peers = {k: v for k, v in per_step.items() if k != "ours"}
                best = min(peers, key=peers.get) if peers else None
                rows.append([dtype, cell, E, 1 / per_step["ours"],
                             *(1 / per_step[k] if k in per_step else None
                               for k in ("torch nn", "torch bmm")),
                             best or "-", peers[best] / per_step["ours"] if best else None,
                             common.gflops(flops, per_step["ours"]),
                             common.gflops(flops, per_step["ours"]) / rates[dtype],
                             max(t.spread for t in times.values())])
    common.print_table(
        ["dtype", "cell", "E", "ours steps/s", "torch nn", "torch bmm", "best peer",
         "speedup", "GFLOP/s", "of GEMM", "spread"], rows,
        title=f"training steps per second (each step: all E networks), H = {H}, B = {B}, "
              f"T = {T}; speedup = best peer's time / ours")


if __name__ == "__main__":
    main()
