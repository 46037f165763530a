"""The register-resident sums (``kernels.registers``) give the plain loop's bits.

``kernels.cells.accumulate_rows`` is the inner product of every walk: blocks of columns
summed in vector registers, an overlapping last vector recomputed from saved values,
and the in-memory loop for strided or short arrays. Every way must give the same bits
as ``accumulate_rows_in_memory`` (one order of additions), and the sum itself must be
right (against NumPy in float64). ``kernels.cells.add_packed_product`` (every matrix
product of the batched path) and ``kernels.projections.add_transposed_product`` (the
parameter gradients) use four-row panels of the same kind, from packed copies, or BLAS.
"""
import naive
import numba
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kernels.cells import (PAGE_BYTES, accumulate_blocked_rows, accumulate_rows,
                           accumulate_rows_in_memory, add_packed_product, add_product,
                           column_block_width, column_blocks, input_matvec,
                           pack_column_blocks, pack_member_panels, pack_panels, panel_width,
                           terms_per_part)
from kernels.projections import (TRANSPOSE_BLOCK, TRANSPOSED_PART_ROWS,
                                 add_transposed_product)
from kernels.registers import (DOT_ROWS, FUSED, PAIR_VECTORS, PANEL_VECTORS, VECTOR_BITS,
                               WIDE_BLOCK, accumulate_pair, multiply_add)


@numba.njit
def in_registers(rows, coefficients, out):
    accumulate_rows(rows, coefficients, out)


@numba.njit
def in_memory(rows, coefficients, out):
    accumulate_rows_in_memory(rows, coefficients, out)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n_rows=st.integers(0, 50),
       n_out=st.integers(1, 300), strided_rows=st.booleans(),
       strided_coefficients=st.booleans(), seed=st.integers(0, 2**31))
def test_register_sums_equal_the_plain_loop_bit_for_bit(dtype, n_rows, n_out, strided_rows,
                                                         strided_coefficients, seed):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n_rows, 2 * n_out if strided_rows else n_out)).astype(dtype)
    rows = rows[:, ::2] if strided_rows else rows
    coefficients = rng.normal(size=2 * n_rows).astype(dtype)
    coefficients = coefficients[::2] if strided_coefficients else coefficients[:n_rows]
    start = rng.normal(size=n_out).astype(dtype)
    got, want = start.copy(), start.copy()
    in_registers(rows, coefficients, got)
    in_memory(rows, coefficients, want)
    np.testing.assert_array_equal(got, want)
    exact = start.astype(np.float64) + coefficients.astype(np.float64) @ rows.astype(np.float64)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, exact, rtol=tolerance, atol=tolerance * (n_rows + 1))


@numba.njit
def in_column_blocks(blocked, coefficients, out, descending):
    blocks = column_blocks(blocked, coefficients.shape[0], out.shape[0])
    accumulate_blocked_rows(blocks, coefficients, out, descending)


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n_rows=st.integers(0, 40),
       n_blocks=st.integers(0, 3), remainder=st.integers(0, 40), transposed=st.booleans(),
       descending=st.booleans(), seed=st.integers(0, 2**31))
def test_column_blocks_give_the_same_sums(dtype, n_rows, n_blocks, remainder, transposed,
                                          descending, seed):
    """The walks' weights in column blocks (``pack_column_blocks``): every column
    exactly once, block after block, and the sums of ``accumulate_rows`` bit for bit,
    for whole blocks, a narrower last block, and one narrower than a vector, with the
    blocks read in either order."""
    n_out = n_blocks * column_block_width(np.dtype(dtype).itemsize) + remainder
    if n_out == 0:
        return
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(2, n_out, n_rows) if transposed else (2, n_rows, n_out)).astype(dtype)
    rows = rows.transpose(0, 2, 1) if transposed else rows  # as the walks pass W_hh^T
    blocked = pack_column_blocks(rows)
    assert blocked.shape == (2, n_rows * n_out) and blocked.dtype == dtype
    assert sorted(blocked[1].tolist()) == sorted(rows[1].ravel().tolist())
    coefficients = rng.normal(size=n_rows).astype(dtype)
    start = rng.normal(size=n_out).astype(dtype)
    got, want = start.copy(), start.copy()
    in_column_blocks(blocked[1], coefficients, got, descending)
    in_registers(np.ascontiguousarray(rows[1]), coefficients, want)
    np.testing.assert_array_equal(got, want)


