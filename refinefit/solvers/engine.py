"""Batches of clusters: flatten masks frame by frame, solve, re-centre.

Features arrive sorted by cluster, clusters sorted by frame. Frames are read
in chunks; each chunk is one flattened batch that the Numba solver refines in
parallel. Masks are rebuilt around the new positions for the clusters whose
features moved more than ``max_shift`` (at most ``max_iter`` solves): Python
runs once per chunk and re-centring round, never per cluster or pixel.
"""
from dataclasses import dataclass

import numpy as np

from ..io.chunks import plan_frames
from ..io.frames import KERNEL_DTYPES
from ..kernels import (
    CONVERGED,
    MODE_CLUSTER,
    MODE_VAR,
    count_mask_pixels,
    fill_mask_pixels,
)
from ..problem.camera import pixel_noise
from .backend import solve_batch
from .lockstep import Unsupported, solve_constrained
from .reduction import errors_at
from .result import Solution, empty_solution, judge, store
from .scipy_path import MAX_GROUP, solve_groups
from .scratch import active_scratch, reused_buffers


@dataclass
class FlatBatch:
    """Masks of a batch of clusters, concatenated (see kernels.masks)."""

    pix_val: np.ndarray
    pix_coord: np.ndarray
    cluster_pix_off: np.ndarray
    entry_pix: np.ndarray
    feat_entry_off: np.ndarray
    cluster_feat_off: np.ndarray


def _shape3(image):
    return np.array((1,) + image.shape if image.ndim == 2 else image.shape,
                    dtype=np.int64)


@dataclass(frozen=True)
class Frames:
    """Frames concatenated once for the mask kernels: frame ``i`` is
    ``values[offsets[i]:offsets[i + 1]]`` in C order, of shape
    ``shapes3[i]`` (2D frames as depth 1)."""

    values: np.ndarray
    offsets: np.ndarray
    shapes3: np.ndarray


def concat_frames(images, scratch=None):
    """:class:`Frames` of a list of images; the concatenation goes into
    ``scratch`` (see :mod:`refinefit.solvers.scratch`) when given."""
    shapes3 = np.array([_shape3(image) for image in images],
                       dtype=np.int64).reshape(len(images), 3)
    offsets = np.zeros(len(images) + 1, dtype=np.int64)
    np.cumsum([image.size for image in images], out=offsets[1:])
    if len(images) == 1:
        values = images[0].ravel()
    elif not images:
        values = np.empty(0)
    elif _back_to_back(images):  # consecutive frames of one array
        first = images[0]
        values = np.lib.stride_tricks.as_strided(
            first.reshape(-1), shape=(int(offsets[-1]),),
            strides=(first.itemsize,), writeable=first.flags.writeable)
    else:
        dtype = np.result_type(*images)  # mixed types: what holds both
        if dtype not in KERNEL_DTYPES:
            dtype = np.dtype(np.float64)
        values = np.concatenate([image.ravel() for image in images],
                                out=_empty(scratch, "frames", offsets[-1],
                                           dtype))
    return Frames(values, offsets, shapes3)


def _back_to_back(images):
    """Whether ``images`` lie back to back in the memory of one array (a
    movie's consecutive frames, a mapped file's included), so that one view
    spans them all: same native dtype and writeability, C-contiguous, each
    starting where the one before ends, all views of the same buffer."""
    first = images[0]
    if not first.dtype.isnative:
        return False
    address = first.__array_interface__["data"][0]
    owner = _owner(first)
    for image in images:
        if (image.dtype != first.dtype or not image.flags.c_contiguous
                or image.flags.writeable != first.flags.writeable
                or image.__array_interface__["data"][0] != address
                or _owner(image) is not owner):
            return False
        address += image.nbytes
    return True


def _owner(array):
    """The object whose memory ``array`` views (itself if it owns it)."""
    while isinstance(array, np.ndarray) and array.base is not None:
        array = array.base
    return array


def _empty(scratch, name, shape, dtype=np.float64):
    """``np.empty``, from buffer ``name`` of ``scratch`` if given."""
    if scratch is None:
        return np.empty(shape, dtype)
    return scratch.empty(name, shape, dtype)


