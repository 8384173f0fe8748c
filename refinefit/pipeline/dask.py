"""Refining on a Dask cluster: chunks of frames as tasks.

No pixel data leaves a worker: each task opens the movie from its path
(once per worker process, then cached) and reads the frames of its chunk.
Two kinds of work are sent:

- the chunks of :func:`refinefit.refine_movie` when no parameter is shared
  across frames: a task runs ``refine_leastsq`` on one chunk, exactly as a
  single process does, and returns the packed rows
  (:func:`checkpoint.pack_chunk`); the client commits them as they arrive;
- the passes of the shared-parameter solver ('global', 'particle'): the
  solver maps a function over its chunks of clusters (:func:`engine.map_chunks`)
  and, given a :class:`DaskExecutor`, each chunk is a task. The
  client sums the returned reduced normal equations in chunk order, as one
  process does, so the answer is the same.

A worker process runs one engine call at a time (the engine's thread pool
is shared by the whole process); several Dask threads on a worker overlap their
reads with the engine. The first refinefit task on a worker raises its glibc
``malloc`` thresholds (:mod:`refinefit.pipeline.memory`): Dask starts workers
with settings that make every chunk fault its memory in anew. A worker also
keeps the engine's buffers (:mod:`refinefit.solvers.scratch`) between its tasks:
those of its largest chunk so far: its frames and 3-4 kB a feature.
"""
import copy
import json
import os
import threading
import uuid
import warnings
from collections import OrderedDict
from dataclasses import dataclass

from ..io.frames import as_kernel_image
from ..io.movies import FrameSelection, open_movie
from ..problem.camera import BelowOffsetWarning
from ..solvers.scratch import Scratch
from .chunk import numba_threads, refine_read_chunk
from .memory import keep_freed_memory

INSTALL_HINT = "pip install 'refinefit[dask]'"
_ENGINE_LOCK = threading.Lock()
_SCRATCH = Scratch()  # per worker process; used under _ENGINE_LOCK
_MOVIES_LOCK = threading.Lock()
_MOVIES = OrderedDict()  # per worker process: MovieSpec -> (movie, lock)
_MAX_OPEN_MOVIES = 4


