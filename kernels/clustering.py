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

from .jit import Specialized, exact_kernel
from .threads import OverChunks


@exact_kernel
def _root(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


@exact_kernel(entry=True)
def _join_frames(frame_ids, scaled, rows, row_bounds, axes, parent):
    """Union every pair of rows of frame ``f`` within distance 1, for each
    ``f`` of ``frame_ids``: the frame's rows to join are
    ``rows[row_bounds[f]:row_bounds[f + 1]]``, sorted along axis
    ``axes[f]``. Frames hold disjoint rows, so they may run in parallel."""
    n_dim = scaled.shape[1]
    for i in range(frame_ids.shape[0]):
        f = frame_ids[i]
        axis = axes[f]
        for a in range(row_bounds[f], row_bounds[f + 1]):
            r = rows[a]
            for b in range(a + 1, row_bounds[f + 1]):
                q = rows[b]
                if scaled[q, axis] - scaled[r, axis] > 1.0:
                    break
                dist2 = 0.0
                for d in range(n_dim):
                    step = scaled[q, d] - scaled[r, d]
                    dist2 += step * step
                if dist2 <= 1.0:
                    rr = _root(parent, r)
                    rq = _root(parent, q)
                    if rr < rq:
                        parent[rq] = rr
                    elif rq < rr:
                        parent[rr] = rq


_join_all = OverChunks(Specialized(_join_frames, ()), min_chunk=8,
                       ids="frame_ids")


@exact_kernel(entry=True)
def _label_roots(parent):
    """0, 1, ... in order of each component's first row."""
    n = parent.shape[0]
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


_label_all = Specialized(_label_roots, ())


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
    rows, row_bounds, axes = _sweep_order(scaled, valid, frame_bounds)
    parent = np.arange(scaled.shape[0])
    frame_ids = np.arange(len(frame_bounds) - 1, dtype=np.int64)
    _join_all(frame_ids, scaled, rows, row_bounds, axes, parent)
    return _label_all(parent)


def _sweep_order(scaled, valid, frame_bounds):
    """The valid rows of each frame sorted (stably) along the axis on which
    they spread widest, with each frame's bounds in them and that axis.

    In NumPy: one sort for the whole batch, and no sorting code to compile.
    """
    n_frames = len(frame_bounds) - 1
    frame_of = np.repeat(np.arange(n_frames), np.diff(frame_bounds))
    rows = np.flatnonzero(valid)
    counts = np.bincount(frame_of[rows], minlength=n_frames)
    row_bounds = np.zeros(n_frames + 1, dtype=np.int64)
    np.cumsum(counts, out=row_bounds[1:])
    axes = np.zeros(n_frames, dtype=np.int64)
    if len(rows) == 0:
        return rows.astype(np.int64), row_bounds, axes
    # spread of each frame's valid rows per axis; the first widest wins
    present = np.flatnonzero(counts)
    at = row_bounds[present]
    values = scaled[rows]
    spread = (np.maximum.reduceat(values, at, axis=0)
              - np.minimum.reduceat(values, at, axis=0))
    axes[present] = np.argmax(spread, axis=1)
    key = scaled[rows, axes[frame_of[rows]]]
    order = np.lexsort((key, frame_of[rows]))
    return rows[order].astype(np.int64), row_bounds, axes
