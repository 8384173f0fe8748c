"""Custom fit-function dicts (trackpy's format)."""
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import approx_fprime

import refinefit
from refinefit import custom_model, engine
from refinefit.models import resolve_model


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


@pytest.mark.parametrize("spec", [GAUSS, GAUSS_NO_DFUN],
                         ids=["with-dfun", "without-dfun"])
def test_custom_gauss_matches_builtin(spec):
    image, truth, f = image_and_guess()
    builtin = refinefit.refine_leastsq(f, image, 15)
    with pytest.warns(UserWarning, match="custom fit function"):
        custom = refinefit.refine_leastsq(f, image, 15, fit_function=spec)
    assert custom["cost"].notna().all()
    np.testing.assert_allclose(custom[["y", "x"]], builtin[["y", "x"]],
                               atol=0.01)
    np.testing.assert_allclose(custom[["y", "x"]], truth, atol=0.01)


@pytest.mark.parametrize("spec, n_size", [(GAUSS, 1), (GAUSS_NO_DFUN, 2),
                                          (RING, 1)],
                         ids=["gauss-dfun", "gauss-fd-aniso", "ring-fd"])
def test_custom_gradient_matches_finite_differences(spec, n_size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = resolve_model(spec)
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
