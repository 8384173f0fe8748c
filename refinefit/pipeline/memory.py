"""glibc ``malloc`` settings for the processes refinefit runs in itself.

Each chunk allocates and frees arrays of some hundreds of kB to tens of MB.
glibc serves blocks above its mmap threshold with fresh pages and, when
more than its trim threshold is free at the top of the heap, gives that
memory back; either way the next chunk's arrays fault in new pages (one
fault per 4 kB page, each zero-filled). A plain process raises both
thresholds as it goes, but a Dask worker is started with
``MALLOC_TRIM_THRESHOLD_=65536``, which fixes them low: a worker then takes
several times the page faults of the same work in a plain process, and
longer.

:func:`keep_freed_memory` raises both for the whole process, so that up to
the trim threshold of freed memory stays with the process for the next
chunk. refinefit calls it in the processes it drives: the ``refinefit``
command and, on first use, a Dask worker that runs refinefit's tasks. A
library call in a user's own process leaves ``malloc`` alone.
"""
import ctypes
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# the largest mmap threshold glibc accepts on 64-bit systems (its maximum
# for the dynamic threshold too); trim at twice that, as glibc itself does
MMAP_THRESHOLD = 32 * 2 ** 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD

_applied = False


def keep_freed_memory():
    """Raise glibc's mmap and trim thresholds for this process (once).

    Returns True when the settings are in effect, False where the C library
    is not glibc (nothing is changed then).
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _applied = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    return _applied
