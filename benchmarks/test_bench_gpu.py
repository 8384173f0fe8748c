"""The GPU backend (``device='cuda'``) against the CPU backend, same run.

The W1 solve from host arrays: one batch of flattened W1 clusters (as the
engine hands it to the solver backend) solved on the GPU, transfers to and
from the device included, and on the CPU backend on every core; features/s
of each and the ratio. Needs a real GPU (``make bench`` on a machine with
one); under Numba's CUDA simulator (``make test``) it runs on a few features
only, so that it cannot rot.
"""
import os
import time

import pytest
from conftest import FULL

import refinefit
from refinefit.solvers import engine
from refinefit.synthetic import make_movie

cuda = pytest.importorskip("numba.cuda")
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
pytestmark = pytest.mark.skipif(not cuda.is_available(),
                                reason="no GPU (nor the CUDA simulator)")
REAL = FULL and not SIMULATED
FRAMES = 100 if REAL else 1
ROUNDS = 5 if REAL else 1


def _w1_batch():
    """The arguments of the engine's first solve_batch call on W1 frames,
    all in one batch."""
    if REAL:
        frames, _, guess = make_movie(FRAMES, seed=1)
    else:
        frames, _, guess = make_movie(1, shape=(64, 64), n_single=3,
                                      n_dimer=1, n_trimer=0, seed=1)
    captured = {}
    original = engine.solve_batch

    def capture(*args):
        captured.setdefault("call", args)
        return original(*args)

    engine.solve_batch = capture
    try:
        with refinefit.config.override(chunking=dict(frames=FRAMES,
                                                     features=10 ** 9,
                                                     pixels=10 ** 12)):
            refinefit.refine_leastsq(guess, frames, 11, max_iter=1)
    finally:
        engine.solve_batch = original
    return captured["call"]


def _best(solve, args):
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        solve(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def test_w1_solve_on_the_gpu(results):
    from refinefit.solvers.backend import solve_batch

    batch, start, lower, upper, ids, settings = _w1_batch()
    on_gpu = (batch, start, lower, upper, ids,
              settings.replace(solver=dict(backend="cuda")))
    on_cpu = (batch, start, lower, upper, ids, settings)
    gpu = solve_batch(*on_gpu)  # compiles the kernel
    cpu = solve_batch(*on_cpu)
    assert (gpu.status == cpu.status).all()
    assert abs(gpu.params - cpu.params).max() < 1e-6
    n_features = len(start)
    gpu_rate = n_features / _best(solve_batch, on_gpu)
    cpu_rate = n_features / _best(solve_batch, on_cpu)
    if REAL:
        results["W1 solve on the GPU, transfers included, features/s"] = \
            round(gpu_rate)
        results["W1 solve on the CPU backend, every core, features/s"] = \
            round(cpu_rate)
        results["W1 solve, GPU / CPU backend"] = round(gpu_rate / cpu_rate,
                                                       2)
