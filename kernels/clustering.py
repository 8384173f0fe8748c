"""Connected components of features closer than one unit, frame by frame.

Positions arrive scaled by the separation (one factor per dimension) and
sorted by frame, so two features join when their scaled distance is at most
1. Within a frame the features are swept along the first axis: a pair more
than 1 apart along it is never compared. Components are merged with a
union-find whose root is the component's first member, which numbers
clusters by first member, as a breadth-first labelling in row order does.
"""
import numpy as np
from numba import prange

from ._jit import kernel, parallel_kernel


@kernel
def _root(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@kernel
def _join_frame(scaled, valid, lo, hi, parent):
    """Union every valid pair of rows ``lo..hi-1`` within distance 1."""
    rows = np.arange(lo, hi)
    rows = rows[valid[lo:hi]]
    rows = rows[np.argsort(scaled[rows, 0], kind="mergesort")]
    n_dim = scaled.shape[1]
    for a in range(len(rows)):
        i = rows[a]
        for b in range(a + 1, len(rows)):
            j = rows[b]
            gap = scaled[j, 0] - scaled[i, 0]
            if gap > 1.0:
                break
            dist2 = gap * gap
            for d in range(1, n_dim):
                step = scaled[j, d] - scaled[i, d]
                dist2 += step * step
            if dist2 <= 1.0:
                ri = _root(parent, i)
                rj = _root(parent, j)
                if ri < rj:
                    parent[rj] = ri
                elif rj < ri:
                    parent[ri] = rj


@parallel_kernel
def label_components(scaled, valid, frame_bounds):
    """Cluster labels of features within distance 1 of each other.

    Parameters
    ----------
    scaled : (n, ndim) float64
        Positions divided by the separation, rows sorted by frame.
    valid : (n,) bool
        Rows that may join others; the rest stay alone.
    frame_bounds : (n_frames + 1,) int64
        Rows of frame ``f`` are ``frame_bounds[f]:frame_bounds[f + 1]``.

    Returns
    -------
    labels : (n,) int64
        0, 1, ... in order of each component's first row.
    """
    n = scaled.shape[0]
    parent = np.arange(n)
    for f in prange(len(frame_bounds) - 1):
        _join_frame(scaled, valid, frame_bounds[f], frame_bounds[f + 1],
                    parent)
    labels = np.empty(n, dtype=np.int64)
    n_labels = 0
    for i in range(n):
        root = _root(parent, i)
        if root == i:
            labels[i] = n_labels
            n_labels += 1
        else:
            labels[i] = labels[root]  # root < i: already labelled
    return labels
