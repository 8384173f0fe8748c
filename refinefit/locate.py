"""``locate_movie``: find the features of a movie with ``trackpy.locate``,
frame by frame, without writing Python.

The starting table of :func:`refinefit.refine_movie`, with trackpy's columns
and values: for each frame, ``trackpy.locate(frame, diameter, ...)`` and a
``frame`` column, as ``trackpy.batch`` gives them. Frames are read a chunk at
a time (the next chunk in a background thread), so memory holds two chunks
of frames and the features found. trackpy is an optional dependency
(``pip install 'refinefit[locate]'``), imported only when a movie is
located.
"""
import inspect
import numbers
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import config
from .io.movies import open_movie
from .io.tables import (
    TableStream,
    check_not_an_input,
    check_output_path,
    check_return_table,
    streamable,
    write_table_atomically,
)
from .pipeline.movie import read_ahead, report

# trackpy.locate arguments that locate_movie sets itself, or that trackpy
# no longer supports (filter_before raises, filter_after only warns)
_NOT_OPTIONS = ("raw_image", "diameter", "minmass", "invert",
                "filter_before", "filter_after")
# columns of trackpy.locate without features and without a frame to locate
# (the movie has no frames), after the positions
_CHARACTERIZED = ("mass", "size", "ecc", "signal", "raw_mass")
_INSTALL = "pip install 'refinefit[locate]'"


@dataclass
class LocateSummary:
    """Counts and timing of one :func:`locate_movie` run."""

    features: int
    frames: int
    seconds: float

    def line(self):
        """The one-line summary the command prints."""
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        return (f"refinefit: {self.features:,} features in {self.frames:,} "
                f"frames; {self.seconds:.2f} s, {rate:,.1f} frames/s")


def locate_movie(movie, out=None, *, diameter, minmass=None, channel=None,
                 grey=False, invert=False, progress=None, quiet=False,
                 return_table=True, **locate_options):
    """Locate the features of every frame of a movie with ``trackpy.locate``.

    Gives the table ``trackpy.batch(frames, diameter, minmass=minmass,
    **locate_options)`` gives, value for value, while holding only a chunk
    of frames in memory: the starting features of
    :func:`refinefit.refine_movie` and ``refinefit refine``.

    Parameters
    ----------
    movie : str, Path, ndarray or reader
        A TIFF stack, a ``.npy`` file, any other file ``pims.open`` reads
        (a glob of images too: ``'frames/img_*.png'``), or an open movie: an
        ndarray with frames on axis 0 or a pims reader. Leading axes beyond
        one frame's dimensions count as frame axes.
    out : str or Path, optional
        Output file, CSV (``.csv``, optionally ``.gz``/``.bz2``/``.xz``/
        ``.zst``) or Parquet (``.parquet``, ``.pq``) by extension, written
        atomically (a temporary file beside it, then renamed). It must not
        be the movie.
    diameter : int or tuple of int
        ``trackpy.locate``'s diameter: a positive odd integer, or one per
        axis. Frames have as many dimensions as ``diameter`` has values
        (2 for a single value): ``(5, 11, 11)`` locates in 3D frames.
    minmass : float, optional
        The minimum integrated brightness (trackpy's default: 0).
    channel : int or {'r', 'g', 'b'}, optional
        For colour frames (a last axis of 3 or 4 samples): the channel to
        locate in. A colour movie needs ``channel`` or ``grey``.
    grey : bool
        For colour frames: locate in the luminance (as ``pims.as_grey``).
    invert : bool
        Dark features on a bright background: locate in the inverted frames,
        inverted as ``trackpy.locate(..., invert=True)`` inverts them.
    progress : bool, optional
        Show a progress bar on stderr. Default: when stderr is a terminal.
    quiet : bool
        No progress bar and no summary line on stdout.
    return_table : bool
        Return the table (default). False, with ``out``: return None, and
        write ``out`` frame by frame instead of holding the table (except
        for ``.csv.zst``, which is written at the end).
    **locate_options
        Every other keyword option of ``trackpy.locate``: separation,
        percentile, noise_size, smoothing_size, threshold, preprocess, topn,
        maxsize, max_iterations, characterize, engine.

    Returns
    -------
    DataFrame or None
        trackpy's columns (positions, mass, size, ecc, signal, raw_mass,
        ...) and ``frame``, one row per feature in frame order, index
        0..n-1. None when ``return_table`` is False.

    Raises
    ------
    ImportError
        trackpy is not installed.
    TypeError
        An option that ``trackpy.locate`` does not take.
    ValueError
        A bad ``diameter``; ``out`` is the movie; a colour movie without
        ``channel`` or ``grey``.

    Notes
    -----
    Frames are numbered from 0 in the movie's order, as ``trackpy.batch``
    numbers them; frames without features have no rows. The summary line
    reads ``refinefit: N features in M frames; T s, R frames/s``.

    See Also
    --------
    refinefit.refine_movie : refine the features found.

    Examples
    --------
    >>> features = refinefit.locate_movie("movie.tif", "features.csv",
    ...                                   diameter=11, minmass=100)
    >>> refinefit.refine_movie("movie.tif", "features.csv",
    ...                        "refined.parquet", diameter=11)
    """
    started = time.perf_counter()
    locate = _trackpy_locate()
    _check_options(locate, locate_options)
    diameter = _check_diameter(diameter)
    check_return_table(return_table, out, "the features")
    kind = None
    if out is not None:
        kind = check_output_path(out)
        check_not_an_input(out, {"movie": movie})
    frame_ndim = len(diameter) if isinstance(diameter, tuple) else 2
    frames_movie = open_movie(movie, frame_ndim=frame_ndim, channel=channel,
                              grey=grey, invert=invert)
    stream = None
    try:
        if isinstance(diameter, tuple) and \
                len(frames_movie.frame_shape) != len(diameter):
            shape = tuple(frames_movie.frame_shape)
            raise ValueError(f"diameter {diameter} has {len(diameter)} "
                             f"values, the frames {len(shape)} dimensions "
                             f"(shape {shape})")
        if not return_table and streamable(out, kind):
            stream = TableStream(out, kind, keep_index=False)
        show = not quiet and (sys.stderr.isatty() if progress is None
                              else bool(progress))

        def find(frame, number):
            found = locate(frame, diameter, minmass=minmass, **locate_options)
            found["frame"] = number
            return found

        table, n_features = _locate_chunks(frames_movie, find, stream, show)
        if stream is not None and n_features:
            stream.finish()
        else:
            if stream is not None:  # nothing was written to it
                stream.abort()
            if table is None:  # the movie has no frames
                table = _empty_table(frame_ndim, locate_options)
            if out is not None:
                write_table_atomically(table, out, kind)
    except BaseException:
        if stream is not None:
            stream.abort()
        raise
    finally:
        if frames_movie is not movie:
            frames_movie.close()
    if not quiet:
        report(LocateSummary(n_features, len(frames_movie),
                              time.perf_counter() - started).line())
    return table if return_table else None


