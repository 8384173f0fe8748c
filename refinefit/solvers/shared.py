"""Parameters shared between clusters: 'global', 'frame' and 'particle'.

The normal equations of such a problem have an arrow shape: independent
blocks per cluster plus the columns of the shared parameters. They are solved
by variable projection with a Schur complement:

1. with the shared values fixed, every cluster is refined on the parallel
   engine (the shared parameters are constants there);
2. a kernel eliminates each cluster's local unknowns from its normal
   equations at that optimum (``kernels/shared.py``); Python sums the reduced
   systems (sparse: a shared unknown couples only the clusters that use it)
   and takes a damped Gauss-Newton step in the shared values;
3. the step is kept if the total sum of squares went down (Levenberg-
   Marquardt damping otherwise), until the predicted change is below ``tol``
   of the cost or the step below ~1% of a standard error.

Every pass reads the frames chunk by chunk, as the per-cluster engine does,
so memory does not grow with the movie. A pass costs one warm-started solve
of every cluster plus one Jacobian evaluation.
"""
import copy
import warnings
from dataclasses import dataclass

import numpy as np

from ..kernels.codes import (
    MODE_CLUSTER,
    MODE_CONST,
    MODE_FRAME,
    MODE_GLOBAL,
    MODE_PARTICLE,
    MODE_VAR,
    SHARED_MODES,
)
from ..kernels.shared import STAGE_MEAT, STAGE_STD, STAGE_SYSTEM
from .engine import flatten_masks, map_chunks, refine_chunk
from .reduction import reduce_batch
from .result import Solution

_MAX_OUTER = 30
_LAMBDA_START = 1e-3
_LAMBDA_MAX = 1e12
_MAX_RELATIVE_STEP = 0.5  # shared signals and sizes: at most 50% a step
_SIGMA_FRACTION = 0.01  # shared steps below this many standard errors stop
_INNER_TOL_FACTOR = 1e-3
_MAX_DENSE_COMPONENT = 3000  # shared unknowns inverted together for errors


@dataclass(frozen=True)
class SharedLayout:
    """Which shared unknown every (feature, parameter) belongs to.

    Attributes
    ----------
    index : ndarray (features x parameters) of int64
        Shared unknown of each entry, -1 for entries that are not shared.
    column : ndarray of int64
        Parameter column of every shared unknown.
    kernel_modes : ndarray
        The modes seen by the reduction kernel: 'global' and 'frame' become
        'cluster' (one value within a cluster), 'particle' becomes 'var'.
    local_modes : ndarray
        The modes of the per-cluster solves: shared parameters are constant.
    """

    index: np.ndarray
    column: np.ndarray
    kernel_modes: np.ndarray
    local_modes: np.ndarray

    @property
    def n_shared(self):
        return len(self.column)


def has_shared(modes):
    return bool(np.isin(modes, SHARED_MODES).any())


def shared_layout(modes, frames, particles=None):
    """Number the shared unknowns of features (in engine order).

    ``frames`` and ``particles`` hold every feature's frame and particle id;
    ``particles`` is needed only for the 'particle' mode.
    """
    modes = np.asarray(modes, dtype=np.int64)
    index = np.full((len(frames), len(modes)), -1, dtype=np.int64)
    column = []
    for j, mode in enumerate(modes):
        if mode == MODE_GLOBAL:
            group = np.zeros(len(frames), dtype=np.int64)
        elif mode in (MODE_FRAME, MODE_PARTICLE):
            keys = frames if mode == MODE_FRAME else particles
            _, group = np.unique(keys, return_inverse=True)
            group = group.ravel().astype(np.int64)
        else:
            continue
        n_groups = int(group.max()) + 1 if len(group) else 0
        index[:, j] = len(column) + group
        column += [j] * n_groups
    kernel_modes = modes.copy()
    kernel_modes[(modes == MODE_GLOBAL) | (modes == MODE_FRAME)] = MODE_CLUSTER
    kernel_modes[modes == MODE_PARTICLE] = MODE_VAR
    local_modes = modes.copy()
    local_modes[np.isin(modes, SHARED_MODES)] = MODE_CONST
    return SharedLayout(index, np.array(column, dtype=np.int64), kernel_modes,
                        local_modes)


