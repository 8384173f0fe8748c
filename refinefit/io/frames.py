"""Frame access: one interface over images, movies and pims readers.

Frames are read one at a time, when the engine asks for them.
"""
import copy

import numpy as np
import pandas as pd

from .movies import is_colour, is_colour_frame

# the image types the mask kernel is compiled for at install
# (kernels/aot_signatures.txt); other numbers are converted exactly, to
# float32 when it holds every value of the type, else to float64, rather
# than compiling the kernel again for a rare camera format (the kernel reads
# every pixel as float64 either way)
KERNEL_DTYPES = {np.dtype(t) for t in (
    np.uint8, np.uint16, np.float32, np.float64)}
_EXACT_IN_FLOAT32 = {np.dtype(t) for t in (np.bool_, np.int8, np.int16)}


class FrameSource:
    """Frames by number, with the image dimensionality.

    Attributes
    ----------
    frame_shape : tuple of int
        Shape of one frame.
    ndim : int
        Dimensionality of one frame (2 or 3).
    single_frame : int or None
        For a single image: its frame number if known (pims.Frame), else None.
    is_single : bool
        True when the reader is one image holding every feature.
    """

    def __init__(self, get, frame_shape, n_frames=None, is_single=False,
                 single_frame=None):
        self._get = get
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.ndim = len(self.frame_shape)
        self.n_frames = n_frames
        self.is_single = is_single
        self.single_frame = single_frame
        self._convert = None

    def check_frames(self, frame_numbers):
        """Raise ValueError naming frames the reader cannot have."""
        if not self.is_single:
            check_within(frame_numbers, self.n_frames, "the reader")

    def image(self, frame_no):
        """Frame ``frame_no`` as a C-contiguous array of a kernel dtype
        (converted by :meth:`converted`'s function, if any)."""
        image = self._raw(frame_no)
        if self._convert is not None:
            image = self._convert(image, frame_no)
        return image

    def images(self, frame_numbers):
        """The frames ``frame_numbers``, as :meth:`image` gives each. Frames
        that the conversion copies are written back to back into one new
        array, so that a chunk's concatenation is a view of it."""
        if self._convert is None or not len(frame_numbers):
            return [self.image(fr) for fr in frame_numbers]
        out = np.empty((len(frame_numbers),) + self.frame_shape)
        images = []
        for i, fr in enumerate(frame_numbers):
            images.append(self._convert(self._raw(fr), fr, out=out[i]))
        return images

    def _raw(self, frame_no):
        try:
            frame = self._get(int(frame_no))
        except (IndexError, KeyError) as exc:
            raise ValueError(f"frame {int(frame_no)} cannot be read from the "
                             f"reader: {exc}") from None
        return as_kernel_image(frame, self.ndim)

    def converted(self, convert):
        """This source with every frame passed through
        ``convert(image, frame_no, out=None)`` (e.g. counts to photons;
        ``out``: an array the frame's shape, float64, that the result may
        be written to)."""
        source = copy.copy(self)
        source._convert = convert
        return source


def as_kernel_image(frame, ndim):
    """Native-endian, C-contiguous array the kernels accept (copy if needed)."""
    image = np.asarray(frame)
    if image.ndim != ndim:
        raise ValueError(f"reader returned a {image.ndim}D frame where a "
                         f"{ndim}D frame was expected")
    if image.dtype not in KERNEL_DTYPES:
        if not (np.issubdtype(image.dtype, np.number)
                or image.dtype == np.bool_):
            raise TypeError(f"reader: frames of dtype {image.dtype} are not "
                            "numeric images")
        if np.iscomplexobj(image):
            raise TypeError("reader: complex-valued frames are not supported")
        image = image.astype(np.float32 if image.dtype in _EXACT_IN_FLOAT32
                             else np.float64)
    return np.ascontiguousarray(image)


def frame_source(reader, n_pos):
    """Wrap ``reader`` given ``n_pos`` position columns.

    - an object with ``frame_shape`` (a pims FramesSequence or similar):
      a movie indexed by frame number;
    - a ``pims.Frame`` or ndarray with ``n_pos`` dimensions: one image;
    - an ndarray with ``n_pos + 1`` dimensions: a movie, frames on axis 0.
    """
    if hasattr(reader, "frame_shape"):
        try:
            n_frames = len(reader)
        except TypeError:
            n_frames = None
        return FrameSource(reader.__getitem__, reader.frame_shape, n_frames)
    if not hasattr(reader, "ndim") or not hasattr(reader, "shape"):
        raise TypeError("reader must be a pims FramesSequence (or any object "
                        "with frame_shape and indexing), a pims.Frame or an "
                        f"ndarray; got {type(reader).__name__}")
    if reader.ndim == n_pos + 1 and not hasattr(reader, "frame_no"):
        return FrameSource(reader.__getitem__, reader.shape[1:], reader.shape[0])
    frame_no = getattr(reader, "frame_no", None)
    single = None if frame_no is None else int(frame_no)
    return FrameSource(lambda _: reader, reader.shape, is_single=True,
                       single_frame=single)


def colour_frames(reader, n_pos):
    """The frame shape when ``reader`` holds colour frames for ``n_pos``
    position columns (see :func:`refinefit.io.movies.is_colour`), else
    None."""
    shape = getattr(reader, "frame_shape", None)
    if shape is not None:
        return tuple(shape) if is_colour_frame(shape, n_pos) else None
    shape = tuple(np.shape(reader))  # an image, or a movie of them
    return shape[-n_pos - 1:] if is_colour(shape, n_pos) else None


def check_frame_column(columns, t_column):
    """KeyError unless the features have the frame column."""
    if t_column not in columns:
        raise KeyError(f"features have no frame column {t_column!r} (columns: "
                       f"{[str(c) for c in columns]}); pass t_column "
                       "(--t-column on the command line)")


def frame_numbers(values, t_column):
    """The frame column (a pandas Series or an array) as int64 frame
    numbers; ValueError unless its dtype is numeric (nullable included) and
    its values whole and finite."""
    if pd.api.types.is_bool_dtype(values.dtype) or \
            not pd.api.types.is_numeric_dtype(values.dtype):
        raise ValueError(f"features: column {t_column!r} must hold frame "
                         f"numbers, got dtype {values.dtype}")
    if isinstance(values, pd.Series):
        as_float = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        as_float = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(as_float)) or np.any(
            as_float != np.round(as_float)):
        raise ValueError(f"features: column {t_column!r} must hold whole, "
                         "finite frame numbers")
    return as_float.astype(np.int64)


def frames_outside(frames, n_frames):
    """The distinct frame numbers of ``frames`` that a movie of
    ``n_frames`` frames (None: unknown length) does not have."""
    outside = frames < 0 if n_frames is None else \
        (frames < 0) | (frames >= n_frames)
    return np.unique(frames[outside])


def check_within(frames, n_frames, name):
    """ValueError naming the frame numbers a movie of ``n_frames`` frames
    (None: unknown length), called ``name`` in the message, does not
    have."""
    outside = frames_outside(np.asarray(frames, dtype=np.int64), n_frames)
    if not len(outside):
        return
    listed = ", ".join(map(str, outside[:5])) + (
        f", ... ({len(outside)} in all)" if len(outside) > 5 else "")
    if n_frames is None:
        raise ValueError(f"features reference frame(s) {listed} outside the "
                         f"movie: {name} numbers its frames from 0")
    where = "beyond the movie's end" if outside[0] >= 0 else "outside the movie"
    raise ValueError(f"features reference frame(s) {listed} {where}: {name} "
                     f"has {n_frames} frames (0 to {n_frames - 1})")
