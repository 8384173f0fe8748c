"""The public ``refine_leastsq``: validate, cluster, refine, write back."""
import inspect
import numbers
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd

from . import config
from .config import Model, Noise, Scipy, Settings, Solver
from .io.frames import (
    check_frame_column,
    colour_frames,
    frame_numbers,
    frame_source,
)
from .kernels.codes import (
    CONVERGED,
    INVALID_START,
    MODE_CONST,
    MODE_PARTICLE,
    NOT_FINITE,
    OUTSIDE_FRAME,
)
from .problem.bounds import bound_spec, compute_bounds, degenerate
from .problem.camera import BelowOffsetWarning, make_camera
from .problem.clustering import cluster_features
from .problem.constraints import validate_constraints
from .problem.models import resolve_model
from .problem.params import make_layout
from .solvers.engine import refine_sorted
from .solvers.joint import mixes_clusters, refine_joint
from .solvers.scipy_path import check_method
from .solvers.shared import has_shared, refine_shared, shared_layout

_DEFAULT_TOL = Solver.tol
_DEFAULT_MAXITER = Solver.max_eval


def refine_leastsq(f, reader, diameter, separation=None, fit_function="gauss",
                   param_mode=None, param_val=None, constraints=None,
                   bounds=None, compute_error=False, pos_columns=None,
                   t_column="frame", max_iter=10, max_shift=1,
                   max_rms_dev=1.0, residual_factor=100000.0, *,
                   estimator="lsq", gain=None, offset=None, read_noise=None,
                   device="cpu", **kwargs):
    """Refine feature positions by least-squares fits of radial models.

    A drop-in replacement for ``trackpy.refine_leastsq``: same arguments,
    defaults and output. Features closer than ``separation`` are fitted
    jointly as one cluster. A failed fit never raises: the cluster keeps its
    initial parameters and gets a NaN ``cost``.

    Parameters
    ----------
    f : DataFrame
        Features: position columns (see ``pos_columns``), the frame column
        (see ``t_column``) when ``reader`` is a movie, and optionally
        parameter columns (``background``, ``signal``, ``size`` or
        ``size_<axis>``, extra shape parameters). Never modified.
    reader : pims.FramesSequence, pims.Frame or ndarray
        A movie (anything with ``frame_shape`` and indexing, or an ndarray
        with one dimension more than the positions, frames on axis 0), or a
        single image holding all features.
    diameter : number or tuple
        Mask diameter; the mask radius is ``diameter // 2``. A tuple with
        differing values selects anisotropic sizes (``size_y``, ``size_x``).
    separation : number or tuple, optional
        Features closer than this (in units of separation per axis) are in
        one cluster. Default: ``diameter``.
    fit_function : {'gauss', 'disc', 'hat', 'ring', 'inv_series_<n>'} or dict
        Radial model shape. Default 'gauss'. A dict defines a custom shape
        as in trackpy: ``params`` (extra parameter names), ``fun(r2, p,
        ndim)``, optional ``dfun`` returning ``(f, [df/dr2, df/dp...])``,
        ``default`` values and ``continuous`` (default True). A custom
        shape that Numba can compile (plain NumPy arithmetic usually can)
        runs on the Levenberg-Marquardt engine like the built-in ones (its
        first use compiles it, for a while; the machine code is cached on
        disk).
        Otherwise it is evaluated with NumPy and solved per cluster by
        scipy, much slower, with a warning saying why. Without ``dfun`` the
        derivatives are finite differences.
    param_mode : dict, optional
        Per parameter 'var', 'const', 'cluster', or a value shared between
        clusters: 'global' (one value for all features, across frames),
        'frame' (one per frame) or 'particle' (one per trajectory, from a
        ``particle`` column). Defaults: positions and signal 'var',
        background 'cluster', the rest 'const'. 'pos' and 'size' broadcast
        to their columns. Shared values are solved by variable projection:
        the clusters are refined in parallel at fixed shared values, their
        local unknowns eliminated (a Schur complement per cluster), and the
        shared values updated by damped Gauss-Newton steps. Unlike trackpy,
        which weights each cluster by its mean squared residual, the shared
        fit minimises the plain sum of squares over all mask pixels.
        Combined with constraints, a ``method`` or a custom fit function,
        all clusters are solved as one scipy problem, as in trackpy.
    param_val : dict, optional
        Values that replace (or add) parameter columns for all features.
    constraints : tuple of dict, optional
        trackpy's constraint dicts (``type`` 'eq' or 'ineq', ``fun``
        receiving a (cluster, feature, parameter) array, optional ``args``
        and ``cluster_size``), e.g. ``refinefit.dimer(5.0)``. Equality
        constraints with a ``cluster_size`` are solved on the Numba engine
        (clusters of that size in lockstep, the constraint called once per
        batch); inequality constraints, constraints mixing clusters and a
        named ``method`` use ``scipy.optimize.minimize`` (SLSQP by default),
        with objective and gradient evaluated by Numba kernels. Clusters no
        constraint applies to stay on the unconstrained engine. A
        constraint whose values mix clusters (e.g. ``dimer_global``: one
        common distance) makes all clusters one scipy problem.
    bounds : dict, optional
        Absolute ``{'x': (lo, hi)}``, difference ``{'x_abs': d}`` and
        relative ``{'x_rel': f}`` bounds, one- or two-sided; the narrowest
        wins. By default background, signal and size stay positive and
        positions move at most the mask radius.
    compute_error : bool
        Add ``<param>_std`` for every fitted parameter: the standard error
        from the covariance of the least-squares fit at the optimum, in
        the sandwich form ``P J^T diag(w) J P`` with ``P = (J^T J)^-1``
        and each pixel's variance ``w`` estimated from its own residual,
        so that it holds under shot noise as under uniform noise (trackpy
        assumes uniform noise; numdifftools is not needed). Equality
        constraints and active inequality constraints enter linearised;
        shared ('global', 'frame', 'particle') values are accounted for in
        every local error. Under ``estimator='poisson'``, the Cramer-Rao
        bound at the fit (the inverse Fisher information). NaN where the
        fit failed.
    pos_columns : list of str, optional
        Default ``['z', 'y', 'x']`` if ``f`` has a 'z' column, else
        ``['y', 'x']``.
    t_column : str
        Frame column. Default 'frame'.
    max_iter : int
        Maximum number of solves while re-centring masks. Default 10.
    max_shift : float
        Masks are rebuilt around features that moved more than this. Default 1.
    max_rms_dev : float
        Fits whose cost exceeds this count as failed. Default 1.
    residual_factor : float
        Accepted for compatibility; it scaled trackpy's SLSQP objective and
        has no effect on the Levenberg-Marquardt engine.
    estimator : {'lsq', 'poisson'}
        'lsq' (default): least squares, as trackpy. 'poisson': maximum
        likelihood for frames that count photons (fluorescence), on the same
        engine: more precise under shot noise, and its errors are the
        Cramer-Rao bound. The frames are converted to photons with
        ``gain``, ``offset`` and ``read_noise``; a column ``deviance_dof``
        (the Poisson deviance per degree of freedom, about 1 for a good fit)
        is added, and ``cost`` keeps its meaning (in photons).
    gain, offset : float or ndarray, optional
        The camera: ``counts = offset + gain * photons``, scalars or maps
        the shape of a frame (sCMOS). Default 1 and 0. Pixels below the
        offset are taken as zero photons (one warning says how many).
    read_noise : float or ndarray, optional
        Read-noise variance in counts^2 (a scalar or a map the shape of a
        frame), added to the expected photons as ``read_noise / gain^2``
        (the usual sCMOS approximation). Default none.
    device : {'cpu', 'cuda'}
        'cuda': each cluster's solve on an NVIDIA GPU (needs
        ``pip install 'refinefit[cuda]'`` and a working driver; a clear
        error otherwise). Clusters of more than 48 unknowns and custom
        models are solved on the CPU, with a ``CPUFallbackWarning``;
        constraints, shared parameters and named methods run on the CPU.
    **kwargs
        ``tol`` (relative cost reduction at convergence, default 1e-6) and
        ``options=dict(maxiter=...)`` (model evaluations per solve, default
        100). ``method`` names a ``scipy.optimize.minimize`` method that
        takes bounds and a gradient ('L-BFGS-B', 'TNC', 'SLSQP',
        'trust-constr'); every cluster is then solved by it, per batch, with
        ``tol`` and ``options`` passed along and the objective and gradient
        evaluated by Numba kernels. Constraints across clusters, or with
        shared parameters, make the whole refinement one SLSQP problem,
        given at least three iterations per unknown.

    Returns
    -------
    DataFrame
        A copy of ``f`` (same index, row order and extra columns) with the
        refined parameters and the columns ``cluster``, ``cluster_size``,
        ``cost`` (rms difference between fit and image over the cluster's
        mask pixels, in units of the frame's maximum) and ``status`` (how
        the fit ended, a code of :data:`refinefit.STATUS_NAMES`). Only fits
        with status 0 ('converged') are results; every other row keeps its
        initial parameters and has a NaN ``cost``:

        ==  ===================  ===============================================
         0  converged            the fit converged
         1  max_iter             stopped at the evaluation limit
         2  not_finite           the cost became NaN or infinite
         3  no_pixels            a mask holds no valid pixel (all NaN)
         4  blank                every pixel of the cluster's mask is equal
         5  constraint_unmet     no positions near the start meet the constraints
         6  singular             the normal equations stayed singular
         7  rms_too_high         the cost exceeds ``max_rms_dev``
         8  invalid_start        a start parameter is NaN or infinite
         9  signal_at_floor      degenerate: the signal collapsed to its floor
                                 (or below a thousandth of its start)
        10  position_at_bound    degenerate: a position ended at its bound at
                                 the edge of the mask (or beyond)
        11  outside_frame        the mask lies entirely outside the frame
        ==  ===================  ===============================================

        Codes 9 and 10 are fits the data do not determine: the feature
        vanished or the fit ran off it. Only the affected feature of a
        cluster is marked; its neighbours keep their fits.

    Examples
    --------
    >>> refined = refinefit.refine_leastsq(features, frames, diameter=11)
    """
    return _refine(None, f, reader, diameter, separation, fit_function,
                   param_mode, param_val, constraints, bounds, compute_error,
                   pos_columns, t_column, max_iter, max_shift, max_rms_dev,
                   residual_factor, estimator=estimator, gain=gain,
                   offset=offset, read_noise=read_noise, device=device,
                   **kwargs)


