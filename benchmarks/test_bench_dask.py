"""``refine_movie`` on a Dask cluster against one process, on W1.

Full mode: a 600-frame 512x512 uint8 TIFF of workload W1 (165,000
features). Interleaved in each round, best of 3: ``refine_movie`` in this
process (kernels loaded), then on a ``LocalCluster`` of 1 worker process
using every core, then of 2 worker processes sharing the cores (Numba
threads = cores / workers); each worker has 2 Dask threads. Worker
processes are started and warmed (a small job loads their kernels) before
the timing; their start-up is reported separately (every worker refines one
frame). Also: the 'global' size mode on the first 200 frames, in this
process and on 2 workers. Quick mode: a few small frames.
"""
import os
import time

import numba
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import FULL
from distributed import Client, LocalCluster

import refinefit
from refinefit.synthetic import make_movie


def _same(got, expected):
    """True when bit for bit equal; positions must be in any case."""
    pd.testing.assert_frame_equal(got[["y", "x"]], expected[["y", "x"]],
                                  check_exact=True)
    return got.equals(expected)

N_FRAMES = 600 if FULL else 4
N_GLOBAL_FRAMES = 200 if FULL else 4
SHAPE = (512, 512) if FULL else (128, 128)
GROUPS = dict(n_single=150, n_dimer=40, n_trimer=15) if FULL else dict(
    n_single=10, n_dimer=3, n_trimer=2)
BLOCK = 50
ROUNDS = 3 if FULL else 1


@pytest.fixture(scope="module")
def w1_movie(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w1_dask")
    guesses = []
    with tifffile.TiffWriter(folder / "movie.tif") as tif:
        for start in range(0, N_FRAMES, BLOCK):
            n = min(BLOCK, N_FRAMES - start)
            frames, _, guess = make_movie(n, shape=SHAPE, seed=start,
                                          **GROUPS)
            tif.write(frames, contiguous=True, photometric="minisblack")
            guess["frame"] += start
            guesses.append(guess)
    guess = pd.concat(guesses, ignore_index=True)
    return folder / "movie.tif", guess


def _cluster(n_workers):
    # two Dask threads per worker: one task reads its frames while another
    # refines (a worker runs one engine call at a time)
    return LocalCluster(n_workers=n_workers, threads_per_worker=2,
                        processes=True, dashboard_address=":0",
                        memory_limit=0, silence_logs=40)


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return time.perf_counter() - start, value


def test_workers_against_one_process(benchmark, w1_movie, results):
    path, guess = w1_movie
    cores = numba.config.NUMBA_NUM_THREADS
    shared = guess[guess["frame"] < N_GLOBAL_FRAMES]
    refinefit.refine_movie(path, guess[guess["frame"] == 0], diameter=11,
                           quiet=True)  # warm this process
    times = {"one process": [], "1 worker": [], "2 workers": [],
             "global one process": [], "global 2 workers": []}
    start_up = {}
    bitwise = []
    with _cluster(1) as one, Client(one) as client_1, \
            _cluster(2) as two, Client(two) as client_2:
        clients = {"1 worker": (client_1, cores),
                   "2 workers": (client_2, max(1, cores // 2))}
        for name, (client, threads) in clients.items():
            # every worker imports refinefit, loads its kernels and opens
            # the movie
            start_up[name] = _timed(
                client.run, refinefit.refine_movie, path,
                guess[guess["frame"] == 0], diameter=11, quiet=True)[0]
        expected = None
        for i in range(ROUNDS):  # interleaved: all see the same machine load
            seconds, expected = _timed(refinefit.refine_movie, path, guess,
                                       diameter=11, quiet=True)
            times["one process"].append(seconds)
            for name, (client, threads) in clients.items():
                run = (benchmark.pedantic if i == 0 and name == "1 worker"
                       else None)
                args = (refinefit.refine_movie, path, guess)
                kwargs = dict(diameter=11, quiet=True, client=client,
                              threads=threads)
                if run is not None:
                    seconds, got = run(_timed, args=args, kwargs=kwargs,
                                       rounds=1, iterations=1)
                else:
                    seconds, got = _timed(*args, **kwargs)
                times[name].append(seconds)
                bitwise.append(_same(got, expected))
            options = dict(diameter=11, quiet=True,
                           param_mode={"size": "global"})
            seconds, global_one = _timed(refinefit.refine_movie, path, shared,
                                         **options)
            times["global one process"].append(seconds)
            seconds, global_two = _timed(
                refinefit.refine_movie, path, shared, client=client_2,
                threads=max(1, cores // 2), **options)
            times["global 2 workers"].append(seconds)
            bitwise.append(_same(global_two, global_one))

    n = len(guess)
    rate = {name: (len(shared) if name.startswith("global") else n)
            / min(values) for name, values in times.items()}
    key = "Dask W1"
    results[f"{key} movie (frames, features, cores)"] = (
        f"{N_FRAMES}, {n}, {cores}")
    for name in ("one process", "1 worker", "2 workers"):
        results[f"{key} {name} features/s"] = round(rate[name])
    results[f"{key} 1 worker / one process"] = round(
        rate["1 worker"] / rate["one process"], 3)
    results[f"{key} speed-up 2 workers / 1 worker"] = round(
        rate["2 workers"] / rate["1 worker"], 3)
    for name, seconds in start_up.items():
        results[f"{key} warming {name} (s)"] = round(seconds, 2)
    results[f"{key} global size, {N_GLOBAL_FRAMES} frames, one process "
            "features/s"] = round(rate["global one process"])
    results[f"{key} global size, {N_GLOBAL_FRAMES} frames, 2 workers "
            "features/s"] = round(rate["global 2 workers"])
    results[f"{key} runs bit for bit equal to one process"] = (
        f"{sum(bitwise)} of {len(bitwise)}")
    benchmark.extra_info.update(
        features_per_s={name: rate[name] for name in times})
    assert expected["cost"].notna().mean() > 0.99
    assert np.ptp(global_one["size"]) == 0
    assert os.path.exists(path)
