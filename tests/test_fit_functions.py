"""FitFunctions against trackpy's class of the same name."""
import numpy as np
import pytest

import refinefit

least_squares = pytest.importorskip("trackpy.refine.least_squares")


@pytest.mark.parametrize("name, ndim, isotropic, param_mode", [
    ("gauss", 2, True, None),
    ("gauss", 3, False, {"size": "var"}),
    ("ring", 2, True, {"thickness": "var", "background": "const"}),
    ("disc", 3, True, {"pos": "const", "signal": "cluster"}),
    ("inv_series_3", 2, True, {"param_a": "var"}),
])
def test_same_attributes_as_trackpy(name, ndim, isotropic, param_mode):
    ours = refinefit.FitFunctions(name, ndim, isotropic, param_mode)
    theirs = least_squares.FitFunctions(name, ndim, isotropic,
                                        dict(param_mode or {}))
    assert ours.params == theirs.params
    assert ours.modes == theirs.modes
    assert ours.default == theirs.default
    assert ours.continuous == theirs.continuous
    assert ours.size_columns == theirs.size_columns


@pytest.mark.parametrize("name, extra", [("gauss", {}),
                                         ("ring", {"thickness": 0.3}),
                                         ("disc", {"disc_size": 0.4})])
def test_radial_profile_as_trackpy(name, extra):
    r = np.linspace(0.05, 2.0, 40)
    ours = refinefit.FitFunctions(name).plot_single_radial(
        r, signal=3.0, background=1.0, **extra)
    theirs = least_squares.FitFunctions(name).plot_single_radial(
        r, signal=3.0, background=1.0, **extra)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_bounds_as_trackpy():
    bounds = {"signal": (10, 200), "pos_abs": (1.0, 2.0), "size_rel": 1.5}
    params = np.array([[10.0, 100.0, 20.0, 30.0, 2.5],
                       [12.0, 80.0, 24.0, 31.0, 2.0]])
    groups = [[[0, 1]]]
    ours = refinefit.FitFunctions("gauss")
    theirs = least_squares.FitFunctions("gauss")
    ours_spec = ours.validate_bounds(bounds, radius=(5, 5))
    theirs_spec = theirs.validate_bounds(dict(bounds), radius=(5, 5))
    for a, b in zip(ours_spec, theirs_spec):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(
        ours.compute_bounds(ours_spec, params, groups),
        theirs.compute_bounds(theirs_spec, params, groups))