def refine_features(f, reader, executor=None, **options):
    """:func:`refine_leastsq` (same ``options``) whose chunks of the
    shared-parameter solver run on ``executor`` (see
    :func:`refinefit.solvers.engine.map_chunks`; None: here)."""
    arguments = inspect.signature(refine_leastsq).bind(f, reader, **options)
    arguments.apply_defaults()
    values = dict(arguments.arguments)
    extra = values.pop("kwargs")
    return _refine(executor, **values, **extra)


def _refine(executor, f, reader, diameter, separation, fit_function,
            param_mode, param_val, constraints, bounds, compute_error,
            pos_columns, t_column, max_iter, max_shift, max_rms_dev,
            residual_factor, estimator="lsq", gain=None, offset=None,
            read_noise=None, device="cpu", **kwargs):
    if not isinstance(f, pd.DataFrame):
        raise TypeError(f"f must be a pandas DataFrame, got {type(f).__name__}")
    constraints = validate_constraints(constraints)
    model = resolve_model(fit_function)
    custom = model if model.fun is not None else None
    backend = _backend(device)
    tol, max_eval, method, options = _engine_options(
        kwargs, bool(constraints), custom is not None)
    method_given = "method" in kwargs
    pos_columns = _pos_columns(f, pos_columns)
    ndim = len(pos_columns)
    if ndim not in (2, 3):
        raise ValueError(f"pos_columns: refinement works on 2D or 3D images, "
                         f"got {ndim} position column(s) {pos_columns}")
    colour = colour_frames(reader, ndim)
    if colour is not None:
        raise ValueError(
            f"reader: the frames are colour (shape {colour}, {colour[-1]} "
            "channels): refine one channel (e.g. frames[..., 0]) or the "
            "luminance (pims.as_grey(frames)), or use refinefit.refine_movie "
            "with channel= or grey=True")
    source = frame_source(reader, ndim)
    if source.ndim != ndim:
        raise ValueError(f"the image is {source.ndim}D but the features have "
                         f"{ndim} position columns {pos_columns}; pass "
                         "pos_columns (--pos-columns) to match the image")
    diameter = _per_axis("diameter", diameter, ndim)
    separation = diameter if separation is None else _per_axis(
        "separation", separation, ndim)
    radius = tuple(float(d // 2) for d in diameter)
    if min(radius) < 1:
        raise ValueError(f"diameter {diameter} gives a mask radius below 1 "
                         "pixel; use a diameter of at least 2")
    if any(d > n for d, n in zip(diameter, source.frame_shape)):
        raise ValueError(f"diameter {diameter} is larger than the frames "
                         f"(shape {tuple(source.frame_shape)}); the diameter "
                         "is that of one feature's mask, in pixels")
    isotropic = len(set(diameter)) == 1
    layout = make_layout(model, pos_columns, isotropic, param_mode)
    camera = _camera(estimator, gain, offset, read_noise, source)
    if camera is not None:
        source = source.converted(camera.photons)
        if executor is not None:  # (it reads the frames itself)
            executor = executor.converted(camera)
    spec = bound_spec(bounds, layout, radius)
    for name, value in (("max_iter", max_iter), ("max_shift", max_shift),
                        ("max_rms_dev", max_rms_dev),
                        ("residual_factor", residual_factor)):
        if not isinstance(value, numbers.Real) or not value > 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}")

    shared = has_shared(layout.modes)
    particles = _particle_ids(f, layout) if shared else None
    # one scipy problem over everything (trackpy's 'global' level) where the
    # engines cannot split it: see joint.py
    joint = (shared and (bool(constraints) or method_given
                         or custom is not None)) or any(
        mixes_clusters(c, len(layout.names)) for c in constraints)

    # the columns the output adds or replaces, written into a copy of f at
    # the end in one step (a column at a time costs more than a small fit)
    written = {}
    frames = _frame_numbers(f, source, t_column, written)
    written["cluster"] = written["cluster_size"] = None
    params = _start_params(f, layout, model, param_val, written)
    fitted = [j for j, mode in enumerate(layout.modes) if mode != MODE_CONST]
    std = np.full((len(f), len(fitted)), np.nan)

    valid = np.isfinite(params).all(axis=1)
    source.check_frames(np.unique(frames[valid]))
    status = np.where(valid, OUTSIDE_FRAME, INVALID_START)
    valid &= _touches_image(params[:, 2:2 + ndim], radius, source, frames)
    labels, sizes = cluster_features(params[:, 2:2 + ndim], frames,
                                     separation, valid)
    written["cluster"] = labels
    written["cluster_size"] = sizes
    cost = np.full(len(f), np.nan)
    deviance = np.full(len(f), np.nan)

    fit = np.nonzero(valid)[0]
    order = fit[np.argsort(labels[fit], kind="stable")]
    if len(order):
        lower, upper = compute_bounds(spec, params[order])
        sorted_labels = labels[order]
        starts = np.nonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])[0]
        cluster_feat_off = np.r_[starts, len(order)].astype(np.int64)
        defaults = config.current()
        settings = Settings(
            model=Model(model_id=model.kernel_id, continuous=model.continuous,
                        ndim=ndim, n_size=layout.n_size, modes=layout.modes,
                        radius=radius, custom=custom),
            solver=replace(defaults.solver, backend=backend or
                           defaults.solver.backend, tol=tol, max_eval=max_eval,
                           max_iter=int(max_iter), max_shift=float(max_shift),
                           max_rms_dev=float(max_rms_dev),
                           with_error=bool(compute_error)),
            scipy=Scipy(method=method, method_given=method_given,
                        constraints=constraints, options=options,
                        residual_factor=float(residual_factor)),
            chunking=defaults.chunking,
            noise=Noise(estimator=estimator, camera=camera))
        start = np.clip(params[order], lower, upper)
        sorted_particles = None if particles is None else particles[order]
        if joint:
            solution = refine_joint(
                source, frames[order][starts], cluster_feat_off, start, lower,
                upper, settings, frames[order], sorted_particles)
        elif shared:
            layout_sh = shared_layout(layout.modes, frames[order],
                                      sorted_particles)
            solution = refine_shared(
                source, frames[order][starts], cluster_feat_off, start, lower,
                upper, settings, layout_sh, executor)
        else:
            solution = refine_sorted(
                source, frames[order][starts], cluster_feat_off, start, lower,
                upper, settings)
        members = np.diff(cluster_feat_off)
        feature_cost = np.repeat(solution.cost, members)
        feature_status = degenerate(np.repeat(solution.status, members),
                                    solution.params, start, lower, upper,
                                    layout, radius)
        # only converged fits that the data determine are results; the rest
        # keep their start values, as trackpy keeps those of a failed fit
        ok = (feature_status == CONVERGED) & np.isfinite(feature_cost)
        feature_status[~ok & (feature_status == CONVERGED)] = NOT_FINITE
        if camera is not None and solution.deviance is not None:
            deviance[order[ok]] = np.repeat(solution.deviance, members)[ok]
        params[order[ok]] = solution.params[ok]
        std[order[ok]] = solution.std[ok][:, fitted]
        cost[order] = np.where(ok, feature_cost, np.nan)
        status[order] = feature_status
    for j, name in enumerate(layout.names):
        written[name] = params[:, j]
    if compute_error:
        for i, j in enumerate(fitted):
            written[layout.names[j] + "_std"] = std[:, i]
    written["cost"] = cost
    if camera is not None:
        written["deviance_dof"] = deviance
        _warn_below_offset(camera)
    written["status"] = status
    return _with_columns(f, written)


