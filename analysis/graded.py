"""Products of many matrices kept in row-scaled log form, and their singular values.

A product P = R_n ... R_1 of thousands of factors over- or underflows float64, and its
singular values span thousands of nats. Kept as ``A = diag(exp(log_d)) M`` with the
rows of M of unit norm (``scaled_product``), it stays representable; its log singular
values then come from the unshifted QR algorithm run on that form
(``graded_log_singular_values``): each sweep multiplies the coupling between two rows
by their scale ratio, so rows far apart in scale part after a sweep or two, and what
stays coupled (close in scale) is finished by LAPACK's SVD. Every step keeps the relative
accuracy of the values, small ones included: no entry is ever formed outside its row's
scale.

>>> import numpy as np
>>> factor = np.array([[2.0, 1.0], [0.0, 0.5]])   # factor^n = [[2^n, 2^n 2/3], [0, 2^-n]]
>>> log_d, m = np.zeros(2), np.eye(2)
>>> for _ in range(3000):                          # 2^3000 overflows float64
...     log_d, m = scaled_product(factor, log_d, m)
>>> top = 3000 * np.log(2.0) + np.log(np.sqrt(13) / 3)   # |row 1|; det = 1
>>> bool(np.allclose(graded_log_singular_values(log_d, m), [top, -top], rtol=1e-12, atol=0))
True
"""
import numpy as np

#: couplings (off-diagonal entries of the row-normalised M) below this are dropped:
#: the singular values then move by a relative COUPLING^2
COUPLING = 1e-9


def scaled_product(r, log_d, m):
    """(log_d', M') with ``diag(exp(log_d')) M' = r diag(exp(log_d)) M`` and the rows of
    M' of unit norm, computed without forming anything outside a row's own scale.

    ``r`` (..., S, S); ``log_d`` (..., S) float64; ``M`` (..., S, S). Row i of the product
    is sum_j r_ij exp(log_d_j) M_j: each term is taken relative to the row's largest
    scale max_j log|r_ij| + log_d_j, so none overflows.
    """
    with np.errstate(divide="ignore"):  # zeros: log 0 = -inf, weight 0; a zero row stays 0
        scales = np.log(np.abs(r)) + log_d[..., None, :]
        top = scales.max(axis=-1)
        top = np.where(top == -np.inf, 0.0, top)
        rows = (np.sign(r) * np.exp(scales - top[..., None])) @ m
        norms = np.linalg.norm(rows, axis=-1)
        return top + np.log(norms), rows / np.where(norms > 0, norms, 1.0)[..., None]


def graded_log_singular_values(log_d, m, max_sweeps=60):
    """Log singular values, descending, of ``diag(exp(log_d)) M`` (one matrix: ``log_d``
    (S,), ``M`` (S, S) upper triangular with rows of unit norm, as ``scaled_product``
    leaves a product of upper triangular factors).

    A sweep is one step of the QR algorithm: with M^T = Q R, the matrix has the singular
    values of R diag(exp(log_d)), put back in scaled form. It stops when no two rows are
    coupled above ``COUPLING``, or after ``max_sweeps``; rows still coupled then are close
    in scale, and each such group's values come from LAPACK on its block.
    """
    zeros = np.full(np.count_nonzero(log_d == -np.inf), -np.inf)  # zero rows: sigma = 0
    log_d, m = log_d[log_d > -np.inf], m[log_d > -np.inf]
    if not len(log_d):
        return zeros
    identity = np.eye(len(log_d))
    if len(zeros):  # the rows left, made square and triangular again
        log_d, m = scaled_product(np.linalg.qr(m.T, mode="r"), log_d, identity)
    for _ in range(max_sweeps):
        if np.abs(np.triu(m, 1)).max(initial=0.0) <= COUPLING:
            break
        log_d, m = scaled_product(np.linalg.qr(m.T, mode="r"), log_d, identity)
    values = []
    for group in _coupled_groups(np.abs(m) > COUPLING):
        top = log_d[group].max()
        block = np.exp(log_d[group] - top)[:, None] * m[np.ix_(group, group)]
        values.extend(top + np.log(np.linalg.svd(block, compute_uv=False)))
    return np.concatenate([np.sort(values)[::-1], zeros])


def _coupled_groups(coupled):
    """The connected components (index arrays) of the graph ``coupled`` (S, S)."""
    coupled = coupled | coupled.T
    label = np.arange(len(coupled))
    while True:
        new = np.array([label[row].min() for row in coupled], dtype=int)
        new = new[new]   # follow to the component's smallest index
        if np.array_equal(new, label):
            return [np.flatnonzero(label == c) for c in np.unique(label)]
        label = new
