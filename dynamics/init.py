"""Initialisers for recurrent weights, each drawn from a ``numpy.random.SeedSequence``.

>>> import dynamics
>>> p = dynamics.init.draw(1, 3, 4, init="identity", gain=0.5)
>>> p["weight_hh"].diagonal().tolist(), float(abs(p["bias_ih"]).sum())
([0.5, 0.5, 0.5, 0.5], 0.0)
"""
import numpy as np

from dynamics.validation import check_choice, check_positive_int

SCHEMES = ("uniform", "gaussian", "orthogonal", "identity")


def recurrent_block(rng, hidden_size, init, gain):
    """One H x H block of W_hh for ``init`` (see ``draw``)."""
    H = hidden_size
    if init == "uniform":
        bound = 1.0 / np.sqrt(H)
        return rng.uniform(-bound, bound, (H, H))
    if init == "gaussian":
        return rng.normal(0.0, gain / np.sqrt(H), (H, H))
    if init == "orthogonal":
        q, r = np.linalg.qr(rng.normal(size=(H, H)))
        return gain * q * np.sign(np.diag(r))
    return gain * np.eye(H)


def draw_one(rng, gates, input_size, hidden_size, init, gain, bias):
    H = hidden_size
    bound = 1.0 / np.sqrt(H)
    parameters = {
        "weight_ih": rng.uniform(-bound, bound, (gates * H, input_size)),
        "weight_hh": np.concatenate([recurrent_block(rng, H, init, gain) for _ in range(gates)]),
    }
    if bias:
        for name in ("bias_ih", "bias_hh"):
            parameters[name] = (rng.uniform(-bound, bound, gates * H) if init == "uniform"
                                else np.zeros(gates * H))
    return parameters


def seed_sequence(seed):
    """``seed`` (an int, a sequence of ints or a SeedSequence) as a SeedSequence."""
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)


def child(seed, index):
    """Child ``index`` of ``seed``'s SeedSequence: ``SeedSequence(seed).spawn(n)[index]``,
    built directly, so that a SeedSequence the caller passes is never spawned from (which
    would change what it gives the next time).

    >>> spawned = np.random.SeedSequence(7).spawn(3)[2]
    >>> bool(child(7, 2).generate_state(1) == spawned.generate_state(1))
    True
    """
    root = seed_sequence(seed)
    return np.random.SeedSequence(root.entropy, spawn_key=root.spawn_key + (int(index),),
                                  pool_size=root.pool_size)


def children(seed, n):
    """The first ``n`` children of ``seed`` (``child``)."""
    return [child(seed, i) for i in range(n)]


def draw(gates, input_size, hidden_size, *, init="uniform", gain=1.0, ensemble=None, seed=0,
         dtype="float64", bias=True):
    """Parameters of a cell with ``gates`` gates, as a dict of torch-named arrays.

    ``init``: "uniform" U(-1/sqrt(H), 1/sqrt(H)) for everything (torch's default);
    "gaussian" W_hh ~ N(0, gain^2/H); "orthogonal" gain * Q with Q Haar-orthogonal;
    "identity" gain * I (IRNN, Le et al. 2015). Non-uniform schemes have zero biases.
    With ``ensemble=E``, member e is drawn from ``child(seed, e)``.
    """
    check_choice("init", init, SCHEMES)
    gain = float(gain)
    if not np.isfinite(gain):
        raise ValueError(f"gain must be finite, got {gain}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    root = seed_sequence(seed)
    if ensemble is None:
        one = draw_one(np.random.default_rng(root), gates, input_size, hidden_size, init, gain, bias)
        return {k: v.astype(dtype) for k, v in one.items()}
    check_positive_int("ensemble", ensemble)
    members = [draw_one(np.random.default_rng(member), gates, input_size, hidden_size, init,
                        gain, bias) for member in children(root, ensemble)]
    return {k: np.stack([m[k] for m in members]).astype(dtype) for k in members[0]}
