"""Group features into clusters within each frame."""
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


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
    idx = order[valid[order]]
    pairs = np.zeros((0, 2), dtype=np.int64)
    if len(idx) > 1:
        scaled = np.empty((len(idx), coords.shape[1] + 1))
        scaled[:, :-1] = coords[idx] / np.asarray(separation, dtype=float)
        # frames 3 units apart never pair; ranks keep the numbers small
        _, frame_rank = np.unique(frames[idx], return_inverse=True)
        scaled[:, -1] = 3.0 * frame_rank
        pairs = cKDTree(scaled).query_pairs(1.0, output_type="ndarray")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    ranked = rank[idx]
    graph = coo_matrix((np.ones(len(pairs)), (ranked[pairs[:, 0]],
                                              ranked[pairs[:, 1]])),
                       shape=(n, n))
    _, by_rank = connected_components(graph, directed=False)
    # connected_components numbers by lowest member, i.e. in rank order
    labels = by_rank[rank].astype(np.int64)
    sizes = np.bincount(labels)[labels].astype(np.int64)
    return labels, sizes