@dataclass
class _Pass:
    """One pass over all clusters at fixed shared values."""

    params: np.ndarray
    centres: np.ndarray
    cost: np.ndarray      # per cluster, NaN where failed (engine convention)
    status: np.ndarray
    iterations: np.ndarray
    sumsq: np.ndarray     # per cluster, in the final masks
    ok: np.ndarray        # per cluster: solved and reduced
    system: object        # scipy.sparse.csr_matrix
    grad: np.ndarray
    n_valid: np.ndarray
    n_local: np.ndarray
    blocks: list          # per chunk: (shared_off, block_off, index_out)
    chunk_starts: list    # per chunk: its first cluster


def refine_shared(source, cluster_frames, cluster_feat_off, params, lower,
                  upper, settings, layout, executor=None):
    """Refine clusters coupled by shared parameters.

    Arguments as :func:`engine.refine_sorted`, plus the :class:`SharedLayout`
    and where the chunks run (see :func:`engine.map_chunks`).
    Returns a :class:`Solution` (standard errors NaN unless
    ``settings.solver.with_error``; ``iterations`` those of the last pass).
    """
    theta, theta_lo, theta_hi = _shared_start(params, lower, upper, layout)
    relative = _relative_unknowns(layout.column, settings)
    # after the first pass the locals are solved more tightly than the outer
    # loop stops, so that the total cost compares trial values of the shared
    # parameters cleanly
    first = settings.replace(model=dict(modes=layout.local_modes),
                             solver=dict(with_error=False))
    inner = first.replace(solver=dict(
        tol=max(settings.solver.tol * _INNER_TOL_FACTOR, 1e-13)))
    pos = slice(2, 2 + settings.model.ndim)

    def solve_pass(pass_settings, start, centres):
        return _solve_pass(source, cluster_frames, cluster_feat_off, lower,
                           upper, pass_settings, layout, start, centres,
                           executor)

    state = solve_pass(first, _with_shared(params, theta, layout),
                       np.ascontiguousarray(params[:, pos]))
    lam = _LAMBDA_START
    for _ in range(_MAX_OUTER):
        # stop when the cost changes by less than tol of itself, or, in a
        # large problem, when the step is below ~1% of a standard error
        # (then the predicted change is below 1e-4 residual variances)
        threshold = min(settings.solver.tol * state.sumsq[state.ok].sum(),
                        _SIGMA_FRACTION ** 2 * _pixel_variance(state)
                        * layout.n_shared)
        step, predicted = _shared_step(state.system, state.grad, lam, theta,
                                       theta_lo, theta_hi, relative)
        if predicted <= threshold:
            break
        trial_theta = np.clip(theta + step, theta_lo, theta_hi)
        trial = solve_pass(inner, _with_shared(state.params, trial_theta,
                                               layout), state.centres.copy())
        both = state.ok & trial.ok
        before = state.sumsq[both].sum()
        after = trial.sumsq[both].sum()
        if after < before:
            theta, state = trial_theta, trial
            lam = max(lam / 3.0, 1e-9)
            if before - after <= threshold:
                break
        else:
            lam *= 10.0
            if lam > _LAMBDA_MAX:
                break
    std = np.full_like(params, np.nan)
    if settings.solver.with_error:
        std = _standard_errors(source, cluster_frames, cluster_feat_off,
                               lower, upper, settings, layout, state,
                               executor)
    deviance = None
    if settings.noise.estimator == "poisson":  # (sumsq: the deviance)
        with np.errstate(invalid="ignore", divide="ignore"):
            dof = state.n_valid - state.n_local
            deviance = np.where(state.ok & (dof > 0), state.sumsq / dof,
                                np.nan)
    return Solution(state.params, state.cost, state.status, std,
                    state.iterations, deviance)


def _pixel_variance(state):
    """Mean squared residual per valid pixel of the clusters solved."""
    n_valid = state.n_valid[state.ok].sum()
    return state.sumsq[state.ok].sum() / n_valid if n_valid else 0.0