def import_distributed():
    """The ``distributed`` package, or an ImportError saying what to
    install."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"running on a Dask scheduler needs Dask's "
                          f"distributed package ({exc}); install it with: "
                          f"{INSTALL_HINT}") from None
    return distributed


def connect(address, timeout=10.0):
    """A ``distributed.Client`` connected to the scheduler at ``address``.

    Raises
    ------
    ImportError
        Dask is not installed.
    OSError
        The scheduler cannot be reached within ``timeout`` seconds.
    """
    import asyncio  # with Dask only: not on the command's start-up path

    distributed = import_distributed()
    try:
        client = distributed.Client(address, timeout=timeout,
                                    set_as_default=False)
    except (OSError, TimeoutError, asyncio.TimeoutError) as exc:
        raise OSError(f"cannot reach the Dask scheduler at {address!r} "
                      f"within {timeout:g} s ({' '.join(str(exc).split())})"
                      ) from None
    except ValueError as exc:
        raise ValueError(f"scheduler address {address!r}: {exc}") from None
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (OSError, TimeoutError, asyncio.TimeoutError):
        client.close()
        raise OSError(f"the Dask scheduler at {address!r} has no workers "
                      f"(waited {timeout:g} s)") from None
    return client


class ClusterError(OSError):
    """The cluster lost work it could not redo (its tasks were cancelled,
    or they killed too many workers)."""


def _cluster_failures(distributed):
    import asyncio

    from distributed.client import FutureCancelledError

    return (FutureCancelledError, distributed.KilledWorker,
            asyncio.CancelledError)


def check_client(client):
    """TypeError unless ``client`` is a ``distributed.Client``."""
    distributed = import_distributed()
    if not isinstance(client, distributed.Client):
        raise TypeError(f"client must be a dask.distributed.Client, got "
                        f"{type(client).__name__}")
    if client.status not in ("running", "connecting", "newly-created"):
        raise ValueError(f"client: the Dask client is {client.status}")


@dataclass(frozen=True)
class MovieSpec:
    """How a worker opens the movie: its path, the frame dimensionality,
    what of each frame is refined (channel, luminance, inverted), and the
    identity the client saw (a worker that sees another file at
    that path refuses to work on it)."""

    path: str
    frame_ndim: int
    identity: str  # JSON of the movie's identity() on the client
    selection: FrameSelection = FrameSelection()

    @classmethod
    def of(cls, path, frame_ndim, movie, selection=FrameSelection()):
        return cls(os.path.abspath(path), int(frame_ndim),
                   _identity_text(movie), selection)

    def open(self):
        """The movie and its read lock, cached per worker process."""
        with _MOVIES_LOCK:
            cached = _MOVIES.get(self)
            if cached is not None:
                _MOVIES.move_to_end(self)
            else:
                try:
                    movie = open_movie(
                        self.path, frame_ndim=self.frame_ndim,
                        channel=self.selection.channel,
                        grey=self.selection.grey,
                        invert=self.selection.invert)
                except (OSError, ValueError) as exc:
                    raise ValueError(f"a Dask worker cannot open the movie: "
                                     f"{exc}") from None
                if _identity_text(movie) != self.identity:
                    movie.close()
                    raise ValueError(
                        f"the movie at {self.path!r} on a Dask worker is not "
                        "the client's file (size, modification time, shape "
                        "or dtype differ)")
                if len(_MOVIES) >= _MAX_OPEN_MOVIES:
                    # not closed here: another thread may be reading it;
                    # its file closes when the last reference goes
                    _MOVIES.popitem(last=False)
                cached = _MOVIES[self] = (movie, threading.Lock())
            return cached

    def read(self, frame_numbers):
        movie, lock = self.open()
        with lock:
            return movie, movie.read(list(frame_numbers))


def _identity_text(movie):
    """The movie's identity without its path: a shared file system may be
    mounted elsewhere on a worker."""
    identity = movie.identity()
    if isinstance(identity, dict):
        identity = {k: v for k, v in identity.items() if k != "path"}
    return json.dumps(identity, sort_keys=True, default=str)


def _engine_threads(threads):
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    if threads is not None and threads > limit:
        raise ValueError(f"threads: {threads} is more than this Dask "
                         f"worker's Numba limit of {limit}")
    return numba_threads(threads)


# --- refine_movie's chunks -------------------------------------------------

def refine_movie_chunks(client, spec, table, chunks, todo, fit_options,
                        threads):
    """Refine ``chunks[k]`` for every ``k`` in ``todo`` on the cluster;
    yields ``(k, packed)`` as tasks finish (in any order).

    A task whose worker dies is run again by Dask on another worker; the
    tasks still pending when the caller stops iterating are cancelled.
    """
    distributed = import_distributed()
    run = uuid.uuid4().hex[:8]
    futures = {}
    for k in todo:
        frame_ids, rows = chunks[k]
        future = client.submit(
            _refine_movie_chunk, spec, frame_ids, rows, table.iloc[rows],
            fit_options, threads, key=f"refinefit-chunk-{k:06d}-{run}",
            pure=False)
        futures[future] = k
    try:
        for future in distributed.as_completed(futures):
            k = futures[future]
            try:
                packed, n_below = future.result()
            except _cluster_failures(distributed) as exc:
                raise ClusterError(
                    f"the Dask cluster lost the task of chunk {k} (frames "
                    f"{chunks[k][0][0]} to {chunks[k][0][-1]}): "
                    f"{type(exc).__name__}: {exc}") from None
            if n_below:  # (the run's one warning sums them)
                warnings.warn(BelowOffsetWarning.of(n_below), stacklevel=2)
            yield k, packed
            future.release()
    finally:
        client.cancel([f for f in futures if not f.done()])


def _refine_movie_chunk(spec, frame_ids, rows, table, fit_options, threads):
    """One chunk on a worker: as ``refine_movie`` refines it in one
    process. Returns the packed result and the pixels found below the
    camera offset (a worker's warnings never reach the caller)."""
    keep_freed_memory()
    movie, frames = spec.read(frame_ids)
    with _ENGINE_LOCK, _engine_threads(threads), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        packed = refine_read_chunk(movie, frame_ids, frames, rows, table,
                                   fit_options, _SCRATCH)
    below = [w for w in caught if issubclass(w.category, BelowOffsetWarning)]
    for w in caught:
        if w not in below:
            warnings.warn_explicit(w.message, w.category, w.filename,
                                   w.lineno)
    return packed, sum(w.message.n_pixels for w in below)


# --- the shared-parameter solver's chunks -----------------------------------

class DaskExecutor:
    """Runs the engine's chunk work as tasks on a Dask cluster (see
    :func:`refinefit.solvers.engine.map_chunks`): each task reads its
    chunk's frames from the movie on its worker."""

    def __init__(self, client, spec, threads=None):
        self.client = client
        self.spec = spec
        self.threads = threads
        self.camera = None

    def converted(self, camera):
        """This executor with every frame read turned into photons by
        ``camera`` (a :class:`refinefit.problem.camera.Camera`) on the
        workers; the pixels they find below its offset are counted in
        ``camera``."""
        executor = copy.copy(self)
        executor.camera = camera
        return executor

    def map_chunks(self, work, chunk_frames, chunk_images, payloads):
        """``[work(images, frame_max, cluster_image, payload) ...]`` per
        chunk, in chunk order, each computed on a worker from the frames
        ``chunk_frames[i]`` of the movie."""
        distributed = import_distributed()
        run = uuid.uuid4().hex[:8]
        # each payload goes with its task (not scattered): Dask can then
        # run the task again if its worker dies
        futures = [
            self.client.submit(_map_chunk, self.spec, frames, cluster_image,
                               work, payload, self.threads, self.camera,
                               key=f"refinefit-{work.__name__}-{i:06d}-{run}",
                               pure=False)
            for i, (frames, cluster_image, payload) in enumerate(
                zip(chunk_frames, chunk_images, payloads))]
        try:
            results = self.client.gather(futures)
        except _cluster_failures(distributed) as exc:
            raise ClusterError(f"the Dask cluster lost a chunk of the "
                               f"shared-parameter solver: "
                               f"{type(exc).__name__}: {exc}") from None
        finally:
            self.client.cancel([f for f in futures if not f.done()])
        if self.camera is None:
            return results
        for _, below in results:
            self.camera.merge(below)
        return [result for result, _ in results]


def _map_chunk(spec, frames, cluster_image, work, payload, threads, camera):
    """One chunk's ``work`` on a worker; with a ``camera``, also the pixels
    below its offset in each frame."""
    from ..solvers.engine import frame_maxima

    keep_freed_memory()
    _, raw = spec.read(frames)
    images = [as_kernel_image(frame, spec.frame_ndim) for frame in raw]
    if camera is not None:
        images = [camera.photons(image, frame_no)
                  for image, frame_no in zip(images, frames)]
    with _ENGINE_LOCK, _engine_threads(threads):
        result = work(images, frame_maxima(images), cluster_image, payload)
    if camera is None:
        return result
    return result, camera.below_by_frame()
