"""Peer benchmark on workload I1: refinefit against Picasso in the same run.

I1: isolated 2D Gaussian spots in 512x512 uint16 frames of photon counts,
150 spots per frame (40 frames in full mode, 2 in quick mode), standard
deviation 1.77 px, peak 160 photons per pixel (the peak of the continuous
Gaussian: ``160 * 2 pi 1.77^2`` = 3,149 photons per spot) on a background of
16 photons per pixel, Poisson noise. The spots sit on a jittered 12 x 13
grid: at least 20 px apart and 10 px from the frame's edge, so no two masks
or boxes overlap. Start positions are off by up to 0.6 px in a random
direction.

The images are drawn here, independently of refinefit's fitter: each pixel's
mean is the background plus the Gaussian *integrated over the pixel*
(products of ``erf`` differences, pixel centres on integer coordinates,
pixel ``i`` spanning ``[i - 0.5, i + 0.5]``), then drawn from a Poisson
distribution. The truth is the continuous Gaussian's centre.

The methods, each given the same frames and start positions:

- refinefit: ``refine_leastsq(start, frames, diameter=11,
  param_mode={"size": "var"})`` (least squares, and with
  ``estimator="poisson"`` maximum likelihood, as Picasso's MLE fitters):
  the Gaussian model, isotropic, background fitted per cluster (the
  default), and the size fitted too, as Picasso fits the width. Start
  values: the start position, the signal from the pixel there and the
  nominal size ``2.0 * sqrt(2)`` (a standard deviation
  of 2.0 px, 13 % above the truth; refinefit's ``size`` is ``sqrt(2)``
  times the standard deviation), computed inside the timed call. Masks are
  discs of radius 5 px around the start.
- Picasso (``picassosr`` 0.11.3), on 11 x 11 boxes cut by
  ``picasso.localize.get_spots`` around the rounded start positions (the
  camera set to count photons: baseline 0, sensitivity 1, gain 1):
  ``picasso.gaussmle.gaussmle(spots, eps=0.001, max_it=100,
  method="sigma")``, Picasso's Newton MLE of a pixel-integrated isotropic
  Gaussian (the ``eps`` and ``max_it`` that ``localize.fit`` documents for
  "gaussmle"); ``picasso.gausslq`` (``fit_spots``, ``spherical=True``, its
  default MINPACK schedule), a SciPy ``leastsq`` per spot; and, because
  Picasso 0.11 deprecates both modules and its own ``localize.fit(...,
  "gaussmle-spherical")`` now runs it, ``picasso.localize.fit_spots_gauss(
  spots, mle=True, spherical=True)`` ("gaussfit MLE", a Numba
  Levenberg-Marquardt MLE).

Parallelism: refinefit runs on Numba's threads (``numba.get_num_threads()``)
and Picasso on as many workers. ``gaussmle``'s and ``gaussfit``'s per-spot
kernels are Numba ``nogil`` functions, so their spots are split into chunks
fitted on a thread pool; ``gausslq`` calls ``scipy.optimize.leastsq``, which
holds the GIL through its Python residual callback (threads make it slower),
so its chunks go to a pool of forked processes, as Picasso's own
``gausslq.fit_spots_parallel`` does. The pools are started, and every
method's compilation done, before the timings; the timed calls include
cutting the boxes (Picasso) or building the masks (refinefit), the fits,
and the positions in frame coordinates. Each timing is the best of 3
rounds in full mode (1 in quick mode), the methods interleaved in each
round.

Accuracy: the rms of the distance between fitted and true centre, over the
spots that every method fitted. A fit fails where refinefit's status is not
0, or where a Picasso position is not finite, lies more than 5 px from the
box centre, or its iteration count reached ``max_it`` (``gaussmle`` and
``gaussfit``, which report it). Failures are counted per method, not
hidden.

Pixel-fits per second per core (Cpufit's figure of merit): pixels per fit
times fits per second, divided by the cores (threads) used. For refinefit
the pixels per fit are the mean number of pixels in the masks (a disc of
radius 5 px, edge included: about 78.5), for Picasso the 121 of a box.
"""
import math
import multiprocessing
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial

import numba
import numpy as np
import pandas as pd
import pytest
from conftest import FULL
from scipy.special import erf

import refinefit

