"""``FitFunctions``: trackpy's helper class over refinefit's registry."""
import warnings

import numpy as np

from .kernels import shape_value
from .problem.bounds import bound_spec, compute_bounds
from .problem.models import resolve_model
from .problem.params import make_layout, vect_from_params


class FitFunctions:
    """A fit function's parameters, modes, defaults and bounds.

    Same constructor and attributes as trackpy's ``FitFunctions``.

    Parameters
    ----------
    fit_function : str or dict, optional
        'gauss' (default), 'disc' / 'hat', 'ring', 'inv_series_<n>', or a
        custom fit-function dict.
    ndim : {2, 3}, optional
        Image dimensionality. Default 2.
    isotropic : bool, optional
        One ``size`` (True) or one ``size_<axis>`` per axis. Default True.
    param_mode : dict, optional
        Modes per parameter, as in :func:`refine_leastsq`.

    Attributes
    ----------
    params : list of str
        ``background, signal, <pos>, <size>, <extra>``.
    modes : list of int
        Mode number per parameter (0 const, 1 var, 2 global, 3 cluster).
    param_mode : dict
        The same, by name.
    default : dict
        Default values (background 0 and the shape parameters).
    continuous, has_jacobian : bool
    pos_columns, size_columns : list of str

    Examples
    --------
    >>> ff = refinefit.FitFunctions('ring', ndim=2)
    >>> ff.params
    ['background', 'signal', 'y', 'x', 'size', 'thickness']
    """

    def __init__(self, fit_function="gauss", ndim=2, isotropic=True,
                 param_mode=None):
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
        self.model = resolve_model(fit_function)
        self.ndim = ndim
        self.isotropic = bool(isotropic)
        self.pos_columns = ["z", "y", "x"][-ndim:]
        with warnings.catch_warnings():
            self.layout = make_layout(self.model, self.pos_columns,
                                      self.isotropic, param_mode)
        self.size_columns = list(self.layout.size_columns)
        self.params = list(self.layout.names)
        self.modes = [int(m) for m in self.layout.modes]
        self.param_mode = dict(zip(self.params, self.modes))
        self.default = dict(background=0.0, **self.model.default)
        self.continuous = self.model.continuous
        self.has_jacobian = self.model.fun is None or self.model.dfun is not None
        self._params = list(self.model.params)

    def plot_single_radial(self, r, **params):
        """Model values at distances ``r`` (in units of size) from a
        centre: ``background + signal * f(r**2)``."""
        r2 = np.asarray(r, dtype=np.float64) ** 2
        extra = np.array([params.get(name, self.default.get(name, np.nan))
                          for name in self._params], dtype=np.float64)
        if self.model.fun is not None:
            shape = np.asarray(self.model.fun(r2, extra, self.ndim), float)
        else:
            dextra = np.empty(max(len(extra), 1))
            shape = np.array([shape_value(self.model.kernel_id, float(v),
                                          extra, self.ndim, dextra)[0]
                              for v in r2.ravel()]).reshape(r2.shape)
        return params.get("background", 0.0) + params.get("signal", 1.0) * shape

    def validate_bounds(self, bounds=None, radius=None):
        """Bounds in array form: (absolute, difference, relative), each
        (2, n_params) with NaN where unset; defaults as refine_leastsq."""
        if radius is None:
            radius = (np.nan,) * self.ndim
        radius = tuple(np.broadcast_to(np.asarray(radius, float), (self.ndim,)))
        absolute, diff, rel = bound_spec(bounds, self.layout, radius)
        return absolute, diff, rel

    def compute_bounds(self, bounds, params, groups=None):
        """Bounds of the optimiser's vector, shape (n, 2), from the arrays of
        :meth:`validate_bounds` and the initial per-feature ``params``;
        shared parameters take the widest bound of their features."""
        lower, upper = compute_bounds(np.asarray(bounds, dtype=np.float64),
                                      np.asarray(params, dtype=np.float64))
        low = vect_from_params(lower, self.modes, groups, operation=np.min)
        high = vect_from_params(upper, self.modes, groups, operation=np.max)
        return np.array([low, high], dtype=np.float64).T
