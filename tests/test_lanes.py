"""Chunks refined side by side (refinefit.pipeline.lanes) and frames concatenated
without a copy where they lie back to back."""
import threading

import numba
import numpy as np
import pytest
from same_refinement import assert_same_refinement

import refinefit
from refinefit.pipeline import chunk as chunk_module
from refinefit.pipeline import lanes as lanes_module
from refinefit.pipeline import movie as movie_module
from refinefit.solvers.engine import concat_frames
from refinefit.synthetic import make_movie

DIAMETER = 11
two_threads = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2,
                                 reason="needs two Numba threads")


@pytest.fixture(scope="module")
def small():
    frames, _, guess = make_movie(8, shape=(96, 96), n_single=8, n_dimer=2,
                                  n_trimer=1, seed=3)
    return frames, guess


def test_lane_count_defaults_and_checks():
    count = lanes_module.lane_count
    assert count(None, 2, {}) == 2
    assert count(None, 8, {"fit_function": "disc"}) == 2
    assert count(None, 1, {}) == 1
    # user callables and scipy's solvers stay in one lane
    assert count(None, 2, {"fit_function": {"params": []}}) == 1
    assert count(None, 2, {"constraints": [{"type": "eq"}]}) == 1
    assert count(None, 2, {"method": "SLSQP"}) == 1
    assert count(1, 2, {"method": "SLSQP"}) == 1
    assert count(3, 4, {}) == 3
    for bad in (0, 3, 1.5, True, "2"):
        with pytest.raises(ValueError, match="lanes"):
            count(bad, 2, {})
    with pytest.raises(ValueError, match="lanes > 1 needs a built-in"):
        count(2, 2, {"constraints": [{"type": "eq"}]})


def _spy_on_chunks(monkeypatch, meet=0):
    """Record, per chunk refined, its thread and Numba thread count.

    With ``meet``, the first ``meet`` chunks refined off the calling thread
    wait for each other: lanes are then busy at once whatever the speed of
    a chunk (a lane that is idle would otherwise take the next chunk, and
    the executor would start no other)."""
    seen = []
    real = movie_module.refine_leastsq
    caller = threading.current_thread()
    barrier = threading.Barrier(meet) if meet else None
    met = []

    def refine(table, *args, **kwargs):
        if len(table):
            seen.append((threading.current_thread().name,
                         numba.get_num_threads()))
            if barrier is not None and threading.current_thread() is not caller:
                met.append(1)
                if len(met) <= meet:
                    barrier.wait(timeout=60)
        return real(table, *args, **kwargs)

    for module in (movie_module, chunk_module):  # check, chunks
        monkeypatch.setattr(module, "refine_leastsq", refine)
    return seen


@two_threads
@pytest.mark.parametrize("n_lanes", [1, 2, None])
def test_lanes_give_the_same_table(small, monkeypatch, n_lanes):
    frames, guess = small
    expected = refinefit.refine_leastsq(guess, frames, DIAMETER,
                                        compute_error=True)
    seen = _spy_on_chunks(monkeypatch, meet=0 if n_lanes == 1 else 2)
    got = refinefit.refine_movie(frames, guess, diameter=DIAMETER,
                                 chunk_frames=1, threads=2, lanes=n_lanes,
                                 quiet=True, compute_error=True)
    assert_same_refinement(got, expected)
    assert len(seen) == len(frames)
    if n_lanes == 1:
        assert {name for name, _ in seen} == {threading.current_thread().name}
        assert {threads for _, threads in seen} == {2}
    else:  # the first chunk here with both threads, then two lanes of one
        assert seen[0] == (threading.current_thread().name, 2)
        lane_names = {name for name, _ in seen[1:]}
        assert len(lane_names) == 2
        assert all(name.startswith("refinefit-lane") for name in lane_names)
        assert {threads for _, threads in seen[1:]} == {1}
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS


@two_threads
def test_lanes_resume_after_interrupt(small, tmp_path, monkeypatch):
    frames, guess = small
    np.save(tmp_path / "movie.npy", frames)
    out = tmp_path / "out.csv"
    real = movie_module.refine_leastsq
    calls = []

    def refine(table, *args, **kwargs):
        if len(table):
            calls.append(1)
            if len(calls) == 4:  # the third chunk in a lane
                raise KeyboardInterrupt
        return real(table, *args, **kwargs)

    with monkeypatch.context() as patch:
        for module in (movie_module, chunk_module):  # check, chunks
            patch.setattr(module, "refine_leastsq", refine)
        with pytest.raises(KeyboardInterrupt):
            refinefit.refine_movie(tmp_path / "movie.npy", guess, out,
                                   diameter=DIAMETER, chunk_frames=1,
                                   lanes=2, quiet=True)
    parts = sorted(p.name for p in (tmp_path / "out.csv.parts").glob(
        "chunk-*"))
    assert parts == [f"chunk-00000{k}.npz" for k in range(3)]
    assert not out.exists()
    got = refinefit.refine_movie(tmp_path / "movie.npy", guess, out,
                                 diameter=DIAMETER, chunk_frames=1, lanes=2,
                                 quiet=True)
    assert_same_refinement(got, refinefit.refine_leastsq(guess, frames,
                                                         DIAMETER))


