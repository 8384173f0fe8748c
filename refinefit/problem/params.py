"""Parameter layout and parameter modes.

Per-feature parameters are ordered ``[background, signal, <pos>, <size>,
<extra>]`` as in trackpy. Mode numbers are trackpy's: 0 const, 1 var,
2 global, 3 cluster, then particle and frame.
"""
import warnings
from dataclasses import dataclass

import numpy as np

from ..kernels.codes import (
    MODE_CLUSTER,
    MODE_CONST,
    MODE_FRAME,
    MODE_GLOBAL,
    MODE_NUMBERS,
    MODE_VAR,
)


@dataclass(frozen=True)
class Layout:
    """Names and modes of the per-feature parameters of one problem."""

    names: tuple
    pos_columns: tuple
    size_columns: tuple
    extra: tuple
    modes: np.ndarray

    @property
    def ndim(self):
        return len(self.pos_columns)

    @property
    def n_size(self):
        return len(self.size_columns)

    def index(self, name):
        return self.names.index(name)


def size_columns_for(pos_columns, isotropic):
    """``['size']`` or one ``size_<axis>`` per position column."""
    if isotropic:
        return ("size",)
    return tuple("size_" + col for col in pos_columns)


def make_layout(model, pos_columns, isotropic, param_mode=None):
    """Build the :class:`Layout` for a model and a ``param_mode`` dict.

    Defaults follow trackpy: positions and signal 'var', background
    'cluster', everything else 'const'. 'pos' and 'size' broadcast to their
    columns (a direct column entry wins). A 'var' background becomes
    'cluster' with a warning: overlapping masks share one background.
    """
    pos_columns = tuple(pos_columns)
    size_columns = size_columns_for(pos_columns, isotropic)
    names = ("background", "signal") + pos_columns + size_columns + tuple(
        model.params)
    if param_mode is None:
        param_mode = {}
    if not isinstance(param_mode, dict):
        raise TypeError("param_mode must be a dict such as {'size': 'var'}, "
                        f"got {type(param_mode).__name__}")
    given = dict(param_mode)
    for group, columns in (("pos", pos_columns), ("size", size_columns)):
        if group in given and group not in names:
            value = given.pop(group)
            for col in columns:
                given.setdefault(col, value)
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(f"param_mode: unknown parameter(s) {unknown}; the "
                         f"parameters of this fit are {list(names)}")
    modes = {"signal": MODE_VAR, "background": MODE_CLUSTER}
    modes.update({col: MODE_VAR for col in pos_columns})
    for name, value in given.items():
        modes[name] = _mode_number(name, value)
    if modes["background"] == MODE_VAR:
        warnings.warn("param_mode: the background cannot vary per feature "
                      "(overlapping masks share it); varying it per cluster",
                      UserWarning, stacklevel=3)
        modes["background"] = MODE_CLUSTER
    mode_array = np.array([modes.get(name, MODE_CONST) for name in names],
                          dtype=np.int64)
    return Layout(names, pos_columns, size_columns, tuple(model.params),
                  mode_array)


def _mode_number(name, value):
    if isinstance(value, (str, np.str_)):
        if value not in MODE_NUMBERS:
            raise ValueError(f"param_mode: unknown mode {value!r} for "
                             f"{name!r}; choose one of {list(MODE_NUMBERS)}")
        number = MODE_NUMBERS[value]
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
            and MODE_CONST <= value <= MODE_FRAME:
        number = int(value)
    else:
        raise ValueError(f"param_mode: unknown mode {value!r} for {name!r}; "
                         f"choose one of {list(MODE_NUMBERS)}")
    return number


def vect_from_params(params, modes, groups=None, operation=None):
    """Pack per-feature parameters into the vector an optimiser sees.

    Same conventions as trackpy's function of the same name.

    Parameters
    ----------
    params : ndarray (features x parameters)
        Parameters in the order ``background, signal, <pos>, <size>,
        <extra>``.
    modes : sequence of int
        Mode of each parameter: 0 const (skipped), 1 var (one value per
        feature), 2 global (one value), 3 and above: one value per group of
        ``groups[mode - 3]`` (3 is 'cluster').
    groups : sequence of lists of index lists, optional
        Feature indices of every group, per mode from 3 on. Without it,
        modes 3 and above give one value, as 'global'.
    operation : callable, optional
        Reduces the values of a shared parameter to one (for example
        ``np.mean``); by default the first feature's value is taken.

    Returns
    -------
    ndarray
        1D vector: the parameters in column order, each expanded per mode.

    See Also
    --------
    vect_to_params
    """
    params = np.asarray(params, dtype=np.float64)
    modes = _checked_modes(params, modes)
    pieces = []
    for i, mode in enumerate(modes):
        column = params[:, i]
        if mode == MODE_CONST:
            continue
        if mode == MODE_VAR:
            pieces.append(column)
        elif mode == MODE_GLOBAL or groups is None:
            pieces.append([column[0] if operation is None else operation(column)])
        else:
            members = _groups_for(groups, mode)
            if operation is None:
                pieces.append(column[[g[0] for g in members]])
            else:
                pieces.append([operation(column[g]) for g in members])
    if not pieces:
        return np.empty(0)
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in pieces])


def vect_to_params(vect, params, modes, groups=None):
    """Unpack an optimiser's vector into per-feature parameters.

    The inverse of :func:`vect_from_params`; constant parameters are taken
    from ``params``, which is not modified.

    Parameters
    ----------
    vect : 1D ndarray
        The packed vector.
    params : ndarray (features x parameters)
        Current parameters; the constant ones are kept.
    modes : sequence of int
        As in :func:`vect_from_params`.
    groups : sequence of lists of index lists, optional
        As in :func:`vect_from_params`.

    Returns
    -------
    ndarray
        A new (features x parameters) array.
    """
    params = np.asarray(params, dtype=np.float64)
    modes = _checked_modes(params, modes)
    vect = np.asarray(vect, dtype=np.float64)
    result = params.copy()
    at = 0
    for i, mode in enumerate(modes):
        if mode == MODE_CONST:
            continue
        if mode == MODE_VAR:
            result[:, i] = vect[at:at + len(params)]
            at += len(params)
        elif mode == MODE_GLOBAL or groups is None:
            result[:, i] = vect[at]
            at += 1
        else:
            members = _groups_for(groups, mode)
            for group, value in zip(members, vect[at:at + len(members)]):
                result[group, i] = value
            at += len(members)
    if at != len(vect):
        raise ValueError(f"vect has {len(vect)} values where the modes call "
                         f"for {at}")
    return result


def _checked_modes(params, modes):
    if params.ndim != 2:
        raise ValueError("params must be a 2D array (features x parameters)")
    modes = [int(m) for m in modes]
    if len(modes) != params.shape[1]:
        raise ValueError(f"modes has {len(modes)} entries for "
                         f"{params.shape[1]} parameters")
    if modes and min(modes) < 0:
        raise ValueError("modes must be non-negative mode numbers")
    return modes


def _groups_for(groups, mode):
    try:
        return groups[mode - MODE_CLUSTER]
    except (IndexError, TypeError):
        raise ValueError(f"groups: the groups for mode {mode} were not "
                         "provided") from None