def flatten_masks(images, cluster_image, cluster_feat_off, centres, radius,
                  scratch=None):
    """Build a :class:`FlatBatch`; ``cluster_image`` indexes ``images`` (a
    list of images, or :class:`Frames`).

    The images are concatenated once, so that each kernel is one parallel
    loop over all clusters of the batch. With ``scratch``, the batch's
    arrays are taken from it: valid until the next batch from that scratch.
    """
    ndim = centres.shape[1]
    n_clusters = len(cluster_feat_off) - 1
    radius3 = np.array(((1.0,) if ndim == 2 else ()) + tuple(radius), float)
    frames = images if isinstance(images, Frames) else concat_frames(images)
    pixels, image_off, shapes3 = frames.values, frames.offsets, frames.shapes3
    ids = np.arange(n_clusters, dtype=np.int64)
    cluster_image = np.ascontiguousarray(cluster_image, dtype=np.int64)
    cluster_n_pix = np.zeros(n_clusters, dtype=np.int64)
    feat_n_entries = np.zeros(len(centres), dtype=np.int64)
    if n_clusters:
        count_mask_pixels(pixels, image_off, shapes3, cluster_image, ndim,
                          centres, cluster_feat_off, ids, radius3,
                          cluster_n_pix, feat_n_entries)
    cluster_pix_off = np.zeros(n_clusters + 1, dtype=np.int64)
    np.cumsum(cluster_n_pix, out=cluster_pix_off[1:])
    feat_entry_off = np.zeros(len(centres) + 1, dtype=np.int64)
    np.cumsum(feat_n_entries, out=feat_entry_off[1:])
    pix_val = _empty(scratch, "pix_val", cluster_pix_off[-1])
    pix_coord = _empty(scratch, "pix_coord", (cluster_pix_off[-1], ndim))
    entry_pix = _empty(scratch, "entry_pix", feat_entry_off[-1], np.int64)
    if n_clusters:
        fill_mask_pixels(pixels, image_off, shapes3, cluster_image, ndim,
                         centres, cluster_feat_off, ids, radius3,
                         cluster_pix_off, feat_entry_off, pix_val, pix_coord,
                         entry_pix)
    return FlatBatch(pix_val, pix_coord, cluster_pix_off, entry_pix,
                     feat_entry_off, cluster_feat_off)


def _member_index(cluster_feat_off, clusters):
    """Feature indices of ``clusters`` and the offsets of the sub-batch."""
    sizes = cluster_feat_off[clusters + 1] - cluster_feat_off[clusters]
    sub_off = np.zeros(len(clusters) + 1, dtype=np.int64)
    np.cumsum(sizes, out=sub_off[1:])
    starts = np.repeat(cluster_feat_off[clusters] - sub_off[:-1], sizes)
    return starts + np.arange(sub_off[-1]), sub_off


def uses_scipy(cluster_sizes, settings):
    """Which clusters go to scipy: all with a ``method``, else those a
    constraint applies to (its ``cluster_size``, or every size if unset)."""
    if settings.scipy.method is None:
        return np.zeros(len(cluster_sizes), dtype=bool)
    if settings.model.custom is not None or not settings.scipy.constraints or any(
            c["cluster_size"] is None for c in settings.scipy.constraints):
        return np.ones(len(cluster_sizes), dtype=bool)
    return np.isin(cluster_sizes,
                   [c["cluster_size"] for c in settings.scipy.constraints])


def scipy_groups(ids, cluster_image, cluster_sizes, settings):
    """Batches for scipy: clusters of one frame and size, at most MAX_GROUP
    of them; single clusters when a constraint has no cluster_size (it then
    sees one cluster at a time, as in trackpy)."""
    if any(c["cluster_size"] is None for c in settings.scipy.constraints):
        return [ids[i:i + 1] for i in range(len(ids))]
    groups = []
    keys = np.stack([cluster_image[ids], cluster_sizes[ids]], axis=1)
    _, inverse = np.unique(keys, axis=0, return_inverse=True)
    for key in range(inverse.max() + 1 if len(ids) else 0):
        same = ids[inverse.ravel() == key]
        groups += [same[i:i + MAX_GROUP] for i in range(0, len(same), MAX_GROUP)]
    return groups