@numba.njit
def matvec(w, x, bias, out):
    input_matvec(w, x, bias, out)


@numba.njit
def matvec_in_memory(w, x, out):
    """The order of ``kernels.registers.dot_rows`` written in memory, one term at a
    time, for each row: lane l (of a vector's lanes) sums the columns j = l (mod lanes)
    in order, then the lanes are added pairwise, halving."""
    partial = np.empty(VECTOR_BITS // (8 * out.itemsize), out.dtype)
    for i in range(w.shape[0]):
        partial[:] = 0.0
        for j in range(x.shape[0]):
            lane = j % partial.shape[0]
            partial[lane] = multiply_add(w[i, j], x[j], partial[lane])
        width = partial.shape[0]
        while width > 1:
            width //= 2
            for lane in range(width):
                partial[lane] += partial[lane + width]
        out[i] = partial[0]


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n_rows=st.integers(0, 3 * DOT_ROWS),
       n_columns=st.integers(0, 70),
       strided=st.sampled_from(["none", "rows", "columns", "x", "reversed", "fortran"]),
       seed=st.integers(0, 2**31))
def test_row_dot_products_equal_their_order_in_memory_bit_for_bit(dtype, n_rows, n_columns,
                                                                   strided, seed):
    """The step functions' matrix-vector product (``input_matvec``: dot products in
    vector lanes, the last vector masked, eight rows at a time and then one) gives the
    bits of the same order written in memory, for any strides (strided rows read in
    place, other layouts copied), and the right sum."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(2 * n_rows, 2 * n_columns)).astype(dtype)
    w = {"rows": w[::2, :n_columns], "columns": w[:n_rows, ::2],
         "reversed": w[:n_rows, :n_columns][::-1, ::-1],
         "fortran": np.asfortranarray(w[:n_rows, :n_columns])}.get(
        strided, np.ascontiguousarray(w[:n_rows, :n_columns]))
    x = rng.normal(size=2 * n_columns).astype(dtype)
    x = {"x": x[::2], "reversed": x[:n_columns][::-1]}.get(strided, x[:n_columns])
    bias = rng.normal(size=n_rows).astype(dtype)
    got, want = np.full(n_rows, np.nan, dtype), np.full(n_rows, np.nan, dtype)
    matvec(w, x, bias, got)
    matvec_in_memory(w, x, want)
    np.testing.assert_array_equal(got, want + bias)
    exact = w.astype(np.float64) @ x.astype(np.float64) + bias
    tolerance = 1e-5 if dtype == np.float32 else 1e-14
    scale = np.abs(w).astype(np.float64) @ np.abs(x) + np.abs(bias)
    assert np.all(np.abs(got - exact) <= tolerance * scale)


@pytest.mark.parametrize("dtype, big", [(np.float32, 2.0 ** 30), (np.float64, 2.0 ** 60)])
def test_row_dot_products_sum_lanes_pairwise(dtype, big):
    """The order is the documented one: lane l sums the columns j = l (mod lanes), then
    the lanes are added pairwise, halving, so lane lanes/2 meets lane 0 first. Powers
    of two that cancel only in that order tell it from a sum in column order or lane by
    lane, where big + 1 rounds to big before -big cancels it: both would give 0."""
    lanes = VECTOR_BITS // (8 * np.dtype(dtype).itemsize)
    if lanes < 4:
        pytest.skip("with two lanes, pairwise is lane by lane")
    x, w = np.ones(lanes, dtype), np.zeros((1, lanes), dtype)
    w[0, 0], w[0, 1], w[0, lanes // 2] = big, 1.0, -big
    out = np.empty(1, dtype)
    matvec(w, x, np.zeros(1, dtype), out)
    assert out[0] == 1.0
    matvec_in_memory(w, x, out)
    assert out[0] == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_dot_products_keep_the_sign_of_zero(dtype):
    """Products that round to -0.0 sum to -0.0 (when every lane gets a term: the row at
    least one vector long): the lanes past the end of the masked last vector are left
    as they are (adding 0 * 0 there would make them +0.0)."""
    lanes = VECTOR_BITS // (8 * np.dtype(dtype).itemsize)
    tiny = np.finfo(dtype).smallest_subnormal
    w, x = np.full((3, lanes + 1), -tiny, dtype), np.full(lanes + 1, tiny, dtype)
    out = np.ones(3, dtype)
    matvec(w, x, np.full(3, -0.0, dtype), out)
    assert np.all(out == 0) and np.all(np.signbit(out))


@numba.njit
def scalar_multiply_add(a, b, c):
    return multiply_add(a, b, c)


@pytest.mark.parametrize("dtype, k", [(np.float32, 13), (np.float64, 30)])
def test_each_term_is_rounded_once_where_the_cpu_fuses(dtype, k):
    """(1 + 2^-k)(1 - 2^-k) - 1 = -2^-2k exactly, which one rounding keeps; rounding the
    product first gives 1 - 1 = 0. Scalar and register sums agree on which."""
    a, b, c = dtype(1 + 2.0 ** -k), dtype(1 - 2.0 ** -k), dtype(-1)
    want = dtype(-2.0 ** (-2 * k)) if FUSED else dtype(0)
    assert scalar_multiply_add(a, b, c) == want
    out = np.full(WIDE_BLOCK * VECTOR_BITS // (8 * np.dtype(dtype).itemsize), c, dtype)
    in_registers(np.full((1, out.size), b, dtype), np.array([a], dtype), out)
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("a, b, c", [(1, 2, 3), (1.0, np.float32(2), 3.0),
                                     (np.float32(1), np.float32(2), np.float64(3))])
def test_multiply_add_refuses_other_than_three_floats_of_one_type(a, b, c):
    with pytest.raises(numba.core.errors.TypingError):
        scalar_multiply_add(a, b, c)


def test_the_drawn_sizes_reach_every_block_width():
    """The longest drawn rows reach past the widest block (a single vector and the
    overlapping last one after it) in both dtypes, shorter ones the narrower blocks, so
    the test above exercises every way, not just the fallback."""
    for itemsize in (4, 8):
        lanes = VECTOR_BITS // (8 * itemsize)
        assert WIDE_BLOCK * lanes + lanes + 1 <= 300


@numba.njit
def pair_of_sums(rows, coefficients, out):
    accumulate_pair(rows, coefficients, out, 0)


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n_terms=st.integers(0, 60),
       strided_coefficients=st.booleans(), seed=st.integers(0, 2**31))
def test_pair_of_sums_equals_the_plain_loop_bit_for_bit(dtype, n_terms, strided_coefficients,
                                                        seed):
    """``accumulate_pair`` (a state and its tangent times one tile of W^T, the largest
    Lyapunov exponent's product) gives each row the in-order bits, and the right sum."""
    rng = np.random.default_rng(seed)
    width = PAIR_VECTORS * VECTOR_BITS // (8 * np.dtype(dtype).itemsize)
    rows = rng.normal(size=(n_terms, width)).astype(dtype)
    coefficients = rng.normal(size=(2, 2 * n_terms)).astype(dtype)
    coefficients = coefficients[:, ::2] if strided_coefficients else coefficients[:, :n_terms]
    start = rng.normal(size=(2, width)).astype(dtype)
    got = start.copy()
    pair_of_sums(rows, coefficients, got)
    for r in range(2):
        want = start[r].copy()
        in_memory(rows, coefficients[r], want)
        np.testing.assert_array_equal(got[r], want)
    exact = start.astype(np.float64) + coefficients.astype(np.float64) @ rows.astype(np.float64)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, exact, rtol=tolerance, atol=tolerance * (n_terms + 1))


