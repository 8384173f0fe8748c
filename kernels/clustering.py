"""Connected components of features closer than one unit, frame by frame.

Positions arrive scaled by the separation (one factor per dimension) and
sorted by frame, so two features join when their scaled distance is at most
1. Within a frame the features are swept along the axis on which they
spread widest: a pair more than 1 apart along it is never compared.
Components are merged with a union-find whose root is the component's first
member, which numbers clusters by first member, as a breadth-first labelling
in row order does.

Compiled without fastmath: the squared distance is summed axis by axis in
plain float64, as NumPy sums it, so that pairs at exactly the separation
join or not as a plain computation says.
"""
import numpy as np
from numba import prange

from .jit import exact_kernel, exact_parallel_kernel


@exact_kernel
def _root(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@exact_kernel
def _join_frame(scaled, valid, lo, hi, parent):
    """Union every valid pair of rows ``lo..hi-1`` within distance 1."""
    rows = np.arange(lo, hi)
    rows = rows[valid[lo:hi]]
    if len(rows) < 2:
        return
    n_dim = scaled.shape[1]
    axis, widest = 0, -1.0
    for d in range(n_dim):
        spread = scaled[rows, d].max() - scaled[rows, d].min()
        if spread > widest:
            axis, widest = d, spread
    rows = rows[np.argsort(scaled[rows, axis], kind="mergesort")]
    for a in range(len(rows)):
        i = rows[a]
        for b in range(a + 1, len(rows)):
            j = rows[b]
            if scaled[j, axis] - scaled[i, axis] > 1.0:
                break
            dist2 = 0.0
            for d in range(n_dim):
                step = scaled[j, d] - scaled[i, d]
                dist2 += step * step
            if dist2 <= 1.0:
                ri = _root(parent, i)
                rj = _root(parent, j)
                if ri < rj:
                    parent[rj] = ri
                elif rj < ri:
                    parent[ri] = rj


@exact_parallel_kernel
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
