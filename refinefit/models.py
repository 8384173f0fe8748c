"""Registry of the fit functions: name -> kernel id and parameters.

Built-in shapes are evaluated by the Numba kernels (by id); a custom
fit-function dict (trackpy's format) gets ``kernel_id`` CUSTOM and is
evaluated with NumPy (see ``custom_model.py``).
"""
import warnings
from dataclasses import dataclass, field

from .kernels import DISC, GAUSS, INV_SERIES, RING


@dataclass(frozen=True)
class Model:
    """A radial model shape as the kernels know it.

    Attributes
    ----------
    name : str
        Name as given by the user.
    kernel_id : int
        Id of the shape in ``refinefit.kernels.models``.
    params : tuple of str
        Extra shape parameters, after background, signal, positions, sizes.
    default : dict
        Default values of the extra parameters (and of ``background``).
    continuous : bool
        False when f(r) is not continuous at r = 0: pixels closer than 1 px
        to a centre are then ignored.
    fun, dfun : callable or None
        A custom model's ``fun(r2, p, ndim)`` and ``dfun(r2, p, ndim)``.
    """

    name: str
    kernel_id: int
    params: tuple = ()
    default: dict = field(default_factory=dict)
    continuous: bool = True
    fun: object = None
    dfun: object = None


CUSTOM = -1
_CUSTOM_KEYS = {"params", "fun", "dfun", "default", "continuous"}


_BUILTIN = {
    "gauss": Model("gauss", GAUSS),
    "disc": Model("disc", DISC, ("disc_size",), {"disc_size": 0.5}),
    "ring": Model("ring", RING, ("thickness",), {"thickness": 0.2},
                  continuous=False),
}
_BUILTIN["hat"] = Model("hat", DISC, ("disc_size",), {"disc_size": 0.5})

BUILTIN_NAMES = ("gauss", "disc", "hat", "ring", "inv_series_<n>")


def resolve_model(fit_function):
    """Return the :class:`Model` for a ``fit_function`` argument.

    Raises
    ------
    ValueError
        For an unknown name.
    NotImplementedError
        For a custom fit-function dict (not supported yet).
    TypeError
        For anything that is neither a string nor a dict.
    """
    if isinstance(fit_function, dict):
        return _custom_model(fit_function)
    if not isinstance(fit_function, str):
        raise TypeError("fit_function must be a string such as 'gauss', got "
                        f"{type(fit_function).__name__}")
    if fit_function in _BUILTIN:
        return _BUILTIN[fit_function]
    prefix, _, order = fit_function.rpartition("_")
    if prefix == "inv_series" and order.isdigit():
        names = ("signal_mult",) + tuple(
            "param_" + chr(97 + i) for i in range(int(order)))
        return Model(fit_function, INV_SERIES, names,
                     {name: 1.0 for name in names})
    raise ValueError(f"fit_function: unknown fit function {fit_function!r}; "
                     f"choose one of {', '.join(BUILTIN_NAMES)}")


def _custom_model(spec):
    """A :class:`Model` from trackpy's custom fit-function dict."""
    unknown = sorted(set(spec) - _CUSTOM_KEYS)
    if unknown:
        raise ValueError(f"fit_function: unknown key(s) {unknown}; a custom "
                         f"fit function has {sorted(_CUSTOM_KEYS)}")
    if "fun" not in spec:
        raise ValueError("fit_function: a custom fit function needs 'fun', "
                         "a callable fun(r2, p, ndim)")
    for key in ("fun", "dfun"):
        if spec.get(key) is not None and not callable(spec[key]):
            raise TypeError(f"fit_function[{key!r}] must be callable")
    params = spec.get("params", [])
    if isinstance(params, str) or not all(isinstance(p, str) for p in params):
        raise TypeError("fit_function['params'] must be a list of names")
    default = dict(spec.get("default") or {})
    warnings.warn("fit_function: a custom fit function is evaluated with "
                  "NumPy and solved by scipy.optimize.minimize per cluster, "
                  "much slower than the built-in models", UserWarning,
                  stacklevel=3)
    return Model("custom", CUSTOM, tuple(params), default,
                 bool(spec.get("continuous", True)), spec["fun"],
                 spec.get("dfun"))