def _warn_below_offset(camera):
    n_below = camera.below_offset()
    if n_below:
        warnings.warn(BelowOffsetWarning.of(n_below), stacklevel=3)


def _with_columns(f, written):
    """A copy of ``f`` with the columns of ``written`` (name: array or
    scalar) replacing its own or, for new names, appended in their order.

    One DataFrame built from arrays: setting columns one at a time costs
    more than the fit of a few features."""
    n = len(f)
    written = {name: np.full(n, value) if np.ndim(value) == 0 else value
               for name, value in written.items()}
    if f.columns.is_unique and f.columns.nlevels == 1:
        columns = {name: written.pop(name) if name in written
                   else f[name].array for name in f.columns}
        columns.update(written)
        out = pd.DataFrame(columns, index=f.index)
        out.columns.name = f.columns.name
        return out.__finalize__(f)
    out = f.copy()  # repeated column names: the slow way keeps them
    for name, value in written.items():
        out[name] = value
    return out


def _particle_ids(f, layout):
    """Particle ids for the 'particle' mode (None when it is not used)."""
    if not np.any(layout.modes == MODE_PARTICLE):
        return None
    if "particle" not in f:
        names = [n for n, m in zip(layout.names, layout.modes)
                 if m == MODE_PARTICLE]
        raise ValueError(f"param_mode: the 'particle' mode (for {names}) needs "
                         "a 'particle' column with each feature's trajectory "
                         "id, as trackpy.link writes it")
    ids = f["particle"].to_numpy()
    if not np.issubdtype(ids.dtype, np.number) or (
            len(ids) and not np.all(np.isfinite(ids.astype(float)))):
        raise ValueError("column 'particle' must hold finite numeric particle "
                         "ids for the 'particle' mode")
    return ids


