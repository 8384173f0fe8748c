"""The one chunk planner: consecutive whole frames, under limits.

Both the engine (clusters within one ``refine_leastsq`` call) and
:func:`refinefit.refine_movie` (features of a movie) split their work with
:func:`plan_frames`, so a chunk never splits a frame and the limits mean the
same everywhere.
"""
import numpy as np


def plan_frames(counts, max_frames, max_features):
    """Group consecutive frames into chunks, greedily.

    Parameters
    ----------
    counts : int array
        Features in each frame, in frame order (frames without features
        left out).
    max_frames : int
        Frames per chunk at most.
    max_features : int or float
        Features per chunk at most (``np.inf``: no limit), unless a single
        frame has more: it is then a chunk of its own.

    Returns
    -------
    list of (lo, hi)
        Index ranges into ``counts``, covering it in order.
    """
    ends = np.cumsum(counts)
    n_frames = len(counts)
    chunks = []
    lo, before = 0, 0
    while lo < n_frames:
        # the last frame whose running total stays within max_features
        hi = int(np.searchsorted(ends, before + max_features, side="right"))
        hi = min(max(hi, lo + 1), lo + int(max_frames), n_frames)
        chunks.append((lo, hi))
        before = ends[hi - 1]
        lo = hi
    return chunks
