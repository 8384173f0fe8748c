"""Custom fit-function dicts (trackpy's format)."""
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import approx_fprime

import refinefit
from refinefit.kernels import evaluate_model
from refinefit.problem.models import CUSTOM, Model, resolve_model
from refinefit.solvers import custom_model, engine


def gauss_fun(r2, p, ndim):
    return np.exp(-0.5 * ndim * r2)


def gauss_dfun(r2, p, ndim):
    value = np.exp(-0.5 * ndim * r2)
    return value, [-0.5 * ndim * value]


def ring_fun(r2, p, ndim):
    r = np.sqrt(r2)
    return np.exp(-0.5 * ndim * ((r - 1 + p[0]) / p[0]) ** 2)


GAUSS = dict(params=[], fun=gauss_fun, dfun=gauss_dfun)
GAUSS_NO_DFUN = dict(params=[], fun=gauss_fun)
RING = dict(params=["thickness"], fun=ring_fun, default=dict(thickness=0.3),
            continuous=False)


def image_and_guess(seed=0):
    rng = np.random.default_rng(seed)
    truth = np.array([[15.3, 16.1], [15.9, 19.6], [40.2, 35.7], [44.6, 12.2]])
    yy, xx = np.indices((56, 56), dtype=float)
    image = 10 + sum(100 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0)
                     for y, x in truth)
    guess = truth + rng.uniform(-0.4, 0.4, truth.shape)
    f = pd.DataFrame(dict(y=guess[:, 0], x=guess[:, 1], signal=90.0,
                          size=2.0))
    return image, truth, f


def _numpy_model(spec):
    """The NumPy/scipy evaluation of a custom dict (used when Numba cannot
    compile it)."""
    return Model("custom", CUSTOM, tuple(spec["params"]),
                 dict(spec.get("default") or {}),
                 bool(spec.get("continuous", True)), spec["fun"],
                 spec.get("dfun"))


@pytest.mark.parametrize("spec", [GAUSS, GAUSS_NO_DFUN],
                         ids=["with-dfun", "without-dfun"])
