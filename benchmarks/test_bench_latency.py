"""Latency: the first call in a fresh process, and small calls in a warm one.

- First result per model: a fresh process with an empty Numba cache refines
  one image of Gaussian spots with each built-in model, 2D and 3D (full
  mode; quick mode runs 2D 'gauss' on the cache the tests use, as
  ``test_bench_w1.test_first_call`` times W1's frame with an empty one).
- Small calls: ``refine_leastsq`` on one 500 x 500 frame with 5 isolated
  features, best and median of many calls, refinefit beside trackpy on the
  same call, on a quiet machine and while another process keeps one core
  busy.
"""
import multiprocessing
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import FULL

MODELS = ["gauss", "disc", "ring", "inv_series_2"] if FULL else ["gauss"]
DIMS = [2, 3] if FULL else [2]

_FIRST = """
import sys, time
import numpy as np
from test_bench_latency import spots
t0 = time.perf_counter()
import refinefit
image, features = spots(int(sys.argv[1]), 6, seed=1)
t1 = time.perf_counter()
refinefit.refine_leastsq(features, image, 9, fit_function=sys.argv[2])
print(t1 - t0, time.perf_counter() - t1)
"""


def spots(ndim, n, seed, shape=None, sigma=2.0, signal=200.0):
    """An image of ``n`` isolated Gaussian spots (drawn here, with noise)
    and start positions up to 0.5 px off."""
    rng = np.random.default_rng(seed)
    shape = shape or ((500, 500) if ndim == 2 else (40, 64, 64))
    margin = 12 if ndim == 2 else 8
    grid = np.indices(shape, dtype=float)
    image = np.full(shape, 10.0)
    pos = []
    while len(pos) < n:
        p = rng.uniform(margin, np.array(shape) - margin)
        if all(np.linalg.norm(p - q) > 3 * margin for q in pos):
            pos.append(p)
            r2 = sum((g - c) ** 2 for g, c in zip(grid, p))
            image += signal * np.exp(-r2 / (2 * sigma ** 2))
    image += rng.normal(0, 1, shape)
    pos = np.array(pos) + rng.uniform(-0.5, 0.5, (n, ndim))
    columns = ["z", "y", "x"][3 - ndim:]
    features = pd.DataFrame(pos, columns=columns)
    features["signal"] = signal
    features["size"] = sigma
    return image, features


@pytest.mark.parametrize("ndim", DIMS)
@pytest.mark.parametrize("model", MODELS)
def test_first_result(tmp_path, results, model, ndim):
    """Seconds to the first result in a fresh process, empty compile cache."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__),
               REFINEFIT_COMPILE_NOTICE="0")
    if FULL:
        env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-c", _FIRST, str(ndim), model],
                         env=env, capture_output=True, text=True, check=True)
    load, first = map(float, out.stdout.split())
    cache = "cold" if FULL else "test"
    results[f"first result {model} {ndim}D, {cache} cache (s)"] = round(first, 2)


def _busy(stop):
    while not stop.is_set():
        pass


def _times(call, rounds):
    call()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return np.array(times) * 1e3


@pytest.mark.parametrize("load", ["quiet", "other core busy"])
def test_small_call(results, load):
    """5 isolated features on a 500 x 500 frame: ms per call, best and
    median, refinefit and trackpy on the same call."""
    trackpy = pytest.importorskip("trackpy")
    import refinefit
    image, features = spots(2, 5, seed=0)
    rounds = 300 if FULL else 20
    stop = multiprocessing.Event()
    busy = None
    if load != "quiet":
        busy = multiprocessing.Process(target=_busy, args=(stop,), daemon=True)
        busy.start()
    try:
        ours = _times(lambda: refinefit.refine_leastsq(features, image, 11),
                      rounds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = _times(lambda: trackpy.refine_leastsq(features, image, 11),
                            max(rounds // 10, 3))
    finally:
        stop.set()
        if busy is not None:
            busy.join()
    key = f"small call ({load})"
    results[f"{key} refinefit best / median (ms)"] = (
        f"{ours.min():.2f} / {np.median(ours):.2f}")
    results[f"{key} trackpy best / median (ms)"] = (
        f"{theirs.min():.2f} / {np.median(theirs):.2f}")
    results[f"{key} ratio trackpy / refinefit (median)"] = round(
        float(np.median(theirs) / np.median(ours)), 1)
