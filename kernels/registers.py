"""Sums of scaled rows kept in vector registers: the innermost loops of the kernels.

``out[r, s:s+w] += sum_k c[r, k] * rows[k, s:s+w]`` for one or four rows r, summed in
the order k = 0, 1, ..., with the partial sums held in vector registers for the whole
sum. Written in LLVM IR because LLVM does not do it by itself for numba's arrays: it
cannot prove that ``out`` and ``rows`` do not overlap, so it stores and reloads the sums
every few terms (and checks for overlap before every pass). Here the sums live in stack
slots whose address never escapes, which LLVM promotes to registers. Each term is one
fused multiply-add where the CPU has it (``FUSED``), so each element sees the same
operations in the same order as the plain loop written with ``multiply_add``: the same
bits (``tests/test_registers.py``). ``kernels.cells.accumulate_rows`` (a matrix-vector
product) and ``kernels.cells.add_product`` (a matrix product) are built on them.

``dot_rows`` is the other orientation, for the step functions users call, whose weights
come in PyTorch's layout: dot products of rows of W with x, each summed lane by lane in
one vector register, then across its lanes.
"""
import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _vector_bits():
    """Bits of this machine's vector registers: 512 with AVX-512, 256 with AVX, else 128
    (numba compiles for, and caches per, the host CPU)."""
    features = llvm.get_host_cpu_features()
    return 512 if features.get("avx512f") else 256 if features.get("avx") else 128


#: Bits of one vector register.
VECTOR_BITS = _vector_bits()

#: Vector registers: 32 with AVX-512, 16 with AVX or SSE.
VECTOR_REGISTERS = 32 if VECTOR_BITS == 512 else 16

#: Whether each term is added as one fused multiply-add (rounded once), where the CPU
#: has the instruction; else multiplied and added. Fewer instructions to issue: a
#: float32 (16 x 256) @ (256 x 1024) product per step on each of 2 Zen 3 cores, 256
#: steps, took 30-36 ms fused against 39-42 ms (four pairs of alternating processes).
#: Every loop whose bits must equal these sums uses ``multiply_add`` too.
FUSED = bool(llvm.get_host_cpu_features().get("fma"))

#: Vectors of columns per block of ``kernels.cells.accumulate_rows``, widest first. The
#: widest keeps sums in half of the registers, so one pass over the rows covers a row of
#: up to 256 float32 or 128 float64 values with AVX-512: each pass streams the rows from
#: cache once (a 128-unit float32 matrix-vector product, 64 KiB from L2, took 423 ns in
#: one pass of 8 vectors against 714 ns in two passes of 4, on one Zen 5 core).
WIDE_BLOCK = VECTOR_REGISTERS // 2
HALF_BLOCK = VECTOR_REGISTERS // 4
QUARTER_BLOCK = VECTOR_REGISTERS // 8

#: Output rows and vectors of one ``accumulate_panel`` call: sums in half of the
#: registers (sixteen with AVX-512, eight with AVX2), each loaded vector of ``rows`` used
#: four times. Sixteen sums with AVX2 leave too few registers for the loaded vectors and
#: the coefficient; they spill: float32 (32 x 256) @ (256 x 1024) on one Zen 3 core ran at
#: 42-53 GFLOP/s in 4 x 4 panels, 63-72 in 4 x 2 (OpenBLAS 52-64).
PANEL_ROWS = 4
PANEL_VECTORS = VECTOR_REGISTERS // 8

#: Vectors of columns per row of one ``accumulate_pair`` call: two rows of sums (a state
#: and its one tangent) in half of the registers, each loaded vector used twice. The
#: largest Lyapunov exponent of a float64 tanh network of 500 units, W_hh (2 MB) read from
#: L3 at every step, on 2 Zen 3 cores: 38-45 us per step in tiles of 4 vectors, 56-58 in
#: the plain loop over rows (whose sums LLVM stores and reloads every four terms).
PAIR_VECTORS = VECTOR_REGISTERS // 4


def lanes(dtype):
    """Elements of ``dtype`` per vector register."""
    return VECTOR_BITS // dtype.bitwidth


def _floats(*arrays, ndim):
    return (all(isinstance(a, types.Array) for a in arrays)
            and [a.ndim for a in arrays] == list(ndim)
            and isinstance(arrays[0].dtype, types.Float)
            and all(a.dtype == arrays[0].dtype for a in arrays))


