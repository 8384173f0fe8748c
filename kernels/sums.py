"""Sums and dot products in a fixed order, in vector registers.

A floating-point sum vectorises only if the compiler may reorder it
(fastmath ``reassoc``), and then its order, and its last bits, depend on
the compiler's choices: the vector width, the unrolling, whether a function
was inlined, and whether a caller was compiled in this process or loaded
from the cache. The same fit then ended a few ulps apart in a process that
compiled the kernels and in one that loaded them. So the kernels do not
allow reordering, and these sums write their vector code themselves (as
LLVM IR), in one order: element ``first + 8 m + l`` goes to lane ``l``
(two vectors of 4), the two vectors are added, then their lanes as
``(l0 + l2) + (l1 + l3)``, and the elements after the last full group of 8
are added in turn. The order depends on the elements alone, not on where
the arrays lie in memory or on what the compiler decides. :func:`products`
takes all the sums of a feature's J^T J and J^T r in one pass, in an order
of its own (documented there); :func:`cross_products` those between two
features' derivatives, in the same order.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from .jit import kernel

_LANES = 4      # doubles in a vector
_VECTORS = 2    # accumulators: elements per step = _LANES * _VECTORS
# explicit flags: Numba adds the kernels' fastmath flags only to
# instructions without any; 'nsz' (signed zeros) allows no reordering
_FLAGS = ("nsz",)


def _check(name, *arrays):
    for a in arrays:
        if not (isinstance(a, types.Array) and a.ndim == 1
                and a.layout == "C" and a.dtype == types.float64):
            raise TypingError(f"{name}: needs 1-d contiguous float64 arrays, "
                              f"got {a}")


def _load(builder, ptr, index, vector):
    """``ptr[index]``, or the vector of _LANES from there (unaligned)."""
    at = builder.gep(ptr, [index])
    if vector:
        at = builder.bitcast(at, ir.VectorType(ir.DoubleType(),
                                               _LANES).as_pointer())
    value = builder.load(at)
    value.align = 8
    return value


def _array(context, builder, signature, args, k):
    """The array structure (data, shape, ...) of intrinsic argument ``k``."""
    return cgutils.create_struct_proxy(signature.args[k])(
        context, builder, value=args[k])


def _store(builder, ptr, values):
    """``ptr[k] = values[k]`` for each k."""
    i64 = ir.IntType(64)
    for k, value in enumerate(values):
        builder.store(value, builder.gep(ptr, [ir.Constant(i64, k)]))


def _sums_ir(builder, first, stop, n_sums, n_vectors, addends):
    """IR for ``n_sums`` sums over the elements ``first..stop`` in the
    module's order, with ``n_vectors`` vectors per sum: element ``first +
    step m + _LANES v + l`` (``step = _LANES n_vectors``) goes to lane
    ``l`` of vector ``v``, the vectors are added in turn, then their lanes
    as ``(l0 + l2) + (l1 + l3)``, then the elements after the last full
    step in turn. ``addends(index, vector)`` gives what each sum adds at
    ``index`` (a vector of _LANES from there, or a scalar). Returns the
    sums."""
    f64 = ir.DoubleType()
    i64 = ir.IntType(64)
    vec = ir.VectorType(f64, _LANES)
    step = _LANES * n_vectors
    entry = builder.block
    head = builder.append_basic_block("sum.head")
    body = builder.append_basic_block("sum.body")
    fold = builder.append_basic_block("sum.fold")
    tail_head = builder.append_basic_block("sum.tail_head")
    tail_body = builder.append_basic_block("sum.tail_body")
    done = builder.append_basic_block("sum.done")
    builder.branch(head)

    builder.position_at_end(head)
    i = builder.phi(i64)
    i.add_incoming(first, entry)
    acc = [[builder.phi(vec) for _ in range(n_vectors)]
           for _ in range(n_sums)]
    for phis in acc:
        for phi in phis:
            phi.add_incoming(ir.Constant(vec, [0.0] * _LANES), entry)
    # (first + step <= stop, signed: first <= stop within an array)
    more = builder.icmp_signed("<=", builder.add(i, ir.Constant(i64, step)),
                               stop)
    builder.cbranch(more, body, fold)

    builder.position_at_end(body)
    for v in range(n_vectors):
        at = builder.add(i, ir.Constant(i64, v * _LANES))
        for phis, value in zip(acc, addends(at, True)):
            phis[v].add_incoming(builder.fadd(phis[v], value, flags=_FLAGS),
                                 body)
    i.add_incoming(builder.add(i, ir.Constant(i64, step)), body)
    builder.branch(head)

    builder.position_at_end(fold)
    folded = []
    for phis in acc:
        both = phis[0]
        for v in range(1, n_vectors):
            both = builder.fadd(both, phis[v], flags=_FLAGS)
        lane = [builder.extract_element(both, ir.Constant(ir.IntType(32), k))
                for k in range(_LANES)]
        folded.append(builder.fadd(
            builder.fadd(lane[0], lane[2], flags=_FLAGS),
            builder.fadd(lane[1], lane[3], flags=_FLAGS), flags=_FLAGS))
    builder.branch(tail_head)

    builder.position_at_end(tail_head)
    j = builder.phi(i64)
    j.add_incoming(i, fold)
    sums = [builder.phi(f64) for _ in range(n_sums)]
    for phi, value in zip(sums, folded):
        phi.add_incoming(value, fold)
    builder.cbranch(builder.icmp_signed("<", j, stop), tail_body, done)

    builder.position_at_end(tail_body)
    for phi, value in zip(sums, addends(j, False)):
        phi.add_incoming(builder.fadd(phi, value, flags=_FLAGS), tail_body)
    j.add_incoming(builder.add(j, ir.Constant(i64, 1)), tail_body)
    builder.branch(tail_head)

    builder.position_at_end(done)
    return sums


def _sum_ir(context, builder, signature, args, products):
    """IR for sum(a[i] (* b[i]) for i in first..stop) in the module's order."""
    n_arrays = 2 if products else 1
    data = [_array(context, builder, signature, args, k).data
            for k in range(n_arrays)]
    first = context.cast(builder, args[n_arrays], signature.args[n_arrays],
                         types.int64)
    stop = context.cast(builder, args[n_arrays + 1],
                        signature.args[n_arrays + 1], types.int64)

    def term(index, vector):
        """a[index..] (* b[index..]), a vector of _LANES or a scalar."""
        values = [_load(builder, ptr, index, vector) for ptr in data]
        if products:
            return [builder.fmul(values[0], values[1], flags=_FLAGS)]
        return values

    return _sums_ir(builder, first, stop, 1, _VECTORS, term)[0]