ESTIMATORS = ("lsq", "poisson")


DEVICES = ("cpu", "cuda")


def _backend(device):
    """The solver backend of ``device``: None (the configured one) for the
    CPU, 'cuda' for an NVIDIA GPU, checked to be usable now."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}, got "
                         f"{device!r}")
    if device == "cpu":
        return None
    from .solvers.cuda_backend import cuda_module

    cuda_module()  # a clear error before any work when no GPU can be used
    return "cuda"


def _camera(estimator, gain, offset, read_noise, source):
    """The camera of the Poisson estimator (None for least squares), after
    checking what goes with which estimator."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {list(ESTIMATORS)}, got "
                         f"{estimator!r}")
    given = [name for name, value in (("gain", gain), ("offset", offset),
                                      ("read_noise", read_noise))
             if value is not None]
    if estimator == "lsq":
        if given:
            raise ValueError(f"{', '.join(given)}: the camera model applies "
                             "to estimator='poisson' (least squares fits the "
                             "counts as they are)")
        return None
    return make_camera(1.0 if gain is None else gain,
                       0.0 if offset is None else offset, read_noise,
                       source.frame_shape)


def _engine_options(kwargs, constrained, custom):
    """``tol``, the evaluation limit, the scipy method (None: the Numba
    engine) and the options for scipy, from ``refine_leastsq``'s kwargs."""
    kwargs = dict(kwargs)
    method = kwargs.pop("method", None)
    tol = kwargs.pop("tol", _DEFAULT_TOL)
    options = kwargs.pop("options", None) or {}
    if kwargs:
        raise TypeError("refine_leastsq got unexpected keyword argument(s) "
                        f"{sorted(kwargs)}")
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict, got {type(options).__name__}")
    if method is None and (constrained or custom):
        method = "SLSQP"  # as trackpy
    if method is not None:
        method = check_method(method, constrained)
    elif set(options) - {"maxiter", "disp"}:
        raise TypeError(f"options: unknown key(s) "
                        f"{sorted(set(options) - {'maxiter', 'disp'})} for the "
                        "Numba engine; supported: 'maxiter', 'disp'")
    maxiter = options.get("maxiter", _DEFAULT_MAXITER)
    if not isinstance(tol, numbers.Real) or not tol > 0:
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if not isinstance(maxiter, numbers.Integral) or maxiter < 1:
        raise ValueError(f"options['maxiter'] must be a positive integer, got "
                         f"{maxiter!r}")
    scipy_options = tuple(dict(dict(maxiter=_DEFAULT_MAXITER, disp=False),
                               **options).items())
    return float(tol), int(maxiter), method, scipy_options