def _with_shared(params, theta, layout):
    out = params.copy()
    rows, cols = np.nonzero(layout.index >= 0)
    out[rows, cols] = theta[layout.index[rows, cols]]
    return out


def _shared_start(params, lower, upper, layout):
    """Start values (mean over the features) and bounds (widest) of the
    shared unknowns."""
    rows, cols = np.nonzero(layout.index >= 0)
    idx = layout.index[rows, cols]
    n = layout.n_shared
    counts = np.bincount(idx, minlength=n)
    theta = np.bincount(idx, weights=params[rows, cols], minlength=n) / \
        np.maximum(counts, 1)
    lo = np.full(n, np.inf)
    hi = np.full(n, -np.inf)
    np.minimum.at(lo, idx, lower[rows, cols])
    np.maximum.at(hi, idx, upper[rows, cols])
    return np.clip(theta, lo, hi), lo, hi


def _relative_unknowns(column, settings):
    """Shared signals and sizes, whose steps are limited relative to their
    value (as in the per-cluster solver)."""
    first_size = 2 + settings.model.ndim
    return (column == 1) | ((column >= first_size)
                            & (column < first_size + settings.model.n_size))


def _shared_step(system, grad, lam, theta, lo, hi, relative):
    """Damped Gauss-Newton step in the shared values, and the reduction of
    the sum of squares it predicts. Unknowns at a bound whose gradient
    points outwards, and unknowns no cluster constrains, stay fixed."""
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    diag = system.diagonal()
    top = diag.max() if len(diag) else 0.0
    free = (diag > 1e-14 * top) & ~((theta <= lo) & (grad > 0)) \
        & ~((theta >= hi) & (grad < 0))
    step = np.zeros(len(theta))
    if not free.any():
        return step, 0.0
    idx = np.nonzero(free)[0]
    sub = system[idx][:, idx].tocsc()
    damped = sub + sparse.diags(lam * diag[idx], format="csc")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a singular system gives NaN
        solved = np.atleast_1d(spsolve(damped, -grad[idx]))
    if not np.all(np.isfinite(solved)):
        return step, 0.0
    step[idx] = solved
    # signals and sizes change by at most 50% a step
    limit = _MAX_RELATIVE_STEP * np.abs(theta)
    over = relative & (theta > 0) & (np.abs(step) > limit)
    if over.any():
        step *= np.min(limit[over] / np.abs(step[over]))
    step = np.clip(theta + step, lo, hi) - theta
    predicted = -2.0 * grad @ step - step @ (system @ step)
    return step, float(predicted)