@two_threads
def test_chunks_refined_before_a_failed_read_are_committed(small, tmp_path):
    frames, guess = small

    class FailingReader:  # frame 6 cannot be read
        frame_shape = frames.shape[1:]

        def __len__(self):
            return len(frames)

        def __getitem__(self, i):
            if i == 6:
                raise OSError("disk error at frame 6")
            return frames[i]

    out = tmp_path / "out.parquet"
    for n_lanes in (1, 2):
        with pytest.raises(OSError, match="disk error at frame 6"):
            refinefit.refine_movie(FailingReader(), guess, out,
                                   diameter=DIAMETER, chunk_frames=1,
                                   threads=2, lanes=n_lanes, quiet=True,
                                   return_table=False)
        parts = sorted(p.name for p in (tmp_path / "out.parquet.parts").glob(
            "chunk-*"))
        assert parts == [f"chunk-00000{k}.npz" for k in range(6)], n_lanes


def test_refine_in_lanes_keeps_order_and_stops_on_error():
    def refine(k, item, scratch):
        if item == "bad":
            raise RuntimeError(f"chunk {k} failed")
        return item * 2

    reads = [(k, k) for k in range(7)]
    assert list(lanes_module.refine_in_lanes(refine, reads, 2)) == [
        (k, 2 * k) for k in range(7)]
    assert list(lanes_module.refine_in_lanes(refine, [], 2)) == []
    started = []

    def counted(k, item, scratch):
        started.append(k)
        return refine(k, item, scratch)

    reads = iter([(0, 0), (1, 1), (2, "bad")] + [(k, k) for k in range(3, 50)])
    results = lanes_module.refine_in_lanes(counted, reads, 2)
    with pytest.raises(RuntimeError, match="chunk 2 failed"):
        list(results)
    # no more than a few chunks read past the failed one, none started
    # after it was found
    next_unread = next(reads)[0]
    assert next_unread < 10
    assert max(started) < next_unread


@pytest.mark.parametrize("lanes", [1, 2])
def test_lanes_run_in_their_own_threads_in_order(lanes):
    threads = []

    def refine(k, item, scratch):
        threads.append(threading.current_thread().name)
        return item

    assert [k for k, _ in lanes_module.refine_in_lanes(
        refine, [(k, k) for k in range(5)], lanes)] == list(range(5))
    # the first chunk on the calling thread, the others in the lanes
    caller = threading.current_thread().name
    assert threads[0] == caller
    if lanes == 1:
        assert set(threads) == {caller}
    else:
        assert all(name.startswith("refinefit-lane") for name in threads[1:])


def test_consecutive_frames_are_viewed_not_copied(tmp_path):
    movie = np.arange(5 * 6 * 7, dtype=np.uint16).reshape(5, 6, 7)
    np.save(tmp_path / "movie.npy", movie)
    mapped = np.load(tmp_path / "movie.npy", mmap_mode="r")
    cases = {"consecutive": ([movie[1], movie[2], movie[3]], True),
             "mapped": ([mapped[0], mapped[1]], True),
             "gap": ([movie[0], movie[2]], False),
             "reversed": ([movie[2], movie[1]], False),
             "two arrays": ([movie[0], movie.copy()[1]], False),
             "strided": ([movie[0, :, ::2], movie[1, :, ::2]], False),
             "dtypes": ([movie[0], movie[1].view(np.int16)], False),
             "big-endian": (list(movie.astype(">u2")[:2]), False)}
    for name, (images, shared) in cases.items():
        frames = concat_frames(images)
        expected = np.concatenate([image.ravel() for image in images])
        np.testing.assert_array_equal(frames.values, expected, err_msg=name)
        # uint16 with int16: int32 holds both, float64 is the compiled
        # type that does
        dtype = np.dtype(np.float64) if name == "dtypes" else expected.dtype
        assert frames.values.dtype == dtype.newbyteorder("="), name
        assert np.shares_memory(frames.values, images[0]) == shared, name
        assert frames.values.flags.writeable == images[0].flags.writeable
        np.testing.assert_array_equal(frames.offsets, np.cumsum(
            [0] + [image.size for image in images]))
