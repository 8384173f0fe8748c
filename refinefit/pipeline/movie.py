"""``refine_movie``: refine a long movie chunk by chunk, resumably.

A thin streaming driver over :func:`refinefit.refine_leastsq`. Frames are
read a chunk of whole frames at a time (the next chunk in a background
thread while the Numba engine, which releases the GIL, works on this one),
each chunk's features are refined by one ``refine_leastsq`` call, two
chunks at once where the run allows it (see :mod:`refinefit.pipeline.lanes`), and,
when an output file is given, each chunk's result is committed beside it
(see :mod:`refinefit.pipeline.checkpoint`) before the output is written atomically.
"""
import hashlib
import numbers
import sys
import time
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numba
import numpy as np
import pandas as pd

from .. import config
from ..io.chunks import plan_frames
from ..io.frames import (
    check_frame_column,
    check_within,
    frame_numbers,
    frames_outside,
)
from ..io.movies import FrameSelection, open_movie
from ..io.tables import (
    TableStream,
    check_not_an_input,
    check_output_path,
    check_return_table,
    has_index_column,
    open_streamed_features,
    read_features,
    remove_stale_temporaries,
    streamable,
    write_table_atomically,
    writes_index,
)
from ..kernels.codes import MODE_FRAME, MODE_GLOBAL, MODE_PARTICLE
from ..problem.camera import BelowOffsetWarning
from ..refine import refine_features, refine_leastsq
from ..status import count_status, degenerate_hint, describe_status
from .checkpoint import (
    OrderedOutput,
    PartStore,
    as_stored,
    assemble,
    fingerprint,
    read_manifest,
    table_identity,
)
from .chunk import FrameWindow, numba_threads, refine_read_chunk
from .dask import DaskExecutor, MovieSpec, check_client, refine_movie_chunks
from .lanes import lane_count, refine_in_lanes

# default chunk limits for 2 Numba threads, times threads // 2 above that
# (on 16 cores, chunks of 10,000 features ran at 0.53 of one call, chunks
# of 256 frames at 0.87): frame data (held twice while the next chunk is
# read ahead), features (the engine's working memory is about 10 kB a
# feature) and frames
# parameter modes whose values are shared across frames
_COUPLING_MODES = ("global", "particle", MODE_GLOBAL, MODE_PARTICLE)


@dataclass
class RunSummary:
    """Counts and timings of one :func:`refine_movie` run."""

    features: int
    status_counts: np.ndarray   # features per status code (count_status)
    frames: int
    seconds: float
    refined_now: int
    chunks: int
    resumed_chunks: int

    def line(self):
        """The one-line summary the command prints."""
        rate = self.refined_now / self.seconds if self.seconds > 0 else 0.0
        text = (f"refinefit: {self.features:,} features in {self.frames:,} "
                f"frames: {describe_status(self.status_counts)}; "
                f"{self.seconds:.2f} s, {rate:,.0f} features/s")
        if self.resumed_chunks:
            text += (f" ({self.resumed_chunks} of {self.chunks} chunks "
                     "resumed from an earlier run)")
        return text