@intrinsic
def accumulate_columns(typingctx, rows, coefficients, out, start, vectors):
    """out[start:start+w] += sum_k coefficients[k] * rows[k, start:start+w] for the
    w columns of ``vectors`` vector registers (a compile-time constant).

    Assumes (the caller checks) unit stride along the rows of ``rows`` and along
    ``out``, and the columns within both; ``coefficients`` may be strided.
    """
    if not (_floats(rows, coefficients, out, ndim=(2, 1, 1)) and isinstance(start, types.Integer)
            and isinstance(vectors, types.IntegerLiteral) and vectors.literal_value > 0):
        return None
    codegen = _sums_in_registers(out.dtype, 1, vectors.literal_value)
    return types.none(rows, coefficients, out, start, vectors), codegen


@intrinsic
def accumulate_vector(typingctx, rows, coefficients, out, start):
    """``accumulate_columns`` for the columns of one vector register."""
    if not (_floats(rows, coefficients, out, ndim=(2, 1, 1)) and isinstance(start, types.Integer)):
        return None
    return types.none(rows, coefficients, out, start), _sums_in_registers(out.dtype, 1, 1)


@intrinsic
def load_vector(typingctx, out, start):
    """out[start:start+lanes] as a tuple (held in a register)."""
    if not (_floats(out, ndim=(1,)) and isinstance(start, types.Integer)):
        return None
    tuple_type = types.UniTuple(out.dtype, lanes(out.dtype))

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        first = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = builder.bitcast(builder.gep(array.data, [first]),
                                  _vector_type(context, out.dtype).as_pointer())
        vector = builder.load(pointer, align=out.dtype.bitwidth // 8)
        result = context.get_constant_undef(tuple_type)
        for i in range(lanes(out.dtype)):
            result = builder.insert_value(result, builder.extract_element(vector, _i32(i)), i)
        return result

    return tuple_type(out, start), codegen


@intrinsic
def accumulate_vector_from(typingctx, rows, coefficients, out, start, initial):
    """out[start:start+lanes] = initial + sum_k coefficients[k] * rows[k, start:start+lanes]
    (``initial`` from ``load_vector``): the last, overlapping vector of a row whose
    length is not a multiple of the lanes, recomputed from values saved before the
    other vectors were updated, so the overlap gets the same values again."""
    if not (_floats(rows, coefficients, out, ndim=(2, 1, 1)) and isinstance(start, types.Integer)
            and initial == types.UniTuple(out.dtype, lanes(out.dtype))):
        return None
    return (types.none(rows, coefficients, out, start, initial),
            _sums_in_registers(out.dtype, 1, 1, from_tuple=True))


@intrinsic
def accumulate_panel(typingctx, rows, coefficients, out, start):
    """out[r, start:start+w] += sum_k coefficients[r, k] * rows[k, start:start+w] for the
    ``PANEL_ROWS`` rows r of ``out`` (w = ``PANEL_VECTORS`` vectors): a register-blocked
    matrix product, each row the bits of ``accumulate_columns``.

    Assumes (the caller checks) ``PANEL_ROWS`` rows in ``out`` and ``coefficients`` (any
    strides), ``coefficients.shape[1]`` rows in ``rows``, unit stride along the rows of
    ``rows`` and of ``out``, and the columns within both.
    """
    if not (_floats(rows, coefficients, out, ndim=(2, 2, 2)) and isinstance(start, types.Integer)):
        return None
    codegen = _sums_in_registers(out.dtype, PANEL_ROWS, PANEL_VECTORS)
    return types.none(rows, coefficients, out, start), codegen


@intrinsic
def accumulate_pair(typingctx, rows, coefficients, out, start):
    """``accumulate_panel`` for two rows (w = ``PAIR_VECTORS`` vectors): two vectors
    multiplied by one matrix at once, each row the bits of ``accumulate_columns``."""
    if not (_floats(rows, coefficients, out, ndim=(2, 2, 2)) and isinstance(start, types.Integer)):
        return None
    codegen = _sums_in_registers(out.dtype, 2, PAIR_VECTORS)
    return types.none(rows, coefficients, out, start), codegen


@intrinsic
def accumulate_panel_vector(typingctx, rows, coefficients, out, start):
    """``accumulate_panel`` for the columns of one vector register: four sums in
    registers, for the last columns of a product that do not fill a panel."""
    if not (_floats(rows, coefficients, out, ndim=(2, 2, 2)) and isinstance(start, types.Integer)):
        return None
    codegen = _sums_in_registers(out.dtype, PANEL_ROWS, 1)
    return types.none(rows, coefficients, out, start), codegen


#: Rows of one ``dot_rows`` call: eight sums, each in a vector register, to keep both
#: fused multiply-add units busy through their latency.
DOT_ROWS = 8


@intrinsic
def dot_rows(typingctx, matrix, x, first, n_rows):
    """The dot products with ``x`` of ``n_rows`` (a literal) rows of ``matrix`` from row
    ``first``, as a tuple. Lane l of each row's vector register sums the terms of the
    columns j = l (mod lanes) in order (the last vector loaded under a mask, lanes past
    the row left as they are); then the lanes are added pairwise, halving: lane
    l + w/2 onto lane l for w = lanes, lanes/2, ..., 2 (``tests/test_registers.py``
    writes this order in memory).

    Assumes (the caller checks) unit stride along the rows of ``matrix`` and along ``x``,
    and the rows within ``matrix``.
    """
    if not (_floats(matrix, x, ndim=(2, 1)) and isinstance(first, types.Integer)
            and isinstance(n_rows, types.IntegerLiteral) and n_rows.literal_value > 0):
        return None
    dtype, count = x.dtype, n_rows.literal_value
    n_lanes = lanes(dtype)

    def codegen(context, builder, signature, args):
        matrix_, x_ = (context.make_array(t)(context, builder, v)
                       for t, v in zip(signature.args[:2], args[:2]))
        first_row = context.cast(builder, args[2], signature.args[2], types.intp)
        vector = _vector_type(context, dtype)
        align = dtype.bitwidth // 8
        row_stride = cgutils.unpack_tuple(builder, matrix_.strides, 2)[0]
        n_columns = cgutils.unpack_tuple(builder, x_.shape, 1)[0]
        lanes_ = ir.Constant(n_columns.type, n_lanes)
        n_vectors = builder.udiv(n_columns, lanes_)
        remainder = builder.urem(n_columns, lanes_)
        base = builder.bitcast(matrix_.data, ir.IntType(8).as_pointer())
        rows = [builder.bitcast(builder.gep(base, [builder.mul(builder.add(
            first_row, ir.Constant(first_row.type, r)), row_stride)]), vector.as_pointer())
            for r in range(count)]
        x_vectors = builder.bitcast(x_.data, vector.as_pointer())
        zero = ir.Constant(vector, [0.0] * n_lanes)
        sums = [cgutils.alloca_once_value(builder, zero) for _ in range(count)]

        def add_vector(load, in_row=None):
            x_k = load(x_vectors)
            for r in range(count):
                total = builder.load(sums[r])
                new = _multiply_add(builder, load(rows[r]), x_k, total)
                if in_row is not None:  # fma(0, 0, -0.0) would be +0.0
                    new = builder.select(in_row, new, total)
                builder.store(new, sums[r])

        with cgutils.for_range(builder, n_vectors) as loop:
            add_vector(lambda row: builder.load(builder.gep(row, [loop.index]), align=align))
        with builder.if_then(builder.icmp_unsigned("!=", remainder, remainder.type(0))):
            in_row = builder.icmp_unsigned(
                "<", ir.Constant(ir.VectorType(remainder.type, n_lanes), list(range(n_lanes))),
                _splat(builder, remainder, n_lanes))
            masked_load = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vector, [vector.as_pointer(), ir.IntType(32),
                                                         in_row.type, vector]),
                f"llvm.masked.load.v{n_lanes}{vector.element.intrinsic_name}.p0")
            add_vector(lambda row: builder.call(masked_load, [
                builder.gep(row, [n_vectors]), _i32(align), in_row, zero]), in_row)
        result = context.get_constant_undef(signature.return_type)
        for r in range(count):
            total, width = builder.load(sums[r]), n_lanes
            while width > 1:
                half = width // 2
                low, high = (builder.shuffle_vector(total, total, ir.Constant(
                    ir.VectorType(ir.IntType(32), half), list(range(start, start + half))))
                    for start in (0, half))
                total, width = builder.fadd(low, high), half
            result = builder.insert_value(result, builder.extract_element(total, _i32(0)), r)
        return result

    return types.UniTuple(dtype, count)(matrix, x, first, n_rows), codegen


