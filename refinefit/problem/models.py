"""Registry of the fit functions: name -> kernel id and parameters.

Built-in shapes are evaluated by the Numba kernels (by id); a custom
fit-function dict (trackpy's format) gets ``kernel_id`` CUSTOM and is
evaluated with NumPy (see ``custom_model.py``).
"""
import marshal
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..kernels import DISC, GAUSS, INV_SERIES, RING
from ..kernels.custom import CUSTOM_BASE, is_registered, make_shape, register


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
    # (the kernels' solver assumes these continuities: kernels/terms.py)
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
    continuous = bool(spec.get("continuous", True))
    model_id, reason = _compile_custom(spec["fun"], spec.get("dfun"),
                                       tuple(params), default)
    if model_id is not None:
        return Model("custom", model_id, tuple(params), default, continuous)
    warnings.warn(f"fit_function: the custom fit function cannot be compiled "
                  f"by Numba ({reason}); it is evaluated with NumPy and "
                  "solved by scipy.optimize.minimize per cluster, much "
                  "slower than a compiled one", UserWarning, stacklevel=3)
    return Model("custom", CUSTOM, tuple(params), default, continuous,
                 spec["fun"], spec.get("dfun"))


def _compile_custom(fun, dfun, params, default):
    """Kernel id of a compiled custom shape, or (None, why not).

    The compiled shape must agree with ``fun`` called by NumPy on an array
    (trackpy's convention) at a few radii, so that a function that behaves
    differently on scalars is not used compiled.
    """
    model_id = CUSTOM_BASE + _code_hash(fun, dfun, len(params))
    n_extra = len(params)
    p = np.array([float(default.get(name, 1.0)) for name in params])
    r2 = np.array([0.0, 0.3, 1.0, 2.5])
    try:
        shape = make_shape(fun, dfun, n_extra)
        dextra = np.empty(max(n_extra, 1))
        table = np.concatenate([[0.0, 0.0], p]).reshape(1, -1)
        compiled = np.array([shape(float(x), table, 0, 2, 2, dextra)[0]
                             for x in r2])
    except Exception as exc:  # noqa: BLE001 - any Numba failure means "no"
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
    with np.errstate(all="ignore"):
        expected = np.asarray(fun(r2, p.copy(), 2), dtype=float)
    if expected.shape != r2.shape or not np.allclose(compiled, expected,
                                                     rtol=1e-9, atol=1e-12,
                                                     equal_nan=True):
        return None, "its compiled values differ from NumPy's"
    if not is_registered(model_id):
        register(model_id, shape)
    return model_id, None


def _code_hash(fun, dfun, n_extra):
    """A stable hash of the functions' code, constants, closures and the
    numeric globals they read: the same function gets the same kernel id
    (and cached machine code) in every process."""
    parts = [str(n_extra)]
    for func in (fun, dfun):
        if func is None:
            parts.append("-")
            continue
        code = getattr(func, "__code__", None)
        if code is None:
            parts.append(repr(func))
            continue
        parts.append(marshal.dumps(code).hex())
        cells = func.__closure__ or ()
        parts.append(repr([_plain(c.cell_contents) for c in cells]))
        parts.append(repr(func.__defaults__))
        scope = getattr(func, "__globals__", {})
        parts.append(repr([(name, _plain(scope[name])) for name in code.co_names
                           if name in scope]))
    return zlib.crc32("|".join(parts).encode()) % (1 << 30)


def _plain(value):
    """Numbers and arrays by value, anything else (modules, functions) by
    name."""
    if isinstance(value, (int, float, complex, bool, str)):
        return value
    if isinstance(value, np.ndarray):
        return value.tobytes().hex()
    return getattr(value, "__name__", type(value).__name__)
