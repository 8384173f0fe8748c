"""Kernel cost per pixel, to compare with what the core can do
(docs/performance.md, the roofline). Measured on one thread on W1 frames:

- the model and its derivatives alone, per entry: as the solver computes
  them (``feature_terms``, a feature's entries in one vectorised loop) and
  one entry at a time (``evaluate_model``, for callers outside the solver);
- the solver, per pixel and model evaluation (Jacobian, normal equations and
  step included);
- flattening the masks (counting, then filling pixel values, coordinates
  and entries into arrays already in memory), per pixel;
- the roofline: the arithmetic of one pixel-evaluation (counted below from
  the loops) at the rate one core sustains on the solver's own in-register
  sums, against the solver's measured cost.
"""
import time

import numba
import numpy as np
import pytest
from conftest import FULL

from refinefit.kernels import (
    count_mask_pixels,
    evaluate_model,
    fill_mask_pixels,
    solve_clusters,
)
from refinefit.kernels.jit import Specialized
from refinefit.kernels.sums import products
from refinefit.kernels.terms import feature_terms
from refinefit.solvers import backend, engine
from refinefit.synthetic import make_movie

FRAMES = 10 if FULL else 1
REPEATS = 5 if FULL else 1
SPAN = 3.0 if FULL else 0.0
# floating-point operations per entry of a 2D Gaussian with one size,
# counted from the loops: the model and its derivatives
# (terms.feature_terms: offsets and reduced radius 7, the exp 37, the term
# and its four derivatives 10) and the sums of J^T J and J^T r
# (sums.products with 4 derivatives: 4 products with the residual and 10
# between derivatives, a multiply and an add each, and 4 plain sums); per
# pixel, the model, residual and cost (4)
TERMS_FLOP = 54
SUMS_FLOP = 32
PIXEL_FLOP = TERMS_FLOP + SUMS_FLOP + 4


def _first_call(module, name):
    """The arguments of the first call to ``module.name`` while W1 frames
    are refined: ``(args, kwargs)``."""
    frames, _, guess = make_movie(FRAMES, seed=4)
    captured = {}
    original = getattr(module, name)

    def capture(*args, **kwargs):
        captured.setdefault("call", (args, kwargs))
        return original(*args, **kwargs)

    setattr(module, name, capture)
    try:
        import refinefit
        refinefit.refine_leastsq(guess, frames, 11)
    finally:
        setattr(module, name, original)
    return captured["call"]


@pytest.fixture(scope="module")
def masks_call():
    """The arguments of the engine's flatten_masks call on W1 frames."""
    return _first_call(engine, "flatten_masks")


@pytest.fixture(scope="module")
def batch():
    """A flattened W1 batch and the solver arguments that refine it."""
    return _first_call(backend, "solve_clusters")[0]


def _best(func):
    """The shortest of at least REPEATS runs, spread over at least SPAN
    seconds: a shared machine's slow spells last a second or more."""
    best = np.inf
    n = 0
    began = time.perf_counter()
    while n < REPEATS or time.perf_counter() - began < SPAN:
        start = time.process_time()
        func()
        best = min(best, time.process_time() - start)
        n += 1
    return best


@pytest.fixture
def one_thread():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def test_model_evaluation_ns_per_entry(batch, results, one_thread):
    (_, _, pix_coord, cluster_pix_off, entry_pix, feat_entry_off,
     cluster_feat_off, params, _, _, _, ndim, n_size, model_id, continuous,
     *_) = batch
    model = np.empty(len(pix_coord))
    excluded = np.empty(len(pix_coord), dtype=bool)
    deriv = np.empty((len(entry_pix), params.shape[1]))

    def run():
        evaluate_model(pix_coord, cluster_pix_off, entry_pix, feat_entry_off,
                       cluster_feat_off, params, ndim, n_size, model_id,
                       continuous, model, excluded, deriv)

    run()
    ns = _best(run) / len(entry_pix) * 1e9
    results["kernel: model + derivatives (ns per entry, 1 core)"] = round(ns, 1)
    assert np.isfinite(model).all()


@numba.njit(nogil=True)
def _all_feature_terms(entry_coord, feat_entry_off, params, ndim, n_size,
                       model_id, continuous, terms):
    numba.literally(ndim)  # as the solver calls it: see kernels/jit.py
    numba.literally(n_size)
    numba.literally(model_id)
    numba.literally(continuous)
    dextra = np.empty(1)
    for k in range(feat_entry_off.shape[0] - 1):
        feature_terms(entry_coord, feat_entry_off[k], feat_entry_off[k + 1],
                      params, k, ndim, n_size, model_id, continuous, terms,
                      dextra)