def refine_movie(movie, features, out=None, *, diameter, separation=None,
                 channel=None, grey=False, invert=False,
                 chunk_frames=None, threads=None, progress=None, quiet=False,
                 prefetch=True, lanes=None, client=None, return_table=True,
                 **options):
    """Refine every feature of a movie, streaming it chunk by chunk.

    Gives the table ``refine_leastsq(features, movie, diameter, ...)``
    gives for the whole movie while holding only a chunk of frames in
    memory. With ``out``, each chunk's result is committed beside ``out``
    so that an interrupted run (even by SIGKILL) continues where it stopped
    when called again with the same arguments, and ``out`` appears only when
    complete.

    Parameters
    ----------
    movie : str, Path, ndarray or reader
        A TIFF stack (memory-mapped where the file allows, else decoded page
        by page), a ``.npy`` file (memory-mapped), any other file
        ``pims.open`` reads, or an open movie: an ndarray with frames on axis
        0 or an object with ``frame_shape``, ``len()`` and indexing.
    features : DataFrame, str or Path
        The features, or a CSV, Parquet or HDF5 file of them as pandas or
        trackpy write them: a frame column (``t_column``), positions and
        optional parameter columns.
    out : str or Path, optional
        Output file, CSV (``.csv``, optionally ``.gz``/``.bz2``/``.xz``/
        ``.zst``) or Parquet (``.parquet``, ``.pq``) by extension. Chunk
        results go to ``OUT.parts/`` until the run completes.
    diameter, separation
        As in :func:`refinefit.refine_leastsq`.
    channel : int or {'r', 'g', 'b'}, optional
        For colour frames (a last axis of 3 or 4 samples: RGB, RGBA): the
        channel to refine. A colour movie needs ``channel`` or ``grey``.
    grey : bool
        For colour frames: refine the luminance, ``0.2125 R + 0.7154 G +
        0.0721 B`` (as ``pims.as_grey``), in float64.
    invert : bool
        Dark features on a bright background: refine the inverted frames,
        inverted as ``trackpy.locate(..., invert=True)`` does: integer
        frames XOR their dtype's maximum (for unsigned types, the maximum
        minus the value), float frames 1 minus the value (frames scaled
        0..1; other float frames give a negative background, which the
        default bounds refuse); the luminance of integer frames, their
        dtype's maximum minus it. The refined ``background`` and ``signal``
        then refer to the inverted image.
    chunk_frames : int, optional
        Frames per chunk. Default: as many frames as fit in 16 MiB and hold
        at most 10,000 features (at least one frame, at most 64), per two
        Numba threads of the run.
    threads : int, optional
        Numba threads for this run (restored afterwards), on every Dask
        worker too. Default: Numba's current setting (on a worker: its
        cores).
    progress : bool, optional
        Show a progress bar on stderr. Default: when stderr is a terminal.
    quiet : bool
        No progress bar and no summary line.
    prefetch : bool
        Read the next chunk's frames in a background thread. Default True.
    lanes : int, optional
        Chunks refined at once in this process, each on its share of the
        run's Numba threads (see :mod:`refinefit.pipeline.lanes`); results do not
        depend on it. Default: 2 where the run has two threads or more and
        uses a built-in fit function without constraints or ``method``,
        else 1. Not used with a ``client``.
    client : dask.distributed.Client, optional
        Run the chunks as tasks on this Dask cluster (needs
        ``pip install 'refinefit[dask]'``). ``movie`` must then be a file
        path that every worker can open: workers read their own frames.
        The result is the same as without a client (the same engine calls
        on the same chunks: bit for bit in the benchmarks; see the Notes on
        ``cost``), and runs resume from each other's chunk files.
    return_table : bool
        Return the refined table (default). False, with ``out``: return
        None, and write ``out`` chunk by chunk as the chunks are refined
        (in a background thread) instead of putting the whole table
        together in memory; see the Notes. The ``refinefit`` command does
        this.
    **options
        Every other :func:`refinefit.refine_leastsq` option (fit_function,
        param_mode, param_val, bounds, constraints, compute_error,
        pos_columns, t_column, max_iter, ..., tol, options, method).

    Returns
    -------
    DataFrame or None
        The refined table: rows in the order of ``features``, its columns
        plus the refined ones, as ``refine_leastsq`` returns them. None
        when ``return_table`` is False.

    Raises
    ------
    refinefit.ClusterError
        With a ``client``: work the cluster lost and could not redo (a task
        whose workers died more often than the scheduler's
        ``allowed-failures``, or a cancelled task). Chunks committed beside
        ``out`` are kept: calling again resumes.

    Notes
    -----
    Chunks hold whole frames, and ``refine_leastsq`` clusters features
    within a frame, so chunking does not change the fits; cluster labels
    are renumbered to those of a single call. (The engine's ``cost`` can
    differ in the last bit between any two identical calls; every other
    column is equal bit for bit in the tests.)

    Memory: the frames of two chunks (the one being refined and the one
    read ahead), the engine's work on one chunk (about 10 kB a feature),
    the features table and, at the end, the refined table. With
    ``return_table=False`` and ``out``, no refined table: its rows go to
    ``out`` chunk by chunk, so memory beyond the features table does not
    grow with the movie. That needs the features in frame order (as
    ``trackpy.batch`` writes them), Parquet or CSV output (uncompressed,
    gzip, bz2 or xz) and no 'global' or 'particle' mode; otherwise the
    table is put together in memory and written at the end, as with
    ``return_table=True``. Then a Parquet features file, or a CSV one of
    64 MiB or more, is not read whole either but a chunk's rows at a time,
    when its ranges of rows read as the whole file would: the default
    index, numeric or bool columns, no nulls in integer columns (see
    :class:`refinefit.io.tables.ParquetFeatures` and
    :class:`refinefit.io.tables.CsvFeatures`). Its frame numbers are then
    read a batch at a time too: the plan holds a count per frame of the
    movie, and a range of rows per chunk.

    A run resumes from the chunk files when the movie (path, size,
    modification time, shape, dtype), the features (file path, size and
    modification time, or a hash of an in-memory table), the options and
    the chunk boundaries are unchanged; otherwise it discards them and starts
    afresh. A movie given as a reader without a file name cannot be
    identified, so such runs always start afresh.

    The 'frame' mode is refined chunk by chunk too; its solver stops on a
    test over all the frames solved together, so results agree with one
    call to within the solver's tolerance rather than bit for bit.

    Parameter modes 'global' and 'particle' share values across frames: the
    features are then refined by one ``refine_leastsq`` call over the whole
    movie (which reads the frames itself, chunk by chunk), with no chunk
    files and no resuming; ``out`` is still written atomically.

    Only one run at a time may write a given ``out``.

    With a ``client``, each chunk is one task; a task whose worker dies is
    run again elsewhere by Dask. In the 'global' and 'particle' modes every
    pass of the shared-parameter solver is one task per chunk of frames
    that returns the chunk's reduced normal equations; the client sums them
    in chunk order and solves for the shared values, as one process does.
    Runs that the engines cannot split (shared values together with
    constraints, a named ``method`` or a custom fit function) are solved on
    the client.

    See Also
    --------
    refinefit.refine_leastsq

    Examples
    --------
    >>> refinefit.refine_movie("movie.tif", "features.csv", "refined.parquet",
    ...                        diameter=11)
    """
    started = time.perf_counter()
    fit_options = dict(options, diameter=diameter, separation=separation)
    check_return_table(return_table, out, "the refined table")
    if client is not None:
        _check_remote(client, movie)
    if out is not None:
        check_not_an_input(out, {"movie": movie, "features file": features})
    kind = check_output_path(out) if out is not None else None
    _check_threads(threads)
    n_lanes = lane_count(lanes, threads, fit_options)
    t_column = options.get("t_column", "frame")
    # rows written to out chunk by chunk, and a features file read so
    streams = not return_table and streamable(out, kind)
    features_in = None  # a features file read chunk by chunk
    frames_movie = None
    store = None
    try:
        table, features_in = _open_features(
            features, streams and client is None
            and not _couples_frames(options.get("param_mode")))
        table_id = None if isinstance(features, pd.DataFrame) else \
            table_identity(table, path=features)
        # an index stored in the features file is written out again, so
        # that the output reads back as the input was read
        keep_index = writes_index(table) or (
            not isinstance(features, pd.DataFrame)
            and has_index_column(features))
        pos_columns = options.get("pos_columns") or (
            ["z", "y", "x"] if "z" in table else ["y", "x"])
        frames_movie = open_movie(movie, frame_ndim=len(pos_columns),
                                  channel=channel, grey=grey, invert=invert)
        table, features_in, index = _index_features(
            table, features_in, features, t_column, frames_movie, movie)
        window = FrameWindow(frames_movie)
        # options and columns are checked before anything is written
        empty = refine_leastsq(table.iloc[:0], window, **fit_options)
        n_features = index.n_features
        _warn_if_diameter_misfits(_sizes(table, features_in), diameter, pos_columns)
        spec = None if client is None else MovieSpec.of(
            movie, len(pos_columns), frames_movie,
            FrameSelection(channel, grey, invert))
        limits = _chunk_limits(chunk_frames, frames_movie, _chunk_scale(
            threads, client, options.get("param_mode")))
        show = (not quiet and (sys.stderr.isatty() if progress is None
                               else bool(progress)))
        with numba_threads(threads), _one_below_offset_warning():
            if n_features == 0:
                refined, counts = empty, (0, 0, 0, count_status([]))
            elif _couples_frames(options.get("param_mode")):
                executor = None if client is None else DaskExecutor(
                    client, spec, threads)
                refined = refine_features(table, window, executor=executor,
                                          **fit_options)
                counts = (len(table), 1, 0, count_status(refined["status"]))
            else:
                def identity(chunks):
                    return fingerprint(
                        frames_movie.identity(),
                        table_id or table_identity(table),
                        dict(fit_options, refinefit=_version(),
                             chunks=_plan_digest(chunks)))

                chunks, limits = _plan(index, limits, out,
                                       chunk_frames is None, identity)
                if out is not None:
                    store = PartStore(out, identity(chunks), len(chunks),
                                      limits=limits if chunk_frames is None
                                      else None)
                if client is None:
                    results = partial(_refine_here, frames_movie, prefetch,
                                      n_lanes,
                                      features_in=features_in)
                else:
                    results = partial(refine_movie_chunks, client, spec,
                                      threads=threads)
                stream = None
                if store is not None and streams and index.order is None:
                    stream = TableStream(out, kind, keep_index)
                if features_in is not None:
                    # every column is in the chunk results (NumPy types):
                    # the output needs only the index, 0..n-1
                    table = pd.DataFrame(index=pd.RangeIndex(n_features))
                refined, counts = _refine_chunks(
                    results, table, chunks, fit_options, store, show, quiet,
                    stream)
        if out is not None and refined is not None:
            write_table_atomically(refined, out, kind,
                                   keep_index or writes_index(refined))
        if store is not None:
            store.remove()
    finally:
        if store is not None:
            store.close()  # keeps the chunk files of an unfinished run
        if frames_movie is not None and frames_movie is not movie:
            frames_movie.close()
        if features_in is not None:
            features_in.close()
    refined_now, n_chunks, resumed, status_counts = counts
    if not quiet:
        summary = RunSummary(
            features=n_features, status_counts=status_counts,
            frames=len(index.present),
            seconds=time.perf_counter() - started, refined_now=refined_now,
            chunks=n_chunks, resumed_chunks=resumed)
        report(summary.line())
    hint = degenerate_hint(status_counts, inverted=bool(invert))
    if hint is not None:
        warnings.warn(hint, RuntimeWarning, stacklevel=2)
    return refined if return_table else None


