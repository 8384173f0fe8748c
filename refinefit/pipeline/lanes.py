"""Chunks refined side by side, each on a share of the Numba threads.

One ``refine_leastsq`` call keeps every thread busy only inside its kernels
(:mod:`refinefit.kernels.threads`); between them (clustering, building the
masks, packing the result) one thread works and the others wait, so two
threads make a call well under twice as fast. Two chunks refined at once,
one Numba thread each, fill those gaps: each chunk's serial Python parts
run while the other's kernels (which release the GIL) compute.

Each lane is a thread with its own Numba thread count (Numba keeps it per
thread) and its own :class:`refinefit.solvers.scratch.Scratch`. A chunk's
result does not depend on the number of threads, so lanes change no
result. They need only the Numba engine's own code: no user callables
(custom fit functions, constraints) and no scipy solver, which would run in
two threads at once.
"""
import numbers
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numba

from ..solvers.scratch import Scratch

# lanes by default where the run has at least two Numba threads
DEFAULT_LANES = 2


def lane_count(lanes, threads, fit_options):
    """The lanes of a run with ``threads`` Numba threads (None: Numba's
    current setting): ``lanes`` if given (checked), else
    :data:`DEFAULT_LANES` where the run allows lanes, else 1."""
    threads = numba.get_num_threads() if threads is None else int(threads)
    allowed = _allows_lanes(fit_options)
    if lanes is None:
        return min(DEFAULT_LANES, threads) if allowed else 1
    if isinstance(lanes, bool) or not isinstance(lanes, numbers.Integral) \
            or not 1 <= lanes <= threads:
        raise ValueError(f"lanes must be an integer from 1 to the run's "
                         f"Numba threads ({threads}), got {lanes!r}")
    if lanes > 1 and not allowed:
        raise ValueError("lanes > 1 needs a built-in fit_function (a name), "
                         "no constraints and no method: user functions and "
                         "scipy's solvers would run in several threads at "
                         "once")
    return int(lanes)


def _allows_lanes(fit_options):
    """Whether every chunk of the run is solved by the Numba engine's own
    code only."""
    return (isinstance(fit_options.get("fit_function", "gauss"), str)
            and not fit_options.get("constraints")
            and fit_options.get("method") is None)


def refine_in_lanes(refine, reads, lanes):
    """Yield ``(k, refine(k, item, scratch))`` for every ``(k, item)`` of
    ``reads``, in that order, refining up to ``lanes`` items at once.

    The first item is refined on the calling thread with all its Numba
    threads (compiling or loading the kernels once); the others in
    ``lanes`` threads that share the caller's Numba threads. ``reads`` is
    consumed on the calling thread only.
    """
    reads = iter(reads)
    scratch = Scratch()
    for k, item in reads:
        yield k, refine(k, item, scratch)
        break
    if lanes < 2:
        for k, item in reads:
            yield k, refine(k, item, scratch)
        return
    shares = queue.SimpleQueue()
    total = numba.get_num_threads()
    for i in range(lanes):
        shares.put(total // lanes + (i < total % lanes))
    local = threading.local()

    def start_lane():
        numba.set_num_threads(shares.get_nowait())  # kept per thread
        local.scratch = Scratch()

    def work(k, item):
        return refine(k, item, local.scratch)

    scratch = None  # the lanes have their own
    pool = ThreadPoolExecutor(max_workers=lanes, initializer=start_lane,
                              thread_name_prefix="refinefit-lane")
    pending = deque()  # one more than the lanes: a lane that ends goes on
    failed_read = None
    try:
        while True:
            try:
                k, item = next(reads)
            except StopIteration:
                break
            except BaseException as exc:  # the chunks before a failed read
                failed_read = exc         # are still handed on
                break
            pending.append((k, pool.submit(work, k, item)))
            if len(pending) > lanes:
                k, result = pending.popleft()
                yield k, result.result()
        while pending:
            k, result = pending.popleft()
            yield k, result.result()
        if failed_read is not None:
            raise failed_read
    finally:  # closed early or failed: no new chunk starts
        for _, result in pending:
            result.cancel()
        pool.shutdown(wait=True)