def test_feature_terms_ns_per_entry(batch, results, one_thread):
    (_, _, pix_coord, _, entry_pix, feat_entry_off, _, params, _, _, _, ndim,
     n_size, model_id, continuous, *_) = batch
    entry_coord = np.ascontiguousarray(pix_coord[entry_pix].T)
    terms = np.empty((params.shape[1], len(entry_pix)))
    run_all = Specialized(_all_feature_terms)

    def run():
        run_all(entry_coord, feat_entry_off, params, ndim, n_size, model_id,
                continuous, terms)

    run()
    ns = _best(run) / len(entry_pix) * 1e9
    results["kernel: feature terms, vectorised (ns per entry, 1 core)"] = \
        round(ns, 1)
    results["kernel: feature terms, arithmetic rate (GFLOP/s, 1 core)"] = \
        round(TERMS_FLOP / ns, 2)
    assert np.isfinite(terms).all()


@numba.njit(nogil=True)
def _repeat_products(rows, resid, out, repeats):
    for _ in range(repeats):
        products(rows, resid, 0, rows.shape[1], 4, out)


def test_roofline(results, one_thread):
    """The rate one core sustains on the solver's sums of J^T J and J^T r
    (one pass over a feature's derivatives, held in the first-level cache:
    multiplies and adds in vector registers, as much of the pixel's
    arithmetic is), and the pixel-evaluation's arithmetic at that rate."""
    rng = np.random.default_rng(0)
    n_entries = 80  # about a feature's mask
    rows = rng.normal(size=(5, n_entries))
    resid = rng.normal(size=n_entries)
    out = np.empty(18)
    repeats = 20_000 if FULL else 2_000
    _repeat_products(rows, resid, out, 1)
    ns = _best(lambda: _repeat_products(rows, resid, out, repeats)) \
        / (repeats * n_entries) * 1e9
    rate = SUMS_FLOP / ns
    results["kernel: J^T J and J^T r sums, in cache (ns per entry, 1 core)"] = \
        round(ns, 2)
    results["kernel: those sums' arithmetic rate (GFLOP/s, 1 core)"] = \
        round(rate, 2)
    results["kernel: arithmetic per pixel-evaluation, 2D Gaussian (flop)"] = \
        PIXEL_FLOP
    results["kernel: that arithmetic at that rate (ns per pixel-evaluation)"] \
        = round(PIXEL_FLOP / rate, 1)
    assert np.isfinite(out).all() and rate > 0


def test_solver_ns_per_pixel_evaluation(batch, results, one_thread):
    args = list(batch)
    # ..., status_out, n_eval_out, with_error, std_out
    status, n_eval = args[-4], args[-3]

    def run():
        solve_clusters(*args)

    run()
    seconds = _best(run)
    pixel_evals = float(np.sum(np.diff(args[3]) * n_eval))
    results["kernel: solver (ns per pixel-evaluation, 1 core)"] = round(
        seconds / pixel_evals * 1e9, 1)
    results["kernel: model evaluations per cluster (mean)"] = round(
        float(n_eval.mean()), 2)
    assert (status == 0).all()


def test_mask_flattening_ns_per_pixel(masks_call, results, one_thread):
    frames, cluster_image, cluster_feat_off, centres, radius = masks_call[0][:5]
    batch = engine.flatten_masks(frames, cluster_image, cluster_feat_off,
                                 centres, radius)
    frames = engine.concat_frames(frames) if isinstance(frames, list) else frames
    ndim = centres.shape[1]
    radius3 = np.array(((1.0,) if ndim == 2 else ()) + tuple(radius), float)
    ids = np.arange(len(cluster_feat_off) - 1, dtype=np.int64)
    cluster_image = np.ascontiguousarray(cluster_image, dtype=np.int64)
    n_pix = np.zeros(len(ids), dtype=np.int64)
    n_entries = np.zeros(len(centres), dtype=np.int64)
    pix_val = batch.pix_val.copy()
    pix_coord = batch.pix_coord.copy()
    entry_pix = batch.entry_pix.copy()

    def count():
        count_mask_pixels(frames.values, frames.offsets, frames.shapes3,
                          cluster_image, ndim, centres, cluster_feat_off, ids,
                          radius3, n_pix, n_entries)

    def fill():
        fill_mask_pixels(frames.values, frames.offsets, frames.shapes3,
                         cluster_image, ndim, centres, cluster_feat_off, ids,
                         radius3, batch.cluster_pix_off, batch.feat_entry_off,
                         pix_val, pix_coord, entry_pix)

    count()
    fill()
    seconds = _best(count) + _best(fill)
    results["kernel: mask flattening (ns per pixel, 1 core)"] = round(
        seconds / len(pix_val) * 1e9, 1)
    np.testing.assert_array_equal(entry_pix, batch.entry_pix)
    np.testing.assert_array_equal(n_pix, np.diff(batch.cluster_pix_off))