def _splat(builder, value, count):
    """``value`` in every lane of a vector of ``count``."""
    vector = builder.insert_element(ir.Constant(ir.VectorType(value.type, count), ir.Undefined),
                                    value, _i32(0))
    return builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(ir.IntType(32), count),
                                                              [0] * count))


def _i32(value):
    return ir.Constant(ir.IntType(32), value)


def _multiply_add(builder, a, b, c):
    """LLVM IR of a * b + c (scalars or vectors): one rounding where ``FUSED``."""
    if not FUSED:
        return builder.fadd(builder.fmul(a, b), c)
    vector = isinstance(a.type, ir.VectorType)
    suffix = f"v{a.type.count}{a.type.element.intrinsic_name}" if vector else a.type.intrinsic_name
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(a.type, [a.type] * 3),
                                         f"llvm.fma.{suffix}")
    return builder.call(fma, [a, b, c])


@intrinsic
def multiply_add(typingctx, a, b, c):
    """a * b + c, fused (rounded once) where the CPU can (``FUSED``): the scalar form of
    every term of the sums here, for plain loops that must give their bits."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        return _multiply_add(builder, *args)

    return a(a, b, c), codegen


def _vector_type(context, dtype):
    return ir.VectorType(context.get_value_type(dtype), lanes(dtype))


def _sums_in_registers(dtype, n_rows, n_vectors, from_tuple=False):
    """LLVM IR of out[r, columns] += sum_k c[r, k] rows[k, columns] for ``n_rows`` rows
    (``out`` and ``c`` 1-D when it is one) and ``n_vectors`` vectors of columns from
    ``start``; with ``from_tuple`` the one vector starts from the tuple passed last."""
    n_lanes = lanes(dtype)

    def codegen(context, builder, signature, args):
        rows, coefs, out = (context.make_array(t)(context, builder, v)
                            for t, v in zip(signature.args[:3], args[:3]))
        first = context.cast(builder, args[3], signature.args[3], types.intp)
        scalar = context.get_value_type(dtype)
        vector = _vector_type(context, dtype)
        align = dtype.bitwidth // 8

        def address(array, byte_offset):  # the scalar at a byte offset from array's data
            base = builder.bitcast(array.data, ir.IntType(8).as_pointer())
            return builder.bitcast(builder.gep(base, [byte_offset]), scalar.as_pointer())

        def vector_at(pointer, u):  # the u-th vector of columns from ``first``
            index = builder.add(first, ir.Constant(first.type, u * n_lanes))
            return builder.bitcast(builder.gep(pointer, [index]), vector.as_pointer())

        def strides(array, ndim):
            return cgutils.unpack_tuple(builder, array.strides, ndim)

        def times(r, stride):
            return builder.mul(ir.Constant(first.type, r), stride)

        row_stride = strides(rows, 2)[0]
        *coef_row, coef_term = strides(coefs, 2 if n_rows > 1 else 1)
        out_row = strides(out, 2)[0] if n_rows > 1 else None
        n_terms = cgutils.unpack_tuple(builder, coefs.shape, 2 if n_rows > 1 else 1)[-1]
        out_rows = [address(out, times(r, out_row)) if n_rows > 1 else out.data
                    for r in range(n_rows)]
        sums = [[cgutils.alloca_once(builder, vector) for _ in range(n_vectors)]
                for _ in range(n_rows)]
        if from_tuple:
            initial = ir.Constant(vector, ir.Undefined)
            for i in range(n_lanes):
                initial = builder.insert_element(initial, builder.extract_value(args[4], i),
                                                 _i32(i))
            builder.store(initial, sums[0][0])
        else:
            for r in range(n_rows):
                for u in range(n_vectors):
                    builder.store(builder.load(vector_at(out_rows[r], u), align=align),
                                  sums[r][u])
        broadcast = ir.Constant(ir.VectorType(ir.IntType(32), n_lanes), [0] * n_lanes)

        def add_terms(term_stride):
            with cgutils.for_range(builder, n_terms) as loop:
                k = loop.index
                row = address(rows, builder.mul(k, row_stride))
                values = [builder.load(vector_at(row, u), align=align) for u in range(n_vectors)]
                for r in range(n_rows):
                    offset = builder.mul(k, term_stride)
                    if n_rows > 1:
                        offset = builder.add(offset, times(r, coef_row[0]))
                    c = builder.insert_element(ir.Constant(vector, ir.Undefined),
                                               builder.load(address(coefs, offset)), _i32(0))
                    c = builder.shuffle_vector(c, ir.Constant(vector, ir.Undefined), broadcast)
                    for u in range(n_vectors):
                        total = _multiply_add(builder, c, values[u], builder.load(sums[r][u]))
                        builder.store(total, sums[r][u])

        # the same loop twice: for coefficients contiguous along k (the usual case), their
        # stride a constant, and for any stride. With a run-time stride LLVM keeps one
        # address per row and unrolled term, and with AVX2 they spill to the stack: a
        # float32 (16 x 128) @ (128 x 512) product, weights from L3, took 30 us on a
        # Zen 3 core, 25.6 us with the constant stride
        itemsize = ir.Constant(first.type, align)
        with builder.if_else(builder.icmp_signed("==", coef_term, itemsize)) as (contiguous,
                                                                                strided):
            with contiguous:
                add_terms(itemsize)
            with strided:
                add_terms(coef_term)
        for r in range(n_rows):
            for u in range(n_vectors):
                builder.store(builder.load(sums[r][u]), vector_at(out_rows[r], u), align=align)
        return context.get_dummy_value()

    return codegen