def _solve_round(batch, start, lower, upper, on_scipy, cluster_image,
                 frame_max, settings):
    """Solve every cluster of ``batch`` once: on the solver backend, or with
    scipy where ``on_scipy``. Returns a :class:`Solution` whose ``cost`` is
    the sum of squared residuals."""
    n_clusters = len(batch.cluster_feat_off) - 1
    sizes = np.diff(batch.cluster_feat_off)
    result = solve_batch(batch, start, lower, upper,
                         np.nonzero(~on_scipy)[0], settings)
    out, sumsq, status, std, n_eval, _ = result
    scipy_ids = np.nonzero(on_scipy)[0]
    if len(scipy_ids) and _lockstep_possible(settings):
        scipy_ids = _solve_lockstep(scipy_ids, batch, start, lower, upper,
                                    sizes, settings, result)
    if len(scipy_ids):
        groups = scipy_groups(scipy_ids, cluster_image, sizes, settings)
        scipy = solve_groups(groups, batch, start, lower, upper,
                             settings.model.modes, settings, frame_max[cluster_image])
        rows = np.repeat(np.isin(np.arange(n_clusters), scipy_ids), sizes)
        out[rows] = scipy.params[rows]
        std[rows] = scipy.std[rows]
        if settings.solver.with_error and settings.model.custom is None \
                and not settings.scipy.constraints:
            # a named method: the engine's covariance at scipy's optimum,
            # computed in the kernel (bound-held unknowns excepted)
            errors = errors_at(batch, scipy_ids, out, lower, upper, settings)
            std[rows] = np.where(np.isnan(errors[rows]), std[rows],
                                 errors[rows])
        sumsq[scipy_ids] = scipy.cost[scipy_ids]
        status[scipy_ids] = scipy.status[scipy_ids]
        n_eval[scipy_ids] = scipy.iterations[scipy_ids]
    if settings.noise.estimator == "poisson":
        deviance_outside_engine(batch, result, np.nonzero(on_scipy)[0],
                                settings)
    return result


def deviance_outside_engine(batch, result, ids, settings):
    """Under the Poisson estimator, clusters ``ids`` of ``result`` solved
    under constraints or by scipy have the deviance as their cost: as the
    engine reports them, their cost becomes the sum of squared residuals at
    the fit (``batch``'s pixels), and the deviance goes per degree of
    freedom to ``deviance`` (in place)."""
    if not len(ids):
        return
    from .scipy_path import model_image

    model, excluded = model_image(batch, result.params, settings)
    _, extra = pixel_noise(settings.noise, batch)
    n_clusters = len(batch.cluster_feat_off) - 1
    pixel_cluster = np.repeat(np.arange(n_clusters),
                              np.diff(batch.cluster_pix_off))
    resid = model + (extra if len(extra) else 0.0) - batch.pix_val
    valid = ~excluded
    sumsq = np.bincount(pixel_cluster, weights=np.where(valid, resid ** 2, 0),
                        minlength=n_clusters)
    n_valid = np.bincount(pixel_cluster, weights=valid, minlength=n_clusters)
    modes = settings.model.modes
    n_unknowns = (np.count_nonzero(modes == MODE_CLUSTER)
                  + np.diff(batch.cluster_feat_off)
                  * np.count_nonzero(modes == MODE_VAR))
    dof = n_valid - n_unknowns
    with np.errstate(invalid="ignore", divide="ignore"):
        result.deviance[ids] = np.where(dof[ids] > 0,
                                        result.cost[ids] / dof[ids], np.nan)
    result.cost[ids] = np.where(np.isfinite(result.cost[ids]), sumsq[ids],
                                result.cost[ids])


def _lockstep_possible(settings):
    """Equality constraints tied to a cluster size, and no named method."""
    return (not settings.scipy.method_given and settings.model.custom is None
            and bool(settings.scipy.constraints)
            and all(c["type"] == "eq" and c["cluster_size"] is not None
                    for c in settings.scipy.constraints))