def _solve_pass(source, cluster_frames, cluster_feat_off, lower, upper,
                inner, layout, params, centres, executor):
    """Refine all clusters at the shared values in ``params`` and reduce
    their normal equations (chunk by chunk, see :func:`_pass_chunk`); the
    chunks' systems are summed here, in chunk order."""
    from scipy import sparse

    n_clusters = len(cluster_frames)
    out = params.copy()
    cost = np.full(n_clusters, np.nan)
    status = np.zeros(n_clusters, dtype=np.int64)
    iterations = np.zeros(n_clusters, dtype=np.int64)
    sumsq = np.full(n_clusters, np.nan)
    n_valid = np.zeros(n_clusters, dtype=np.int64)
    n_local = np.zeros(n_clusters, dtype=np.int64)
    rows, cols, vals, grad_idx, grad_val, blocks = [], [], [], [], [], []
    starts = []
    ok = np.zeros(n_clusters, dtype=bool)

    def payload(c0, c1):
        f0, f1 = cluster_feat_off[c0], cluster_feat_off[c1]
        return (cluster_feat_off[c0:c1 + 1] - f0, params[f0:f1],
                lower[f0:f1], upper[f0:f1], centres[f0:f1], inner,
                layout.kernel_modes, layout.index[f0:f1])

    for c0, c1, chunk in map_chunks(source, cluster_frames, cluster_feat_off,
                                    inner, _pass_chunk, payload, executor):
        f0, f1 = cluster_feat_off[c0], cluster_feat_off[c1]
        out[f0:f1] = chunk.params
        cost[c0:c1] = chunk.cost
        status[c0:c1] = chunk.status
        iterations[c0:c1] = chunk.iterations
        centres[f0:f1] = chunk.centres
        shared_off, index = chunk.shared_off, chunk.index
        chunk_ok = _reduced(np.isfinite(chunk.cost) & np.isfinite(chunk.sumsq),
                            shared_off, index)
        ok[c0:c1] = chunk_ok
        sumsq[c0:c1] = chunk.sumsq
        n_valid[c0:c1] = chunk.n_valid
        n_local[c0:c1] = chunk.n_local
        blocks.append((shared_off, chunk.block_off, index))
        starts.append(c0)
        r, c, v = _block_entries(shared_off, chunk.block_off, index,
                                 chunk.system, chunk_ok)
        rows.append(r)
        cols.append(c)
        vals.append(v)
        keep = np.repeat(chunk_ok, np.diff(shared_off))
        grad_idx.append(index[keep])
        grad_val.append(chunk.grad[keep])
    n = layout.n_shared
    system = sparse.coo_matrix(
        (np.concatenate(vals) if vals else np.empty(0),
         (np.concatenate(rows) if rows else np.empty(0, np.int64),
          np.concatenate(cols) if cols else np.empty(0, np.int64))),
        shape=(n, n)).tocsr()
    grad = np.bincount(np.concatenate(grad_idx) if grad_idx else
                       np.empty(0, np.int64),
                       weights=np.concatenate(grad_val) if grad_val else None,
                       minlength=n).astype(np.float64)
    return _Pass(out, centres, cost, status, iterations, sumsq, ok, system,
                 grad, n_valid, n_local, blocks, starts)


@dataclass
class _ChunkPass:
    """What one chunk of a pass contributes (see :func:`_pass_chunk`)."""

    params: np.ndarray
    cost: np.ndarray
    status: np.ndarray
    iterations: np.ndarray
    centres: np.ndarray
    shared_off: np.ndarray  # the reduced system, as reduce_batch gives it
    block_off: np.ndarray
    index: np.ndarray
    system: np.ndarray
    grad: np.ndarray
    sumsq: np.ndarray
    n_valid: np.ndarray
    n_local: np.ndarray


def _pass_chunk(images, frame_max, cluster_image, payload):
    """Refine one chunk's clusters at fixed shared values and reduce their
    normal equations to the shared unknowns. Sees only its own frames and
    arrays, so that it can run on another machine."""
    off, params, lower, upper, centres, inner, kernel_modes, index = payload
    centres = np.array(centres, dtype=np.float64, order="C")
    solution, batch = refine_chunk(
        images, frame_max, cluster_image, off, params, lower, upper, inner,
        centres=centres, return_batch=True)
    out, cost, status = solution.params, solution.cost, solution.status
    if batch is None:
        batch = flatten_masks(images, cluster_image, off, centres,
                              inner.model.radius)
    reduced = reduce_batch(batch, off, out, lower, upper, inner, kernel_modes,
                           index, STAGE_SYSTEM)
    return _ChunkPass(out, cost, status, solution.iterations, centres,
                      *reduced)


def _reduced(ok, shared_off, index):
    """``ok`` without the clusters whose shared unknowns the reduction
    kernel left unindexed (it could not evaluate them)."""
    bad_index = np.minimum.reduceat(index, shared_off[:-1]) < 0 \
        if len(index) else np.zeros(len(ok), dtype=bool)
    return ok & ~(bad_index & (np.diff(shared_off) > 0))