@intrinsic
def dot(typingctx, a, b, first, stop):
    """``sum(a[i] * b[i] for i in first..stop)`` of two 1-d contiguous
    float64 arrays, in the module's order. No bounds check: the caller
    keeps ``0 <= first <= stop <= len``."""
    _check("dot", a, b)

    def codegen(context, builder, signature, args):
        return _sum_ir(context, builder, signature, args, products=True)
    return types.float64(a, b, first, stop), codegen


@intrinsic
def total(typingctx, a, first, stop):
    """``sum(a[first:stop])`` of a 1-d contiguous float64 array, in the
    module's order. No bounds check (as :func:`dot`)."""
    _check("total", a)

    def codegen(context, builder, signature, args):
        return _sum_ir(context, builder, signature, args, products=False)
    return types.float64(a, first, stop), codegen


@kernel
def n_products(n_rows):
    """Length of :func:`products`' output for ``n_rows`` rows."""
    return 2 * n_rows + n_rows * (n_rows + 1) // 2


@intrinsic(prefer_literal=True)
def products(typingctx, rows, r, first, stop, n_rows, out):
    """Every sum a feature adds to J^T J and J^T r, in one pass.

    ``rows`` is 2-d (C order); its rows ``1..n_rows`` (a literal) are the
    derivatives ``t_1..t_P`` over the columns ``first..stop``, ``r`` the
    residuals there. Writes to ``out`` (:func:`n_products` elements)
    ``sum(t_j * r)`` for each j, then ``sum(t_j)`` for each j, then
    ``sum(t_j * t_k)`` for j <= k, row by row.

    One pass reads each element once and keeps every sum in its own vector
    register (a dot product per sum would read the rows P + 2 times).
    Each sum's order: element ``first + 4 m + l`` goes to lane ``l`` (one
    vector of 4), the lanes are added as ``(l0 + l2) + (l1 + l3)``, then the
    elements after the last full group of 4 in turn; products are rounded
    before they are added (no fused multiply-add). No bounds check: the
    caller keeps ``0 <= first <= stop <= rows.shape[1]``, ``n_rows <
    rows.shape[0]`` and room in ``out``.
    """
    if not isinstance(n_rows, types.IntegerLiteral):
        return None
    if not (isinstance(rows, types.Array) and rows.ndim == 2
            and rows.layout == "C" and rows.dtype == types.float64):
        raise TypingError(f"products: needs a 2-d C float64 array, got {rows}")
    _check("products", r, out)
    n = n_rows.literal_value
    pairs = [(j, k) for j in range(n) for k in range(j, n)]

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        rows_arr = _array(context, builder, signature, args, 0)
        r_data = _array(context, builder, signature, args, 1).data
        out_data = _array(context, builder, signature, args, 5).data
        n_cols = cgutils.unpack_tuple(builder, rows_arr.shape, 2)[1]
        row_data = [builder.gep(rows_arr.data,
                                [builder.mul(n_cols, ir.Constant(i64, j))])
                    for j in range(1, n + 1)]
        first = context.cast(builder, args[2], signature.args[2], types.int64)
        stop = context.cast(builder, args[3], signature.args[3], types.int64)

        def addends(index, vector):
            t = [_load(builder, row_data[j], index, vector) for j in range(n)]
            res = _load(builder, r_data, index, vector)
            return ([builder.fmul(t[j], res, flags=_FLAGS) for j in range(n)]
                    + t
                    + [builder.fmul(t[j], t[k], flags=_FLAGS)
                       for j, k in pairs])

        _store(builder, out_data,
               _sums_ir(builder, first, stop, 2 * n + len(pairs), 1, addends))
        return context.get_dummy_value()
    return types.void(rows, r, first, stop, n_rows, out), codegen


