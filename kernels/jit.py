"""Compile flags shared by every kernel (kept in one place).

``cache=True`` writes compiled machine code next to the sources (or to
``NUMBA_CACHE_DIR``) so that a second process does not recompile.
fastmath is limited to flags that keep NaN and infinity semantics (masks and
failed fits carry NaN); ``reassoc`` lets the dot products of the normal
equations vectorise. The vector width is fixed at compile time, so results
still do not depend on the number of threads.

Entry kernels call ``numba.literally`` on the arguments named in
``LITERALS``: they select loops and branches in the per-pixel code, and as
compile-time constants LLVM folds them away, several times faster per pixel
term. Each combination compiles once and is cached to disk.
(``literally`` must be called in the entry kernel itself, not in a helper.)
"""
import inspect

import numba
import numpy

FASTMATH = {"contract", "arcp", "nsz", "reassoc"}

SERIAL = dict(cache=True, nogil=True, fastmath=FASTMATH,
              error_model="numpy")
PARALLEL = dict(SERIAL, parallel=True)
# the arguments entry kernels specialise on (see the module docstring)
LITERALS = ("ndim", "n_size", "model_id", "continuous")

# without fastmath: for decisions at a threshold that must not depend on
# how the compiler fuses or orders the arithmetic (contract makes FMAs)
EXACT = dict(cache=True, nogil=True, error_model="numpy")


def kernel(func):
    """Serial kernel, compiled on first call and cached to disk."""
    return numba.njit(**SERIAL)(func)


def parallel_kernel(func):
    """Kernel whose ``prange`` loops run on Numba's thread pool."""
    return numba.njit(**PARALLEL)(func)


def exact_kernel(func):
    """Serial kernel without fastmath (see EXACT)."""
    return numba.njit(**EXACT)(func)


def exact_parallel_kernel(func):
    """Parallel kernel without fastmath (see EXACT)."""
    return numba.njit(parallel=True, **EXACT)(func)


def inline_kernel(func):
    """Kernel inlined into its callers at Numba IR level: for per-pixel
    helpers whose runtime switches (model id) would otherwise stop LLVM from
    inlining them and cost a full call per pixel."""
    return numba.njit(inline="always", **SERIAL)(func)


class Specialized:
    """Call a kernel that specialises on some arguments with ``literally``.

    Numba re-runs type inference on every call of such a kernel, which
    costs far more than a small batch's solve. After the first call for a
    combination of literal values and argument types, this wrapper calls
    the compiled entry point directly. ``literals`` names the specialising
    arguments; their positions come from the kernel's signature.
    """

    def __init__(self, dispatcher, literals=LITERALS):
        self.dispatcher = dispatcher
        names = list(inspect.signature(dispatcher.py_func).parameters)
        missing = [name for name in literals if name not in names]
        if missing:
            raise TypeError(f"{dispatcher.__name__} has no argument(s) {missing}")
        self.literal_at = tuple(names.index(name) for name in literals)
        self._entries = {}
        self.__doc__ = dispatcher.__doc__
        self.__name__ = dispatcher.__name__

    def __call__(self, *args):
        args = list(args)
        for i in self.literal_at:
            value = args[i]
            args[i] = bool(value) if isinstance(value, (bool, numpy.bool_)) \
                else int(value)
        key = tuple(args[i] for i in self.literal_at) + tuple(
            _fingerprint(a) for a in args)
        entry = self._entries.get(key)
        if entry is not None:
            return entry(*args)
        arg_types = tuple(numba.typeof(a) for a in args)
        result = self.dispatcher(*args)
        for sig, cres in self.dispatcher.overloads.items():
            if all(isinstance(sig[i], numba.types.Literal)
                   and sig[i].literal_value == args[i] for i in self.literal_at) \
                    and all(sig[i] == t for i, t in enumerate(arg_types)
                            if i not in self.literal_at):
                self._entries[key] = cres.entry_point
                break
        return result


def _fingerprint(value):
    """What selects a compiled version: for arrays dtype, ndim, layout and
    writeability (cheaper than numba.typeof, which builds type objects)."""
    if isinstance(value, numpy.ndarray):
        flags = value.flags
        return (value.dtype.str, value.ndim, flags.c_contiguous,
                flags.f_contiguous, flags.writeable, flags.aligned)
    return type(value)