def _block_entries(shared_off, block_off, index, system, keep):
    """COO entries (row, column, value) of the per-cluster blocks."""
    n_sh = np.diff(shared_off)
    size2 = n_sh ** 2
    cluster = np.repeat(np.arange(len(n_sh)), size2)
    local = np.arange(block_off[-1]) - block_off[cluster]
    width = n_sh[cluster]
    row = index[shared_off[cluster] + local // np.maximum(width, 1)]
    col = index[shared_off[cluster] + local % np.maximum(width, 1)]
    use = keep[cluster]
    return row[use], col[use], system[use]


def _standard_errors(source, cluster_frames, cluster_feat_off, lower, upper,
                     settings, layout, state, executor):
    """Standard errors of the whole problem: the sandwich covariance of
    ``kernels/covariance.py`` through the reduced system
    (``kernels/shared.py``). A pass over the clusters sums the meat of the
    shared unknowns, whose covariance is ``Sinv meat Sinv``; a second gives
    the locals theirs, from their own clusters' pixels plus the shared
    values' share."""
    from scipy import sparse

    n_params = state.params.shape[1]
    std = np.full((len(state.params), n_params), np.nan)
    ok = state.ok
    dof = state.n_valid[ok].sum() - state.n_local[ok].sum() - layout.n_shared
    if dof <= 0:
        return std
    inverse = _SelectedInverse(state.system)
    chunk_of = {c0: k for k, c0 in enumerate(state.chunk_starts)}

    def block_values(c0, matrix):
        """``matrix``'s entries at the blocks of the chunk from ``c0``."""
        shared_off, block_off, index = state.blocks[chunk_of[c0]]
        n_sh = np.diff(shared_off)
        cluster = np.repeat(np.arange(len(n_sh)), n_sh ** 2)
        local = np.arange(block_off[-1]) - block_off[cluster]
        width = np.maximum(n_sh[cluster], 1)
        return matrix.values(index[shared_off[cluster] + local // width],
                             index[shared_off[cluster] + local % width])

    def payload(stage, covariance=None):
        def chunk(c0, c1):
            f0, f1 = cluster_feat_off[c0], cluster_feat_off[c1]
            shared_off, block_off, _ = state.blocks[chunk_of[c0]]
            cov = (np.empty(0) if covariance is None
                   else block_values(c0, covariance))
            return (cluster_feat_off[c0:c1 + 1] - f0, state.centres[f0:f1],
                    state.params[f0:f1], lower[f0:f1], upper[f0:f1],
                    settings, layout.kernel_modes, layout.index[f0:f1],
                    shared_off, block_off, block_values(c0, inverse), cov,
                    stage)
        return chunk

    rows, cols, vals = [], [], []
    for c0, c1, (index, meat) in map_chunks(
            source, cluster_frames, cluster_feat_off, settings, _error_chunk,
            payload(STAGE_MEAT), executor):
        shared_off, block_off, _ = state.blocks[chunk_of[c0]]
        r, c, v = _block_entries(shared_off, block_off, index, meat,
                                 _reduced(ok[c0:c1], shared_off, index))
        rows.append(r)
        cols.append(c)
        vals.append(v)
    n = layout.n_shared
    meat = sparse.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, n)).tocsr()
    covariance = inverse.sandwich(meat)
    with np.errstate(invalid="ignore"):
        shared_std = np.sqrt(covariance.values(np.arange(n), np.arange(n)))
    rows, cols = np.nonzero(layout.index >= 0)
    std[rows, cols] = shared_std[layout.index[rows, cols]]

    fitted_local = (layout.local_modes != MODE_CONST)[None, :]
    for c0, c1, local_std in map_chunks(
            source, cluster_frames, cluster_feat_off, settings, _error_chunk,
            payload(STAGE_STD, covariance), executor):
        f0, f1 = cluster_feat_off[c0], cluster_feat_off[c1]
        bad = np.repeat(~ok[c0:c1], np.diff(cluster_feat_off[c0:c1 + 1]))
        local_std[bad] = np.nan
        std[f0:f1] = np.where(fitted_local, local_std, std[f0:f1])
        std[f0:f1][bad] = np.nan
    return std