def _solve_lockstep(ids, batch, start, lower, upper, sizes, settings,
                    result):
    """Constrained clusters of each size, all at once on the Numba engine
    (lockstep.py), written into ``result``; returns the ids left for
    scipy: those of unsupported constraints, and clusters whose fit could
    not reach the constraints or stalled before a minimum."""
    left = []
    for size in np.unique(sizes[ids]):
        same = ids[sizes[ids] == size]
        constraints = [c for c in settings.scipy.constraints
                       if c["cluster_size"] == size]
        try:
            solved, retry = solve_constrained(same, batch, start, lower,
                                              upper, settings, constraints)
        except Unsupported:
            left.append(same)
            continue
        rows = np.repeat(np.isin(np.arange(len(sizes)), same), sizes)
        result.params[rows] = solved.params[rows]
        result.std[rows] = solved.std[rows]
        result.cost[same] = solved.cost
        result.status[same] = solved.status
        result.iterations[same] = solved.iterations
        left.append(same[retry])
    return np.concatenate(left) if left else ids[:0]


def refine_chunk(images, frame_max, cluster_image, cluster_feat_off, params,
                 lower, upper, settings, centres=None, return_batch=False):
    """Refine one chunk of clusters whose frames are all in ``images``.

    Masks are centred on ``centres`` (features x ndim; default the positions
    in ``params``) and rebuilt around features that move farther than
    ``settings.solver.max_shift``; the final centres are in ``centres`` on return
    when it is given.

    Returns
    -------
    Solution
        ``cost`` is the rms residual in units of the frame maximum, NaN
        where the fit failed; ``std`` is NaN unless ``settings.solver.with_error``.
    batch : FlatBatch or None
        With ``return_batch`` (then a pair is returned): the masks of every
        cluster at the final centres, when one solve sufficed (else None).
    """
    n_clusters = len(cluster_feat_off) - 1
    pos = slice(2, 2 + settings.model.ndim)
    current = params.copy()
    std = np.full_like(params, np.nan)
    if centres is None:
        centres = np.ascontiguousarray(params[:, pos])
    sumsq = np.full(n_clusters, np.nan)
    deviance = np.full(n_clusters, np.nan)
    n_pix = np.zeros(n_clusters, dtype=np.int64)
    status = np.full(n_clusters, CONVERGED, dtype=np.int64)
    iterations = np.zeros(n_clusters, dtype=np.int64)
    cluster_sizes = np.diff(cluster_feat_off)
    scipy_cluster = uses_scipy(cluster_sizes, settings)
    active = np.arange(n_clusters, dtype=np.int64)
    final_batch = None
    # a returned batch must outlive the call: no scratch then
    scratch = None if return_batch else active_scratch()
    frames = concat_frames(images, scratch)
    for round_no in range(max(settings.solver.max_iter, 1)):
        members, sub_off = _member_index(cluster_feat_off, active)
        batch = flatten_masks(frames, cluster_image[active], sub_off,
                              np.ascontiguousarray(centres[members]),
                              settings.model.radius, scratch)
        out, sub_sumsq, sub_status, sub_std, sub_iter, sub_dev = _solve_round(
            batch, np.ascontiguousarray(current[members]),
            np.ascontiguousarray(lower[members]),
            np.ascontiguousarray(upper[members]), scipy_cluster[active],
            cluster_image[active], frame_max, settings)
        current[members] = out
        if settings.solver.with_error:
            std[members] = sub_std
        sumsq[active] = sub_sumsq
        deviance[active] = sub_dev
        status[active] = sub_status
        iterations[active] += sub_iter
        n_pix[active] = np.diff(batch.cluster_pix_off)
        shift2 = np.sum((out[:, pos] - centres[members]) ** 2, axis=1)
        moved = (np.maximum.reduceat(shift2, sub_off[:-1])
                 >= settings.solver.max_shift ** 2)
        again = moved & (sub_status == CONVERGED)
        redo = np.repeat(again, np.diff(sub_off))
        centres[members[redo]] = out[redo][:, pos]
        active = active[again]
        if len(active) == 0:
            if round_no == 0:
                final_batch = batch
            break
    with np.errstate(invalid="ignore", divide="ignore"):
        cost = np.sqrt(sumsq / n_pix) / frame_max[cluster_image]
    cost, status = judge(cost, status, settings.solver.max_rms_dev)
    deviance = None if settings.noise.estimator != "poisson" \
        else np.where(np.isnan(cost), np.nan, deviance)
    solution = Solution(current, cost, status, std, iterations, deviance)
    if return_batch:
        return solution, final_batch
    return solution


