"""Clustering of features: the Numba kernel against a brute-force NumPy
reference (all pairwise distances, components by breadth-first search)."""
import numpy as np
import pytest

from refinefit.problem.clustering import cluster_features


def reference_clusters(coords, frames, separation, valid):
    """Labels numbered in order of frame, then of first row; sizes."""
    n = len(coords)
    scaled = coords / np.asarray(separation, dtype=float)
    with np.errstate(invalid="ignore"):
        dist2 = ((scaled[:, None, :] - scaled[None, :, :]) ** 2).sum(axis=2)
    linked = (dist2 <= 1.0) & (frames[:, None] == frames[None, :]) \
        & valid[:, None] & valid[None, :]
    labels = np.full(n, -1)
    next_label = 0
    for first in np.argsort(frames, kind="stable"):
        if labels[first] >= 0:
            continue
        labels[first] = next_label
        queue = [first]
        while queue:
            i = queue.pop()
            for j in np.nonzero(linked[i] & (labels < 0))[0]:
                labels[j] = next_label
                queue.append(j)
        next_label += 1
    return labels, np.bincount(labels)[labels]


@pytest.mark.parametrize("seed", range(40))
def test_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    ndim = 3 if seed % 3 == 0 else 2
    coords = rng.uniform(0, rng.uniform(5, 80), (n, ndim))
    if seed % 4 == 0:  # whole pixels: many pairs exactly at the separation
        coords = np.round(coords)
    frames = rng.integers(0, int(rng.integers(1, 5)), n)
    separation = rng.uniform(1, 8, ndim) if seed % 2 else 4.0
    valid = rng.random(n) > 0.1
    coords[~valid & (rng.random(n) > 0.5)] = np.nan  # invalid may be NaN

    labels, sizes = cluster_features(coords, frames, separation, valid)
    expected_labels, expected_sizes = reference_clusters(
        coords, frames, separation, valid)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_array_equal(sizes, expected_sizes)
    assert labels.dtype == sizes.dtype == np.int64


def test_separation_is_inclusive_and_per_axis():
    coords = np.array([[0.0, 0.0], [0.0, 10.0], [6.0, 0.0], [20.0, 20.0],
                       [20.0, 30.01]])
    labels, sizes = cluster_features(coords, np.zeros(5), (6.0, 10.0),
                                     np.ones(5, bool))
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(sizes, [3, 3, 3, 1, 1])


def test_chain_joins_through_far_members_and_frames_stay_apart():
    # a chain along x whose ends are far apart; the same chain in frame 1,
    # listed first; an invalid feature on top of a member stays alone
    chain = np.c_[np.zeros(6), np.arange(6) * 3.0]
    coords = np.r_[chain, chain, [[0.0, 3.0]]]
    frames = np.r_[np.ones(6), np.zeros(6), [0]]
    valid = np.r_[np.ones(12, bool), False]
    labels, sizes = cluster_features(coords, frames, 3.5, valid)
    np.testing.assert_array_equal(labels, [2] * 6 + [0] * 6 + [1])
    np.testing.assert_array_equal(sizes, [6] * 12 + [1])


def test_no_features():
    labels, sizes = cluster_features(np.zeros((0, 2)), np.zeros(0), 5.0,
                                     np.zeros(0, bool))
    assert labels.shape == sizes.shape == (0,)


@pytest.mark.parametrize("ndim", [2, 3])
def test_pairs_at_the_separation_follow_plain_arithmetic(ndim):
    # pairs one separation apart in random directions, one pair a frame:
    # their scaled squared distance lands on either side of 1 by rounding
    # alone, and they must join as plain float64 arithmetic (NumPy's) says,
    # not as fused multiply-adds would
    rng = np.random.default_rng(3)
    n = 5000
    direction = rng.normal(size=(n, ndim))
    direction /= np.linalg.norm(direction, axis=1)[:, None]
    separation = rng.uniform(3.0, 15.0, ndim)
    start = rng.uniform(0, 100, (n, ndim))
    coords = np.empty((2 * n, ndim))
    coords[0::2] = start
    coords[1::2] = start + direction * separation
    frames = np.repeat(np.arange(n), 2)
    labels, _ = cluster_features(coords, frames, separation,
                                 np.ones(2 * n, bool))
    scaled = coords / separation
    dist2 = ((scaled[1::2] - scaled[0::2]) ** 2).sum(axis=1)
    np.testing.assert_array_equal(labels[0::2] == labels[1::2], dist2 <= 1.0)
    assert 0 < np.sum(dist2 <= 1.0) < n  # both outcomes occur


def test_sweeps_along_the_widest_axis():
    # 3D features in a thin slab (z within one separation), spread in x:
    # the same clusters as the brute-force reference
    rng = np.random.default_rng(7)
    coords = np.c_[rng.uniform(0, 2, 600), rng.uniform(0, 30, 600),
                   rng.uniform(0, 400, 600)]
    frames = np.zeros(600)
    valid = np.ones(600, bool)
    labels, sizes = cluster_features(coords, frames, 3.0, valid)
    expected, expected_sizes = reference_clusters(coords, frames, 3.0, valid)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(sizes, expected_sizes)
