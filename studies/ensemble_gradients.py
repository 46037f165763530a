"""Gradient norm against lag for an ensemble of random tanh RNNs across gains.

Every member is a tanh RNN with W_hh ~ N(0, g^2/N), driven by white noise. A loss on
the last step only is backpropagated through time; the gradient that reaches the input
``lag`` steps earlier, ||dL/dx_{T-1-lag}||, shows vanishing (g < 1) or exploding
(g > 1) gradients. All gains run as one ensemble, in one kernel launch.

    python -m studies.ensemble_gradients [--units 64] [--steps 200] [--gains 0.5:2.0:7]
"""
import argparse
import time

import numpy as np

import dynamics


def parse_grid(text):
    """'a,b,c' or 'start:stop:num' -> array of floats.

    >>> parse_grid("0.5:2.0:4").tolist(), parse_grid("1,3").tolist()
    ([0.5, 1.0, 1.5, 2.0], [1.0, 3.0])
    """
    if ":" in text:
        start, stop, num = text.split(":")
        return np.linspace(float(start), float(stop), int(num))
    return np.array([float(v) for v in text.split(",")])


def gradient_norm_by_lag(gains, units=64, steps=200, batch=8, sigma_x=1.0, seed=0):
    """||dL/dx_t|| averaged over the batch, (len(gains), steps), index 0 = last step."""
    gains = np.asarray(gains, dtype=float)
    base = dynamics.RNN.init(units, units, init="gaussian", gain=1.0, ensemble=len(gains),
                             seed=seed)
    rnn = dynamics.RNN(weight_ih=np.broadcast_to(np.eye(units), base.weight_ih.shape),
                       weight_hh=base.weight_hh * gains[:, None, None])
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(2)[1])
    x = rng.normal(0.0, sigma_x, (steps, batch, units))
    grad_output = np.zeros((steps, len(gains), batch, units))
    grad_output[-1] = rng.normal(size=(len(gains), batch, units)) / np.sqrt(units)
    # Each member gets the same noise as its own input, so dL/dx is per member
    # (the gradient of an input shared by all members would sum over them).
    own_x = np.broadcast_to(x[:, None], (steps, len(gains), batch, units))
    grad_x = dynamics.bptt(rnn, own_x, grad_output)["x"]
    norms = np.linalg.norm(grad_x, axis=-1).mean(axis=-1).T
    return norms[:, ::-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--gains", type=parse_grid, default=parse_grid("0.5:2.0:7"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    norms = gradient_norm_by_lag(args.gains, args.units, args.steps, args.batch, seed=args.seed)
    lags = [lag for lag in (0, 1, 10, 50, 100, 199, 499, 999) if lag < args.steps]
    print(f"||dL/dx_(T-1-lag)|| for tanh RNNs, N={args.units}, T={args.steps}, "
          f"B={args.batch}, white input sigma=1")
    print("gain  " + "".join(f"{'lag ' + str(lag):>11s}" for lag in lags))
    for gain, row in zip(args.gains, norms):
        print(f"{gain:4.2f}  " + "".join(f"{row[lag]:11.3e}" for lag in lags))
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
