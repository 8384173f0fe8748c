"""Run serial kernels over chunks of clusters on a pool of threads.

Entry kernels are serial and compiled with ``nogil``: each takes the ids of
the clusters (or frames) to process and writes only their slices of the
outputs. :class:`OverChunks` splits the ids into contiguous chunks and runs
the kernel on each chunk in a thread of a shared pool, so results are the
same for any number of threads and any chunking.

Why not Numba's ``prange``: a parallel region compiles its loop body a second
time as a gufunc and re-optimises everything it calls (it doubled the time
of a first call), and on a small input its threads cost more than the
work. Here a small call runs on the calling thread and never touches the
pool. The number of threads is Numba's (``numba.set_num_threads``, the
``NUMBA_NUM_THREADS`` environment variable), read in the calling thread.
"""
import inspect
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

CHUNKS_PER_THREAD = 4  # several chunks a thread: clusters differ in cost

_pools = {}
_pools_lock = threading.Lock()


def _forget_pools():
    """In a forked child: the parent's pool threads do not exist there."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools)


def _pool(n_threads):
    with _pools_lock:
        pool = _pools.get(n_threads)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=n_threads,
                                      thread_name_prefix="refinefit")
            _pools[n_threads] = pool
        return pool


def chunk_bounds(n, n_threads, min_chunk):
    """Bounds of contiguous chunks of ``n`` ids: at least ``min_chunk`` ids
    each, at most ``CHUNKS_PER_THREAD`` chunks per thread; one chunk when the
    input is too small to share."""
    n_chunks = min(n_threads * CHUNKS_PER_THREAD, n // max(min_chunk, 1))
    if n_threads <= 1 or n_chunks < 2:
        return [0, n]
    return [n * i // n_chunks for i in range(n_chunks + 1)]


class OverChunks:
    """Call ``kernel`` (a dispatcher or :class:`~.jit.Specialized`) with its
    ``ids`` argument split into chunks, the chunks in parallel.

    ``min_chunk`` is the smallest number of ids worth a thread hand-off (a
    few tens of microseconds of work): below twice that the call runs
    serially on the calling thread. ``rows`` names the arguments whose row
    ``g`` belongs to ``ids[g]``: they are split with the ids.
    """

    def __init__(self, kernel, min_chunk, ids="cluster_ids", rows=()):
        self.kernel = kernel
        names = list(inspect.signature(kernel.py_func).parameters)
        self.ids_at = names.index(ids)
        self.rows_at = [self.ids_at] + [names.index(name) for name in rows]
        self.min_chunk = min_chunk
        self.__doc__ = kernel.__doc__
        self.__name__ = kernel.__name__

    def __call__(self, *args):
        ids = args[self.ids_at]
        n_threads = numba.get_num_threads()
        bounds = chunk_bounds(len(ids), n_threads, self.min_chunk)
        if len(bounds) == 2:
            return self.kernel(*args)
        args = list(args)

        def run(lo, hi):
            chunk = list(args)
            for i in self.rows_at:
                chunk[i] = args[i][lo:hi]
            self.kernel(*chunk)

        # an empty chunk here compiles (or loads) the kernel before the pool
        # threads call it
        run(0, 0)
        pool = _pool(n_threads)
        futures = [pool.submit(run, lo, hi)
                   for lo, hi in zip(bounds[:-1], bounds[1:])]
        for future in futures:
            future.result()
        return None
