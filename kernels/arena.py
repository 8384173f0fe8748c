"""Scratch arrays of one cluster's solve, carved from stores that the
clusters of a chunk reuse.

A cluster's solve needs some forty small arrays (unknowns, bounds, the
workspace, two evaluations, the normal equations). Allocated one by one,
each costs an allocation, a release and reference counting; on the small
clusters that most fits are, which take few iterations, that was a sixth of
the solver's time. An :data:`Arena` hands them out instead as consecutive
slices of three stores (float64, int64, bool): :func:`floats`,
:func:`ints` and :func:`flags` advance a counter per store, and
:func:`reset` starts the next cluster at the beginning. In a kernel
compiled without reference counting (``jit.leaf_kernel``) a slice costs
nothing more than its arithmetic.

The stores are sized by the caller for what the cluster takes (see
``lm.cluster_needs``); a request beyond a store's end is not caught here
(kernels are compiled without bounds checks), and ``used`` tells the
caller afterwards. Arrays are not initialised, as ``np.empty``.

:func:`floats`, :func:`ints` and :func:`flags` are intrinsics, written out
where they are called. A kernel compiled without reference counting may
return no array but one it was given, so the functions that hand arrays
on (``residuals.cluster_workspace`` and the like) are inlined into theirs.
"""
from collections import namedtuple

import numpy as np
from numba import types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array

from .jit import kernel

Arena = namedtuple("Arena", [
    "f64",    # float64 store
    "i64",    # int64 store
    "flags",  # bool store
    "used",   # int64[3]: elements handed out from each store since the reset
])


@kernel
def new_arena(n_f64, n_i64, n_flags):
    """An arena with stores of the given sizes."""
    return Arena(np.empty(n_f64), np.empty(n_i64, dtype=np.int64),
                 np.empty(n_flags, dtype=np.bool_), np.zeros(3, dtype=np.int64))


@kernel
def reset(arena):
    """Hand out from the beginning again: the arrays handed out before are
    no longer in use."""
    for i in range(3):
        arena.used[i] = 0


def _take_intrinsic(store, name):
    """An intrinsic ``(arena, shape)`` -> the next elements of the arena's
    store number ``store``, as a C-contiguous array of ``shape`` (an integer
    or a tuple of them)."""

    def take(typingctx, arena, shape):
        if isinstance(shape, types.Integer):
            dims_of = (shape,)
        elif isinstance(shape, types.BaseTuple) and all(
                isinstance(n, types.Integer) for n in shape):
            dims_of = tuple(shape)
        else:
            raise TypingError(f"{name}: the shape must be an integer or a "
                              f"tuple of integers, got {shape}")
        store_type = arena[store]
        result = types.Array(store_type.dtype, len(dims_of), "C")

        def codegen(context, builder, signature, args):
            arena_value, shape_value = args
            source = make_array(store_type)(
                context, builder, builder.extract_value(arena_value, store))
            used = make_array(arena[3])(
                context, builder, builder.extract_value(arena_value, 3))
            if isinstance(shape, types.Integer):
                raw = [shape_value]
            else:
                raw = [builder.extract_value(shape_value, i)
                       for i in range(len(dims_of))]
            dims = [context.cast(builder, v, t, types.intp)
                    for v, t in zip(raw, dims_of)]
            count = context.get_constant(types.intp, 1)
            for n in dims:
                count = builder.mul(count, n)
            at = cgutils.gep_inbounds(builder, used.data,
                                      context.get_constant(types.intp, store))
            start = builder.load(at)
            builder.store(builder.add(start, count), at)
            itemsize = context.get_constant(
                types.intp, context.get_abi_sizeof(context.get_data_type(
                    store_type.dtype)))
            strides = [itemsize] * len(dims)
            for i in range(len(dims) - 2, -1, -1):
                strides[i] = builder.mul(strides[i + 1], dims[i + 1])
            out = make_array(result)(context, builder)
            populate_array(out, data=cgutils.gep_inbounds(builder, source.data,
                                                          start),
                           shape=cgutils.pack_array(builder, dims),
                           strides=cgutils.pack_array(builder, strides),
                           itemsize=itemsize, meminfo=source.meminfo)
            return impl_ret_borrowed(context, builder, result,
                                     out._getvalue())
        return result(arena, shape), codegen

    take.__name__ = name
    take.__doc__ = (f"``{name}(arena, shape)``: the next elements of the "
                    f"arena's {Arena._fields[store]} store as an array of "
                    "``shape`` (an integer or a tuple of them), a view built "
                    "inline: no allocation, no call, and in a kernel without "
                    "reference counting no atomic update.")
    return intrinsic(take)


floats = _take_intrinsic(0, "floats")
ints = _take_intrinsic(1, "ints")
flags = _take_intrinsic(2, "flags")
