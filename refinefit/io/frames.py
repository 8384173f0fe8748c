"""Frame access: one interface over images, movies and pims readers.

Frames are read one at a time, when the engine asks for them.
"""
import numpy as np

_KERNEL_DTYPES = {np.dtype(t) for t in (
    np.uint8, np.uint16, np.uint32, np.int8, np.int16, np.int32, np.int64,
    np.float32, np.float64)}


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
    map_chunks : callable or None
        The reader's way of running work on chunks of frames where the
        frames are (see :func:`refinefit.solvers.engine.map_chunks`), if it has one.
    """

    def __init__(self, get, frame_shape, n_frames=None, is_single=False,
                 single_frame=None, map_chunks=None):
        self._get = get
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.ndim = len(self.frame_shape)
        self.n_frames = n_frames
        self.is_single = is_single
        self.single_frame = single_frame
        self.map_chunks = map_chunks

    def check_frames(self, frame_numbers):
        """Raise ValueError naming frames the reader cannot have."""
        if self.is_single or len(frame_numbers) == 0:
            return
        bad = frame_numbers[frame_numbers < 0]
        if self.n_frames is not None:
            bad = np.union1d(bad, frame_numbers[frame_numbers >= self.n_frames])
        if len(bad):
            limit = f" (the reader has {self.n_frames} frames)" \
                if self.n_frames is not None else ""
            raise ValueError(f"frame(s) {_short_list(bad)} referenced by the "
                             f"features are not in the reader{limit}")

    def image(self, frame_no):
        """Frame ``frame_no`` as a C-contiguous array of a kernel dtype."""
        try:
            frame = self._get(int(frame_no))
        except (IndexError, KeyError) as exc:
            raise ValueError(f"frame {int(frame_no)} cannot be read from the "
                             f"reader: {exc}") from None
        return as_kernel_image(frame, self.ndim)


def as_kernel_image(frame, ndim):
    """Native-endian, C-contiguous array the kernels accept (copy if needed)."""
    image = np.asarray(frame)
    if image.ndim != ndim:
        raise ValueError(f"reader returned a {image.ndim}D frame where a "
                         f"{ndim}D frame was expected")
    if image.dtype not in _KERNEL_DTYPES:
        if not (np.issubdtype(image.dtype, np.number)
                or image.dtype == np.bool_):
            raise TypeError(f"reader: frames of dtype {image.dtype} are not "
                            "numeric images")
        if np.iscomplexobj(image):
            raise TypeError("reader: complex-valued frames are not supported")
        image = image.astype(np.float64)
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
        return FrameSource(reader.__getitem__, reader.frame_shape, n_frames,
                           map_chunks=getattr(reader, "refinefit_map_chunks",
                                              None))
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


def _short_list(values, limit=8):
    values = [int(v) for v in values]
    text = ", ".join(map(str, values[:limit]))
    return text + (f", ... ({len(values)} in all)" if len(values) > limit else "")
