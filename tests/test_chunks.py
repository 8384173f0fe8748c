"""The chunk planner against a plain loop, over many random plans."""
import numpy as np
import pytest

from refinefit.io.chunks import plan_frames


def _greedy(counts, max_frames, max_features):
    """Add frames to a chunk while both limits hold; never an empty chunk."""
    chunks, lo = [], 0
    while lo < len(counts):
        hi, total = lo + 1, counts[lo]
        while (hi < len(counts) and hi - lo < max_frames
               and total + counts[hi] <= max_features):
            total += counts[hi]
            hi += 1
        chunks.append((lo, hi))
        lo = hi
    return chunks


@pytest.mark.parametrize("seed", range(300))
def test_plan_is_the_greedy_plan(seed):
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, rng.integers(2, 60), rng.integers(0, 80))
    max_frames = int(rng.integers(1, 12))
    max_features = [np.inf, int(rng.integers(1, 200))][seed % 2]
    plan = plan_frames(counts, max_frames, max_features)
    assert plan == _greedy(counts, max_frames, max_features)
    for lo, hi in plan:
        assert hi - lo <= max_frames
        assert counts[lo:hi].sum() <= max_features or hi - lo == 1


def test_engine_chunks_hold_whole_frames():
    from refinefit.config import Chunking, Model, Settings
    from refinefit.solvers.engine import plan_chunks

    rng = np.random.default_rng(0)
    cluster_frames = np.sort(rng.integers(0, 30, 200))
    cluster_feat_off = np.r_[0, np.cumsum(rng.integers(1, 4, 200))]
    settings = Settings(model=Model(0, True, 2, 1, np.zeros(5), (4.0, 4.0)),
                        chunking=Chunking(features=40, frames=5))
    chunks = plan_chunks((64, 64), cluster_frames, cluster_feat_off, settings)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(cluster_frames)
    for (c0, c1, frames, cluster_image), after in zip(chunks,
                                                      chunks[1:] + [None]):
        if after is not None:
            assert after[0] == c1
            assert cluster_frames[c1 - 1] != cluster_frames[c1]
        np.testing.assert_array_equal(frames[cluster_image],
                                      cluster_frames[c0:c1])
        n_features = cluster_feat_off[c1] - cluster_feat_off[c0]
        assert len(frames) <= 5 and (n_features <= 40 or len(frames) == 1)