@numba.njit
def transposed_product(d, states, out):
    add_transposed_product(d, states, out)


def packed_products(a, b, out_plain, out_members, out_product):
    """out += a @ b three ways: ``b`` packed, ``b`` packed by ``pack_member_panels`` (as
    the batched recurrence does), and ``add_product`` (``b`` in place when its rows are
    contiguous and close)."""
    _packed_products(a, b, pack_member_panels(b[None], panel_width(out_plain))[0], out_plain,
                     out_members, out_product)


@numba.njit
def _packed_products(a, b, member_panels, out_plain, out_members, out_product):
    add_packed_product(a, pack_panels(b, panel_width(out_plain)), out_plain)
    add_packed_product(a, member_panels, out_members)
    add_product(a, b, out_product)


@numba.njit
def product_in_order(a, b, out):
    for i in range(out.shape[0]):
        accumulate_rows_in_memory(b, a[i], out[i])


@settings(max_examples=50, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), n_rows=st.integers(1, 11),
       n_terms=st.sampled_from([0, 1, 5, 33]), column_blocks=st.integers(0, 2),
       extra_columns=st.sampled_from([0, 1, 7]), a_transposed=st.booleans(),
       strided_b=st.booleans(), seed=st.integers(0, 2**31))
def test_packed_products_sum_in_order(dtype, n_rows, n_terms, column_blocks, extra_columns,
                                      a_transposed, strided_b, seed):
    """``add_packed_product`` gives the in-order sum bit for bit, for ``a`` and ``b`` of
    any strides, ``b`` packed, whole and partial panels, rows left over."""
    rng = np.random.default_rng(seed)
    width = PANEL_VECTORS * VECTOR_BITS // (8 * np.dtype(dtype).itemsize)
    n_columns = max(1, width * column_blocks + extra_columns)
    a = rng.normal(size=(n_terms, n_rows) if a_transposed else (n_rows, n_terms)).astype(dtype)
    a = a.T if a_transposed else a
    b = rng.normal(size=(n_columns, n_terms) if strided_b else (n_terms, n_columns)).astype(dtype)
    b = b.T if strided_b else b
    start = rng.normal(size=(n_rows, n_columns)).astype(dtype)
    plain, members, product, in_order = (start.copy() for _ in range(4))
    packed_products(a, b, plain, members, product)
    product_in_order(a, b, in_order)
    for got in (plain, members, product):
        np.testing.assert_array_equal(got, in_order)
    exact = start.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(plain, exact, rtol=tolerance, atol=tolerance * (n_terms + 1))