def _error_chunk(images, frame_max, cluster_image, payload):
    """One chunk's share of the standard errors (``stage``): the meat of
    the shared unknowns' covariance (indices and blocks), or the standard
    errors of its local unknowns, given the entries of the inverse reduced
    system (and of the shared unknowns' covariance) its clusters touch."""
    off, centres, params, lower, upper, settings, kernel_modes, index, \
        shared_off, block_off, sinv, cov, stage = payload
    local_std = np.full(params.shape, np.nan)
    batch = flatten_masks(images, cluster_image, off,
                          np.ascontiguousarray(centres), settings.model.radius)
    reduced = reduce_batch(batch, off, params, lower, upper, settings,
                           kernel_modes, index, stage,
                           offsets=(shared_off, block_off), sinv_blocks=sinv,
                           cov_blocks=cov, std=local_std)
    if stage == STAGE_MEAT:
        return reduced[2], reduced[3]
    return local_std


class _SelectedInverse:
    """Entries of the inverse of a sparse symmetric matrix whose connected
    components are small: each component is inverted densely, components of
    one size together."""

    def __init__(self, matrix):
        from scipy import sparse
        from scipy.sparse import csgraph

        matrix = sparse.csr_matrix(matrix)
        n = matrix.shape[0]
        n_comp, label = csgraph.connected_components(matrix, directed=False)
        sizes = np.bincount(label, minlength=n_comp)
        order = np.argsort(label, kind="stable")
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n) - np.repeat(starts, sizes)
        self.label, self.position, self.sizes = label, position, sizes
        self.blocks = {}  # size -> (component -> slot, stacked inverses)
        for size, (slot, dense) in self._stacks(matrix).items():
            if size > _MAX_DENSE_COMPONENT:
                warnings.warn(f"compute_error: {size} shared unknowns are "
                              "coupled; their standard errors are not "
                              "computed (NaN)", UserWarning, stacklevel=4)
                self.blocks[size] = (slot, None)
                continue
            self.blocks[size] = (slot, _batched_inverse(dense))

    def _stacks(self, matrix):
        """``matrix`` (with the sparsity of the inverted one, or less) as
        dense components: size -> (component -> slot, stacked blocks);
        None for components too large to hold."""
        from scipy import sparse

        coo = sparse.coo_matrix(matrix)
        label, position, sizes = self.label, self.position, self.sizes
        stacks = {}
        for size in np.unique(sizes):
            comps = np.nonzero(sizes == size)[0]
            slot = np.full(len(sizes), -1, dtype=np.int64)
            slot[comps] = np.arange(len(comps))
            if size > _MAX_DENSE_COMPONENT:
                stacks[size] = (slot, None)
                continue
            dense = np.zeros((len(comps), size, size))
            use = sizes[label[coo.row]] == size
            np.add.at(dense, (slot[label[coo.row[use]]],
                              position[coo.row[use]],
                              position[coo.col[use]]), coo.data[use])
            stacks[size] = (slot, dense)
        return stacks

    def sandwich(self, meat):
        """The entries of ``M^-1 meat M^-1`` (M the inverted matrix;
        ``meat`` couples no two of its components), in the same form."""
        out = copy.copy(self)
        out.blocks = {}
        stacks = self._stacks(meat)
        for size, (slot, inverses) in self.blocks.items():
            dense = stacks[size][1]
            out.blocks[size] = (slot, None if inverses is None
                                else inverses @ dense @ inverses)
        return out

    def values(self, rows, cols):
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        out = np.zeros(len(rows))
        same = self.label[rows] == self.label[cols]
        comp_sizes = self.sizes[self.label[rows]]
        for size, (slot, inverses) in self.blocks.items():
            sel = same & (comp_sizes == size)
            if inverses is None:
                out[sel] = np.nan
                continue
            out[sel] = inverses[slot[self.label[rows[sel]]],
                                self.position[rows[sel]],
                                self.position[cols[sel]]]
        return out


def _batched_inverse(stack):
    """Inverses of a stack of symmetric matrices; NaN for singular ones."""
    out = np.full_like(stack, np.nan)
    for i0 in range(0, len(stack), 4096):
        part = stack[i0:i0 + 4096]
        try:
            out[i0:i0 + 4096] = np.linalg.inv(part)
        except np.linalg.LinAlgError:
            for i, matrix in enumerate(part):
                try:
                    out[i0 + i] = np.linalg.inv(matrix)
                except np.linalg.LinAlgError:
                    pass
    return out
