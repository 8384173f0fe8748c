"""'global' size on W1, against the per-cluster engine and trackpy.

refinefit refines 200 W1 frames (55,000 features) with one size shared by
all of them, and the same frames with the size held constant (the
per-cluster case) in the same run. trackpy treats a 'global' parameter as
one SLSQP problem over every feature; it is timed on growing subsets of one
W1 frame, up to the largest it finishes within a minute, and refinefit on
the same subset.
"""
import logging
import time
import warnings

import pytest
from conftest import FULL

import refinefit
from refinefit.synthetic import make_movie

FRAMES = 200 if FULL else 2
TRACKPY_SIZES = (10, 20, 40, 80, 160, 275) if FULL else (10,)
TRACKPY_BUDGET = 60.0  # seconds
ROUNDS = 3 if FULL else 1  # best of, for the refinefit timings


@pytest.fixture(scope="module")
def w1():
    return make_movie(FRAMES, seed=1)


def _timed(func):
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def test_global_size_w1(benchmark, w1, results):
    frames, truth, guess = w1
    first = guess[guess["frame"] == 0]
    for mode in ("const", "global"):  # compile or load the kernels
        refinefit.refine_leastsq(first, frames, 11, param_mode={"size": mode})
    per_cluster = min(_timed(lambda: refinefit.refine_leastsq(
        guess, frames, 11, param_mode={"size": "const"}))[0]
        for _ in range(ROUNDS))
    refined = benchmark.pedantic(
        refinefit.refine_leastsq, args=(guess, frames, 11),
        kwargs=dict(param_mode={"size": "global"}, compute_error=True),
        rounds=1, iterations=1)
    shared = min(_timed(lambda: refinefit.refine_leastsq(
        guess, frames, 11, param_mode={"size": "global"}))[0]
        for _ in range(ROUNDS))
    assert refined["cost"].notna().mean() > 0.99
    assert refined["size"].nunique() == 1
    size = refined["size"].iloc[0]
    # W1's sizes are 2.5; neighbours' tails outside the masks pull it down
    assert abs(size - 2.5) < 0.05
    results[f"global size W1 {FRAMES} frames refinefit s"] = round(shared, 2)
    results["global size W1 refinefit features/s"] = round(len(guess) / shared)
    results["global size W1 per-cluster (size const) features/s"] = round(
        len(guess) / per_cluster)
    results["global size W1 time / per-cluster time"] = round(
        shared / per_cluster, 2)
    results["global size W1 fitted size (truth 2.5)"] = (
        f"{size:.4f} +- {refined['size_std'].iloc[0]:.4f}")


def test_global_size_trackpy(w1, results):
    """trackpy's time on subsets of frame 0 (sorted by x), up to the largest
    it finishes within a minute; refinefit on the same subsets. trackpy's
    single SLSQP problem fails (NaN cost) beyond a few features, so the
    largest subset it fits successfully is reported as well."""
    trackpy = pytest.importorskip("trackpy")
    frames, _, guess = w1
    frame0 = guess[guess["frame"] == 0].sort_values("x")
    logger = logging.getLogger("trackpy")
    level = logger.level
    logger.setLevel(logging.ERROR)
    runs = []
    try:
        for n in TRACKPY_SIZES:
            subset = frame0.iloc[:n]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seconds, theirs = _timed(lambda: trackpy.refine_leastsq(
                    subset.copy(), frames[0], 11,
                    param_mode={"size": "global"}))
            if seconds > TRACKPY_BUDGET:
                break
            runs.append((len(subset), seconds,
                         bool(theirs["cost"].notna().all()), subset))
            if len(subset) < n:
                break  # the whole frame
    finally:
        logger.setLevel(level)
    assert runs
    for label, run in (("largest within 60 s", runs[-1]),
                       ("largest fitted", next((r for r in reversed(runs)
                                                if r[2]), None))):
        if run is None:
            results[f"global size trackpy {label}"] = "none"
            continue
        n, seconds, ok, subset = run
        ours, refined = _timed(lambda: refinefit.refine_leastsq(
            subset, frames[0], 11, param_mode={"size": "global"}))
        assert refined["cost"].notna().all()
        results[f"global size trackpy {label}: features"] = n
        results[f"global size trackpy {label}: trackpy s (fit ok: {ok})"] = \
            round(seconds, 2)
        results[f"global size trackpy {label}: refinefit s"] = round(ours, 4)
        results[f"global size trackpy {label}: ratio"] = \
            f"{seconds / ours:.0f}x"
