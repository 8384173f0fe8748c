"""Constraints on the fit parameters, in trackpy's format.

A constraint is a dict as for :func:`scipy.optimize.minimize`, with
``type`` ('eq': ``fun`` must be zero; 'ineq': ``fun`` must be >= 0),
``fun``, optional ``args`` and the trackpy extension ``cluster_size``.
Constraint functions do not see the optimiser's vector but a 3D array of
per-feature parameters with the axes

- grouping: clusters optimised together (length 1 without a
  ``cluster_size``, when all features are passed as one group),
- feature: the features of one cluster,
- parameter: ``[background, signal, <pos>, <size>, <extra>]``; positions
  are at indices ``2:2 + ndim``.

:func:`dimer`, :func:`trimer`, :func:`tetramer` and :func:`dimer_global`
build the ready-made constraints of trackpy with the same values.
:func:`validate_constraints` checks and normalises user input and
:func:`wrap_constraint` turns one constraint into the form
:func:`scipy.optimize.minimize` expects.
"""
import numbers
import warnings
from collections.abc import Mapping

import numpy as np

from .params import _checked_modes, vect_to_params

__all__ = ["dimer", "trimer", "tetramer", "dimer_global",
           "validate_constraints", "wrap_constraint"]

CONSTRAINT_TYPES = ("eq", "ineq")
_KEYS = frozenset({"type", "fun", "args", "cluster_size"})

# Feature pairs in the order of trackpy's constraint values.
_PAIRS_2 = ((0, 1),)
_PAIRS_3 = ((0, 1), (1, 2), (0, 2))
_PAIRS_4 = ((0, 1), (1, 2), (0, 2), (1, 3), (0, 3), (2, 3))


# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------

def _check_ndim(ndim):
    if isinstance(ndim, bool) or not isinstance(ndim, numbers.Integral) \
            or ndim < 1:
        raise ValueError(f"ndim must be a positive integer, got {ndim!r}")
    return int(ndim)


def _per_axis(value, ndim, name):
    """A number or one number per axis, as a float array of length ndim."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a sequence of {ndim} "
                         f"numbers (one per axis), got {value!r}") from None
    if arr.ndim == 0:
        arr = np.full(ndim, float(arr))
    elif arr.ndim != 1 or len(arr) != ndim:
        raise ValueError(f"{name} must be a number or a sequence of {ndim} "
                         f"numbers (one per axis), got {value!r}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return arr


def _positions(x, ndim, n_features, name):
    """Positions (clusters, features, ndim) of the 3D parameter array x."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError(f"{name}: expected a 3D parameter array (clusters, "
                         f"features, parameters), got shape {x.shape}")
    if x.shape[1] < n_features or x.shape[2] < 2 + ndim:
        raise ValueError(f"{name}: expected at least {n_features} features "
                         f"and {2 + ndim} parameters per cluster, got shape "
                         f"{x.shape}")
    return x[:, :, 2:2 + ndim]


def _pair_distances(pos, pairs, dist):
    """Squared reduced distances, shape (pairs, clusters)."""
    first = [i for i, _ in pairs]
    second = [j for _, j in pairs]
    diff = (pos[:, first] - pos[:, second]) / dist
    return np.sum(diff ** 2, axis=-1).T


# --------------------------------------------------------------------------
# constraint functions (module level, so that the dicts can be pickled)
# --------------------------------------------------------------------------

def _dimer_fun(x, dist, ndim):
    pos = _positions(x, ndim, 2, "dimer")
    return (1 - _pair_distances(pos, _PAIRS_2, dist)).ravel()


def _trimer_fun(x, dist, ndim):
    pos = _positions(x, ndim, 3, "trimer")
    return (1 - _pair_distances(pos, _PAIRS_3, dist)).ravel()


def _tetramer_fun(x, dist):
    ndim = len(dist)
    pos = _positions(x, ndim, 4, "tetramer")
    d2 = _pair_distances(pos, _PAIRS_4, dist)
    if ndim == 2:
        # trackpy's "square": the four shortest of the six distances equal
        # dist. A square's sides are its four shortest distances, but this
        # does not fix the diagonals: a rhombus with angles of 60-120 deg, or
        # an equilateral triangle with a fourth point at dist from one corner
        # (and >= dist from the others), also satisfies it. Kept as trackpy.
        d2 = np.sort(d2, axis=0)[:4]
    return (1 - d2).ravel()