def plan_chunks(frame_shape, cluster_frames, cluster_feat_off, settings):
    """Chunks of whole frames: ``(c0, c1, frames, cluster_image)`` for
    clusters ``c0:c1``, the frame numbers they need and each cluster's index
    into those frames.

    ``cluster_frames`` holds each cluster's frame number (non-decreasing).
    A chunk holds at most ``chunk_frames`` frames and ``chunk_pixels``
    pixels, and (unless one frame has more) at most ``chunk_features``
    features.
    """
    frame_pixels = max(int(np.prod(frame_shape)), 1)
    max_frames = max(1, min(settings.chunking.frames,
                            settings.chunking.pixels // frame_pixels))
    frames, first = np.unique(cluster_frames, return_index=True)
    first = np.r_[first, len(cluster_frames)]  # clusters of frame i: first[i:i + 2]
    features = np.diff(cluster_feat_off[first])
    chunks = []
    for lo, hi in plan_frames(features, max_frames,
                              settings.chunking.features):
        c0, c1 = int(first[lo]), int(first[hi])
        cluster_image = np.repeat(np.arange(hi - lo, dtype=np.int64),
                                  np.diff(first[lo:hi + 1]))
        chunks.append((c0, c1, frames[lo:hi], cluster_image))
    return chunks


def iter_chunks(source, cluster_frames, cluster_feat_off, settings):
    """The chunks of :func:`plan_chunks` with their frames read: yields
    ``(c0, c1, images, frame_max, cluster_image)``."""
    for c0, c1, frames, cluster_image in plan_chunks(
            source.frame_shape, cluster_frames, cluster_feat_off, settings):
        images = source.images(frames)
        yield c0, c1, images, frame_maxima(images), cluster_image


def map_chunks(source, cluster_frames, cluster_feat_off, settings, work,
               payload_of, executor=None):
    """``work(images, frame_max, cluster_image, payload_of(c0, c1))`` for
    every chunk of :func:`plan_chunks`; returns ``(c0, c1, result)`` per
    chunk, in order.

    ``work`` runs here, chunk after chunk, or on ``executor``: an object
    whose ``map_chunks(work, chunk_frames, chunk_images, payloads)`` returns
    the results in chunk order, computed wherever it sends them (e.g.
    :class:`refinefit.pipeline.dask.DaskExecutor`); ``work`` must then be a
    module-level function.
    """
    if executor is None:
        return [(c0, c1, work(images, frame_max, cluster_image,
                              payload_of(c0, c1)))
                for c0, c1, images, frame_max, cluster_image in iter_chunks(
                    source, cluster_frames, cluster_feat_off, settings)]
    plan = plan_chunks(source.frame_shape, cluster_frames, cluster_feat_off,
                       settings)
    results = executor.map_chunks(work, [frames for _, _, frames, _ in plan],
                                  [image for _, _, _, image in plan],
                                  [payload_of(c0, c1) for c0, c1, _, _ in plan])
    return [(c0, c1, result)
            for (c0, c1, _, _), result in zip(plan, results)]


def frame_maxima(images):
    """Maximum of each frame (NaN for an empty or all-NaN frame)."""
    return np.array([_frame_max(image) for image in images])


def refine_sorted(source, cluster_frames, cluster_feat_off, params, lower,
                  upper, settings):
    """Refine all clusters, reading frames chunk by chunk from ``source``
    (see :func:`iter_chunks`).

    Returns
    -------
    Solution
        As :func:`refine_chunk` gives it, for all clusters.
    """
    n_clusters = len(cluster_frames)
    result = empty_solution(params, n_clusters, CONVERGED)
    with reused_buffers():
        for c0, c1, images, frame_max, cluster_image in iter_chunks(
                source, cluster_frames, cluster_feat_off, settings):
            f0, f1 = cluster_feat_off[c0], cluster_feat_off[c1]
            chunk = refine_chunk(
                images, frame_max, cluster_image,
                cluster_feat_off[c0:c1 + 1] - f0, params[f0:f1],
                lower[f0:f1], upper[f0:f1], settings)
            store(result, chunk, slice(c0, c1), slice(f0, f1))
    return result


def _frame_max(image):
    if image.size == 0:
        return np.nan
    top = float(image.max())  # NaN where any pixel is NaN
    if top != top:
        with np.errstate(invalid="ignore"):
            return float(np.nanmax(image)) if not np.all(np.isnan(image)) else np.nan
    return top
