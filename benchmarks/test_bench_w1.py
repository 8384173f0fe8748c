"""Speed of refine_leastsq on workload W1, against trackpy in the same run.

W1: 2D Gaussian features (size 2.5, diameter 11) in 512x512 uint8 frames at
S/N 10, 275 features per frame (150 singles, 40 dimers, 15 trimers), initial
positions off by up to 0.6 px. Times are end to end: DataFrame in, DataFrame
out.
"""
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import FULL

import refinefit
from refinefit.synthetic import draw_gaussians, make_movie

W1_FRAMES = 40 if FULL else 2
TRACKPY_FRAMES = 2 if FULL else 1
TRACKPY_FEATURES = None if FULL else 30
ROUNDS = 5 if FULL else 1


@pytest.fixture(scope="module")
def w1():
    return make_movie(W1_FRAMES, seed=1)


def _best_time(func, rounds):
    best = np.inf
    for _ in range(rounds):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def test_w1_refinefit(benchmark, w1, results):
    frames, truth, guess = w1
    refinefit.refine_leastsq(guess[guess["frame"] == 0], frames, 11)  # warm
    refined = benchmark.pedantic(refinefit.refine_leastsq,
                                 args=(guess, frames, 11), rounds=ROUNDS,
                                 iterations=1)
    seconds, _ = _best_time(lambda: refinefit.refine_leastsq(guess, frames, 11),
                            ROUNDS)
    assert refined["cost"].notna().all()
    error = np.hypot(refined["y"] - truth["y"], refined["x"] - truth["x"])
    results["W1 refinefit features/s"] = round(len(guess) / seconds)
    results["W1 refinefit rms position error (px)"] = round(
        float(np.sqrt(np.mean(error ** 2))), 4)
    benchmark.extra_info["features_per_s"] = len(guess) / seconds


def test_w1_trackpy(benchmark, w1, results):
    trackpy = pytest.importorskip("trackpy")
    frames, _, guess = w1
    subset = guess[guess["frame"] < TRACKPY_FRAMES]
    if TRACKPY_FEATURES:
        subset = subset.iloc[:TRACKPY_FEATURES]

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return trackpy.refine_leastsq(subset.copy(), _Movie(frames), 11)

    refined = benchmark.pedantic(run, rounds=1, iterations=1)
    seconds, _ = _best_time(run, 1)
    assert len(refined) == len(subset)
    results["W1 trackpy features/s"] = round(len(subset) / seconds, 1)


class _Movie:
    """Minimal FramesSequence-like reader for trackpy."""

    def __init__(self, frames):
        self.frames = frames
        self.frame_shape = frames.shape[1:]

    def __len__(self):
        return len(self.frames)

    def __getitem__(self, i):
        return self.frames[i]


_FIRST_CALL = """
import time
t0 = time.perf_counter()
import refinefit
from refinefit.synthetic import make_movie
frames, truth, guess = make_movie(1, seed=2)
t1 = time.perf_counter()
refinefit.refine_leastsq(guess, frames, 11)
print(time.perf_counter() - t1)
"""


@pytest.mark.xdist_group("jit-on-the-tests-cache")  # see tests/test_aot.py
def test_first_call(tmp_path, results):
    """First call in a fresh process with an empty compile cache: with the
    kernels the install compiled ahead of time (``kernels/aot.py``; what a
    user meets), and without them (``REFINEFIT_AOT=0``: what compiling the
    kernels costs), then again on the cache that run left. (Quick mode
    compiles on the tests' cache, which tests/test_aot.py fills with this
    frame's kernels: the compile is timed in full mode.)"""
    from refinefit.kernels import aot

    def first_call(cache, **extra):
        env = dict(os.environ, **extra)
        if cache is not None:
            env["NUMBA_CACHE_DIR"] = str(tmp_path / cache)
        out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env,
                             capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    if aot.available():
        results["first call, cold compile cache (s)"] = round(
            first_call("aot"), 2)
    jit_cache = "jit" if FULL else None
    compiling = first_call(jit_cache, REFINEFIT_AOT="0")
    warm = first_call(jit_cache, REFINEFIT_AOT="0")
    results["first call, cold compile cache, compiling the kernels (s)"] = \
        round(compiling, 2)
    results["first call, warm compile cache (s)"] = round(warm, 2)
    if FULL:
        assert warm < compiling


def _lattice(rng):
    """500 touching features (hexagonal lattice, 5 px apart): the noise-free
    image (background 10, amplitude 100, size 2.5) and the guesses."""
    nx, ny, pitch = (25, 20, 5.0)
    centres = np.array([(12 + j * pitch * np.sqrt(3) / 2,
                         12 + i * pitch + (j % 2) * pitch / 2)
                        for j in range(ny) for i in range(nx)])
    shape = tuple(int(v) + 14 for v in centres.max(axis=0))
    image = draw_gaussians(shape, centres, 2.5, 100.0, 10.0)
    guess = pd.DataFrame(dict(
        y=centres[:, 0] + rng.uniform(-0.4, 0.4, len(centres)),
        x=centres[:, 1] + rng.uniform(-0.4, 0.4, len(centres)),
        signal=100.0, size=2.5))
    return image, guess


@pytest.mark.parametrize("estimator", ["lsq", "poisson"])
def test_large_cluster(benchmark, results, estimator):
    """One cluster of 500 touching features: least squares with Gaussian
    noise, maximum likelihood on photon counts (both on the sparse solver)."""
    rng = np.random.default_rng(3)
    image, guess = _lattice(rng)
    if estimator == "lsq":
        image = image + rng.normal(0, 10, image.shape)
    else:
        image = rng.poisson(image).astype(float)

    def refine(features=guess):
        return refinefit.refine_leastsq(features, image, 11,
                                        estimator=estimator)

    refine(guess.iloc[:20])  # warm
    refined = benchmark.pedantic(refine, rounds=ROUNDS, iterations=1)
    seconds, _ = _best_time(refine, ROUNDS)
    assert refined["cluster_size"].max() == len(guess)
    assert refined["cost"].notna().all()
    name = ("one cluster of 500 touching features (s)" if estimator == "lsq"
            else "one cluster of 500 touching features, Poisson (s)")
    results[name] = round(seconds, 3)