def test_custom_gauss_matches_builtin(spec, monkeypatch):
    """Compiled by Numba and solved on the LM engine: no warning, scipy
    never called, the built-in gauss's positions."""
    image, truth, f = image_and_guess()
    builtin = refinefit.refine_leastsq(f, image, 15)
    monkeypatch.setattr(engine, "solve_groups", _no_scipy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        custom = refinefit.refine_leastsq(f, image, 15, fit_function=spec)
    assert custom["cost"].notna().all()
    np.testing.assert_allclose(custom[["y", "x"]], builtin[["y", "x"]],
                               atol=1e-6)
    np.testing.assert_allclose(custom[["y", "x"]], truth, atol=0.01)


def _no_scipy(*args, **kwargs):
    raise AssertionError("a compiled custom model went to scipy")


@pytest.mark.parametrize("spec, builtin", [(GAUSS, "gauss"),
                                           (GAUSS_NO_DFUN, "gauss"),
                                           (RING, "ring")],
                         ids=["gauss-dfun", "gauss-fd", "ring-fd"])
def test_compiled_model_and_derivatives_match_builtin(spec, builtin):
    """The compiled custom shape gives the built-in model image, and its
    derivatives (analytic from dfun, or finite differences) agree with the
    built-in analytic ones, which tests/test_kernels.py checks against
    finite differences."""
    image, truth, _ = image_and_guess(2)
    n_extra = len(spec["params"])
    params = np.array([[12.0, 95.0, y + 0.3, x - 0.2, 2.1] + [0.35] * n_extra
                       for y, x in truth[:2]])
    cfo = np.array([0, 2], dtype=np.int64)
    batch = engine.flatten_masks([image], np.zeros(1, np.int64), cfo,
                                 np.ascontiguousarray(params[:, 2:4]),
                                 (7.0, 7.0))
    results = []
    for fit_function in (spec, builtin):
        model = resolve_model(fit_function)
        n_pix, n_entries = len(batch.pix_val), len(batch.entry_pix)
        image_out = np.empty(n_pix)
        excluded = np.empty(n_pix, dtype=bool)
        deriv = np.empty((n_entries, params.shape[1]))
        evaluate_model(batch.pix_coord, batch.cluster_pix_off,
                       batch.entry_pix, batch.feat_entry_off,
                       batch.cluster_feat_off, params, 2, 1, model.kernel_id,
                       model.continuous, image_out, excluded, deriv)
        results.append((image_out, excluded, deriv))
    (img_c, exc_c, der_c), (img_b, exc_b, der_b) = results
    np.testing.assert_array_equal(exc_c, exc_b)
    np.testing.assert_allclose(img_c, img_b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(der_c, der_b, rtol=1e-5,
                               atol=1e-6 * np.abs(der_b).max())


def test_uncompilable_custom_function_falls_back_with_a_warning():
    from scipy import special

    def fun(r2, p, ndim):
        return special.expit(-r2) * 2.0  # scipy.special: Numba cannot

    image, truth, f = image_and_guess()
    with pytest.warns(UserWarning, match="cannot be compiled by Numba"):
        model = resolve_model(dict(params=[], fun=fun))
    assert model.fun is fun and model.kernel_id == CUSTOM
    with pytest.warns(UserWarning, match="cannot be compiled by Numba"):
        result = refinefit.refine_leastsq(f, image, 15, compute_error=True,
                                          fit_function=dict(params=[], fun=fun))
    assert result["cost"].notna().all()
    np.testing.assert_allclose(result[["y", "x"]], truth, atol=0.1)
    # standard errors from the NumPy evaluation (noise-free image: tiny)
    assert np.isfinite(result[["y_std", "x_std", "signal_std"]]).all().all()
    assert (result["y_std"] < 0.1).all()


def test_numpy_evaluation_matches_the_kernel():
    """custom_model.evaluate (used for errors of the NumPy path) gives the
    kernel's model image and entry derivatives for the same shape."""
    image, truth, _ = image_and_guess(3)
    params = np.array([[12.0, 95.0, y + 0.3, x - 0.2, 2.1, 0.35]
                       for y, x in truth[:2]])
    cfo = np.array([0, 2], dtype=np.int64)
    batch = engine.flatten_masks([image], np.zeros(1, np.int64), cfo,
                                 np.ascontiguousarray(params[:, 2:4]),
                                 (7.0, 7.0))
    img_np, exc_np, der_np = custom_model.evaluate(_numpy_model(RING), batch,
                                                   params, 2, 1)
    model = resolve_model("ring")
    img = np.empty(len(batch.pix_val))
    exc = np.empty(len(batch.pix_val), dtype=bool)
    der = np.empty((len(batch.entry_pix), params.shape[1]))
    evaluate_model(batch.pix_coord, batch.cluster_pix_off, batch.entry_pix,
                   batch.feat_entry_off, batch.cluster_feat_off, params, 2, 1,
                   model.kernel_id, model.continuous, img, exc, der)
    np.testing.assert_array_equal(exc_np, exc)
    np.testing.assert_allclose(img_np[~exc], img[~exc], rtol=1e-12)
    use = ~exc[batch.entry_pix]
    np.testing.assert_allclose(der_np[use], der[use], rtol=1e-5,
                               atol=1e-6 * np.abs(der).max())


@pytest.mark.parametrize("spec, n_size", [(GAUSS, 1), (GAUSS_NO_DFUN, 2),
                                          (RING, 1)],
                         ids=["gauss-dfun", "gauss-fd-aniso", "ring-fd"])
def test_custom_gradient_matches_finite_differences(spec, n_size):
    model = _numpy_model(spec)
    image, truth, _ = image_and_guess(1)
    n_extra = len(model.params)
    rows = []
    for y, x in truth[:2]:  # one dimer cluster
        rows.append([12.0, 95.0, y + 0.3, x - 0.2] + [2.1] * n_size
                    + [0.35] * n_extra)
    params = np.array(rows)
    cfo = np.array([0, 2], dtype=np.int64)
    batch = engine.flatten_masks([image], np.zeros(1, np.int64), cfo,
                                 np.ascontiguousarray(params[:, 2:4]),
                                 (7.0, 7.0))
    ids = np.array([0])

    def cost(flat):
        out = np.empty(1)
        grad = np.zeros_like(params)
        custom_model.cost_and_gradient(model, ids, batch,
                                       flat.reshape(params.shape), 2, n_size,
                                       out, grad)
        return out[0], grad.ravel()

    value, grad = cost(params.ravel())
    numeric = approx_fprime(params.ravel(), lambda v: cost(v)[0], 1e-6)
    # the background of the second feature is not used by the model
    np.testing.assert_allclose(grad, numeric, rtol=1e-4,
                               atol=1e-4 * np.abs(numeric).max())


@pytest.mark.parametrize("spec, error, match", [
    (dict(params=[]), ValueError, "fun"),
    (dict(params=[], fun=gauss_fun, colour="red"), ValueError, "colour"),
    (dict(params=[], fun="gauss"), TypeError, "callable"),
])
def test_bad_custom_dicts(spec, error, match):
    image, _, f = image_and_guess()
    with pytest.raises(error, match=match):
        refinefit.refine_leastsq(f, image, 15, fit_function=spec)