def _pos_columns(f, pos_columns):
    if pos_columns is None:
        pos_columns = ["z", "y", "x"] if "z" in f else ["y", "x"]
    pos_columns = list(pos_columns)
    missing = [col for col in pos_columns if col not in f]
    if missing:
        raise KeyError(f"position column(s) {missing} not in the DataFrame "
                       f"(columns: {list(f.columns)}); pass pos_columns "
                       "(--pos-columns on the command line)")
    return pos_columns


def _per_axis(name, value, ndim):
    values = tuple(value) if np.ndim(value) else (value,) * ndim
    if len(values) != ndim:
        raise ValueError(f"{name} must be a number or a tuple of {ndim} "
                         f"numbers, got {value!r}")
    for v in values:
        if not isinstance(v, numbers.Real) or not v > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    return values


def _frame_numbers(f, source, t_column, written):
    """Frame number of every feature; for a single image without
    ``t_column`` its frame number goes to ``written[t_column]``."""
    if source.is_single:
        if t_column in f and len(f):
            present = pd.unique(f[t_column])
            if len(present) > 1 or (source.single_frame is not None
                                    and present[0] != source.single_frame):
                raise ValueError(
                    f"reader is a single image but column {t_column!r} holds "
                    f"frames {list(present[:5])}; pass a movie or one frame")
        elif t_column not in f:
            written[t_column] = source.single_frame or 0
        return np.zeros(len(f), dtype=np.int64)
    check_frame_column(f.columns, t_column)
    return frame_numbers(f[t_column], t_column)


