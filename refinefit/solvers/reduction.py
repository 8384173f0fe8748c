"""The reduction kernel over a flattened batch: reduced normal equations of
shared parameters (``shared.py``) and standard errors at a given optimum."""
import numpy as np

from ..kernels import reduce_clusters
from ..kernels.codes import MODE_CLUSTER, MODE_VAR
from ..kernels.shared import STAGE_STD
from ..problem.camera import pixel_noise


def reduce_batch(batch, off, params, lower, upper, settings, kernel_modes,
                 shared_index, stage, offsets=None, sinv_blocks=None,
                 cov_blocks=None, std=None):
    """Run ``kernels.reduce_clusters`` over all clusters of a flattened
    batch (see its docstring for the stages); returns the offsets and the
    kernel's outputs."""
    n_clusters = len(off) - 1
    if offsets is None:
        shared = (shared_index >= 0).any(axis=0)
        n_sh = (np.count_nonzero(shared & (kernel_modes == MODE_CLUSTER))
                + np.diff(off) * np.count_nonzero(
                    shared & (kernel_modes == MODE_VAR)))
        shared_off = np.zeros(n_clusters + 1, dtype=np.int64)
        np.cumsum(n_sh, out=shared_off[1:])
        block_off = np.zeros(n_clusters + 1, dtype=np.int64)
        np.cumsum(n_sh ** 2, out=block_off[1:])
    else:
        shared_off, block_off = offsets
    index = np.empty(shared_off[-1], dtype=np.int64)
    system = np.empty(block_off[-1])
    grad = np.empty(shared_off[-1])
    sumsq = np.empty(n_clusters)
    n_valid = np.empty(n_clusters, dtype=np.int64)
    n_local = np.empty(n_clusters, dtype=np.int64)
    if sinv_blocks is None:
        sinv_blocks = np.empty(0)
    if cov_blocks is None:
        cov_blocks = np.empty(0)
    if std is None:
        std = np.empty((0, params.shape[1]))
    poisson, extra = pixel_noise(settings.noise, batch)
    reduce_clusters(np.arange(n_clusters, dtype=np.int64), batch.pix_val,
                    extra, batch.pix_coord, batch.cluster_pix_off, batch.entry_pix,
                    batch.feat_entry_off, batch.cluster_feat_off,
                    np.ascontiguousarray(params), np.ascontiguousarray(lower),
                    np.ascontiguousarray(upper), kernel_modes,
                    np.ascontiguousarray(shared_index), *settings.model.literals,
                    poisson, settings.solver.dense_limit, stage, shared_off,
                    block_off, index,
                    system, grad, sumsq, n_valid, n_local,
                    np.ascontiguousarray(sinv_blocks, dtype=np.float64),
                    np.ascontiguousarray(cov_blocks, dtype=np.float64), std)
    return shared_off, block_off, index, system, grad, sumsq, n_valid, n_local



def errors_at(batch, ids, params, lower, upper, settings):
    """Standard errors of clusters ``ids`` of ``batch`` at ``params`` (the
    engine's sandwich covariance, ``kernels/covariance.py``), for fits made
    elsewhere (scipy); NaN for constants and clusters that cannot be
    evaluated."""
    n_clusters = len(batch.cluster_feat_off) - 1
    off = batch.cluster_feat_off
    no_shared = np.full(params.shape, -1, dtype=np.int64)
    std = np.full(params.shape, np.nan)
    zeros = np.zeros(n_clusters + 1, dtype=np.int64)
    reduce_batch(batch, off, params, lower, upper, settings,
                 settings.model.modes, no_shared, STAGE_STD,
                 offsets=(zeros, zeros), std=std)
    keep = np.repeat(np.isin(np.arange(n_clusters), ids), np.diff(off))
    std[~keep] = np.nan
    return std
