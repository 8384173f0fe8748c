"""Movies read a few whole frames at a time, from disk or from memory.

- TIFF (tifffile): where the pixel data are one contiguous, uncompressed
  series (what ``tifffile.memmap`` maps), each read maps only the byte range
  of the frames it needs, unmapped when those frames are dropped, so
  resident memory stays that of one chunk however long the movie is; the
  frames are views of the map, not copies. Otherwise (compressed, tiled,
  several series) the pages are decoded one by one with
  ``TiffFile.asarray(key=...)``.
- ``.npy``: memory-mapped in the same way (``np.load(mmap_mode='r')`` gives
  the layout).
- Any other path: ``pims.open``.
- An object already open: an ndarray (frames on axis 0) or anything with
  ``frame_shape``, ``len()`` and indexing (a pims reader).

Leading axes beyond one frame's dimensions all count as frame axes (see
``open_movie``). Every movie gives ``frame_shape``, ``dtype``, ``len()``,
``read(frames)`` and ``identity()``, what the checkpoint fingerprint records.

Colour frames (a last axis of 3 or 4 samples: RGB, RGBA) are refined one
channel at a time or as their luminance, and dark features on a bright
background on the inverted frames: see :class:`SelectedMovie`.
"""
import glob
import hashlib
import json
import mmap
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TIFF_SUFFIXES = (".tif", ".tiff")
CHANNEL_NAMES = {"r": 0, "g": 1, "b": 2}
_COLOUR_SAMPLES = (3, 4)
# luminance of RGB, as pims.as_grey and scikit-image weigh the channels
_GREY_WEIGHTS = (0.2125, 0.7154, 0.0721)


class Movie:
    """Frames by number: the interface shared by every kind of movie."""

    frame_shape = ()
    dtype = None
    path = None
    colour = False  # frames end in an axis of colour samples

    def __len__(self):
        return self.n_frames

    def read(self, frame_numbers):
        """Frames ``frame_numbers`` as a list of ndarrays."""
        raise NotImplementedError

    def identity(self):
        """JSON-able description that changes when the frames change, or
        None when the movie cannot be identified without reading it."""
        return None

    def close(self):
        """Release the file handles."""