@contextmanager
def _one_below_offset_warning():
    """One warning for the run of the pixels below the camera offset that
    each chunk's refinement counts (the others as they came)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            below = [w for w in caught
                     if issubclass(w.category, BelowOffsetWarning)]
            others = [w for w in caught if w not in below]
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    n_pixels = sum(w.message.n_pixels for w in below)
    if n_pixels:
        warnings.warn(BelowOffsetWarning.of(n_pixels), stacklevel=4)


def _open_features(features, may_stream):
    """The features table and, when ``may_stream`` and the file allows, a
    :class:`refinefit.io.tables.StreamedFeatures` to read it from (the
    table then has no rows)."""
    if isinstance(features, pd.DataFrame):
        return features, None
    features_in = open_streamed_features(features) if may_stream else None
    if features_in is None:
        return read_features(features), None
    return features_in.head, features_in


def _index_features(table, features_in, features, t_column, frames_movie,
                    movie):
    """``(table, features_in, index)``: the :class:`FrameIndex` of the
    features, checked against the movie; features read from
    ``features_in`` out of frame order are read whole instead (the table
    then replaces it)."""
    n_frames = len(frames_movie)
    if features_in is not None:
        index = _streamed_frame_index(features_in, t_column, n_frames, movie)
        if index is not None:
            return table, features_in, index
        features_in.close()  # not in frame order: read them whole
        table = read_features(features)
    return table, None, FrameIndex.of(_frame_numbers(
        table, t_column, n_frames, movie))


@dataclass(frozen=True)
class FrameIndex:
    """Which frames hold features (ascending), how many each, and the rows
    in frame order (stable), or None when the rows are in frame order."""

    present: np.ndarray
    counts: np.ndarray
    order: np.ndarray = None

    @classmethod
    def of(cls, frame_numbers):
        """The index of the features' frame numbers."""
        order = None
        if np.any(frame_numbers[1:] < frame_numbers[:-1]):
            order = np.argsort(frame_numbers, kind="stable")
            frame_numbers = frame_numbers[order]
        present, counts = np.unique(frame_numbers, return_counts=True)
        return cls(present, counts, order)

    @property
    def n_features(self):
        return int(self.counts.sum())


