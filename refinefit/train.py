"""``train_leastsq``: learn a fit function's shape parameters from an image.

The shape parameters (size and extra parameters such as ``disc_size`` or
``thickness``) become 'global' unknowns shared by every feature, while
positions and signals vary per feature and the background per cluster. The
shared solver (``shared.py``) then fits them all at once.
"""
import numbers

import numpy as np
import pandas as pd

from .io.frames import frame_source
from .problem.models import resolve_model
from .problem.params import size_columns_for
from .refine import refine_leastsq
from .status import count_status, describe_status


def train_leastsq(f, reader, diameter, separation=None, fit_function="gauss",
                  param_mode=None, tol=1e-7, pos_columns=None, **kwargs):
    """Fit the shape parameters of a fit function on well-separated features.

    The same job as trackpy's ``train_leastsq``: given an image (or movie)
    of well-separated features with known approximate locations, find the
    size and the extra shape parameters of ``fit_function`` that describe
    all of them, for later use in :func:`refine_leastsq` (as ``param_val``).

    Parameters
    ----------
    f : DataFrame
        Features with position columns (and a frame column for a movie).
        Optional ``signal``, ``background`` and size columns are used as
        starting values. Not modified.
    reader : ndarray, pims.Frame or pims reader
        As for :func:`refine_leastsq`.
    diameter : number or tuple
        Mask diameter, as for :func:`refine_leastsq`.
    separation : number or tuple, optional
        Default ``diameter``.
    fit_function : str or dict
        The fit function whose shape parameters are learnt. Default 'gauss'.
    param_mode : dict, optional
        Overrides the modes below. By default the size columns and every
        extra shape parameter are 'global', positions and signal 'var' and
        the background 'cluster'.
    tol : float
        Convergence tolerance. Default 1e-7.
    pos_columns : list of str, optional
        As for :func:`refine_leastsq`.
    **kwargs
        Passed to :func:`refine_leastsq` (``bounds``, ``param_val``,
        ``options``, ...). Unless ``bounds`` says otherwise, sizes may range
        from 10% to 10 times their starting value, as in trackpy.

    Returns
    -------
    dict
        The fitted value of every 'global' parameter, e.g.
        ``{'size': 2.49}`` or ``{'size': 4.0, 'disc_size': 0.31}``.

    Raises
    ------
    ValueError
        If a fit fails (NaN cost): the features are not well separated, or
        the starting values are too far off.

    Examples
    --------
    >>> shape = refinefit.train_leastsq(features, image, 15, fit_function='disc')
    >>> refined = refinefit.refine_leastsq(features, frames, 15,
    ...                                    fit_function='disc', param_val=shape)
    """
    if not isinstance(f, pd.DataFrame):
        raise TypeError(f"f must be a pandas DataFrame, got {type(f).__name__}")
    if not isinstance(tol, numbers.Real) or not tol > 0:
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    model = resolve_model(fit_function)
    if pos_columns is None:
        pos_columns = ["z", "y", "x"] if "z" in f else ["y", "x"]
    ndim = len(pos_columns)
    diameters = tuple(diameter) if np.ndim(diameter) else (diameter,) * ndim
    isotropic = len(set(diameters)) == 1
    size_columns = size_columns_for(pos_columns, isotropic)

    modes = {name: "global" for name in size_columns + tuple(model.params)}
    modes.update(param_mode or {})
    start = f.copy()
    param_val = dict(kwargs.pop("param_val", None) or {})
    _starting_values(start, reader, pos_columns, size_columns, diameters,
                     param_val)
    bounds = kwargs.pop("bounds", None)
    if bounds is None:
        bounds = {}
    bounds = dict(bounds)
    for column in size_columns:
        if column not in bounds and column + "_rel" not in bounds:
            bounds[column + "_rel"] = (10.0, 10.0)  # 10% .. 10x, as trackpy
    refined = refine_leastsq(start, reader, diameter, separation,
                             fit_function=fit_function, param_mode=modes,
                             param_val=param_val or None, bounds=bounds,
                             pos_columns=pos_columns, tol=tol, **kwargs)
    failed = refined["cost"].isna()
    if failed.any():
        raise ValueError(f"train_leastsq: {int(failed.sum())} of "
                         f"{len(refined)} fits did not converge ("
                         f"{describe_status(count_status(refined['status']))}"
                         "); use well-separated features and check the "
                         "starting values")
    return {name: float(refined[name].iloc[0]) for name, mode in modes.items()
            if mode == "global"}


def _starting_values(f, reader, pos_columns, size_columns, diameters,
                     param_val):
    """Add signal, background and size columns where missing: the pixel at
    each feature minus the frame's median, the median, and a quarter of the
    diameter."""
    missing = [c for c in ("signal", "background") if c not in f
               and c not in param_val]
    for column, diameter in zip(size_columns, diameters if len(size_columns) > 1
                                else diameters[:1]):
        if column not in f and column not in param_val:
            f[column] = diameter / 4.0
    if not missing or len(f) == 0:
        return
    source = frame_source(reader, len(pos_columns))
    frames = f["frame"].to_numpy() if "frame" in f and not source.is_single \
        else np.zeros(len(f), dtype=np.int64)
    signal = np.full(len(f), np.nan)
    background = np.full(len(f), np.nan)
    for frame in np.unique(frames):
        image = np.asarray(source.image(frame), dtype=np.float64)
        rows = np.nonzero(frames == frame)[0]
        pixel = np.clip(np.rint(f[pos_columns].to_numpy()[rows]).astype(np.int64),
                        0, np.array(image.shape) - 1)
        level = float(np.nanmedian(image))
        background[rows] = level
        signal[rows] = image[tuple(pixel.T)] - level
    if "signal" in missing:
        f["signal"] = np.maximum(signal, 1e-3)
    if "background" in missing:
        f["background"] = background
