"""kernels/threads.py: chunks of clusters on a pool of threads."""
import multiprocessing

import numba
import numpy as np
import pytest

import refinefit
from refinefit.kernels import threads
from refinefit.synthetic import make_movie


@pytest.mark.parametrize("n, n_threads, min_chunk, expected", [
    (0, 2, 16, [0, 0]),
    (31, 2, 16, [0, 31]),          # too small to share
    (32, 2, 16, [0, 16, 32]),
    (1000, 2, 16, [0, 125, 250, 375, 500, 625, 750, 875, 1000]),
    (1000, 1, 16, [0, 1000]),      # one thread: no pool
])
def test_chunk_bounds(n, n_threads, min_chunk, expected):
    assert threads.chunk_bounds(n, n_threads, min_chunk) == expected


def _refine_in_child(queue):
    frames, _, guess = make_movie(2, seed=5)
    queue.put(len(refinefit.refine_leastsq(guess, frames, 11)))


def test_a_forked_child_gets_its_own_pool():
    """The parent's pool threads do not survive a fork: a child that
    refines after its parent did must not wait for them."""
    frames, _, guess = make_movie(2, seed=5)
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        refinefit.refine_leastsq(guess, frames, 11)  # the parent's pool
        assert threads._pools
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_refine_in_child, args=(queue,))
        child.start()
        child.join(60)
        alive = child.is_alive()
        if alive:
            child.kill()
        assert not alive, "the forked child hung on its parent's pool"
        assert queue.get(timeout=5) == len(guess)
    finally:
        numba.set_num_threads(before)


def test_results_do_not_depend_on_threads_or_chunks():
    frames, _, guess = make_movie(3, seed=6)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = refinefit.refine_leastsq(guess, frames, 11)
        numba.set_num_threads(2)
        two = refinefit.refine_leastsq(guess, frames, 11)
    finally:
        numba.set_num_threads(before)
    for column in one.columns:
        np.testing.assert_array_equal(one[column].to_numpy(),
                                      two[column].to_numpy())