def _dimer_global_fun(x, mpp, ndim):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2 or len(x) <= 1:
        return np.empty(0)
    pos = _positions(x, ndim, 2, "dimer_global")
    # NB: trackpy squares the *squared* distance here (fourth power of the
    # distance). The constraint "all equal" is the same either way, but the
    # values (and so the solver's path) differ; we keep trackpy's values so
    # that results match the reference.
    d4 = np.sum(((pos[:, 0] - pos[:, 1]) * mpp) ** 2, axis=1) ** 2
    return np.diff(d4)


# --------------------------------------------------------------------------
# ready-made constraints
# --------------------------------------------------------------------------

def dimer(dist, ndim=2):
    """Constrain clusters of two features to a fixed distance.

    Parameters
    ----------
    dist : number or tuple of numbers
        Distance between the two feature centres, in pixels. A tuple gives
        one distance scale per axis (anisotropic pixels), in the order of
        the position columns.
    ndim : int, optional
        Number of image dimensions. Default 2.

    Returns
    -------
    tuple of dict
        One equality constraint with ``cluster_size=2``. Its function gives,
        per cluster, ``1 - sum(((pos_0 - pos_1) / dist) ** 2)``: one value
        per cluster of the group.

    Raises
    ------
    ValueError
        If ``dist`` is a tuple whose length is not ``ndim``, or not positive.

    See Also
    --------
    trimer, tetramer, dimer_global
    """
    ndim = _check_ndim(ndim)
    dist = _per_axis(dist, ndim, "dist")
    return (dict(type="eq", cluster_size=2, fun=_dimer_fun,
                 args=(dist, ndim)),)


def trimer(dist, ndim=2):
    """Constrain clusters of three features to an equilateral triangle.

    Parameters
    ----------
    dist : number or tuple of numbers
        Distance between each two feature centres, in pixels; a tuple gives
        one value per axis (anisotropic pixels).
    ndim : int, optional
        Number of image dimensions. Default 2.

    Returns
    -------
    tuple of dict
        One equality constraint with ``cluster_size=3``. Its function gives
        three values per cluster (pairs 0-1, 1-2, 0-2), concatenated pair by
        pair as trackpy does: first pair 0-1 of every cluster, then 1-2,
        then 0-2.

    Raises
    ------
    ValueError
        If ``dist`` is a tuple whose length is not ``ndim``, or not positive.

    See Also
    --------
    dimer, tetramer
    """
    ndim = _check_ndim(ndim)
    dist = _per_axis(dist, ndim, "dist")
    return (dict(type="eq", cluster_size=3, fun=_trimer_fun,
                 args=(dist, ndim)),)


def tetramer(dist, ndim=2):
    """Constrain clusters of four features to a square (2D) or tetrahedron.

    Parameters
    ----------
    dist : number or tuple of numbers
        Side length, in pixels; a tuple gives one value per axis
        (anisotropic pixels).
    ndim : {2, 3}, optional
        Number of image dimensions. Default 2.

    Returns
    -------
    tuple of dict
        One equality constraint with ``cluster_size=4``. In 2D its function
        gives four values per cluster: ``1 - d2`` for the four smallest of
        the six squared reduced pair distances ``d2`` (the sides of the
        square), ordered by rank and then cluster. As in trackpy, the other
        two distances are left free, so shapes other than a square (e.g. a
        rhombus) also satisfy it. In 3D it gives six values
        per cluster, one per pair (0-1, 1-2, 0-2, 1-3, 0-3, 2-3), pair by
        pair.

    Raises
    ------
    ValueError
        If ``dist`` is a tuple whose length is not ``ndim``, or not positive.
    NotImplementedError
        If ``ndim`` is neither 2 nor 3 (as trackpy).

    See Also
    --------
    dimer, trimer
    """
    ndim = _check_ndim(ndim)
    if ndim not in (2, 3):
        raise NotImplementedError(f"tetramer: only 2D (square) and 3D "
                                  f"(tetrahedron) are defined, got ndim={ndim}")
    dist = _per_axis(dist, ndim, "dist")
    return (dict(type="eq", cluster_size=4, fun=_tetramer_fun,
                 args=(dist,)),)


