"""refine_movie on a Dask cluster: two worker processes on this machine."""
import os
import signal
import socket
import sys
import threading
import time

import dask
import numpy as np
import pandas as pd
import pytest
import tifffile
from distributed import Client, LocalCluster, get_task_stream
from same_refinement import assert_same_refinement

import refinefit
from refinefit import cli
from refinefit.pipeline import checkpoint
from refinefit.pipeline import chunk as chunk_module
from refinefit.pipeline import movie as movie_module
from refinefit.problem.camera import BelowOffsetWarning
from refinefit.synthetic import make_movie

DIAMETER = 11


def local_cluster(n_workers=2):
    return LocalCluster(n_workers=n_workers, threads_per_worker=1,
                        processes=True, dashboard_address=":0",
                        memory_limit=0, silence_logs=40)


@pytest.fixture(scope="module")
def client():
    with local_cluster() as cluster, Client(cluster) as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """A TIFF of 8 frames of 128x128 uint8 and its features, each with a
    particle id (its rank within its frame)."""
    frames, truth, guess = make_movie(8, shape=(128, 128), n_single=10,
                                      n_dimer=3, n_trimer=2, seed=21)
    folder = tmp_path_factory.mktemp("dask")
    path = folder / "movie.tif"
    tifffile.imwrite(path, frames)
    guess = guess.copy()
    guess["particle"] = guess.groupby("frame").cumcount()
    return path, frames, truth, guess


def run(*args, **kwargs):
    kwargs.setdefault("quiet", True)
    return refinefit.refine_movie(*args, **kwargs)


def assert_bitwise(got, expected):
    """Every column bit for bit (see same_refinement.py)."""
    assert_same_refinement(got, expected)


@pytest.mark.parametrize("options", [
    dict(chunk_frames=2),
    dict(chunk_frames=3, compute_error=True, param_mode={"size": "var"}),
    dict(param_mode={"signal": "frame"}, chunk_frames=2)])
def test_equal_to_one_process(client, movie, options):
    path, _, _, guess = movie
    expected = run(path, guess, diameter=DIAMETER, **options)
    got = run(path, guess, diameter=DIAMETER, client=client, **options)
    assert_bitwise(got, expected)


@pytest.fixture
def solver_chunks_of_2_frames():
    """The shared solver's chunks: 2 frames each (4 chunks of the movie).
    The client plans them, so the workers get them too."""
    with refinefit.config.override(chunking=dict(frames=2)):
        yield


@pytest.mark.parametrize("mode", ["global", "particle"])
def test_shared_size_equal_to_one_process(client, movie, mode,
                                          solver_chunks_of_2_frames):
    path, _, truth, guess = movie
    options = dict(diameter=DIAMETER, param_mode={"size": mode},
                   compute_error=True)
    expected = run(path, guess, **options)
    with get_task_stream(client) as tasks:
        got = run(path, guess, client=client, **options)
    assert_bitwise(got, expected)
    keys = [str(t["key"]) for t in tasks.data]
    assert sum(k.startswith("refinefit-_pass_chunk-000003") for k in keys) > 1
    assert not any(k.startswith("refinefit-_pass_chunk-000004")
                   for k in keys)
    # the errors: two passes (the shared values' meat, the locals) of 4 chunks
    assert sum(k.startswith("refinefit-_error_chunk") for k in keys) == 8
    if mode == "global":
        assert got["size"].nunique() == 1
        assert got["size"].iloc[0] == pytest.approx(truth["size"].iloc[0],
                                                    abs=0.1)


@pytest.mark.parametrize("options", [
    dict(chunk_frames=2, compute_error=True),
    dict(param_mode={"size": "global"}, compute_error=True)],
    ids=["chunks", "shared"])
