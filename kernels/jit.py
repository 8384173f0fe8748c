"""Compile flags shared by every kernel (kept in one place).

``cache=True`` writes compiled machine code next to the sources (or to
``NUMBA_CACHE_DIR``) so that a second process does not recompile.
fastmath is limited to flags that keep NaN and infinity semantics (masks and
failed fits carry NaN) and never reorder a sum (no ``reassoc``): how the
compiler would reorder one depends on where a function is inlined and on
whether it was compiled in this process or loaded from the cache, and so
would the results' last bits. The sums that must vectorise write their
vector code themselves (:mod:`.sums`).

Kernels are serial and release the GIL (``nogil``); :mod:`.threads` runs
an entry kernel over chunks of clusters in parallel.

Entry kernels call ``numba.literally`` on the arguments named in
``LITERALS`` (and :class:`Specialized` compiles them for those literal
values): they select loops and branches in the per-pixel code, and as
compile-time constants LLVM folds them away, faster per pixel term;
overloads on them (``models.shape_at``) compile only the branch taken.
Each combination compiles once and is cached to disk. The solver of the
built-in models (``lm._solve_leaf``) is the exception: most of it does not
depend on them, so it takes them at run time and switches to per-pixel
kernels specialised for each (``terms.model_terms``), compiled once for all.
"""
import inspect

import numba
import numpy
from numba.core.registry import CPUDispatcher

from . import aot

FASTMATH = {"contract", "arcp", "nsz"}

SERIAL = dict(cache=True, nogil=True, fastmath=FASTMATH,
              error_model="numpy")
# the arguments entry kernels specialise on (see the module docstring)
LITERALS = ("ndim", "n_size", "model_id", "continuous")

# without fastmath: for decisions at a threshold that must not depend on
# how the compiler fuses or orders the arithmetic (contract makes FMAs)
EXACT = dict(cache=True, nogil=True, error_model="numpy")


# Kernels are internal unless marked ``entry=True``: only other kernels
# call them, so they are compiled without the wrappers that let Python call
# a compiled function (and C code, through a cfunc). A wrapper converts
# every argument from a Python object; for a kernel that takes thirty arrays
# it is a large function of its own, lowered and turned into machine code on
# every first compilation. Entry kernels are those the Python layer calls.
INTERNAL = dict(no_cpython_wrapper=True, no_cfunc_wrapper=True)


class InternalDispatcher(CPUDispatcher):
    """Dispatcher of an internal kernel: it has no Python wrapper, so a call
    from Python would jump to no code. It raises instead."""

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"{self.py_func.__module__}.{self.py_func.__qualname__} is "
            "internal to the compiled kernels and cannot be called from "
            "Python; call it from a numba.njit function")


# every entry kernel's dispatcher (aot.py compiles them ahead of time)
ENTRY_KERNELS = []


def _jit(func, options, entry):
    if func is None:  # used as @kernel(entry=True)
        return lambda f: _jit(f, options, entry)
    if entry:
        dispatcher = numba.njit(**options)(func)
        ENTRY_KERNELS.append(dispatcher)
        return dispatcher
    target = {key: value for key, value in options.items() if key != "cache"}
    dispatcher = InternalDispatcher(
        py_func=func, locals={},
        targetoptions=dict(target, nopython=True, **INTERNAL))
    if options.get("cache"):
        dispatcher.enable_caching()
    return dispatcher


def kernel(func=None, *, entry=False):
    """Serial kernel, compiled on first call and cached to disk."""
    return _jit(func, SERIAL, entry)


def exact_kernel(func=None, *, entry=False):
    """Serial kernel without fastmath (see EXACT)."""
    return _jit(func, EXACT, entry)


def leaf_kernel(func):
    """Kernel compiled without reference counting (Numba's ``_nrt=False``).

    For the small per-pixel kernels a solver calls several times per
    evaluation: each array argument of an ordinary kernel costs an atomic
    increment and decrement per call. A leaf kernel cannot allocate (Numba
    refuses to compile one that does); its callers hold the references. It
    must call nothing that allocates either, user code above all (a custom
    model): a function compiled for a call from a leaf kernel inherits the
    missing reference counting, and its allocations then fail."""
    return _jit(func, dict(SERIAL, _nrt=False), False)


def inline_kernel(func):
    """Kernel inlined into its callers at Numba IR level.

    For per-pixel helpers whose runtime switches (model id) would otherwise
    stop LLVM from inlining them and cost a full call per pixel, and for the
    per-cluster body of an entry kernel: a function compiled on its own is
    optimised and turned into machine code once for itself and again inside
    every caller, so one level less is seconds less of a first call."""
    return numba.njit(inline="always", **SERIAL)(func)


class Specialized:
    """Call a kernel that specialises on some arguments with ``literally``.

    The version for the literal values and argument types is taken from
    the modules compiled at install (:mod:`.aot`), or compiled (or loaded
    from the cache) directly for that signature, and then called without
    Numba's dispatch: a plain call would first type the kernel with ordinary
    integers, inline its helpers and only then find the ``literally``
    (seconds, on every first call in a process), and it re-runs type
    inference on every call, which costs more than a small batch's solve.
    ``literals`` names the specialising arguments; their positions come from
    the kernel's signature.
    """

    def __init__(self, dispatcher, literals=LITERALS):
        self.dispatcher = dispatcher
        self.py_func = dispatcher.py_func
        names = list(inspect.signature(dispatcher.py_func).parameters)
        missing = [name for name in literals if name not in names]
        if missing:
            raise TypeError(f"{dispatcher.__name__} has no argument(s) {missing}")
        self.literal_at = tuple(names.index(name) for name in literals)
        self._entries = {}
        self.__doc__ = dispatcher.__doc__
        self.__name__ = dispatcher.__name__

    def __call__(self, *args):
        key = tuple(map(_fingerprint, args))
        if self.literal_at:
            args = list(args)
            for i in self.literal_at:
                value = args[i]
                args[i] = bool(value) \
                    if isinstance(value, (bool, numpy.bool_)) else int(value)
            key += tuple(args[i] for i in self.literal_at)
        entry = self._entries.get(key)
        if entry is None:
            literal_at = set(self.literal_at)
            signature = tuple(
                numba.types.literal(a) if i in literal_at else numba.typeof(a)
                for i, a in enumerate(args))
            # built ahead of time with the package (aot), else compiled
            # (or loaded from the cache) now
            entry = aot.lookup(self.dispatcher, signature)
            if entry is None:
                entry = self.dispatcher.compile(signature)
            self._entries[key] = entry
        return entry(*args)


def _fingerprint(value):
    """What selects a compiled version: for arrays dtype, ndim, layout and
    writeability (cheaper than numba.typeof, which builds type objects)."""
    if isinstance(value, numpy.ndarray):
        flags = value.flags
        return (value.dtype.str, value.ndim, flags.c_contiguous,
                flags.f_contiguous, flags.writeable, flags.aligned)
    return type(value)
