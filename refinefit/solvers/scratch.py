"""Buffers reused between the engine's rounds and chunks.

Every round of a chunk flattens its masks into new arrays of some tens of
MB (pixel values, coordinates, entries, the frames concatenated). Fresh
memory of that size costs a page fault per 4 kB page on first touch, and
whether ``malloc`` hands back memory already touched depends on its
settings: a Dask worker returns freed memory to the system at once
(``MALLOC_TRIM_THRESHOLD_=65536``), so there every round paid for its pages
again, several times the page faults of the same call in a plain
process. A :class:`Scratch` keeps its buffers instead.

A scratch is active for a thread inside ``with reused_buffers(...)``; the
engine takes its per-round arrays from the active one. Arrays taken from a
scratch are valid until the next request under the same name: only code
that drops them before then (one round of a chunk) may use it.

Each thread keeps its scratch between calls while it holds at most
:data:`KEEP_BYTES`: a researcher who refines frame by frame, or a movie a
few dozen frames at a time, pays for fresh pages once, not on every call
(about a tenth of a call on 40 frames of isolated spots).
"""
import threading
from contextlib import contextmanager

import numpy as np

_ACTIVE = threading.local()
KEEP_BYTES = 64 << 20  # a thread's scratch kept between calls, at most


class Scratch:
    """Named buffers, grown as needed and then reused."""

    def __init__(self):
        self._buffers = {}

    def empty(self, name, shape, dtype=np.float64):
        """An uninitialised array of ``shape`` and ``dtype`` in buffer
        ``name``, overwriting what the last array of that name held."""
        dtype = np.dtype(dtype)
        shape = (shape,) if np.isscalar(shape) else tuple(shape)
        n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buffer = self._buffers.get(name)
        if buffer is None or buffer.nbytes < n_bytes:
            # a quarter more than asked: chunks differ a little in size
            buffer = np.empty(n_bytes + n_bytes // 4, dtype=np.uint8)
            self._buffers[name] = buffer
        return buffer[:n_bytes].view(dtype).reshape(shape)

    @property
    def nbytes(self):
        """Bytes held."""
        return sum(buffer.nbytes for buffer in self._buffers.values())


def active_scratch():
    """The scratch active in this thread, or None."""
    return getattr(_ACTIVE, "scratch", None)


@contextmanager
def reused_buffers(scratch=None):
    """Make ``scratch`` the active one in this thread for the block.

    Without ``scratch``: keep the active one if there is one, else use the
    thread's kept one. Yields the scratch in use.
    """
    previous = active_scratch()
    if scratch is None:
        scratch = previous if previous is not None else _kept()
    _ACTIVE.scratch = scratch
    try:
        yield scratch
    finally:
        _ACTIVE.scratch = previous
        if scratch is getattr(_ACTIVE, "kept", None) \
                and scratch.nbytes > KEEP_BYTES:
            del _ACTIVE.kept


def _kept():
    """This thread's scratch kept between calls (see the module docstring)."""
    kept = getattr(_ACTIVE, "kept", None)
    if kept is None:
        kept = _ACTIVE.kept = Scratch()
    return kept