def _plan_chunks(index, max_frames, max_features):
    """Consecutive frames that hold features (a :class:`FrameIndex`),
    grouped into chunks of at most ``max_frames`` frames and
    ``max_features`` features (at least one frame each): per chunk its
    frame numbers and the rows of its features, in input order (a range
    when the rows are in frame order)."""
    present, per_frame = index.present, index.counts
    first_row = np.zeros(len(per_frame) + 1, dtype=np.int64)
    np.cumsum(per_frame, out=first_row[1:])
    chunks = []
    for lo, hi in plan_frames(per_frame, max_frames, max_features):
        start, stop = int(first_row[lo]), int(first_row[hi])
        rows = range(start, stop) if index.order is None else \
            np.sort(index.order[start:stop])
        chunks.append((present[lo:hi], rows))
    return chunks


def _plan(index, limits, out, default_limits, identity):
    """Chunks of :func:`_plan_chunks` and the limits they used. With the
    default limits, which grow with the threads, an unfinished run's chunks
    beside ``out`` are planned with that run's limits when all else is the
    same, so that it resumes with another thread count too."""
    chunks = _plan_chunks(index, *limits)
    earlier = read_manifest(out) if out is not None and default_limits \
        else None
    before = earlier.get("limits") if isinstance(earlier, dict) else None
    if before and list(before) != list(limits):
        their_chunks = _plan_chunks(index, *before)
        if as_stored(identity(their_chunks)) == earlier.get("fingerprint"):
            return their_chunks, tuple(before)
    return chunks, limits