def test_camera_counts_on_the_workers(client, movie, options,
                                      solver_chunks_of_2_frames):
    """Under the Poisson estimator the workers turn counts into photons
    (the shared solver's chunks too) and count the pixels below the
    offset: the one process's fit, and its one warning with its count."""
    path, _, _, guess = movie
    camera = dict(estimator="poisson", gain=2.0, offset=6.0)
    with pytest.warns(BelowOffsetWarning) as expected_warnings:
        expected = run(path, guess, diameter=DIAMETER, **camera, **options)
    with pytest.warns(BelowOffsetWarning) as got_warnings:
        got = run(path, guess, diameter=DIAMETER, client=client, **camera,
                  **options)
    assert_bitwise(got, expected)
    counts = [[w.message.n_pixels for w in caught
               if issubclass(w.category, BelowOffsetWarning)]
              for caught in (expected_warnings, got_warnings)]
    assert counts[0] == counts[1] and len(counts[0]) == 1
    assert counts[0][0] > 0


def test_a_channel_inverted_on_the_workers(client, movie, tmp_path):
    """channel and invert reach the workers, which open the movie
    themselves: the inverted green channel of this RGB movie is the grey
    movie, and so are the results."""
    path, frames, _, guess = movie
    rgb = np.stack([frames // 2, 255 - frames, frames], axis=-1)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    got = run(tmp_path / "rgb.tif", guess, diameter=DIAMETER, channel="g",
              invert=True, client=client)
    assert_bitwise(got, run(path, guess, diameter=DIAMETER))


def test_shared_size_runs_chunks_on_the_workers(client, movie, monkeypatch):
    """The client never reads a frame in a shared-mode run."""
    path, _, _, guess = movie
    from refinefit.io import movies as movie_io

    def no_reads(self, frames):
        raise AssertionError("the client read frames")

    with monkeypatch.context() as patch:
        for cls in (movie_io.MappedMovie, movie_io.TiffPagesMovie,
                    movie_io.ReaderMovie):
            patch.setattr(cls, "read", no_reads)
        got = run(path, guess, diameter=DIAMETER, client=client,
                  param_mode={"size": "global"})
    assert got["cost"].notna().all()


def test_resume_computes_only_missing_chunks(client, movie, tmp_path,
                                             monkeypatch, capsys):
    path, _, _, guess = movie
    out = tmp_path / "out.csv"
    expected = run(path, guess, diameter=DIAMETER, chunk_frames=1)
    real = movie_module.refine_leastsq
    calls = []

    def interrupt_third(table, *args, **kwargs):
        if len(table):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
        return real(table, *args, **kwargs)

    with monkeypatch.context() as patch:
        for module in (movie_module, chunk_module):  # check, chunks
            patch.setattr(module, "refine_leastsq", interrupt_third)
        with pytest.raises(KeyboardInterrupt):
            run(path, guess, out, diameter=DIAMETER, chunk_frames=1)
    assert len(list(checkpoint.parts_folder(out).glob("chunk-*"))) == 2
    with get_task_stream(client) as tasks:
        got = run(path, guess, out, diameter=DIAMETER, chunk_frames=1,
                  client=client, quiet=False)
    assert "2 of 8 chunks resumed" in capsys.readouterr().out
    chunk_tasks = [t["key"] for t in tasks.data
                   if str(t["key"]).startswith("refinefit-chunk-")]
    assert sorted(key[:22] for key in chunk_tasks) == [
        f"refinefit-chunk-{k:06d}" for k in range(2, 8)]
    assert_bitwise(got, expected)
    assert_bitwise(pd.read_csv(out), pd.read_csv(_written(expected,
                                                          tmp_path)))


def _written(table, folder):
    path = folder / "expected.csv"
    table.to_csv(path, index=False)
    return path


def _chunked_movie(tmp_path, n_frames, seed):
    """A TIFF of ``n_frames`` 256x256 frames (40 singles, 10 dimers and 4
    trimers each), its features, and the single-process result in chunks
    of one frame."""
    frames, _, guess = make_movie(n_frames, shape=(256, 256), n_single=40,
                                  n_dimer=10, n_trimer=4, seed=seed)
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, frames)
    return path, guess, run(path, guess, diameter=DIAMETER, chunk_frames=1)


