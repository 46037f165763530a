"""Products of many matrices kept as U diag(exp(log_d)) M, and their singular values.

A product P = J_n ... J_1 of thousands of factors over- or underflows float64, and its
singular values span thousands of nats. Kept as ``P = U diag(exp(log_d)) M`` with U
orthonormal and the rows of M of unit norm, it stays representable: each factor is
applied to U, the columns are ordered by their scale (pivoting, which keeps M well
conditioned: no row is swamped by a later, larger one), and a QR step moves the scales
into ``log_d`` (``pivoted_qr_step``). The singular values of P are those of
``diag(exp(log_d)) M``; the unshifted QR algorithm on that form
(``graded_log_singular_values``) parts rows of very different scale within a sweep or
two, and the groups of rows still coupled (close in scale) go to LAPACK's SVD. No
entry is ever formed outside its row's scale, so small singular values keep their
relative accuracy.

>>> import numpy as np
>>> factor = np.array([[2.0, 1.0], [0.0, 0.5]])   # factor^n = [[2^n, 2^n 2/3], [0, 2^-n]]
>>> u, log_d, m = np.eye(2), np.zeros(2), np.eye(2)
>>> for _ in range(3000):                          # 2^3000 overflows float64
...     u, log_d, m = pivoted_qr_step(factor @ u, log_d, m)
>>> top = 3000 * np.log(2.0) + np.log(np.sqrt(13) / 3)   # |row 1|; det = 1
>>> bool(np.allclose(graded_log_singular_values(log_d, m), [top, -top], rtol=1e-12, atol=0))
True
"""
import numpy as np
from scipy.sparse.csgraph import connected_components

#: rows of M whose cosine is below this count as orthogonal: the singular values then
#: move by a relative COUPLING^2 at most
COUPLING = 1e-9


def scaled_product(r, log_d, m):
    """(log_d', M') with ``diag(exp(log_d')) M' = r diag(exp(log_d)) M`` and the rows of
    M' of unit norm (a zero row stays 0, with log_d' = -inf), computed without forming
    anything outside a row's own scale: row i, sum_j r_ij exp(log_d_j) M_j, is taken
    relative to its largest term, max_j log|r_ij| + log_d_j.

    ``r`` (..., S, S); ``log_d`` (..., S) float64; ``M`` (..., S, S).
    """
    with np.errstate(divide="ignore", invalid="ignore"):  # zeros of r: log 0 = -inf
        scales = np.log(np.abs(r)) + log_d[..., None, :]
        top = scales.max(axis=-1)
        top = np.where(top == -np.inf, 0.0, top)
        rows = (np.sign(r) * np.exp(scales - top[..., None])) @ m
        norms = np.linalg.norm(rows, axis=-1)
        return top + np.log(norms), rows / np.where(norms > 0, norms, 1.0)[..., None]


def by_decreasing_scale(log_d, m):
    """``log_d`` sorted in decreasing order along its last axis, and the rows of ``m``
    in the same order (``diag(exp(log_d)) M`` only has its rows permuted)."""
    order = np.argsort(-log_d, axis=-1, kind="stable")
    return (np.take_along_axis(log_d, order, axis=-1),
            np.take_along_axis(m, order[..., None], axis=-2))


def pivoted_qr_step(a, log_d, m):
    """One factor into ``P = U diag(exp(log_d)) M``: given ``a = J U`` (..., S, S),
    return (U', log_d', M') with ``J P = U' diag(exp(log_d')) M'``.

    The columns of ``a diag(exp(log_d))`` go in decreasing order of their norms, then
    ``a`` (the scales left out) is QR-factored: ``a_pivoted = U' R`` and the scales are
    absorbed with ``scaled_product(R, log_d_pivoted, M_pivoted)``.
    """
    with np.errstate(divide="ignore"):
        scale = np.log(np.linalg.norm(a, axis=-2)) + log_d
    order = np.argsort(-scale, axis=-1, kind="stable")
    a = np.take_along_axis(a, order[..., None, :], axis=-1)
    log_d = np.take_along_axis(log_d, order, axis=-1)
    m = np.take_along_axis(m, order[..., None], axis=-2)
    u, r = np.linalg.qr(a)
    log_d, m = scaled_product(r.astype(np.float64), log_d, m)
    return u, log_d, m


def graded_log_singular_values(log_d, m, max_sweeps=60):
    """Log singular values, descending, of ``diag(exp(log_d)) M`` (one matrix: ``log_d``
    (S,), ``M`` (S, S) with rows of unit norm, as ``pivoted_qr_step`` leaves it); -inf
    for each zero row.

    A sweep is one step of the QR algorithm: rows sorted by scale, M^T = Q R, and the
    matrix has the singular values of R diag(exp(log_d)), put back in scaled form. It
    stops when no two rows of M have a cosine above ``COUPLING`` (then the values are
    exp(log_d)), or after ``max_sweeps``; each group of rows still coupled then goes to
    LAPACK's SVD, scaled to its largest row (such rows are close in scale).
    """
    n_zeros = 0
    for sweep in range(max_sweeps + 1):
        log_d, m = by_decreasing_scale(log_d, m)
        live = log_d > -np.inf
        n_zeros += np.count_nonzero(~live)
        log_d, m = log_d[live], m[live]
        coupled = np.abs(m @ m.T) > COUPLING
        if sweep == max_sweeps or not np.triu(coupled, 1).any():
            break
        log_d, m = scaled_product(np.linalg.qr(m.T, mode="r"), log_d, np.eye(len(log_d)))
    values = []
    n_groups, group_of = connected_components(coupled, directed=False)
    for group in range(n_groups):
        rows = np.flatnonzero(group_of == group)
        top = log_d[rows].max()
        block = np.exp(log_d[rows] - top)[:, None] * m[rows]
        with np.errstate(divide="ignore"):  # a group's exact zero: -inf
            values.extend(top + np.log(np.linalg.svd(block, compute_uv=False)))
    return np.concatenate([np.sort(values)[::-1], np.full(n_zeros, -np.inf)])
