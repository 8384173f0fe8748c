"""Group features into clusters within each frame."""
import numpy as np

from ..kernels.clustering import label_components


def cluster_features(coords, frames, separation, valid):
    """Label clusters: features closer than ``separation`` share a label.

    Distances are measured in units of ``separation`` (one value per
    dimension), so a pair is joined when its scaled distance is at most 1,
    as in trackpy. Only features in the same frame join; features with
    ``valid`` False stay alone.

    Returns
    -------
    labels : ndarray of int64
        Cluster ids numbered 0, 1, ... in order of frame, then of first
        appearance.
    sizes : ndarray of int64
        Size of each feature's cluster.
    """
    n = len(coords)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(frames, kind="stable")
    sorted_frames = frames[order]
    frame_bounds = np.flatnonzero(np.r_[True, sorted_frames[1:] !=
                                        sorted_frames[:-1], True])
    scaled = coords[order] / np.asarray(separation, dtype=float)
    by_rank = label_components(np.ascontiguousarray(scaled, dtype=float),
                               np.ascontiguousarray(valid[order], dtype=bool),
                               frame_bounds.astype(np.int64))
    labels = np.empty(n, dtype=np.int64)
    labels[order] = by_rank
    sizes = np.bincount(labels)[labels].astype(np.int64)
    return labels, sizes