def _locate_chunks(movie, find, stream, show):
    """Locate every frame of ``movie``, a chunk of frames at a time, the next
    chunk read in a background thread. With a ``stream``, each frame's rows
    go to it and the table returned is None, unless no frame holds a
    feature: then it is trackpy's table of an empty frame. Returns the table
    (None for a movie without frames) and the number of features."""
    n_frames = len(movie)
    per_chunk = _frames_per_chunk(movie)
    chunks = [range(start, min(start + per_chunk, n_frames))
              for start in range(0, n_frames, per_chunk)]
    found, last_empty, n_features = [], None, 0
    bar = _progress_bar(show, n_frames)
    try:
        for frame_ids, frames in read_ahead(movie.read, chunks, True):
            for number, frame in zip(frame_ids, frames):
                features = find(frame, number)
                if not len(features):  # trackpy.batch keeps no empty frame
                    last_empty = features
                    continue
                n_features += len(features)
                if stream is not None:
                    stream.write(features)
                else:
                    found.append(features)
            if bar is not None:
                bar.set_postfix_str(f"{n_features:,} features",
                                    refresh=False)
                bar.update(len(frame_ids))
    finally:
        if bar is not None:
            bar.close()
    if found:
        return pd.concat(found, ignore_index=True), n_features
    if last_empty is not None and not n_features:  # trackpy's columns
        return _typed_empty(last_empty), 0
    return None, n_features


def _frames_per_chunk(movie):
    """As many frames as fit in ``config.current().movie.frame_bytes``, at
    least one and at most ``max_frames``."""
    limits = config.current().movie
    frame_bytes = max(int(np.prod(movie.frame_shape))
                      * np.dtype(movie.dtype).itemsize, 1)
    return int(max(1, min(limits.max_frames,
                          limits.frame_bytes // frame_bytes)))


def _typed_empty(features):
    """trackpy's table of a frame without features (object columns) with
    float64 columns and an int64 ``frame``."""
    return features.astype(np.float64).astype({"frame": np.int64}) \
        .reset_index(drop=True)


def _empty_table(frame_ndim, locate_options):
    """The columns of ``trackpy.locate`` for a movie without frames."""
    positions = ["z", "y", "x"][-frame_ndim:]
    extra = _CHARACTERIZED if locate_options.get("characterize", True) \
        else _CHARACTERIZED[:1]
    table = pd.DataFrame({name: np.zeros(0) for name in positions + list(extra)})
    table["frame"] = np.zeros(0, dtype=np.int64)
    return table


def _trackpy_locate():
    """``trackpy.locate``, or an ImportError that says what to install."""
    try:
        import trackpy
    except ImportError as exc:
        raise ImportError(f"locating features needs trackpy: {_INSTALL} "
                          "(or pip install trackpy)") from exc
    return trackpy.locate


def _check_options(locate, locate_options):
    """TypeError naming an option ``trackpy.locate`` does not take."""
    known = [name for name in inspect.signature(locate).parameters
             if name not in _NOT_OPTIONS]
    for name in locate_options:
        if name not in known:
            raise TypeError(f"locate_movie() got an unexpected keyword "
                            f"argument {name!r}; the options of "
                            f"trackpy.locate are {', '.join(known)}")


def _check_diameter(diameter):
    """``diameter`` as an int or a tuple of ints, each positive and odd, as
    ``trackpy.locate`` needs them (trackpy truncates to an integer and then
    refuses an even one)."""
    per_axis = isinstance(diameter, (tuple, list, np.ndarray))
    values = list(diameter) if per_axis else [diameter]
    if per_axis and len(values) not in (2, 3):
        raise ValueError(f"diameter: one value, or one per axis of 2D or 3D "
                         f"frames; got {diameter!r}")
    for value in values:
        if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, numbers.Real) or not float(value).is_integer() \
                or value < 1 or int(value) % 2 == 0:
            raise ValueError(f"diameter must be a positive odd integer (or "
                             f"one per axis), as trackpy.locate needs; got "
                             f"{diameter!r}: round up to an odd number")
    checked = tuple(int(value) for value in values)
    return checked if per_axis else checked[0]


def _progress_bar(show, total):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="locating", file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)