FRAMES = 40 if FULL else 2
ROUNDS = 3 if FULL else 1
SHAPE = (512, 512)
SPOTS_PER_FRAME = 150
SIGMA = 1.77
AMPLITUDE = 160.0
PHOTONS = AMPLITUDE * 2 * math.pi * SIGMA ** 2
BACKGROUND = 16.0
MAX_OFFSET = 0.6
DIAMETER = BOX = 11
START_SIZE = 2.0 * math.sqrt(2)
GAUSSMLE_EPS, GAUSSMLE_MAX_IT = 0.001, 100
GAUSSFIT_MAX_IT = 100  # localize.gauss_schedule for MLE on the CPU
CAMERA = {"Baseline": 0.0, "Sensitivity": 1.0, "Gain": 1, "Pixelsize": 130}
_REQUIREMENTS = "benchmarks/requirements-peers.txt"


def make_i1(n_frames, seed=11):
    """Frames (uint16 photon counts), truth and start positions of I1."""
    rng = np.random.default_rng(seed)
    rows, cols = 12, 13
    pitch = np.array(SHAPE) / (rows, cols)
    jitter = pitch / 2 - 10.0  # >= 10 px from the edge, >= 20 px apart
    half = 9  # the patch drawn per spot: +-9 px, over 5 standard deviations
    k = np.arange(-half, half + 1)
    frames = np.empty((n_frames,) + SHAPE, dtype=np.uint16)
    truth = []
    for t in range(n_frames):
        cells = rng.choice(rows * cols, SPOTS_PER_FRAME, replace=False)
        centre = (np.column_stack([cells // cols, cells % cols]) + 0.5) * pitch
        pos = centre + rng.uniform(-1, 1, centre.shape) * jitter
        origin = np.rint(pos).astype(np.int64)
        ey = _pixel_fraction(origin[:, :1] + k - pos[:, :1])
        ex = _pixel_fraction(origin[:, 1:] + k - pos[:, 1:])
        mean = np.full(SHAPE, BACKGROUND)
        for (y0, x0), py, px in zip(origin, ey, ex):
            mean[y0 - half:y0 + half + 1, x0 - half:x0 + half + 1] += \
                PHOTONS * np.outer(py, px)
        frames[t] = rng.poisson(mean)
        truth.append(pd.DataFrame(dict(frame=t, y=pos[:, 0], x=pos[:, 1])))
    truth = pd.concat(truth, ignore_index=True)
    angle = rng.uniform(0, 2 * np.pi, len(truth))
    shift = rng.uniform(0, MAX_OFFSET, len(truth))
    guess = pd.DataFrame(dict(frame=truth["frame"],
                              y=truth["y"] + shift * np.sin(angle),
                              x=truth["x"] + shift * np.cos(angle)))
    return frames, truth, guess


def _pixel_fraction(d):
    """The fraction of a 1D Gaussian (``SIGMA``) in the pixel whose centre
    lies ``d`` px from the Gaussian's centre."""
    s = math.sqrt(2) * SIGMA
    return 0.5 * (erf((d + 0.5) / s) - erf((d - 0.5) / s))


def mask_pixels(guess):
    """Pixels in each refinefit mask: a disc of radius ``DIAMETER // 2``
    around the start position, edge included (all inside the frame here)."""
    r = DIAMETER // 2
    k = np.arange(-r - 1, r + 2)
    frac = guess[["y", "x"]].to_numpy()
    dy = np.rint(frac[:, 0])[:, None] + k - frac[:, :1]
    dx = np.rint(frac[:, 1])[:, None] + k - frac[:, 1:]
    inside = dy[:, :, None] ** 2 + dx[:, None, :] ** 2 <= r * r
    return inside.sum(axis=(1, 2))


@pytest.fixture(scope="module")
def i1():
    return make_i1(FRAMES)


def run_refinefit(frames, guess, estimator="lsq"):
    """Refined (y, x) and whether each fit converged."""
    start = guess.copy()
    yi = np.rint(start["y"].to_numpy()).astype(np.int64)
    xi = np.rint(start["x"].to_numpy()).astype(np.int64)
    start["signal"] = frames[start["frame"].to_numpy(), yi, xi].astype(float)
    start["size"] = START_SIZE
    refined = refinefit.refine_leastsq(start, frames, diameter=DIAMETER,
                                       param_mode={"size": "var"},
                                       estimator=estimator)
    ok = (refined["status"] == 0).to_numpy()
    return refined[["y", "x"]].to_numpy(), ok, None


def _identifications(guess):
    return pd.DataFrame(dict(
        frame=guess["frame"].to_numpy(np.int64),
        x=np.rint(guess["x"].to_numpy()).astype(np.int64),
        y=np.rint(guess["y"].to_numpy()).astype(np.int64),
        net_gradient=np.ones(len(guess), dtype=np.float32)))


def _chunks(spots, workers):
    return np.array_split(spots, 4 * workers)


def _in_box(offset):
    """Fits that ran off the box or produced NaN count as failed."""
    return np.isfinite(offset).all(axis=1) & (np.abs(offset) <= BOX // 2).all(
        axis=1)


def run_gaussmle(frames, guess, threads, workers):
    """``picasso.gaussmle.gaussmle`` on chunks of spots on ``threads``."""
    from picasso import gaussmle, localize

    ids = _identifications(guess)
    spots = localize.get_spots(frames, ids, BOX, CAMERA)
    fit = partial(gaussmle.gaussmle, eps=GAUSSMLE_EPS, max_it=GAUSSMLE_MAX_IT,
                  method="sigma")
    parts = list(threads.map(fit, _chunks(spots, workers)))
    theta = np.concatenate([p[0] for p in parts])
    crlb = np.concatenate([p[1] for p in parts])
    iterations = np.concatenate([p[3] for p in parts])
    offset = theta[:, [1, 0]].astype(float) - BOX // 2  # theta: x, y, ...
    ok = _in_box(offset) & (iterations < GAUSSMLE_MAX_IT)
    pos = offset + ids[["y", "x"]].to_numpy()
    return pos, ok, crlb[:, [1, 0]]


def run_gausslq(frames, guess, processes, workers):
    """``picasso.gausslq`` on chunks of spots in worker ``processes``."""
    from picasso import gausslq, localize

    ids = _identifications(guess)
    spots = localize.get_spots(frames, ids, BOX, CAMERA)
    # gausslq._fit_spots is fit_spots without its deprecation warning: what
    # Picasso's own fit_spots_parallel submits to its processes
    fit = partial(gausslq._fit_spots, spherical=True)
    theta = np.concatenate(list(processes.map(fit, _chunks(spots, workers))))
    offset = theta[:, [1, 0]].astype(float)  # box-centred x, y
    pos = offset + ids[["y", "x"]].to_numpy()
    return pos, _in_box(offset), None


def run_gaussfit(frames, guess, threads, workers):
    """``picasso.localize.fit_spots_gauss`` (MLE, spherical) on threads."""
    from picasso import localize

    ids = _identifications(guess)
    spots = localize.get_spots(frames, ids, BOX, CAMERA)
    fit = partial(localize.fit_spots_gauss, mle=True, spherical=True,
                  return_stats=True)
    parts = list(threads.map(fit, _chunks(spots, workers)))
    theta = np.concatenate([p[0] for p in parts])  # photons, x, y, sx, sy, bg
    iterations = np.concatenate([p[2] for p in parts])
    offset = theta[:, [2, 1]].astype(float) - BOX // 2
    ok = _in_box(offset) & (iterations < GAUSSFIT_MAX_IT)
    pos = offset + ids[["y", "x"]].to_numpy()
    return pos, ok, None


def _import_picasso():
    """Picasso's modules, or a skip that names what is missing."""
    try:
        from picasso import gausslq, gaussmle, localize  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"Picasso (picassosr==0.11.3) cannot be imported: {exc}; "
                    f"`pip install --no-deps -r {_REQUIREMENTS}` installs it "
                    "with the modules it imports (make does)")


def _process_pool(workers):
    """Worker processes for gausslq: forked (they inherit the compiled
    kernels), as Picasso's own fit_spots_parallel does, where fork exists."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods
                                          else None)
    return ProcessPoolExecutor(workers, mp_context=context)


def test_i1_peers(benchmark, i1, results):
    frames, truth, guess = i1
    n = len(guess)
    threads_rf = numba.get_num_threads()
    true_pos = truth[["y", "x"]].to_numpy()
    _import_picasso()

    for estimator in ("lsq", "poisson"):  # warm
        run_refinefit(frames, guess[guess["frame"] == 0].iloc[:20], estimator)
    benchmark.pedantic(run_refinefit, args=(frames, guess), rounds=ROUNDS,
                       iterations=1)
    benchmark.extra_info["spots"] = n
    workers = threads_rf
    methods = {"refinefit": lambda: run_refinefit(frames, guess),
               "refinefit poisson": lambda: run_refinefit(frames, guess,
                                                          "poisson")}
    with warnings.catch_warnings(), ThreadPoolExecutor(workers) as threads:
        # picasso.gaussmle and gausslq warn that they are deprecated, on
        # every call, in every thread
        warnings.simplefilter("ignore", DeprecationWarning)
        few = guess.iloc[:8]
        # compile Picasso's kernels here, before the process pool forks
        run_gaussmle(frames, few, threads, 1)
        run_gausslq(frames, few, threads, 1)
        run_gaussfit(frames, few, threads, 1)
        with _process_pool(workers) as processes:
            run_gausslq(frames, guess.iloc[:16 * workers], processes, workers)
            methods["picasso gaussmle"] = lambda: run_gaussmle(
                frames, guess, threads, workers)
            methods["picasso gausslq"] = lambda: run_gausslq(
                frames, guess, processes, workers)
            methods["picasso gaussfit MLE"] = lambda: run_gaussfit(
                frames, guess, threads, workers)
            best, out = _interleaved(methods, ROUNDS)

    ok_all = np.logical_and.reduce([ok for _, ok, _ in out.values()])
    rms = {name: float(np.sqrt(np.mean(np.sum(
        (pos[ok_all] - true_pos[ok_all]) ** 2, axis=1))))
        for name, (pos, _, _) in out.items()}
    rate = {name: n / seconds for name, seconds in best.items()}
    pixels = float(mask_pixels(guess).mean())
    crlb = out["picasso gaussmle"][2]

    results["I1 spots (frames x 150)"] = n
    results["I1 threads: refinefit (Numba) / Picasso workers"] = \
        f"{threads_rf} / {workers}"
    for name in methods:
        results[f"I1 {name} spots/s"] = round(rate[name])
    for name in methods:
        if not name.startswith("refinefit"):
            results[f"I1 ratio refinefit / {name}"] = round(
                rate["refinefit"] / rate[name], 2)
    results["I1 ratio refinefit poisson / picasso gaussmle"] = round(
        rate["refinefit poisson"] / rate["picasso gaussmle"], 2)
    for name in methods:
        results[f"I1 {name} rms position error (px)"] = round(rms[name], 4)
    for name in ("refinefit", "refinefit poisson"):
        results[f"I1 rms {name} / rms picasso gaussmle"] = round(
            rms[name] / rms["picasso gaussmle"], 3)
    results["I1 Cramer-Rao bound, rms position (px, gaussmle's CRLB)"] = \
        round(float(np.sqrt(np.mean(crlb[ok_all].sum(axis=1)))), 4)
    results["I1 spots in the rms (fitted by every method)"] = int(
        ok_all.sum())
    results["I1 failed fits: " + " / ".join(methods)] = " / ".join(
        str(int((~ok).sum())) for _, ok, _ in out.values())
    results["I1 refinefit pixels per fit (mask, mean)"] = round(pixels, 1)
    results["I1 refinefit pixel-fits/s per core"] = round(
        pixels * rate["refinefit"] / threads_rf)
    for name in ("picasso gaussmle", "picasso gaussfit MLE"):
        results[f"I1 {name} pixel-fits/s per core (121 px)"] = round(
            BOX * BOX * rate[name] / workers)
    benchmark.extra_info["spots_per_s"] = {k: round(v) for k, v in rate.items()}

    # accuracy, not speed: every method fits nearly every spot, near the bound
    for name, (_, ok, _) in out.items():
        assert ok.mean() > 0.98, name
    assert rms["refinefit"] < 0.15
    assert rms["refinefit poisson"] < 0.15


def _interleaved(methods, rounds):
    """Best time of each method over ``rounds``, the methods taking turns;
    and each method's last result."""
    best = {name: np.inf for name in methods}
    out = {}
    for _ in range(rounds):
        for name, run in methods.items():
            start = time.perf_counter()
            out[name] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, out