def _plan_digest(chunks):
    """Hash of the chunk boundaries: chunk files of another plan are not
    reused."""
    firsts = np.array([frames[0] for frames, _ in chunks], dtype=np.int64)
    return hashlib.blake2b(firsts.tobytes(), digest_size=16).hexdigest()


def _refine_chunks(results, table, chunks, fit_options, store, show, quiet,
                   stream=None):
    """Refine the chunks not yet in ``store`` (all of them without one);
    returns the table and (features refined now, chunks, chunks resumed,
    features per status code).

    ``results(table, chunks, todo, fit_options)`` yields ``(k, packed)``
    for every chunk ``k`` in ``todo``, in any order: :func:`_refine_here`,
    or :func:`refinefit.pipeline.dask.refine_movie_chunks` on a cluster.

    With a ``stream`` (a :class:`refinefit.io.tables.TableStream` for the
    output, which needs ``store``), the chunks' rows are written to it in
    chunk order instead, and the table returned is None. Should the stream
    refuse a chunk, the table is put together from the chunk files, as
    without a stream.
    """
    done = set()
    if store is not None:
        done = store.open()
        remove_stale_temporaries(store.out)
        if not quiet and store.discarded:
            report(f"refinefit: {store.folder.name} held chunks of a run "
                    "with another movie, features or options; starting afresh")
    todo = [k for k in range(len(chunks)) if k not in done]
    output = None if stream is None else OrderedOutput(
        stream, table, len(chunks), store, done)
    packs = {}
    refined_now = 0
    bar = _progress_bar(show, sum(len(frames) for frames, _ in chunks),
                        sum(len(chunks[k][0]) for k in done))
    started = time.perf_counter()
    # chunk files (and the output's rows) are written in a background
    # thread while the next chunk is refined; closing: a failed commit
    # cancels the tasks still running at once
    writer = ThreadPoolExecutor(max_workers=1,
                                thread_name_prefix="refinefit-commit")
    writes = deque()
    try:
        with closing(results(table, chunks, todo, fit_options)) as done_now:
            for k, packed in done_now:
                writes.append(writer.submit(_keep, k, packed, store, output))
                # a failed commit raises here; a writer that falls behind
                # (a slow disk, xz) holds at most two chunks
                while writes and (writes[0].done() or len(writes) > 2):
                    writes.popleft().result()
                if output is None:
                    packs[k] = packed
                refined_now += len(chunks[k][1])
                if bar is not None:
                    bar.set_postfix_str(
                        f"{refined_now / (time.perf_counter() - started):,.0f}"
                        " features/s", refresh=False)
                    bar.update(len(chunks[k][0]))
        while writes:
            writes.popleft().result()
        if output is not None:
            writer.submit(output.finish).result()
    except BaseException:
        if output is not None:
            writer.submit(output.abort)
        raise
    finally:
        writer.shutdown(wait=True)  # a refined chunk is committed
        if bar is not None:
            bar.close()
    counts = (refined_now, len(chunks), len(done))
    if output is not None and not output.failed_stream:
        return None, counts + (output.status_counts,)
    if output is not None:  # the stream refused a chunk: all are on disk
        packs = {k: store.load(k) for k in range(len(chunks))}
    else:
        packs.update((k, store.load(k)) for k in done)  # resumed chunks
    refined = assemble(table, [packs[k] for k in range(len(chunks))])
    return refined, counts + (count_status(refined["status"]),)


