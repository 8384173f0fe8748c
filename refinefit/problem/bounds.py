"""Parameter bounds in trackpy's forms; the narrowest bound wins.

- absolute ``{'x': (low, high)}``
- difference ``{'x_abs': d}`` or ``{'x_abs': (below, above)}``
- relative ``{'x_rel': f}`` or ``{'x_rel': (below, above)}``, meaning
  ``x / below .. x * above``

``pos`` and ``size`` broadcast to their columns (a direct entry wins). By
default background, signal and size stay positive and positions move at most
the mask radius. Bounds are computed once from the initial parameters.

A fit that ends with its signal collapsed to that positive floor, or with a
position at the edge of the mask, did not find the feature: :func:`degenerate`
tells which.
"""
import numpy as np

from ..kernels.codes import (
    CONVERGED,
    MODE_CONST,
    POSITION_AT_BOUND,
    SIGNAL_AT_FLOOR,
)

POSITIVE_FLOOR = 1e-7
# a signal that ended below this fraction of its start collapsed: the
# solvers approach the floor geometrically (signals change by at most half
# a step) and stop once the cost no longer changes, short of the floor
COLLAPSED = 1e-3
# a position this close to a bound (in pixels) ended on it: the solvers clip
# to the bound exactly, scipy's may stop a rounding error inside
_AT_BOUND = 1e-6
_SUFFIXES = ("", "_abs", "_rel")


def bound_spec(bounds, layout, radius):
    """Parse a ``bounds`` dict into three (2, n_params) arrays, NaN = none."""
    if bounds is None:
        bounds = {}
    if not isinstance(bounds, dict):
        raise TypeError("bounds must be a dict such as {'x_abs': 2}, got "
                        f"{type(bounds).__name__}")
    groups = {"pos": layout.pos_columns, "size": layout.size_columns}
    allowed = {name + suffix for name in tuple(layout.names) + tuple(groups)
               for suffix in _SUFFIXES}
    unknown = sorted(set(bounds) - allowed)
    if unknown:
        raise ValueError(f"bounds: unknown key(s) {unknown}; use a parameter "
                         f"name of {list(layout.names)} or 'pos'/'size', "
                         "optionally with '_abs' or '_rel'")
    spec = np.full((3, 2, len(layout.names)), np.nan)
    for i, name in enumerate(layout.names):
        group = next((g for g, cols in groups.items() if name in cols), None)
        for s, suffix in enumerate(_SUFFIXES):
            key = name + suffix
            if key not in bounds and group is not None:
                key = group + suffix
            if key in bounds:
                spec[s, :, i] = _pair(key, bounds[key], one_sided=s > 0)
        if np.isnan(spec[0, 0, i]) and (
                name in ("background", "signal") + layout.size_columns):
            spec[0, 0, i] = POSITIVE_FLOOR
        if name in layout.pos_columns and np.all(np.isnan(spec[1, :, i])):
            spec[1, :, i] = radius[layout.pos_columns.index(name)]
    return spec


def _pair(key, value, one_sided):
    if np.ndim(value) == 0:
        if not one_sided:
            raise ValueError(f"bounds[{key!r}]: an absolute bound needs "
                             f"(low, high), got {value!r}")
        value = (value, value)
    if len(value) != 2:
        raise ValueError(f"bounds[{key!r}]: expected a number or a pair "
                         f"(low, high), got {value!r}")
    try:
        return [np.nan if v is None else float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"bounds[{key!r}]: values must be numbers, got "
                         f"{value!r}") from None


def compute_bounds(spec, params):
    """Per-feature lower and upper bounds from the initial ``params``."""
    absolute, diff, rel = spec
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = np.fmax(np.fmax(params - diff[0], params / rel[0]),
                        absolute[0])
        upper = np.fmin(np.fmin(params + diff[1], params * rel[1]),
                        absolute[1])
    lower[np.isnan(lower)] = -np.inf
    upper[np.isnan(upper)] = np.inf
    return lower, upper


def degenerate(status, params, start, lower, upper, layout, radius):
    """``status`` (one code per feature) with converged fits that the data
    did not determine marked: a fitted signal that collapsed to the positive
    floor (``SIGNAL_AT_FLOOR``: at the floor, or below :data:`COLLAPSED` of
    its ``start`` value; the feature vanished and its position has no
    gradient) or a fitted position at a bound at the edge of the mask or
    beyond (``POSITION_AT_BOUND``: ``radius`` or more from the start, where
    a fit runs off a feature it cannot see). A narrower bound of the user's
    own holds a fit deliberately: a fit at it is a result."""
    status = status.copy()
    converged = status == CONVERGED
    fitted = np.asarray(layout.modes) != MODE_CONST
    signal = layout.index("signal")
    if fitted[signal]:
        floor = lower[:, signal] == POSITIVE_FLOOR  # not a bound of one's own
        collapsed = floor & (params[:, signal] <= np.maximum(
            POSITIVE_FLOOR * 1.001, COLLAPSED * start[:, signal]))
        status[converged & collapsed] = SIGNAL_AT_FLOOR
    axes = [d for d, name in enumerate(layout.pos_columns)
            if fitted[layout.index(name)]]
    pos = [layout.index(layout.pos_columns[d]) for d in axes]
    reach = np.asarray(radius, dtype=float)[axes] - _AT_BOUND
    x, lo, hi, x0 = params[:, pos], lower[:, pos], upper[:, pos], start[:, pos]
    at_bound = (((x - lo <= _AT_BOUND) & (x0 - lo >= reach))
                | ((hi - x <= _AT_BOUND) & (hi - x0 >= reach))).any(axis=1)
    status[(status == CONVERGED) & at_bound] = POSITION_AT_BOUND
    return status
