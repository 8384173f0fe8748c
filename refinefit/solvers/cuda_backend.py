"""The CUDA backend: each cluster's Levenberg-Marquardt solve on an NVIDIA
GPU (``kernels/gpu.py``), with the contract of
:func:`refinefit.solvers.backend.solve_batch`.

The GPU takes the clusters of a built-in model with no more unknowns than
the solver's dense limit, under either estimator; the others (large
clusters, custom models) are solved on the CPU in the same call, with a
:class:`CPUFallbackWarning`. Standard errors are those of the CPU backend
(the sandwich covariance of ``kernels/covariance.py``, or the Cramer-Rao
bound), computed on the GPU.
"""
import warnings

import numpy as np

from ..kernels.codes import BLANK, MODE_CLUSTER, MODE_VAR
from ..kernels.custom import CUSTOM_BASE
from ..problem.camera import pixel_noise
from .result import empty_solution, store

INSTALL_HINT = "pip install 'refinefit[cuda]'"


class CPUFallbackWarning(UserWarning):
    """Clusters that ``device='cuda'`` solved on the CPU instead."""


class NoGPUError(RuntimeError):
    """``device='cuda'`` without a usable GPU or driver."""


def cuda_module():
    """numba's CUDA module, checked to have a GPU (or the simulator).

    Raises
    ------
    ImportError
        numba-cuda is not installed (the message says what to install).
    NoGPUError
        No usable GPU or driver (the message says what numba-cuda found).
    """
    try:
        from numba import cuda
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(f"device='cuda' needs numba-cuda: {INSTALL_HINT} "
                          f"({exc})") from None
    if not cuda.is_available():
        try:
            cuda.detect()
            why = "no CUDA GPU was found"
        except Exception as exc:  # the driver's own words
            why = f"{type(exc).__name__}: {exc}"
        raise NoGPUError(f"device='cuda': no usable NVIDIA GPU or driver "
                           f"({why}); use device='cpu'")
    return cuda


def solve_batch_cuda(batch, start, lower, upper, cluster_ids, settings):
    """Bounded Levenberg-Marquardt on the GPU, one thread per cluster."""
    from .backend import solve_batch_numba

    n_clusters = len(batch.cluster_feat_off) - 1
    result = empty_solution(start, n_clusters, BLANK)
    model, solver = settings.model, settings.solver
    modes = np.asarray(model.modes, dtype=np.int64)
    n_cl = int(np.count_nonzero(modes == MODE_CLUSTER))
    n_var = int(np.count_nonzero(modes == MODE_VAR))
    n_feat = np.diff(batch.cluster_feat_off)[cluster_ids]
    on_gpu = ((n_cl + n_feat * n_var <= solver.dense_limit)
              & (model.model_id < CUSTOM_BASE))
    gpu_ids = np.ascontiguousarray(cluster_ids[on_gpu])
    cpu_ids = np.ascontiguousarray(cluster_ids[~on_gpu])
    if len(cpu_ids):
        warnings.warn(
            f"device='cuda': {len(cpu_ids)} cluster(s) solved on the CPU "
            f"(more than {solver.dense_limit} unknowns, or a custom model)",
            CPUFallbackWarning, stacklevel=4)
        _store_clusters(result, solve_batch_numba(
            batch, start, lower, upper, cpu_ids, settings), cpu_ids, batch)
    if len(gpu_ids):
        _solve_on_gpu(batch, start, lower, upper, gpu_ids, settings, modes,
                      n_cl, n_var, result)
    return result


def _store_clusters(result, part, ids, batch):
    """Clusters ``ids`` of the batch-wide solution ``part`` into
    ``result``."""
    off = batch.cluster_feat_off
    rows = np.concatenate([np.arange(off[c], off[c + 1]) for c in ids])
    store(result, part._replace(
        params=part.params[rows], std=part.std[rows], cost=part.cost[ids],
        status=part.status[ids], iterations=part.iterations[ids],
        deviance=None if part.deviance is None else part.deviance[ids]),
        ids, rows)


def _solve_on_gpu(batch, start, lower, upper, ids, settings, modes, n_cl,
                  n_var, result):
    from ..kernels import gpu

    cuda = cuda_module()
    n_params = len(modes)
    slot = np.full(n_params, -1, dtype=np.int64)
    slot[modes == MODE_CLUSTER] = np.arange(n_cl)
    slot[modes == MODE_VAR] = np.arange(n_var)
    n_unk = n_cl + np.diff(batch.cluster_feat_off)[ids] * n_var
    n_pix = np.diff(batch.cluster_pix_off)[ids]
    sizes = gpu.scratch_size(n_unk, n_pix, n_params)
    scratch_off = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    int_sizes = gpu.int_scratch_size(n_unk)
    int_off = np.r_[0, np.cumsum(int_sizes)].astype(np.int64)
    poisson, extra = pixel_noise(settings.noise, batch)
    n_clusters = len(result.cost)

    # one stream per call: the lanes of refine_movie (threads) each copy
    # and solve on their own, so that one's copies overlap another's solve
    stream = cuda.stream()

    def to(array):
        return cuda.to_device(array, stream=stream)

    params_out = to(start)
    sumsq = to(np.full(n_clusters, np.nan))
    deviance = to(np.full(n_clusters, np.nan))
    status = to(result.status)
    n_eval = to(np.zeros(n_clusters, dtype=np.int64))
    with_error = bool(settings.solver.with_error)
    std = to(result.std if with_error else result.std[:1])
    blocks = (len(ids) + gpu.THREADS_PER_BLOCK - 1) // gpu.THREADS_PER_BLOCK
    gpu.solve_kernel[blocks, gpu.THREADS_PER_BLOCK, stream](
        to(ids), to(batch.pix_val.astype(np.float64, copy=False)),
        to(extra if len(extra) else np.zeros(1)), to(batch.pix_coord),
        to(batch.cluster_pix_off), to(batch.entry_pix),
        to(batch.feat_entry_off), to(batch.cluster_feat_off), to(start),
        to(lower), to(upper), to(modes), to(slot), n_cl, n_var,
        settings.model.ndim, settings.model.n_size, settings.model.model_id,
        bool(settings.model.continuous), bool(poisson), len(extra) > 0,
        float(settings.solver.tol), int(settings.solver.max_eval),
        cuda.device_array(int(scratch_off[-1]), dtype=np.float64,
                          stream=stream),
        to(scratch_off[:-1]),
        cuda.device_array(max(int(int_off[-1]), 1), dtype=np.int64,
                          stream=stream),
        to(int_off[:-1]), params_out, sumsq, deviance, status, n_eval,
        with_error, std)
    params, cost, codes, evaluations, per_dof, errors = (
        array.copy_to_host(stream=stream)
        for array in (params_out, sumsq, status, n_eval, deviance, std))
    stream.synchronize()
    off = batch.cluster_feat_off
    rows = np.concatenate([np.arange(off[c], off[c + 1]) for c in ids])
    result.params[rows] = params[rows]
    result.cost[ids] = cost[ids]
    result.status[ids] = codes[ids]
    result.iterations[ids] = evaluations[ids]
    if poisson:
        result.deviance[ids] = per_dof[ids]
    if with_error:
        result.std[rows] = errors[rows]