def _keep(k, packed, store, output):
    """Commit chunk ``k`` and hand it to the output (background thread)."""
    if store is not None:
        store.commit(k, packed)
    if output is not None:
        output.add(k, packed)


def _refine_here(movie, prefetch, lanes, table, chunks, todo, fit_options,
                 features_in=None):
    """Refine ``chunks[k]`` for ``k`` in ``todo`` in this process, up to
    ``lanes`` at once (see :mod:`refinefit.pipeline.lanes`); yields ``(k, packed)``
    in order. The features of each chunk are rows of ``table``, or with
    ``features_in`` (a :class:`refinefit.io.tables.StreamedFeatures`; rows
    in frame order), read from it."""
    def read(k):  # in the read-ahead thread, in order
        frame_ids, rows = chunks[k]
        chunk_table = table.iloc[rows] if features_in is None else \
            features_in.rows(rows[0], rows[-1] + 1)  # consecutive rows
        return movie.read(frame_ids), chunk_table

    def refine(k, item, scratch):
        frames, chunk_table = item
        frame_ids, rows = chunks[k]
        return refine_read_chunk(movie, frame_ids, frames, rows, chunk_table,
                                 fit_options, scratch)

    yield from refine_in_lanes(refine, read_ahead(read, todo, prefetch),
                               lanes)


def read_ahead(read, labels, prefetch):
    """Yield ``(label, read(label))`` per label, in order, reading the next
    in a background thread while the caller works on this one."""
    if not prefetch:
        for label in labels:
            yield label, read(label)
        return
    with ThreadPoolExecutor(max_workers=1,
                            thread_name_prefix="refinefit-read") as reader:
        pending = reader.submit(read, labels[0]) if labels else None
        for i, label in enumerate(labels):
            value = pending.result()
            pending = (reader.submit(read, labels[i + 1])
                       if i + 1 < len(labels) else None)
            yield label, value


def _sizes(table, features_in):
    """The features' ``size`` column (the first batch of a streamed file),
    or None."""
    if features_in is not None:
        if "size" not in features_in.head:
            return None
        with closing(features_in.column_batches("size", 100_000)) as batches:
            return next(batches, None)
    return table["size"].to_numpy() if "size" in table else None


def _warn_if_diameter_misfits(sizes, diameter, pos_columns):
    """Warn when the mask radius is far from the features' ``sizes`` (as
    trackpy.locate measures them, radii of gyration): smaller than the
    size, the mask cuts the feature; over six sizes, it is mostly
    background and neighbours."""
    if sizes is None or not len(sizes):
        return
    size = pd.to_numeric(pd.Series(sizes), errors="coerce").median()
    radius = min(np.broadcast_to(np.asarray(diameter, dtype=float),
                                 (len(pos_columns),))) // 2
    if not np.isfinite(size) or size <= 0:
        return
    if radius < size or radius > 6 * size:
        warnings.warn(
            f"the mask radius (diameter // 2 = {radius:g} px) is far from the "
            f"features' size (median {size:.3g} px): a radius of about two "
            f"to three sizes, diameter {2 * round(2.5 * size) + 1}, fits "
            "them", RuntimeWarning, stacklevel=3)


