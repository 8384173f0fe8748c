"""One chunk of a movie, wherever it is refined: in this process, in a
lane, or on a Dask worker (which imports this module, not the pipeline)."""
from contextlib import contextmanager

import numba
import numpy as np

from ..refine import refine_leastsq
from ..solvers.scratch import reused_buffers
from .checkpoint import pack_chunk


class FrameWindow:
    """The reader ``refine_leastsq`` sees: the frames of the current chunk,
    already in memory; any other frame is read from the movie on demand."""

    def __init__(self, movie, frames=None):
        self.movie = movie
        self.frames = frames or {}
        self.frame_shape = movie.frame_shape

    def __len__(self):
        return len(self.movie)

    def __getitem__(self, frame_no):
        frame = self.frames.get(frame_no)
        if frame is None:
            frame = self.movie.read([frame_no])[0]
        return frame


def refine_read_chunk(movie, frame_ids, frames, rows, chunk_table,
                      fit_options, scratch):
    """``refine_leastsq`` on the features of one chunk (``chunk_table``,
    rows ``rows`` of the input) given its frames, already read; the engine
    takes its per-round arrays from ``scratch``. Returns the packed
    result (see :func:`refinefit.pipeline.checkpoint.pack_chunk`)."""
    window = FrameWindow(movie, dict(zip(np.asarray(frame_ids).tolist(),
                                         frames)))
    with reused_buffers(scratch):
        return pack_chunk(rows, refine_leastsq(chunk_table, window,
                                               **fit_options))


@contextmanager
def numba_threads(threads):
    if threads is None:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(int(threads))
    try:
        yield
    finally:
        numba.set_num_threads(before)
