"""The camera model of the Poisson estimator: from counts to photons.

A camera reports ``counts = offset + gain * photons``, plus read noise. The
Poisson estimator fits photons, so every frame is converted first:
``photons = (counts - offset) / gain``. Pixels whose counts fall below the
offset (read noise on a dark pixel) are taken as zero photons and counted.

Read noise (``read_noise``: its variance, in counts^2, per pixel or one for
all) enters as in the usual sCMOS approximation (Huang et al., Nat. Methods
10:653, 2013): a pixel with read-noise variance ``s2`` adds
``v = s2 / gain^2`` to its photons and to their expected value, so that the
Poisson likelihood of ``n + v`` with mean ``mu + v`` stands for Poisson
noise plus Gaussian read noise.

An EMCCD's electron multiplication adds an excess noise factor F^2 (about 2
at high gain): its photon counts vary F^2 times more than Poisson noise,
and the standard errors the estimator reports (the Cramer-Rao bound of
Poisson noise) are then too small by a factor F (about 1.4). Dividing the
gain by F^2 (counts to "effective photons") restores them.
"""
import numbers

import numpy as np


class BelowOffsetWarning(UserWarning):
    """Pixels whose counts fell below the camera offset (taken as zero
    photons); ``n_pixels`` says how many. Made by :meth:`of`; the message
    alone rebuilds it (as pickling and pytest-xdist do)."""

    def __init__(self, message):
        super().__init__(message)
        self.n_pixels = int(str(message).split()[0])

    @classmethod
    def of(cls, n_pixels):
        return cls(f"{int(n_pixels)} pixel(s) of the frames read had counts "
                   "below the camera offset; they were taken as zero photons "
                   "(check offset=)")


class Camera:
    """Gain, offset and read noise: scalars, or arrays the shape of a frame.

    Use :func:`make_camera`, which checks the arguments.
    """

    def __init__(self, gain, offset, variance):
        self.gain = gain
        self.offset = offset
        self.variance = variance  # read noise in photons^2, or None
        # frame number -> pixels below the offset (one entry per frame: a
        # frame read again is not counted twice)
        self._below = {}
        # frames that count photons already (unsigned integers, or float64
        # with no negative pixel) are left as they are: no copy, which the
        # masks then read
        self._identity = (np.ndim(gain) == 0 and gain == 1.0
                          and np.ndim(offset) == 0 and offset == 0.0
                          and variance is None)

    def photons(self, image, frame_no, out=None):
        """``image`` (counts) as photons (float64, plus the read noise's
        ``v``); pixels below the offset become zero photons, and are
        counted once per frame. ``image`` itself is never changed, and is
        returned as it is where nothing changes it (counts of an identity
        camera); otherwise the photons go to ``out`` (float64, the frame's
        shape) when given, else to a new array."""
        if self._identity and (image.dtype.kind == "u"
                               or image.dtype == np.float64):
            photons = image  # (copied below only if a pixel must change)
        else:  # one array, changed in place from here on
            photons = np.subtract(image, self.offset, out=out,
                                  dtype=np.float64)
            if not (np.ndim(self.gain) == 0 and self.gain == 1.0):
                photons /= self.gain
        below = photons < 0.0 if photons.dtype.kind == "f" else None
        n_below = 0 if below is None else int(np.count_nonzero(below))
        self._below[int(frame_no)] = n_below
        if n_below == 0 and self.variance is None:
            return photons
        if photons is image and out is None:
            photons = np.array(image, dtype=np.float64)
        elif photons is image:
            out[...] = image
            photons = out
        if n_below:
            photons[below] = 0.0
        if self.variance is not None:
            photons += self.variance
        return photons

    def extra_at(self, pix_coord):
        """The read noise's ``v`` at the pixels ``pix_coord`` (pixels x
        ndim, integer coordinates), or None without read noise."""
        if self.variance is None:
            return None
        if np.ndim(self.variance) == 0:
            return np.full(len(pix_coord), float(self.variance))
        index = tuple(pix_coord.T.astype(np.int64))
        return np.ascontiguousarray(self.variance[index], dtype=np.float64)

    def below_offset(self):
        """Pixels, over the frames converted so far, whose counts fell below
        the offset."""
        return sum(self._below.values())

    def below_by_frame(self):
        """Frame number -> pixels below the offset, for the frames
        converted so far (a worker's copy sends them back: :meth:`merge`)."""
        return dict(self._below)

    def merge(self, below_by_frame):
        """Count the frames another copy of this camera converted."""
        self._below.update(below_by_frame)


def make_camera(gain, offset, read_noise, frame_shape):
    """A checked :class:`Camera` for frames of ``frame_shape``.

    Raises
    ------
    ValueError
        A gain that is not positive and finite, an offset or read noise that
        is not finite (or a negative read noise), or a map whose shape is
        not a frame's; each names the argument.
    TypeError
        A value that is neither a number nor an array.
    """
    gain = _scalar_or_map("gain", gain, frame_shape)
    if not np.all(gain > 0):
        raise ValueError("gain must be positive (counts per photon); got a "
                         f"value of {np.min(gain)!r}")
    offset = _scalar_or_map("offset", offset, frame_shape)
    variance = None
    if read_noise is not None:
        read_noise = _scalar_or_map("read_noise", read_noise, frame_shape)
        if not np.all(read_noise >= 0):
            raise ValueError("read_noise is a variance in counts^2 and must "
                             f"not be negative; got {np.min(read_noise)!r}")
        variance = read_noise / gain ** 2
    return Camera(gain, offset, variance)


def _scalar_or_map(name, value, frame_shape):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number or an array the shape of a "
                        f"frame, got {value!r}")
    if isinstance(value, numbers.Real):
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return value
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or an array the shape of "
                        f"a frame, got {type(value).__name__}") from None
    if array.ndim == 0:
        return _scalar_or_map(name, float(array), frame_shape)
    if array.shape != tuple(frame_shape):
        raise ValueError(f"{name}: a map must have the shape of a frame, "
                         f"{tuple(frame_shape)}; got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: the map holds NaN or infinite values")
    return np.ascontiguousarray(array)


def pixel_noise(noise, batch):
    """What the kernels take of ``noise`` (``config.Noise``) for a flattened
    batch: whether the estimator is Poisson, and the read noise's extra
    expected photons at the batch's pixels (empty without)."""
    poisson = noise.estimator == "poisson"
    extra = noise.camera.extra_at(batch.pix_coord) \
        if poisson and noise.camera is not None else None
    return poisson, batch.pix_val[:0] if extra is None else extra
