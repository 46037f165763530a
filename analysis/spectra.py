"""Eigenvalues and singular values of the recurrent weights.

For a gated cell each gate's H x H block of W_hh is its own recurrent matrix (LSTM
i, f, g, o; GRU r, z, n); a vanilla RNN has one block, "h". Dense LAPACK by default;
``scipy.sparse.linalg`` (ARPACK) for the few largest values of large matrices.

>>> import numpy as np, dynamics, analysis
>>> rnn = dynamics.RNN.init(1, 300, init="orthogonal", gain=1.2, seed=0)
>>> s = analysis.weight_spectrum(rnn)
>>> round(float(s.spectral_radius[0]), 6), round(float(s.spectral_norm[0]), 6)
(1.2, 1.2)
"""
import numpy as np
import scipy.sparse.linalg
import xarray as xr

from analysis._common import attrs, provenance, single_cell
from dynamics.validation import check_choice, check_finite, check_float_array, check_positive_int

GATE_NAMES = {"rnn_tanh": ("h",), "rnn_relu": ("h",), "lstm": ("i", "f", "g", "o"),
              "gru": ("r", "z", "n")}
#: ``method="auto"`` computes full spectra up to this size, the largest values above it.
DENSE_MAX_SIZE = 2000


def _blocks(model):
    """(E or 1, gates, H, H) recurrent blocks, gate names, whether an ensemble."""
    if isinstance(model, np.ndarray) or isinstance(model, (list, tuple)):
        w = check_float_array("weights", model)
        if w.ndim not in (2, 3) or w.shape[-1] != w.shape[-2] or 0 in w.shape:
            raise ValueError("weights must be a square (N, N) or (E, N, N) array with N, E at "
                             f"least 1, got {w.shape}")
        check_finite("weights", w)
        ensemble = w.ndim == 3
        return (w if ensemble else w[None])[:, None], ("w",), ensemble
    cell = single_cell(model)
    H, G = cell.hidden_size, cell.gates
    w = cell.weight_hh if cell.ensemble_size else cell.weight_hh[None]
    return w.reshape(w.shape[0], G, H, H), GATE_NAMES[cell.kind], cell.ensemble_size is not None


def _largest(matrix, n_values):
    """The ``n_values`` largest-modulus eigenvalues and largest singular values (ARPACK)."""
    eigenvalues = scipy.sparse.linalg.eigs(matrix, k=n_values, which="LM",
                                           return_eigenvectors=False)
    singular = scipy.sparse.linalg.svds(matrix, k=n_values, return_singular_vectors=False)
    return eigenvalues, singular


def weight_spectrum(model, method="auto", n_values=6):
    """Eigenvalues, singular values, spectral radius and spectral norm of W_hh.

    Parameters
    ----------
    model : a cell, an ensemble, a one-layer Network, or a square (N, N) / (E, N, N) array
    method : "dense" (every value, LAPACK), "sparse" (the ``n_values`` largest, ARPACK:
        for N in the thousands) or "auto" (dense up to N = ``DENSE_MAX_SIZE``)

    Returns
    -------
    xarray.Dataset over ``([member,] gate, index)``: ``eigenvalue_real``,
    ``eigenvalue_imag`` (sorted by decreasing modulus; netCDF has no complex type),
    ``singular_value`` (decreasing), and ``spectral_radius``, ``spectral_norm``
    ``([member,] gate)``.
    """
    check_choice("method", method, ("auto", "dense", "sparse"))
    blocks, gates, ensemble = _blocks(model)
    E, G, N, _ = blocks.shape
    sparse = method == "sparse" or (method == "auto" and N > DENSE_MAX_SIZE)
    if sparse:
        n_values = check_positive_int("n_values", n_values)
        if n_values > N - 2:
            raise ValueError(f"n_values must be at most N - 2 = {N - 2} for the sparse method, "
                             f"got {n_values}")
    size = n_values if sparse else N
    eigenvalues = np.empty((E, G, size), complex)
    singular = np.empty((E, G, size))
    for e in range(E):
        for g in range(G):
            w = blocks[e, g].astype(np.float64)
            if sparse:
                eig, sv = _largest(w, n_values)
            else:
                eig, sv = np.linalg.eigvals(w), np.linalg.svd(w, compute_uv=False)
            eigenvalues[e, g] = eig[np.argsort(-np.abs(eig), kind="stable")]
            singular[e, g] = np.sort(sv)[::-1]
    member = (lambda a: a) if ensemble else (lambda a: a[0])
    dims = (("member",) if ensemble else ()) + ("gate",)
    return xr.Dataset(
        {"eigenvalue_real": (dims + ("index",), member(eigenvalues.real),
                             attrs("real part of the eigenvalues of W_hh", "1")),
         "eigenvalue_imag": (dims + ("index",), member(eigenvalues.imag),
                             attrs("imaginary part of the eigenvalues of W_hh", "1")),
         "singular_value": (dims + ("index",), member(singular),
                            attrs("singular values of W_hh", "1")),
         "spectral_radius": (dims, member(np.abs(eigenvalues[..., 0])),
                             attrs("spectral radius of W_hh", "1")),
         "spectral_norm": (dims, member(singular[..., 0]),
                           attrs("spectral norm (largest singular value) of W_hh", "1"))},
        coords={"gate": ("gate", list(gates), attrs("gate block of W_hh (w: the array given)",
                                                    "1")),
                "index": ("index", np.arange(size), attrs("index of the value, by decreasing "
                                                          "modulus", "1"))},
        attrs=provenance("weight_spectrum", {"method": "sparse" if sparse else "dense",
                                             "n_values": size}, np.float64))