def test_killed_worker_gives_complete_exact_output(tmp_path):
    path, guess, expected = _chunked_movie(tmp_path, 60, seed=5)
    out = tmp_path / "out.parquet"
    parts = checkpoint.parts_folder(out)
    with local_cluster() as cluster, Client(cluster) as dask_client:
        result = {}

        def refine():
            result["table"] = run(path, guess, out, diameter=DIAMETER,
                                  chunk_frames=1, client=dask_client)

        worker = threading.Thread(target=refine)
        worker.start()
        deadline = time.monotonic() + 120
        while not list(parts.glob("chunk-*")) and worker.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.002)
        killed = kill_a_busy_worker(dask_client, "refinefit-chunk-")
        committed = len(list(parts.glob("chunk-*")))
        finished = out.exists()
        worker.join(300)
    assert not worker.is_alive()
    assert killed  # a worker died while running a chunk's task
    assert 1 <= committed < 60 and not finished  # killed mid-run
    assert_bitwise(result["table"], expected)
    assert_bitwise(pd.read_parquet(out), expected)
    assert not parts.exists()


def kill_a_busy_worker(client, key_prefix, timeout=60):
    """SIGKILL a worker process while it runs a task whose key starts with
    ``key_prefix``; False if none was seen within ``timeout`` seconds."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for address, keys in client.processing().items():
            if address in pids and any(str(k).startswith(key_prefix)
                                       for k in keys):
                os.kill(pids[address], signal.SIGKILL)
                return True
        time.sleep(0.005)
    return False


def test_killed_worker_in_the_shared_solver(tmp_path, monkeypatch):
    frames, truth, guess = make_movie(24, shape=(256, 256), n_single=40,
                                      n_dimer=10, n_trimer=4, seed=6)
    path = tmp_path / "shared.tif"
    tifffile.imwrite(path, frames)
    options = dict(diameter=DIAMETER, param_mode={"size": "global"})
    with refinefit.config.override(chunking=dict(frames=1)):
        expected = run(path, guess, **options)
    with local_cluster() as cluster, Client(cluster) as dask_client, \
            refinefit.config.override(chunking=dict(frames=1)):
        result = {}

        def refine():
            result["table"] = run(path, guess, client=dask_client, **options)

        worker = threading.Thread(target=refine)
        worker.start()
        killed = kill_a_busy_worker(dask_client, "refinefit-_pass_chunk-")
        worker.join(300)
    assert killed and not worker.is_alive()
    assert_bitwise(result["table"], expected)
    assert result["table"]["size"].iloc[0] == pytest.approx(2.5, abs=0.1)


def test_unreachable_scheduler_is_a_bounded_clear_error(movie, tmp_path,
                                                        capsys):
    path, _, _, guess = movie
    features = tmp_path / "features.csv"
    guess.to_csv(features, index=False)
    out = tmp_path / "out.csv"
    with socket.socket() as sock:  # bound, not listening: refuses
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        started = time.monotonic()
        status = cli.main(["refine", str(path), str(features), "-o",
                           str(out), "--diameter", "11", "--scheduler",
                           address, "--scheduler-timeout", "3", "--quiet"])
        elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("refinefit: error: cannot reach the Dask "
                          f"scheduler at '{address}' within 3 s")
    assert len(err.splitlines()) == 1
    assert elapsed < 30
    assert not out.exists() and not checkpoint.parts_folder(out).exists()


def test_command_with_scheduler_equals_one_process(client, movie, tmp_path,
                                                   capsys):
    path, _, _, guess = movie
    features = tmp_path / "features.csv"
    guess.to_csv(features, index=False)
    args = ["refine", str(path), str(features), "--diameter", "11",
            "--chunk-frames", "2"]
    assert cli.main(args + ["-o", str(tmp_path / "one.csv")]) == 0
    assert cli.main(args + ["-o", str(tmp_path / "dask.csv"), "--scheduler",
                            client.scheduler.address]) == 0
    assert_bitwise(pd.read_csv(tmp_path / "dask.csv"),
                   pd.read_csv(tmp_path / "one.csv"))
    assert "features/s" in capsys.readouterr().out


def test_without_dask_the_error_names_the_extra(movie, tmp_path, capsys,
                                                monkeypatch):
    path, _, _, guess = movie
    features = tmp_path / "features.csv"
    guess.to_csv(features, index=False)
    monkeypatch.setitem(sys.modules, "distributed", None)
    status = cli.main(["refine", str(path), str(features), "-o",
                       str(tmp_path / "out.csv"), "--diameter", "11",
                       "--scheduler", "tcp://127.0.0.1:8786"])
    assert status == 2
    assert "pip install 'refinefit[dask]'" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_client_needs_a_movie_path(client, movie):
    _, frames, _, guess = movie
    with pytest.raises(ValueError, match="path"):
        run(frames, guess, diameter=DIAMETER, client=client)


def test_client_must_be_a_client(movie):
    path, _, _, guess = movie
    with pytest.raises(TypeError, match="client"):
        run(path, guess, diameter=DIAMETER, client="tcp://127.0.0.1:8786")


def test_worker_refuses_another_file_at_the_path(client, movie, tmp_path):
    path, frames, _, guess = movie
    copy = tmp_path / "movie.tif"
    tifffile.imwrite(copy, frames)
    from refinefit.io.movies import open_movie
    from refinefit.pipeline.dask import MovieSpec

    opened = open_movie(copy, frame_ndim=2)
    spec = MovieSpec.of(copy, 2, opened)
    opened.close()
    tifffile.imwrite(copy, frames[:, :, ::-1].copy())  # same size, new data
    os.utime(copy, ns=(0, 0))
    future = client.submit(MovieSpec.read, spec, [0], pure=False)
    with pytest.raises(ValueError, match="not the client's file"):
        future.result()


def _malloc_tuned():
    from refinefit.pipeline import memory as malloc_tuning
    return malloc_tuning._applied


def test_workers_keep_freed_memory_after_a_task(client, movie):
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536; a worker that
    # ran refinefit's work has raised it (refinefit/malloc_tuning.py)
    path, _, _, guess = movie
    with get_task_stream(client) as stream:
        run(path, guess, diameter=DIAMETER, client=client, chunk_frames=2)
    busy = {task["worker"] for task in stream.data
            if task["key"].startswith("refinefit-chunk")}
    assert busy
    tuned = client.run(_malloc_tuned, workers=sorted(busy))
    assert all(tuned.values()), tuned


def test_work_the_cluster_cannot_redo_is_a_cluster_error(tmp_path):
    # with no failures allowed, Dask gives up on a task whose worker died:
    # refine_movie raises ClusterError naming the chunk, writes nothing at
    # OUT, and the chunks it committed are resumed by the next run
    path, guess, expected = _chunked_movie(tmp_path, 40, seed=7)
    out = tmp_path / "out.parquet"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            local_cluster() as cluster, Client(cluster) as dask_client:
        result = {}

        def refine():
            try:
                run(path, guess, out, diameter=DIAMETER, chunk_frames=1,
                    client=dask_client)
            except Exception as exc:  # noqa: BLE001 (checked below)
                result["error"] = exc

        worker = threading.Thread(target=refine)
        worker.start()
        killed = kill_a_busy_worker(dask_client, "refinefit-chunk-")
        worker.join(300)
    assert killed and not worker.is_alive()
    error = result.get("error")
    assert isinstance(error, refinefit.ClusterError), error
    assert isinstance(error, OSError)
    assert "lost the task of chunk" in str(error)
    assert "KilledWorker" in str(error)
    assert not out.exists()
    got = run(path, guess, out, diameter=DIAMETER, chunk_frames=1)
    assert_bitwise(got, expected)


def test_threads_above_a_workers_limit_name_the_argument(movie):
    path, _, _, guess = movie
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                           dashboard_address=":0", memory_limit=0,
                           silence_logs=40, env={"NUMBA_NUM_THREADS": "1"})
    with cluster, Client(cluster) as dask_client:
        with pytest.raises(ValueError, match="threads: 2 is more than this "
                           "Dask worker's Numba limit of 1"):
            run(path, guess, diameter=DIAMETER, threads=2,
                client=dask_client)