def report(line):
    """Print a line of news to stdout; a reader that went away (``| head``)
    does not stop the run."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        pass


def _progress_bar(show, total, initial):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="frame", desc="refining",
                file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def _frame_numbers(table, t_column, n_frames, movie):
    """Whole frame numbers of every feature, all within the movie."""
    check_frame_column(table.columns, t_column)
    frames = frame_numbers(table[t_column], t_column)
    check_within(frames, n_frames, _movie_name(movie))
    return frames


def _streamed_frame_index(features_in, t_column, n_frames, movie):
    """:class:`FrameIndex` of the features of a
    :class:`refinefit.io.tables.StreamedFeatures`, their frame numbers read
    a batch at a time (checked as :func:`_frame_numbers` does); None when
    the rows are not in frame order."""
    check_frame_column(features_in.head.columns, t_column)
    frame_numbers(features_in.head[t_column], t_column)  # its dtype
    counts = np.zeros(n_frames, dtype=np.int64)
    outside, in_order, last = [], True, -1
    for values in features_in.column_batches(t_column):
        frames = frame_numbers(values.astype(np.float64), t_column)
        outside.append(frames_outside(frames, n_frames))
        if len(frames) and in_order and not outside[-1].size:
            in_order = frames[0] >= last and not np.any(
                frames[1:] < frames[:-1])
            last = frames[-1]
            counts += np.bincount(frames, minlength=n_frames)
    check_within(np.concatenate(outside or [[]]).astype(np.int64), n_frames,
                 _movie_name(movie))
    if not in_order:
        return None
    present = np.flatnonzero(counts)
    return FrameIndex(present, counts[present])


def _movie_name(movie):
    """The movie as messages name it: its path, if it has one."""
    return f"{str(movie)!r}" if isinstance(movie, (str, Path)) else "the movie"


def _chunk_scale(threads, client, param_mode):
    """How many times the default chunk limits a run uses: its Numba
    threads // 2 (the defaults suit 2 threads). 1 with a Dask client and no
    ``threads`` (the workers' cores are not known here), and 1 in the
    'frame' mode, whose results depend on the chunks: they stay the same
    whatever the threads. ``config.current().movie.scale`` overrides it."""
    if config.current().movie.scale is not None:
        return int(config.current().movie.scale)
    modes = param_mode.values() if isinstance(param_mode, dict) else ()
    if (client is not None and threads is None) or any(
            mode in ("frame", MODE_FRAME) for mode in modes
            if isinstance(mode, (str, numbers.Integral))):
        return 1
    return max(1, (numba.get_num_threads() if threads is None
                   else int(threads)) // 2)


def _chunk_limits(chunk_frames, movie, scale):
    """Frames and features per chunk: ``chunk_frames`` frames if given,
    else ``scale`` times the limits of :class:`refinefit.config.MovieChunking`."""
    if chunk_frames is None:
        limits = config.current().movie
        frame_bytes = max(int(np.prod(movie.frame_shape)) *
                          np.dtype(movie.dtype).itemsize, 1)
        max_frames = max(1, min(limits.max_frames * scale,
                                limits.frame_bytes * scale // frame_bytes))
        return int(max_frames), limits.features * scale
    if isinstance(chunk_frames, bool) or not isinstance(
            chunk_frames, numbers.Integral) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a positive integer, got "
                         f"{chunk_frames!r}")
    return int(chunk_frames), np.inf


def _check_remote(client, movie):
    check_client(client)
    if not isinstance(movie, (str, Path)):
        raise ValueError("movie: with a Dask client the movie must be a file "
                         "path that every worker can open (workers read "
                         f"their own frames), got {type(movie).__name__}")


def _check_threads(threads):
    limit = numba.config.NUMBA_NUM_THREADS
    if threads is not None and (isinstance(threads, bool) or not isinstance(
            threads, numbers.Integral) or not 1 <= threads <= limit):
        raise ValueError(f"threads must be an integer from 1 to {limit} "
                         f"(Numba's limit on this machine), got {threads!r}")


def _version():
    from .. import __version__  # the package is fully imported by now

    return __version__


def _couples_frames(param_mode):
    """True when a parameter mode shares values across frames."""
    if not isinstance(param_mode, dict):
        return False
    return any(isinstance(mode, (str, numbers.Integral))
               and not isinstance(mode, bool) and mode in _COUPLING_MODES
               for mode in param_mode.values())