def dimer_global(mpp, ndim=2):
    """Constrain all dimers to one common, unknown distance.

    Parameters
    ----------
    mpp : number or tuple of numbers
        Microns per pixel; a tuple gives one value per axis (anisotropic
        pixels).
    ndim : int, optional
        Number of image dimensions. Default 2.

    Returns
    -------
    tuple of dict
        One equality constraint for clusters of 2. Given dimers on the
        grouping axis, its function returns the differences between
        consecutive dimers of ``sum(((pos_0 - pos_1) * mpp) ** 2) ** 2``
        (n_dimers - 1 values; trackpy squares the squared distance, and so
        do we, to give the same values). With one group or a 2D array it
        returns an empty array.

    Raises
    ------
    ValueError
        If ``mpp`` is a tuple whose length is not ``ndim``, or not positive.

    Notes
    -----
    trackpy's version has no ``cluster_size``, so it receives all features
    as one group and never constrains anything. This one has
    ``cluster_size=2``: :func:`refine_leastsq` sees that its values mix
    clusters and solves all clusters as one problem, in which every dimer
    is held to one common distance.

    See Also
    --------
    dimer
    """
    ndim = _check_ndim(ndim)
    mpp = _per_axis(mpp, ndim, "mpp")
    return (dict(type="eq", cluster_size=2, fun=_dimer_global_fun,
                 args=(mpp, ndim)),)


# --------------------------------------------------------------------------
# validation and wrapping
# --------------------------------------------------------------------------

def _normalise(cons, label):
    """Check one constraint dict; return (normalised dict, had_jac)."""
    if not isinstance(cons, Mapping):
        raise TypeError(f"{label}: expected a dict, got "
                        f"{type(cons).__name__}")
    unknown = sorted(str(k) for k in set(cons) - _KEYS - {"jac"})
    if unknown:
        raise ValueError(f"{label}: unknown key(s) {unknown}; allowed keys "
                         f"are {sorted(_KEYS)} (and 'jac', which is ignored)")
    if "fun" not in cons:
        raise ValueError(f"{label}: missing 'fun'")
    fun = cons["fun"]
    if not callable(fun):
        raise TypeError(f"{label}: 'fun' must be callable, got "
                        f"{type(fun).__name__}")
    allowed = ", ".join(repr(t) for t in CONSTRAINT_TYPES)
    if "type" not in cons:
        raise ValueError(f"{label}: missing 'type'; it must be one of "
                         f"{allowed}")
    ctype = cons["type"]
    if not isinstance(ctype, str) or ctype not in CONSTRAINT_TYPES:
        raise ValueError(f"{label}: unknown type {ctype!r}; it must be one "
                         f"of {allowed}")
    args = cons.get("args", ())
    if args is None:
        args = ()
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"{label}: 'args' must be a tuple or list, got "
                        f"{type(args).__name__}")
    size = cons.get("cluster_size", None)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) \
                or size < 1:
            raise ValueError(f"{label}: cluster_size must be a positive "
                             f"integer or None, got {size!r}")
        size = int(size)
    return ({"type": ctype, "fun": fun, "args": tuple(args),
             "cluster_size": size}, "jac" in cons)


def _warn_jac():
    warnings.warn("constraints: constraint jacobians ('jac') are ignored, "
                  "as in trackpy", UserWarning, stacklevel=3)