def test_long_sums_go_in_parts_in_order():
    """A sum longer than one part of a packed panel (``terms_per_part``) is split into
    consecutive parts: still the in-order bits."""
    rng = np.random.default_rng(1)
    n_terms = 2 * int(terms_per_part(PANEL_VECTORS * VECTOR_BITS // 32, 4)) + 3
    a = rng.normal(size=(5, n_terms)).astype(np.float32)
    b = rng.normal(size=(n_terms, 70)).astype(np.float32)
    plain, members, product, in_order = (np.zeros((5, 70), np.float32) for _ in range(4))
    packed_products(a, b, plain, members, product)
    product_in_order(a, b, in_order)
    for got in (plain, members, product):
        np.testing.assert_array_equal(got, in_order)
    d = np.ascontiguousarray(np.pad(a.T, ((0, 0), (0, 1100))))[:, :5]  # rows a page apart
    got, in_order = np.zeros((5, 70), np.float32), np.zeros((5, 70), np.float32)
    transposed_product(d, b, got)
    transposed_product_in_order(d, b, in_order)
    np.testing.assert_array_equal(got, in_order)


@numba.njit
def transposed_product_in_order(d, states, out):
    for j in range(out.shape[0]):
        accumulate_rows_in_memory(states, d[:, j], out[j])


@settings(max_examples=50, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]),
       n_terms=st.integers(0, 40) | st.sampled_from([TRANSPOSED_PART_ROWS + 3,
                                                     2 * TRANSPOSED_PART_ROWS + 1]),
       row_blocks=st.sampled_from([1, 2, 3, 17, TRANSPOSE_BLOCK // 4 + 2]),
       extra_rows=st.sampled_from([0, 0, 1, 3]),
       column_blocks=st.integers(0, 3), extra_columns=st.sampled_from([0, 1, 5]),
       rows_a_page_apart=st.booleans(), states_a_page_apart=st.booleans(),
       seed=st.integers(0, 2**31))
def test_transposed_product_panels_sum_in_order(dtype, n_terms, row_blocks, extra_rows,
                                                column_blocks, extra_columns, rows_a_page_apart,
                                                states_a_page_apart, seed):
    """out += d^T states: with at least one panel of columns, panels (and row by row for
    the rows and columns left over) give the in-order sum bit for bit, whether d^T is
    read in place or, with the rows of d a page apart, copied a block of columns and a
    part of the sum at a time (sizes drawn past one block and one part), and whether
    ``states`` is read in place (``reads_in_place``) or packed (its rows a page apart);
    narrower products sum in order into a term that is then added. Both are right to
    rounding."""
    rng = np.random.default_rng(seed)
    n_out = 4 * row_blocks + extra_rows
    columns_per_panel = PANEL_VECTORS * VECTOR_BITS // (8 * np.dtype(dtype).itemsize)
    width = max(1, columns_per_panel * column_blocks + extra_columns)
    page = PAGE_BYTES // np.dtype(dtype).itemsize
    d = rng.normal(size=(n_terms, max(n_out, page) if rows_a_page_apart else n_out))
    d = d.astype(dtype)[:, :n_out]
    states = rng.normal(size=(n_terms, max(width, page) if states_a_page_apart else width))
    states = states.astype(dtype)[:, :width]
    start = rng.normal(size=(n_out, width)).astype(dtype)
    got, in_order = start.copy(), start.copy()
    transposed_product(d, states, got)
    transposed_product_in_order(d, states, in_order)
    if column_blocks > 0:  # the panels' path
        np.testing.assert_array_equal(got, in_order)
    else:  # the transposed path
        term = np.zeros_like(start)
        transposed_product_in_order(d, states, term)
        np.testing.assert_array_equal(got, start + term)
    exact = start.astype(np.float64) + d.T.astype(np.float64) @ states.astype(np.float64)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, exact, rtol=tolerance, atol=tolerance * (n_terms + 1))


@settings(max_examples=6, deadline=None)
@given(kind=st.sampled_from(["rnn_tanh", "lstm", "gru"]), own_inputs=st.booleans(),
       gemm=st.booleans(), seed=st.integers(0, 2**31))
def test_input_and_weight_gradients_in_panels_match_finite_differences(kind, own_inputs, gemm,
                                                                       seed):
    """Sizes of whole panels (32 float64 columns) send the input projections, dL/dx,
    dW_ih and dW_hh through the register panels; they must still be the gradients."""
    import dynamics
    import dynamics.layer

    E, D, T, B = 2, 32, 3, 2
    H = 8 if kind == "lstm" else 32  # G*H = 32, 32, 96
    net = dynamics.Network.init(kind, D, H, ensemble=E, seed=seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, E, B, D) if own_inputs else (T, B, D))
    grad_output = rng.normal(size=(T, E, B, H))
    with pytest.MonkeyPatch.context() as m:
        if gemm:  # the batched recurrence, whose input projections are panels too
            m.setattr(dynamics.layer, "GEMM_MIN_WEIGHT_BYTES", 0)
            m.setattr(dynamics.layer, "GEMM_MIN_BATCH", 1)
        grads = dynamics.bptt(net, x, grad_output)

        def loss():
            return np.sum(grad_output * dynamics.forward(net, x).output)

        expected = naive.central_difference(loss, x)
        cell = net.layers[0][0]
        expected_ih = naive.central_difference(loss, cell.weight_ih)
        expected_hh = naive.central_difference(loss, cell.weight_hh)
    assert naive.relative_error(grads["x"], expected) < 1e-7
    assert naive.relative_error(grads["weight_ih_l0"], expected_ih) < 1e-7
    assert naive.relative_error(grads["weight_hh_l0"], expected_hh) < 1e-7
