"""Running refinefit and trackpy.refine_leastsq on the same input."""
import logging
import warnings

import pims
import trackpy

import refinefit


def run_both(f, reader, diameter, **kwargs):
    """Refine with both (trackpy gets a copy: it modifies its input);
    trackpy's rows are put in refinefit's order."""
    ours = refinefit.refine_leastsq(f, reader, diameter, **kwargs)
    logger = logging.getLogger("trackpy")  # a warning per failed cluster
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = trackpy.refine_leastsq(f.copy(), reader, diameter,
                                            **kwargs)
    finally:
        logger.setLevel(level)
    assert sorted(theirs.index) == sorted(ours.index)
    return ours, theirs.loc[ours.index]


class ArrayFrames(pims.FramesSequence):
    """A minimal pims reader over an ndarray movie."""

    def __init__(self, movie):
        self._movie = movie

    def __len__(self):
        return len(self._movie)

    @property
    def frame_shape(self):
        return self._movie.shape[1:]

    @property
    def pixel_type(self):
        return self._movie.dtype

    def get_frame(self, i):
        return pims.Frame(self._movie[i], frame_no=i)
