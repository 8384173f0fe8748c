"""Compile flags shared by every kernel (kept in one place).

``cache=True`` writes compiled machine code next to the sources (or to
``NUMBA_CACHE_DIR``) so that a second process does not recompile.
fastmath is limited to flags that keep NaN and infinity semantics: masks and
failed fits carry NaN.
"""
import numba

FASTMATH = {"contract", "arcp", "nsz"}

SERIAL = dict(cache=True, nogil=True, fastmath=FASTMATH,
              error_model="numpy")
PARALLEL = dict(SERIAL, parallel=True)


def kernel(func):
    """Serial kernel, compiled on first call and cached to disk."""
    return numba.njit(**SERIAL)(func)


def parallel_kernel(func):
    """Kernel whose ``prange`` loops run on Numba's thread pool."""
    return numba.njit(**PARALLEL)(func)
