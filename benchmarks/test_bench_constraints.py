"""W2: constrained dimers, against trackpy in the same run.

W2: 200 dimers per 512x512 uint8 frame, Gaussian features (size 2.5,
diameter 11) 5 px apart at S/N 10, refined with ``constraints=dimer(5)``.
"""
import time
import warnings

import numpy as np
import pytest
from conftest import FULL

import refinefit
from refinefit.synthetic import make_movie

FRAMES = 5 if FULL else 1
TRACKPY_DIMERS = 40 if FULL else 5
DISTANCE = 5.0


@pytest.fixture(scope="module")
def w2():
    return make_movie(FRAMES, n_single=0, n_dimer=200, n_trimer=0,
                      distance=DISTANCE, seed=5)


def test_w2_refinefit(benchmark, w2, results):
    frames, truth, guess = w2
    run = lambda: refinefit.refine_leastsq(  # noqa: E731
        guess, frames, 11, constraints=refinefit.dimer(DISTANCE))
    refinefit.refine_leastsq(guess[guess["frame"] == 0].iloc[:20], frames,
                             11, constraints=refinefit.dimer(DISTANCE))
    refined = benchmark.pedantic(run, rounds=3 if FULL else 1, iterations=1)
    seconds = benchmark.stats.stats.min if benchmark.enabled else _timed(run)
    ok = refined["cost"].notna()
    assert ok.mean() > 0.95
    pos = refined[["y", "x"]].to_numpy().reshape(-1, 2, 2)
    gap = np.linalg.norm(pos[:, 0] - pos[:, 1], axis=1)
    ok_dimer = ok.to_numpy().reshape(-1, 2).all(axis=1)
    np.testing.assert_allclose(gap[ok_dimer], DISTANCE, atol=1e-3)
    error = np.hypot(refined["y"] - truth["y"], refined["x"] - truth["x"])
    results["W2 refinefit features/s"] = round(len(guess) / seconds)
    results["W2 refinefit rms position error (px)"] = round(
        float(np.sqrt(np.mean(error[ok] ** 2))), 4)


def _timed(func):
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def test_w2_trackpy(benchmark, w2, results):
    trackpy = pytest.importorskip("trackpy")
    frames, _, guess = w2
    subset = guess[guess["frame"] == 0].iloc[:2 * TRACKPY_DIMERS]
    constraint = trackpy.refine.least_squares.dimer(DISTANCE)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return trackpy.refine_leastsq(subset.copy(), frames[0], 11,
                                          constraints=constraint)

    start = time.perf_counter()
    benchmark.pedantic(run, rounds=1, iterations=1)
    results["W2 trackpy features/s"] = round(
        len(subset) / (time.perf_counter() - start), 1)