def validate_constraints(constraints):
    """Check constraints and return them in a normalised form.

    Parameters
    ----------
    constraints : None, dict or sequence of dicts
        Each dict has ``fun`` (callable, receives the 3D parameter array and
        then ``args``), ``type`` ('eq' or 'ineq'), and optionally ``args``
        (tuple or list, default ``()``) and ``cluster_size`` (positive int or
        None). A ``jac`` key is accepted but ignored, with a warning, as
        trackpy ignores it.

    Returns
    -------
    tuple of dict
        One dict per constraint with exactly the keys ``type``, ``fun``,
        ``args`` (a tuple) and ``cluster_size`` (int or None). Empty for
        None or an empty sequence.

    Raises
    ------
    ValueError
        A missing ``fun``, a missing or unknown ``type``, a bad
        ``cluster_size`` or an unknown key; the message starts with
        ``constraints[i]``.
    TypeError
        ``fun`` not callable, ``args`` not a tuple or list, a constraint
        that is not a dict, or ``constraints`` not a dict or sequence.

    Warns
    -----
    UserWarning
        Once per call if any constraint has a ``jac`` (it is dropped).
    """
    if constraints is None:
        return ()
    if isinstance(constraints, Mapping):
        constraints = (constraints,)
    elif isinstance(constraints, (str, bytes)) or \
            not hasattr(constraints, "__iter__"):
        raise TypeError("constraints must be a dict or a sequence of dicts, "
                        f"got {type(constraints).__name__}")
    result = []
    any_jac = False
    for i, cons in enumerate(constraints):
        normalised, had_jac = _normalise(cons, f"constraints[{i}]")
        result.append(normalised)
        any_jac = any_jac or had_jac
    if any_jac:
        _warn_jac()
    return tuple(result)


def wrap_constraint(constraint, params, modes, groups=None):
    """Make a constraint on per-feature parameters one on the optimiser's
    vector.

    Parameters
    ----------
    constraint : dict
        One constraint, as returned by :func:`validate_constraints` (a raw
        dict is validated first).
    params : ndarray (features x parameters)
        Current parameters; the constant ones (mode 0) are kept.
    modes : sequence of int
        Mode of each parameter: 0 const, 1 var, 2 global, 3 cluster, 4 and
        above custom groups (see :func:`refinefit.vect_from_params`).
    groups : sequence of lists of index lists, optional
        Feature indices of every group, per mode from 3 on; ``groups[0]``
        defines the clusters.

    Returns
    -------
    dict or None
        ``{'type', 'fun', 'args'}`` for :func:`scipy.optimize.minimize`.
        ``fun(vect, *args)`` unpacks ``vect`` with
        :func:`refinefit.vect_to_params` and calls the constraint's function
        on

        - all features as one group, ``params[np.newaxis]``, if the
          constraint has no ``cluster_size`` (or if ``groups`` is None);
        - otherwise the clusters of ``groups[0]`` with ``cluster_size``
          features, stacked on the grouping axis: shape
          (n_clusters_of_that_size, cluster_size, n_params).

        Its result is returned as a 1D float array. None when no cluster of
        ``groups[0]`` has the constraint's size: the caller skips it.

    Raises
    ------
    ValueError
        If ``groups`` is None but ``params`` is not one cluster of the
        constraint's ``cluster_size``; if ``groups[0]`` is missing or holds
        out-of-range indices; or if ``params`` / ``modes`` are inconsistent.

    Notes
    -----
    Unlike trackpy's ``_wrap_constraints``, which raises when no cluster
    has the constraint's size, this returns None; and every wrapped
    function is bound to its own constraint and clusters.
    """
    cons, had_jac = _normalise(constraint, "constraint")
    if had_jac:
        _warn_jac()
    params = np.array(params, dtype=np.float64)  # a private copy
    modes = _checked_modes(params, modes)
    user_fun = cons["fun"]
    size = cons["cluster_size"]

    index = None  # None: all features as one group
    if size is not None:
        if groups is None:
            if len(params) != size:
                raise ValueError(
                    f"constraint with cluster_size={size}: without groups, "
                    f"params must be one cluster of {size} features, got "
                    f"{len(params)}; pass groups (groups[0] = the clusters)")
        else:
            try:
                clusters = groups[0]
            except (IndexError, TypeError, KeyError):
                raise ValueError("groups: groups[0] (the clusters) was not "
                                 "provided") from None
            chosen = [list(g) for g in clusters if len(g) == size]
            if not chosen:
                return None
            index = np.array(chosen, dtype=np.intp)
            if index.size and (index.min() < 0 or index.max() >= len(params)):
                raise ValueError("groups[0]: feature indices out of range for "
                                 f"{len(params)} features")

    def fun(vect, *args):
        full = vect_to_params(vect, params, modes, groups)
        grouped = full[np.newaxis] if index is None else full[index]
        return np.ravel(np.asarray(user_fun(grouped, *args),
                                   dtype=np.float64))

    return {"type": cons["type"], "fun": fun, "args": cons["args"]}
