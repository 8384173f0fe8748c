"""Kernel cost per pixel, to compare with the machine's arithmetic limit.

The issue puts the limit near 10-20 ns per pixel per model evaluation on one
core without SIMD exp. Measured single-threaded on W1 frames:
- the model and its derivatives alone (``evaluate_model``), per entry;
- the solver, per pixel and model evaluation (Jacobian, normal equations and
  step included).
"""
import time

import numba
import numpy as np
import pytest
from conftest import FULL

from refinefit.kernels import evaluate_model, solve_clusters
from refinefit.solvers import backend
from refinefit.synthetic import make_movie

FRAMES = 10 if FULL else 1
REPEATS = 5 if FULL else 1


@pytest.fixture(scope="module")
def batch():
    """A flattened W1 batch and the solver arguments that refine it."""
    frames, _, guess = make_movie(FRAMES, seed=4)
    captured = {}
    original = backend.solve_clusters

    def capture(*args):
        captured.setdefault("args", args)
        return original(*args)

    backend.solve_clusters = capture
    try:
        import refinefit
        refinefit.refine_leastsq(guess, frames, 11)
    finally:
        backend.solve_clusters = original
    return captured["args"]


def _best(func):
    best = np.inf
    for _ in range(REPEATS):
        start = time.process_time()
        func()
        best = min(best, time.process_time() - start)
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
