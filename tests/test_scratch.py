"""Buffers reused between rounds and chunks (refinefit/scratch.py): the
arrays they hand out, and results that do not depend on what the buffers
held before."""
import numpy as np
import pytest
from same_refinement import assert_same_refinement

import refinefit
from refinefit.solvers.engine import concat_frames, flatten_masks
from refinefit.solvers.scratch import Scratch, active_scratch, reused_buffers
from refinefit.synthetic import make_movie


def test_empty_reuses_its_buffer_and_grows():
    scratch = Scratch()
    first = scratch.empty("a", (10, 3))
    assert first.shape == (10, 3) and first.dtype == np.float64
    first[:] = 7.0
    again = scratch.empty("a", 12, np.int64)  # 96 bytes: fits in 300
    assert np.shares_memory(first, again) and again.dtype == np.int64
    bigger = scratch.empty("a", 1000)
    assert not np.shares_memory(first, bigger) and bigger.shape == (1000,)
    other = scratch.empty("b", 5, np.uint16)
    assert not np.shares_memory(bigger, other)
    assert scratch.nbytes >= bigger.nbytes + other.nbytes
    assert scratch.empty("c", (0, 2)).shape == (0, 2)


def test_reused_buffers_nests_and_restores():
    assert active_scratch() is None
    mine = Scratch()
    with reused_buffers(mine) as outer:
        assert outer is mine and active_scratch() is mine
        with reused_buffers() as inner:  # keeps the active one
            assert inner is mine
        with reused_buffers(Scratch()) as other:
            assert other is not mine and active_scratch() is other
        assert active_scratch() is mine
    assert active_scratch() is None
    with reused_buffers() as fresh:  # none active: a new one for the block
        assert isinstance(fresh, Scratch) and active_scratch() is fresh
    assert active_scratch() is None


def test_flatten_masks_from_scratch_equals_fresh_arrays():
    frames, _, guess = make_movie(3, shape=(64, 64), n_single=6, n_dimer=2,
                                  n_trimer=1, seed=4)
    images = list(frames)
    centres = np.ascontiguousarray(guess[["y", "x"]].to_numpy())
    off = np.arange(len(centres) + 1, dtype=np.int64)
    cluster_image = guess["frame"].to_numpy().astype(np.int64)
    expected = flatten_masks(images, cluster_image, off, centres, (5.5, 5.5))
    scratch = Scratch()
    for name in ("frames", "pix_val", "pix_coord", "entry_pix"):
        scratch.empty(name, 10**6).fill(np.nan)  # dirty, larger buffers
    got = flatten_masks(concat_frames(images, scratch), cluster_image, off,
                        centres, (5.5, 5.5), scratch)
    for field in ("pix_val", "pix_coord", "cluster_pix_off", "entry_pix",
                  "feat_entry_off"):
        np.testing.assert_array_equal(getattr(got, field),
                                      getattr(expected, field))
    assert np.shares_memory(got.pix_val, scratch.empty("pix_val", 1))


def test_results_do_not_depend_on_what_the_buffers_held():
    big, _, big_guess = make_movie(4, shape=(128, 128), n_single=20,
                                   n_dimer=5, n_trimer=2, seed=8)
    small, _, guess = make_movie(2, shape=(96, 96), n_single=8, n_dimer=2,
                                 n_trimer=1, seed=9)
    expected = refinefit.refine_leastsq(guess, small, 11)
    scratch = Scratch()
    with reused_buffers(scratch):
        refinefit.refine_leastsq(big_guess, big, 11)  # fills the buffers
        held = scratch.nbytes
        assert held > 0
        got = refinefit.refine_leastsq(guess, small, 11)
        assert scratch.nbytes == held  # reused, not grown
    assert_same_refinement(got, expected)


def test_an_uncaught_error_leaves_no_active_scratch():
    with pytest.raises(RuntimeError):
        with reused_buffers():
            raise RuntimeError("inside")
    assert active_scratch() is None
