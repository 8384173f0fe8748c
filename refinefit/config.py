"""Options in named groups, and every default and tunable in one place.

A refinement is described by five groups, built once per call by
:func:`refinefit.refine_leastsq` and handed down unchanged:

- :class:`Model`: what is fitted (model shape, dimensions, parameter modes,
  mask radius);
- :class:`Solver`: how each cluster is solved (tolerances, limits, the
  solver backend, standard errors);
- :class:`Scipy`: the general optimiser used under inequality constraints,
  with a named ``method`` or a custom model that Numba cannot compile;
- :class:`Chunking`: how many frames and features one solve sees;
- :class:`Noise`: the estimator (least squares or Poisson maximum
  likelihood) and the camera that turns counts into photons.

Values no argument sets (chunk sizes of the engine and of
:func:`refinefit.refine_movie`, the solver's dense limit, table batch sizes)
are read from :func:`current`, a process-wide :class:`Config`. Change them
for a block of code with :func:`override`; every value is documented below.
"""
import contextlib
import dataclasses
import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Model:
    """What is fitted: the same for every cluster of a call."""

    model_id: int          # kernels.models: GAUSS, DISC, RING, ... or custom
    continuous: bool       # the shape has no edge (derivatives everywhere)
    ndim: int              # 2 or 3 position columns
    n_size: int            # 1 (isotropic) or ndim size parameters
    modes: np.ndarray      # kernels.codes mode of every parameter
    radius: tuple          # mask radius per axis
    custom: object = None  # a custom fit function's Model (scipy path only)

    @property
    def literals(self):
        """The arguments kernels specialise on, in their order
        (``kernels.jit.LITERALS``)."""
        return self.ndim, self.n_size, self.model_id, self.continuous


@dataclass(frozen=True)
class Solver:
    """How each cluster is solved."""

    tol: float = 1e-6          # relative cost reduction at convergence
    max_eval: int = 100        # model evaluations per solve
    max_iter: int = 10         # solves while re-centring masks
    max_shift: float = 1.0     # re-centre masks of features that moved more
    max_rms_dev: float = 1.0   # fits whose cost exceeds this failed
    dense_limit: int = 48      # more unknowns: sparse conjugate gradients
    with_error: bool = False   # standard errors of the fitted parameters
    backend: str = "numba"     # a name in solvers.backend.BACKENDS


@dataclass(frozen=True)
class Noise:
    """What the pixels count and how the fit weighs them."""
    estimator: str = "lsq"     # "lsq" (least squares) or "poisson"
    camera: object = None      # problem.camera.Camera under "poisson"


@dataclass(frozen=True)
class Scipy:
    """The general optimiser's choices (see solvers/scipy_path.py)."""

    method: str = None         # None: the Numba engine alone
    method_given: bool = False  # False: SLSQP only as trackpy's default
    constraints: tuple = ()
    options: tuple = ()        # (key, value) pairs passed to minimize
    residual_factor: float = 100000.0


@dataclass(frozen=True)
class Chunking:
    """Frames and features one solve of the engine sees at most (whole
    frames always; a frame with more features is one chunk)."""

    features: int = 50_000
    frames: int = 64
    pixels: int = 32_000_000   # frames held at once: 256 MB as float64


@dataclass(frozen=True)
class MovieChunking:
    """Chunks of :func:`refinefit.refine_movie` when ``chunk_frames`` is not
    given: at most ``features`` features, ``max_frames`` frames and about
    ``frame_bytes`` bytes of frames each, all times ``scale``. By default
    ``scale`` is the run's Numba threads // 2 (these limits suit 2 threads),
    and 1 with a Dask client without ``threads`` or in the 'frame' mode,
    whose results depend on the chunks."""

    frame_bytes: int = 16 * 2 ** 20
    features: int = 10_000
    max_frames: int = 64
    scale: int = None


@dataclass(frozen=True)
class Tables:
    """Row batches of the feature and result tables (refinefit.io.tables)."""

    read_batch: int = 2 ** 16          # rows decoded at a time
    csv_stream_bytes: int = 64 * 2 ** 20  # larger CSV files are streamed
    row_group: int = 2 ** 17           # rows per Parquet row group written


@dataclass(frozen=True)
class Settings:
    """Everything the engine needs besides the data."""

    model: Model
    solver: Solver = Solver()
    scipy: Scipy = Scipy()
    chunking: Chunking = Chunking()
    noise: Noise = Noise()

    def replace(self, **groups):
        """A copy with fields of groups changed: ``replace(solver=dict(
        tol=1e-9))``."""
        return dataclasses.replace(self, **{
            name: dataclasses.replace(getattr(self, name), **changes)
            for name, changes in groups.items()})


@dataclass(frozen=True)
class Config:
    """Process-wide defaults that no argument of a call sets."""

    solver: Solver = field(default_factory=Solver)
    chunking: Chunking = field(default_factory=Chunking)
    movie: MovieChunking = field(default_factory=MovieChunking)
    tables: Tables = field(default_factory=Tables)


_lock = threading.Lock()
_config = Config()


def current():
    """The :class:`Config` in effect."""
    return _config


@contextlib.contextmanager
def override(**groups):
    """Change defaults for the duration of a ``with`` block, process-wide
    (threads and lanes included; Dask workers get the chunks the calling
    process plans). Groups are named as in :class:`Config`, their fields as
    in the group's class::

        with refinefit.config.override(chunking=dict(frames=2)):
            refinefit.refine_leastsq(...)   # solves of at most 2 frames

    Raises TypeError for a group or field that does not exist.
    """
    global _config
    with _lock:
        previous = _config
        changes = {}
        for name, values in groups.items():
            if not hasattr(previous, name):
                raise TypeError(f"override: no config group {name!r}; groups: "
                                f"{[f.name for f in dataclasses.fields(Config)]}")
            group = getattr(previous, name)
            known = {f.name for f in dataclasses.fields(group)}
            unknown = set(values) - known
            if unknown:
                raise TypeError(f"override: {name} has no field(s) "
                                f"{sorted(unknown)}; fields: {sorted(known)}")
            changes[name] = dataclasses.replace(group, **values)
        _config = dataclasses.replace(previous, **changes)
    try:
        yield _config
    finally:
        with _lock:
            _config = previous
