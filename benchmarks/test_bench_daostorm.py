"""Peer benchmark on workload D1: overlapping emitters, refinefit's Poisson
estimator against 3D-DAOSTORM's fitter in the same run.

D1: 256x256 uint16 frames of photon counts, each with 40 groups of overlapping
spots: pairs and triplets (half each) whose members lie 3 to 6 px from
each other, at random angles; 2,000 photons a spot, a Gaussian of
standard deviation sqrt(2) px (refinefit's size 2), on a background of 10
photons a pixel, Poisson noise (20 frames in full mode, 2 in quick mode).
The images are drawn here, the Gaussian evaluated at the pixel centres
(the model both fitters fit). Start positions are off by up to 0.5 px in a
random direction.

The methods, each given the same frames, start positions and width:

- refinefit: ``refine_leastsq(start, frames, diameter=11,
  estimator="poisson", param_mode={"size": "const"})``, the size fixed at
  its true value; features within the mask diameter are fitted jointly.
- 3D-DAOSTORM as ``sdt-python`` implements it in Numba, its fitter alone:
  ``sdt.loc.daostorm_3d.fit_numba_impl.Fitter2DFixed`` (maximum likelihood
  with the width fixed, every spot of a frame fitted together) on the
  frame with a mirrored margin of 10 px (``algorithm.make_margin``, as its
  own ``locate`` does), tolerance 1e-6, at most 200 iterations; the frames
  split over as many threads as refinefit's Numba threads. Its error
  computation divides by each pixel's count and raises at a zero: pixels
  of zero photons (a few in a million here) are given 1e-6 photons.

Reported: spots per second, the rms position error of each over the spots
that both fitted, and their ratios.
"""
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pandas as pd
import pytest

import refinefit

FULL = os.environ.get("REFINEFIT_BENCH") == "full"
FRAMES = 20 if FULL else 2
ROUNDS = 3 if FULL else 1
SHAPE = (256, 256)
GROUPS = 40  # per frame, on an 8 x 5 grid of 32 x 51 px cells
PHOTONS = 2000.0
SIZE = 2.0  # refinefit's size; DAOSTORM's sigma is SIZE / sqrt(2)
BACKGROUND = 10.0
DIAMETER = 11
MARGIN = 10
_LEAST_COUNT = 1e-6


def make_d1(n_frames, seed=17):
    """Frames (photon counts, uint16), truth and start positions."""
    rng = np.random.default_rng(seed)
    amplitude = PHOTONS / (math.pi * SIZE ** 2)
    yy, xx = np.indices(SHAPE, dtype=float)
    frames, truth = [], []
    pitch = np.array([SHAPE[0] / 8, SHAPE[1] / 5])
    for t in range(n_frames):
        cells = np.indices((8, 5)).reshape(2, -1).T
        first = (cells + 0.5) * pitch + rng.uniform(-3, 3, cells.shape)
        spots = []
        for g, centre in enumerate(first):
            spots += _group(rng, centre, 2 if g % 2 == 0 else 3)
        spots = np.array(spots)
        mean = np.full(SHAPE, BACKGROUND)
        for cy, cx in spots:
            near = (np.abs(yy - cy) < 12) & (np.abs(xx - cx) < 12)
            mean[near] += amplitude * np.exp(
                -((yy[near] - cy) ** 2 + (xx[near] - cx) ** 2) / SIZE ** 2)
        frames.append(rng.poisson(mean).astype(np.uint16))
        truth.append(pd.DataFrame(dict(frame=t, y=spots[:, 0],
                                       x=spots[:, 1])))
    truth = pd.concat(truth, ignore_index=True)
    angle = rng.uniform(0, 2 * np.pi, len(truth))
    shift = rng.uniform(0, 0.5, len(truth))
    guess = truth.assign(y=truth["y"] + shift * np.sin(angle),
                         x=truth["x"] + shift * np.cos(angle))
    return np.stack(frames), truth, guess


def _group(rng, centre, members):
    """``members`` spots around ``centre``, every two of them 3 to 6 px
    apart (drawn until they are)."""
    while True:
        angle = rng.uniform(0, 2 * np.pi, members - 1)
        radius = rng.uniform(3, 6, members - 1)
        spots = np.vstack([centre, centre + radius[:, None] * np.column_stack(
            [np.sin(angle), np.cos(angle)])])
        gaps = np.linalg.norm(spots[:, None] - spots[None], axis=2)
        gaps = gaps[np.triu_indices(members, 1)]
        if gaps.min() >= 3 and gaps.max() <= 6:
            return list(spots)


@pytest.fixture(scope="module")
def d1():
    return make_d1(FRAMES)


def _start_signal(frames, guess):
    yi = np.rint(guess["y"].to_numpy()).astype(np.int64)
    xi = np.rint(guess["x"].to_numpy()).astype(np.int64)
    peak = frames[guess["frame"].to_numpy(), yi, xi]
    return np.maximum(peak - BACKGROUND, 1.0)