def _start_params(f, layout, model, param_val, written):
    """Start values (features x parameters, float64): each parameter from
    ``param_val``, else from its column of ``f``, else the model's default.
    ``param_val`` and the defaults not in ``f`` go to ``written``
    (param_val's first, as trackpy adds them)."""
    if param_val is None:
        param_val = {}
    if not isinstance(param_val, dict):
        raise TypeError("param_val must be a dict such as {'size': 2.5}, got "
                        f"{type(param_val).__name__}")
    for name, value in param_val.items():
        written[name] = value
    defaults = dict(background=0.0, **model.default)
    params = np.empty((len(f), len(layout.names)))
    for j, name in enumerate(layout.names):
        if name in param_val:
            value = param_val[name]
            try:
                params[:, j] = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                raise TypeError(f"param_val[{name!r}] must be a number (or one "
                                f"per feature), got {value!r}") from None
        elif name in f:
            column = f[name]
            if not pd.api.types.is_numeric_dtype(column.dtype) \
                    or pd.api.types.is_bool_dtype(column.dtype):
                raise TypeError(f"column {name!r} must be numeric, got "
                                f"{column.dtype}")
            params[:, j] = column.to_numpy(dtype=np.float64, na_value=np.nan)
        elif name in defaults:
            written[name] = params[:, j] = defaults[name]
        else:
            raise KeyError(f"parameter {name!r} is neither a column of the "
                           f"DataFrame nor in param_val; add it, e.g. "
                           f"param_val={{'{name}': ...}}")
    return params


def _touches_image(coords, radius, source, frames):
    """False for features whose mask lies entirely outside the image."""
    if len(coords) == 0:
        return np.zeros(0, dtype=bool)
    shape = source.frame_shape
    radius = np.asarray(radius)
    with np.errstate(invalid="ignore"):
        inside = (coords + radius >= 0) & (coords - radius <= np.asarray(shape) - 1)
    return inside.all(axis=1)
