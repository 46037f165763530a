"""The blocked Householder QR (``kernels.householder``) against LAPACK's.

The Lyapunov kernels take log |R_jj| and Q from it at every re-orthonormalisation, so
both must be LAPACK's up to rounding, whatever the shape (blocks partial or whole),
dtype and scale of the columns (norms that would over- or underflow when squared, a
column exactly zero or in the span of those before it), and must not depend on what the
reused work arrays held before.
"""
import numba
import numpy as np
from hypothesis import given, settings, strategies as st

from kernels.householder import QR_BLOCK, orthonormalise, qr_workspace, qr_workspaces


@numba.njit
def householder(a, log_r, workspaces):
    orthonormalise(a, log_r, qr_workspace(workspaces, 0))


def ours(a, workspaces=None):
    """(Q, log |R_jj|) of a copy of ``a``."""
    q = a.copy()
    log_r = np.empty(a.shape[1])
    if workspaces is None:
        workspaces = qr_workspaces(1, *a.shape, a.dtype)
    householder(q, log_r, workspaces)
    return q, log_r


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), k=st.integers(1, 3 * QR_BLOCK + 3),
       extra_rows=st.integers(0, 40), seed=st.integers(0, 2**31),
       scale=st.sampled_from([0.0, 30.0, 150.0]))
def test_q_and_log_r_are_lapacks(dtype, k, extra_rows, seed, scale):
    """Columns of random magnitude (up to 10^(+-scale), within the dtype's range): Q
    orthonormal, Q^T a upper triangular with |diagonal| = exp(log_r), both as LAPACK's."""
    rng = np.random.default_rng(seed)
    m = k + extra_rows
    limit = min(scale, 30.0) if dtype == np.float32 else scale
    log10_scales = rng.uniform(-limit, limit, k)
    a = (rng.normal(size=(m, k)) * 10.0 ** log10_scales).astype(dtype)
    q, log_r = ours(a)
    q_ref, r_ref = np.linalg.qr(a.astype(np.float64))
    eps = np.finfo(dtype).eps
    # columns of very different norms: R's entries are bounded column by column
    a64 = a.astype(np.float64)
    r = q.astype(np.float64).T @ a64
    norms = np.linalg.norm(a64, axis=0)
    assert np.allclose(q.astype(np.float64).T @ q, np.eye(k), atol=50 * k * eps)
    assert np.all(np.abs(np.tril(r, -1)) <= 50 * m * eps * norms)
    assert np.allclose(log_r, np.log(np.abs(np.diag(r_ref))), rtol=0, atol=1e3 * m * eps)
    assert np.allclose(q, q_ref, atol=1e3 * m * eps)


def test_zero_and_dependent_columns_give_minus_infinity_and_an_orthonormal_q():
    """A zero column and a copy of an earlier one have R_jj = 0 (exactly, for the zero
    column): log -inf, or below the others by ~log(eps); Q stays orthonormal."""
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        a = rng.normal(size=(40, 20)).astype(dtype)
        a[:, 3] = 0.0
        a[:, 7] = a[:, 2]
        q, log_r = ours(a)
        assert log_r[3] == -np.inf
        assert log_r[7] < np.log(np.finfo(dtype).eps) + 5
        assert np.isfinite(np.delete(log_r, [3, 7])).all()
        assert np.allclose(q.T @ q, np.eye(20), atol=1e-5 if dtype == np.float32 else 1e-13)


def test_extreme_column_norms_neither_overflow_nor_underflow():
    """10^e A, with squares of its entries outside the dtype's range (and float64's):
    log |R_jj| is that of A plus e ln 10, Q that of A."""
    a = np.random.default_rng(1).normal(size=(30, 12))
    q_ref, log_r_ref = ours(a)
    for dtype, exponents in ((np.float64, (-300, -160, 160, 300)),
                             (np.float32, (-37, -25, 25, 37))):
        for exponent in exponents:
            scaled = (a * 10.0 ** exponent).astype(dtype)
            q, log_r = ours(scaled)
            tolerance = 1e-4 if dtype == np.float32 else 1e-12
            assert np.allclose(log_r, log_r_ref + exponent * np.log(10.0), atol=tolerance)
            assert np.allclose(q, q_ref, atol=1e3 * tolerance)
        subnormal = (a * np.finfo(dtype).smallest_subnormal * 100).astype(dtype)
        q, log_r = ours(subnormal)  # few bits left, but no inf or nan
        assert np.isfinite(log_r).all() and np.isfinite(q).all()
        assert np.allclose(q.T @ q, np.eye(12), atol=1e-4)


def test_reused_work_arrays_do_not_change_the_bits():
    """Work arrays that held anything (nan here) before give the same bits as fresh ones,
    and the same input twice gives the same bits."""
    a = np.random.default_rng(2).normal(size=(70, 50))
    q, log_r = ours(a)
    workspaces = qr_workspaces(1, 70, 50, a.dtype)
    for array in workspaces:
        array[...] = np.nan
    q2, log_r2 = ours(a, workspaces)
    q3, log_r3 = ours(a, workspaces)
    for x, y in ((q, q2), (q, q3), (log_r, log_r2), (log_r, log_r3)):
        assert np.array_equal(x, y)