def run_refinefit(frames, guess):
    """Refined (y, x) and whether each fit converged."""
    start = guess.assign(signal=_start_signal(frames, guess), size=SIZE,
                         background=BACKGROUND)
    refined = refinefit.refine_leastsq(start, frames, diameter=DIAMETER,
                                       estimator="poisson",
                                       param_mode={"size": "const"})
    return (refined[["y", "x"]].to_numpy(),
            (refined["status"] == 0).to_numpy())


def _daostorm_frame(image, rows):
    from sdt.loc.daostorm_3d import data, fit_numba_impl
    from sdt.loc.daostorm_3d.algorithm import make_margin

    cols = data.col_nums
    peaks = data.Peaks(len(rows))
    peaks[:] = 0.0
    peaks[:, cols.x] = rows[:, 1] + MARGIN
    peaks[:, cols.y] = rows[:, 0] + MARGIN
    peaks[:, cols.amp] = rows[:, 2]
    peaks[:, cols.wx] = peaks[:, cols.wy] = SIZE / math.sqrt(2)
    peaks[:, cols.bg] = BACKGROUND
    peaks[:, cols.stat] = data.feat_status.run
    # (its convergence test divides by each pixel's count, and raises at a
    # pixel of zero photons: those get a millionth of a photon)
    image = np.maximum(image, _LEAST_COUNT)
    fitter = fit_numba_impl.Fitter2DFixed(make_margin(image, MARGIN), peaks,
                                          tolerance=1e-6, margin=MARGIN,
                                          max_iterations=200)
    fitter.fit()
    out = fitter.peaks
    pos = np.column_stack([out[:, cols.y], out[:, cols.x]]) - MARGIN
    ok = out[:, cols.stat] == data.feat_status.conv
    return pos, ok


def run_daostorm(frames, guess, threads):
    """3D-DAOSTORM's fitter, the frames split over ``threads``."""
    rows = np.column_stack([guess["y"], guess["x"],
                            _start_signal(frames, guess)])
    frame_of = guess["frame"].to_numpy()
    order = [np.nonzero(frame_of == t)[0] for t in range(len(frames))]
    results = list(threads.map(
        lambda t: _daostorm_frame(frames[t], rows[order[t]]),
        range(len(frames))))
    pos = np.empty((len(guess), 2))
    ok = np.zeros(len(guess), dtype=bool)
    for idx, (p, o) in zip(order, results):
        pos[idx] = p
        ok[idx] = o
    return pos, ok


def test_d1_daostorm(benchmark, d1, results):
    pytest.importorskip("sdt.loc.daostorm_3d.fit_numba_impl",
                        reason="sdt-python (benchmarks/requirements-peers.txt)")
    frames, truth, guess = d1
    n = len(guess)
    threads_rf = numba.get_num_threads()
    true_pos = truth[["y", "x"]].to_numpy()
    few = guess[guess["frame"] == 0]
    with ThreadPoolExecutor(threads_rf) as threads:
        run_refinefit(frames, few)  # warm (compile)
        run_daostorm(frames[:1], few, threads)
        benchmark.pedantic(run_refinefit, args=(frames, guess),
                           rounds=ROUNDS, iterations=1)
        methods = {"refinefit poisson": lambda: run_refinefit(frames, guess),
                   "daostorm": lambda: run_daostorm(frames, guess, threads)}
        best = {name: math.inf for name in methods}
        out = {}
        for _ in range(ROUNDS):
            for name, method in methods.items():
                start = time.perf_counter()
                out[name] = method()
                best[name] = min(best[name], time.perf_counter() - start)
    both = out["refinefit poisson"][1] & out["daostorm"][1]
    rms = {name: float(np.sqrt(np.mean(np.sum(
        (pos[both] - true_pos[both]) ** 2, axis=1))))
        for name, (pos, _) in out.items()}
    rate = {name: n / seconds for name, seconds in best.items()}
    results["D1 spots (frames x 100, in pairs and triplets)"] = n
    results["D1 threads: refinefit (Numba) / DAOSTORM frames in parallel"] = \
        f"{threads_rf} / {threads_rf}"
    for name in methods:
        results[f"D1 {name} spots/s"] = round(rate[name])
        results[f"D1 {name} rms position error (px)"] = round(rms[name], 4)
    results["D1 ratio refinefit poisson / daostorm"] = round(
        rate["refinefit poisson"] / rate["daostorm"], 2)
    results["D1 rms refinefit poisson / rms daostorm"] = round(
        rms["refinefit poisson"] / rms["daostorm"], 3)
    results["D1 spots in the rms (fitted by both)"] = int(both.sum())
    results["D1 failed fits: refinefit poisson / daostorm"] = " / ".join(
        str(int((~ok).sum())) for _, ok in out.values())
    # accuracy, not speed: both fit nearly every spot, near the bound
    for name, (_, ok) in out.items():
        assert ok.mean() > 0.95, name
    assert rms["refinefit poisson"] < 0.2