@intrinsic(prefer_literal=True)
def cross_products(typingctx, pair_rows, first, stop, n_rows, out):
    """The products between two features' derivatives, in one pass.

    ``pair_rows`` is 3-d (C order): ``pair_rows[0]`` and ``pair_rows[1]``
    hold the two features' derivatives in rows ``1..n_rows`` (a literal)
    over the columns ``first..stop``. Writes to ``out`` ``sum(a_j * b_k)``
    at ``(j - 1) * n_rows + k - 1`` for j, k in ``1..n_rows``, in
    :func:`products`' order. No bounds check (as :func:`products`).
    """
    if not isinstance(n_rows, types.IntegerLiteral):
        return None
    if not (isinstance(pair_rows, types.Array) and pair_rows.ndim == 3
            and pair_rows.layout == "C"
            and pair_rows.dtype == types.float64):
        raise TypingError("cross_products: needs a 3-d C float64 array, "
                          f"got {pair_rows}")
    _check("cross_products", out)
    n = n_rows.literal_value

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        arr = _array(context, builder, signature, args, 0)
        out_data = _array(context, builder, signature, args, 4).data
        _, n_params, n_cols = cgutils.unpack_tuple(builder, arr.shape, 3)

        def row_ptr(feature, j):
            row = builder.add(builder.mul(n_params, ir.Constant(i64, feature)),
                              ir.Constant(i64, j))
            return builder.gep(arr.data, [builder.mul(row, n_cols)])

        a_data = [row_ptr(0, j) for j in range(1, n + 1)]
        b_data = [row_ptr(1, j) for j in range(1, n + 1)]
        first = context.cast(builder, args[1], signature.args[1], types.int64)
        stop = context.cast(builder, args[2], signature.args[2], types.int64)

        def addends(index, vector):
            a = [_load(builder, ptr, index, vector) for ptr in a_data]
            b = [_load(builder, ptr, index, vector) for ptr in b_data]
            return [builder.fmul(a[j], b[k], flags=_FLAGS)
                    for j in range(n) for k in range(n)]

        _store(builder, out_data, _sums_ir(builder, first, stop, n * n, 1,
                                           addends))
        return context.get_dummy_value()
    return types.void(pair_rows, first, stop, n_rows, out), codegen