class MappedMovie(Movie):
    """Raw frames at a byte offset of a file (uncompressed TIFF or .npy)."""

    def __init__(self, path, offset, shape, dtype):
        self.path = Path(path)
        self.offset = int(offset)
        self.n_frames = int(shape[0])
        self.frame_shape = tuple(int(n) for n in shape[1:])
        self.file_dtype = np.dtype(dtype)
        self.dtype = self.file_dtype.newbyteorder("=")
        self.frame_bytes = (int(np.prod(self.frame_shape))
                            * self.file_dtype.itemsize)
        needed = self.offset + self.n_frames * self.frame_bytes
        size = self.path.stat().st_size
        if size < needed:
            raise ValueError(f"movie {str(path)!r} is truncated: it has "
                             f"{size} bytes, its header describes {needed}")

    def read(self, frame_numbers):
        """The frames as read-only views of a map of their byte range, which
        is unmapped when the last of them goes; the system reads these
        frames ahead. Copies only where the file's byte order is not
        native."""
        frame_numbers = [int(n) for n in frame_numbers]
        if not frame_numbers:
            return []
        if self.frame_bytes == 0:  # frames without pixels: nothing to map
            return [np.empty(self.frame_shape, self.dtype)
                    for _ in frame_numbers]
        first, last = min(frame_numbers), max(frame_numbers)
        start = self.offset + first * self.frame_bytes
        skip = start % mmap.ALLOCATIONGRANULARITY  # maps start on a page
        length = skip + (last - first + 1) * self.frame_bytes
        with open(self.path, "rb") as file:
            mapped = mmap.mmap(file.fileno(), length, offset=start - skip,
                               access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_WILLNEED"):  # read ahead these frames only
            for n in frame_numbers:
                begin = skip + (n - first) * self.frame_bytes
                page = begin - begin % mmap.PAGESIZE
                mapped.madvise(mmap.MADV_WILLNEED, page,
                               begin + self.frame_bytes - page)
        block = np.frombuffer(mapped, dtype=self.file_dtype, offset=skip,
                              count=(last - first + 1) * self.frame_bytes
                              // self.file_dtype.itemsize)
        block = block.reshape((last - first + 1,) + self.frame_shape)
        if self.file_dtype != self.dtype:
            return [block[n - first].astype(self.dtype)
                    for n in frame_numbers]
        return [block[n - first] for n in frame_numbers]

    def identity(self):
        return dict(_file_identity(self.path), frames=self.n_frames,
                    frame_shape=list(self.frame_shape),
                    dtype=self.file_dtype.str)


class TiffPagesMovie(Movie):
    """A TIFF decoded page by page (compressed, tiled, or written as several
    series): the pages in file order are the 2D frames, or the planes of the
    3D frames."""

    def __init__(self, path, tif, frame_ndim=None):
        self.path = Path(path)
        self._tif = tif
        plane = tuple(int(n) for n in tif.pages[0].shape)
        if len(plane) != 2:
            raise ValueError(f"TIFF pages of shape {plane} are not 2D planes")
        depth = int(tif.series[0].shape[-3]) if frame_ndim == 3 else 1
        self.frame_shape = ((depth,) if frame_ndim == 3 else ()) + plane
        self.n_frames = len(tif.pages) // depth
        self.dtype = np.dtype(tif.pages[0].dtype).newbyteorder("=")
        self._pages_per_frame = depth

    def read(self, frame_numbers):
        frames = []
        for n in frame_numbers:
            first = int(n) * self._pages_per_frame
            key = first if self._pages_per_frame == 1 else range(
                first, first + self._pages_per_frame)
            image = self._tif.asarray(key=key)
            frames.append(np.ascontiguousarray(
                image.reshape(self.frame_shape), dtype=self.dtype))
        return frames

    def identity(self):
        return dict(_file_identity(self.path), frames=self.n_frames,
                    frame_shape=list(self.frame_shape), dtype=self.dtype.str)

    def close(self):
        self._tif.close()


class ReaderMovie(Movie):
    """An ndarray (frames on axis 0) or a pims-like reader."""

    def __init__(self, reader, path=None, frame_ndim=None):
        self.path = None if path is None else Path(path)
        if hasattr(reader, "frame_shape"):
            self.frame_shape = tuple(int(n) for n in reader.frame_shape)
            self.colour = is_colour_frame(self.frame_shape, frame_ndim)
        elif isinstance(reader, np.ndarray) and reader.ndim >= 2:
            self.colour = is_colour(reader.shape, frame_ndim)
            n_frames, self.frame_shape = movie_shape(
                reader.shape, frame_ndim + self.colour if frame_ndim else None)
            reader = reader.reshape((n_frames,) + self.frame_shape)
        else:
            raise TypeError("movie must be a path, an ndarray with frames on "
                            "axis 0, or a reader with frame_shape and "
                            f"indexing; got {type(reader).__name__}")
        self._reader = reader
        self.n_frames = len(reader)
        dtype = getattr(reader, "dtype", None)
        if dtype is None:
            dtype = np.asarray(reader[0]).dtype if self.n_frames else float
        self.dtype = np.dtype(dtype)

    def read(self, frame_numbers):
        return [np.asarray(self._reader[int(n)]) for n in frame_numbers]

    def identity(self):
        reader = self._reader
        described = dict(frames=self.n_frames,
                         frame_shape=list(self.frame_shape),
                         dtype=self.dtype.str)
        filename = self.path or getattr(reader, "filename", None)
        if filename is not None and os.path.isfile(filename):
            described.update(_file_identity(filename))
            if isinstance(reader, np.memmap):
                described["offset"] = int(reader.offset)
            return described
        if isinstance(reader, np.ndarray):
            described["blake2b"] = _array_digest(reader)
            return described
        return None  # a reader we cannot identify without reading it all

    def close(self):
        close = getattr(self._reader, "close", None)
        if self.path is not None and callable(close):
            close()  # we opened it


def open_movie(movie, frame_ndim=None, *, channel=None, grey=False,
               invert=False):
    """Open ``movie`` (a path or an open array/reader) as a :class:`Movie`.

    ``frame_ndim`` (2 or 3, the number of position columns) folds every
    leading axis of an array or file into the frame axis, so a TIFF written
    in blocks (shape blocks x frames x Y x X) is a movie of 2D frames.
    Without it, axis 0 is the frame axis. With it, frames of one more axis
    whose last axis holds 3 or 4 samples are colour frames, which need
    ``channel`` or ``grey`` (see :class:`SelectedMovie`, which also
    describes ``invert``).

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        The file cannot be read as a movie; a colour movie without
        ``channel`` or ``grey``; a bad ``channel``.
    """
    selection = FrameSelection(channel, grey, invert)
    selection.check()
    opened = _open(movie, frame_ndim)
    try:
        return selection.apply(opened, owns=opened is not movie)
    except ValueError:
        if opened is not movie:
            opened.close()
        raise


def _open(movie, frame_ndim):
    if not isinstance(movie, (str, os.PathLike)):
        return movie if isinstance(movie, Movie) else ReaderMovie(
            movie, frame_ndim=frame_ndim)
    path = Path(movie)
    pattern = any(c in str(path) for c in "*?[")
    if not path.exists() and not (pattern and glob.glob(str(path))):
        raise FileNotFoundError(f"movie {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if path.is_file() and suffix in _TIFF_SUFFIXES:
            return _open_tiff(path, frame_ndim)
        if path.is_file() and suffix == ".npy":
            return _open_npy(path, frame_ndim)
        return _open_pims(path, frame_ndim)  # also a glob of images
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as exc:  # any reader error: the file is not a movie
        raise ValueError(f"cannot read movie {str(path)!r}: "
                         f"{_one_line(exc)}") from exc


def is_colour_frame(frame_shape, frame_ndim):
    """Whether frames of ``frame_shape`` are colour frames of ``frame_ndim``
    dimensions: one axis more, of 3 or 4 samples (RGB, RGBA), last."""
    return (frame_ndim is not None and len(frame_shape) == frame_ndim + 1
            and int(frame_shape[-1]) in _COLOUR_SAMPLES)


def is_colour(shape, frame_ndim):
    """Whether data of ``shape`` hold colour frames of ``frame_ndim``
    dimensions: one colour image, or a movie of them (frames first)."""
    return frame_ndim is not None and len(shape) > frame_ndim and \
        is_colour_frame(tuple(shape)[-frame_ndim - 1:], frame_ndim)


def movie_shape(shape, frame_ndim=None):
    """Number of frames and frame shape of data of ``shape``."""
    shape = tuple(int(n) for n in shape)
    if frame_ndim is None:
        frame_ndim = len(shape) - 1 if len(shape) > 2 else 2
    if len(shape) < frame_ndim:
        raise ValueError(f"the data have shape {shape}, fewer than the "
                         f"{frame_ndim} dimensions of one frame")
    return int(np.prod(shape[:-frame_ndim])), shape[-frame_ndim:]


def _open_tiff(path, frame_ndim):
    import tifffile

    tif = tifffile.TiffFile(path)
    colour = False
    try:
        if not tif.series or not tif.pages:
            raise ValueError("the file holds no images")
        colour = tif.series[0].axes.endswith("S")
        if colour and tif.series[0].shape[-1] not in _COLOUR_SAMPLES:
            raise ValueError(f"frames with {tif.series[0].shape[-1]} samples "
                             "per pixel are not supported: colour frames "
                             "have 3 (RGB) or 4 (RGBA)")
        if colour and (tif.series[0].dataoffset is None
                       or len(tif.series) > 1):
            raise ValueError("colour (RGB) frames are read from uncompressed "
                             "TIFF files only; save the movie uncompressed "
                             "or as grayscale")
    except ValueError:
        tif.close()
        raise
    if tif.series[0].dataoffset is None or len(tif.series) > 1:
        # compressed, tiled or scattered: decode page by page
        return TiffPagesMovie(path, tif, frame_ndim)
    tif.close()
    mapped = tifffile.memmap(path, mode="r")
    return _mapped(path, mapped, frame_ndim, colour)


def _mapped(path, mapped, frame_ndim, colour):
    """A :class:`MappedMovie` of the map's byte range; colour frames keep
    their samples axis."""
    colour = colour and is_colour(mapped.shape, frame_ndim)
    n_frames, frame_shape = movie_shape(
        mapped.shape, frame_ndim + colour if frame_ndim else None)
    movie = MappedMovie(path, mapped.offset, (n_frames,) + frame_shape,
                        mapped.dtype)
    movie.colour = colour
    return movie


def _open_npy(path, frame_ndim):
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    if not mapped.flags.c_contiguous:  # Fortran order: index the map itself
        return ReaderMovie(mapped, path, frame_ndim)
    return _mapped(path, mapped, frame_ndim,
                   is_colour(mapped.shape, frame_ndim))


def _open_pims(path, frame_ndim):
    import pims

    return PimsMovie(pims.open(str(path)), path, frame_ndim)


class PimsMovie(ReaderMovie):
    """A movie ``pims.open`` reads: one file or a glob of images. The
    identity of a glob covers every matching file."""

    def identity(self):
        if self.path.is_file():
            return super().identity()
        files = sorted(glob.glob(str(self.path)))
        digest = hashlib.blake2b(digest_size=16)
        for name in files:
            digest.update(json.dumps(_file_identity(name)).encode())
        return dict(pattern=os.path.realpath(self.path), files=len(files),
                    stats=digest.hexdigest(), frames=self.n_frames,
                    frame_shape=list(self.frame_shape), dtype=self.dtype.str)


def _file_identity(path):
    stat = os.stat(path)
    return dict(path=os.path.realpath(path), size=stat.st_size,
                mtime_ns=stat.st_mtime_ns)


def _array_digest(array):
    digest = hashlib.blake2b(digest_size=16)
    for frame in array:  # frame by frame: no copy of the whole movie
        digest.update(np.ascontiguousarray(frame).view(np.uint8).ravel())
    return digest.hexdigest()


def _one_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@dataclass(frozen=True)
class FrameSelection:
    """What of each frame is refined: a colour channel (an index, or
    ``'r'``, ``'g'``, ``'b'``) or the luminance (``grey``) of colour frames,
    inverted or not (``invert``)."""

    channel: object = None
    grey: bool = False
    invert: bool = False

    def check(self):
        """Errors that need no movie: a bad ``channel``, both ``channel`` and
        ``grey``."""
        channel = self.channel
        if isinstance(channel, str):
            if channel.lower() not in CHANNEL_NAMES:
                raise ValueError(f"channel={channel!r}: use a channel index "
                                 "(0, 1, ...) or one of 'r', 'g', 'b'")
        elif channel is not None and not (
                isinstance(channel, numbers.Integral)
                and not isinstance(channel, bool)):
            raise TypeError(f"channel must be an index or one of 'r', 'g', "
                            f"'b', got {channel!r}")
        for name in ("grey", "invert"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got "
                                f"{getattr(self, name)!r}")
        if channel is not None and self.grey:
            raise ValueError("channel and grey exclude each other: refine one "
                             "channel or the luminance")

    def apply(self, movie, owns=True):
        """``movie`` itself, or a :class:`SelectedMovie` of it (which closes
        ``movie`` when it ``owns`` it)."""
        if not movie.colour:
            if self.channel is not None or self.grey:
                option = "channel" if self.channel is not None else "grey"
                raise ValueError(
                    f"{option}: the movie is greyscale (frames of shape "
                    f"{tuple(movie.frame_shape)}), it has no colour channels; "
                    f"drop --{option} / {option}=")
            return SelectedMovie(movie, self, owns) if self.invert else movie
        samples = movie.frame_shape[-1]
        if self.channel is None and not self.grey:
            raise ValueError(
                f"the movie's frames are colour (shape "
                f"{tuple(movie.frame_shape)}, {samples} channels): choose one "
                "channel with --channel / channel= (an index, or r, g, b) or "
                "the luminance with --grey / grey=True")
        index = self.index()
        if index is not None and not 0 <= index < samples:
            raise ValueError(f"channel={self.channel!r}: the frames have "
                             f"{samples} channels (0 to {samples - 1})")
        return SelectedMovie(movie, self, owns)

    def index(self):
        """The channel's index, or None."""
        if isinstance(self.channel, str):
            return CHANNEL_NAMES[self.channel.lower()]
        return None if self.channel is None else int(self.channel)


class SelectedMovie(Movie):
    """The frames of ``movie`` as ``selection`` says: one channel (the
    frame's dtype) or the luminance (float64, weights 0.2125 R + 0.7154 G
    + 0.0721 B, as ``pims.as_grey``) of colour frames, then, with
    ``invert``, inverted as ``trackpy.locate`` inverts: integer frames
    XOR their dtype's maximum (the maximum minus the value for unsigned
    types), float frames 1 minus the value. The luminance is inverted
    against the maximum of the frames it comes from: the dtype's maximum
    minus the luminance for integer frames (255 for 8 bits), 1 minus it
    for float frames."""

    def __init__(self, movie, selection, owns=True):
        self._movie = movie
        self.selection = selection
        self._owns = owns
        self.path = movie.path
        self.n_frames = len(movie)
        self.frame_shape = tuple(movie.frame_shape[:-1]) if movie.colour \
            else tuple(movie.frame_shape)
        self.dtype = np.dtype(np.float64) if selection.grey else movie.dtype

    def read(self, frame_numbers):
        return [self._select(frame) for frame in self._movie.read(
            frame_numbers)]

    def _select(self, frame):
        frame = np.asarray(frame)
        top = np.iinfo(frame.dtype).max if np.issubdtype(
            frame.dtype, np.integer) else 1.0
        if self.selection.grey:
            frame = sum(weight * frame[..., c].astype(np.float64)
                        for c, weight in enumerate(_GREY_WEIGHTS))
            return top - frame if self.selection.invert else frame
        if self._movie.colour:
            frame = np.ascontiguousarray(frame[..., self.selection.index()])
        if self.selection.invert:
            frame = frame ^ top if np.issubdtype(frame.dtype, np.integer) \
                else top - frame
        return frame

    def identity(self):
        base = self._movie.identity()
        if base is None:
            return None
        return dict(base, channel=self.selection.index(),
                    grey=bool(self.selection.grey),
                    invert=bool(self.selection.invert))

    def close(self):
        if self._owns:  # not a movie the caller opened and still holds
            self._movie.close()
