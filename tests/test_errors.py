"""compute_error: standard errors calibrated against the scatter of fits.

Over many noisy fits at S/N 10 (white Gaussian noise of std signal / 10),
(estimate - truth) / reported std must have a standard deviation of 1 within
0.9-1.1, for every fitted parameter. The images are drawn with plain NumPy
(not the fitter's model code); masks are wide (radius 3.5 sizes) so that the
model's truncation at the mask is negligible.
"""
import numpy as np
import pandas as pd
import pytest
import synth

import refinefit

SIGNAL = 100.0
BACKGROUND = 20.0
SIZE = 2.0
DIAMETER = 15
SPACING = 26  # one feature (or dimer) per cell: neighbours > 15 px apart


def draw(shape, centres, rng, snr=10.0):
    yy, xx = np.indices(shape, dtype=float)
    image = np.full(shape, BACKGROUND)
    for cy, cx in centres:
        image += SIGNAL * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / SIZE ** 2)
    return image + rng.normal(0.0, SIGNAL / snr, shape)


def grid_scene(n_cells, rng, dimer_distance=None):
    """Features (or dimers) on a grid of cells, one image per 100 cells."""
    truths, guesses, images = [], [], []
    per_image = 10
    for frame in range(int(np.ceil(n_cells / per_image ** 2))):
        centres = synth.grid_centres(rng, per_image, SPACING, dimer_distance)
        images.append(draw((per_image * SPACING,) * 2, centres, rng))
        truths.append(pd.DataFrame(dict(frame=frame, y=centres[:, 0],
                                        x=centres[:, 1])))
        guesses.append(pd.DataFrame(dict(
            frame=frame, y=centres[:, 0] + rng.uniform(-0.3, 0.3, len(centres)),
            x=centres[:, 1] + rng.uniform(-0.3, 0.3, len(centres)),
            signal=SIGNAL * 0.9, size=SIZE * 1.1, background=BACKGROUND)))
    return (pd.concat(truths, ignore_index=True),
            pd.concat(guesses, ignore_index=True), np.stack(images))


def pulls(result, truth, name, true_value):
    estimate = result[name].to_numpy()
    return (estimate - true_value) / result[name + "_std"].to_numpy()


@pytest.mark.parametrize("dimer_distance", [None, 4.0],
                         ids=["singles", "dimers"])
def test_errors_are_calibrated(dimer_distance):
    rng = np.random.default_rng(31 if dimer_distance is None else 32)
    truth, guess, movie = grid_scene(1000, rng, dimer_distance)
    result = refinefit.refine_leastsq(guess, movie, DIAMETER,
                                      param_mode={"size": "var"},
                                      compute_error=True)
    assert result["cost"].notna().all()
    if dimer_distance is not None:
        assert (result["cluster_size"] == 2).all()
    checks = {"y": truth["y"].to_numpy(), "x": truth["x"].to_numpy(),
              "signal": SIGNAL, "size": SIZE}
    for name, true_value in checks.items():
        spread = np.std(pulls(result, truth, name, true_value))
        assert 0.9 <= spread <= 1.1, f"{name}: std of pulls {spread:.3f}"
    # background is fitted per cluster: its std is reported too
    assert np.isfinite(result["background_std"]).all()


def test_error_columns_follow_the_modes():
    rng = np.random.default_rng(33)
    truth, guess, movie = grid_scene(100, rng)
    result = refinefit.refine_leastsq(guess, movie[0], DIAMETER,
                                      compute_error=True)
    added = [c for c in result.columns if c.endswith("_std")]
    assert added == ["background_std", "signal_std", "y_std", "x_std"]
    assert "size_std" not in result
    assert (result["y_std"] > 0).all() and (result["y_std"] < 0.2).all()


def test_failed_fit_has_nan_errors():
    image = np.zeros((40, 40))
    f = pd.DataFrame(dict(y=[20.0], x=[20.0], signal=10.0, size=2.0))
    result = refinefit.refine_leastsq(f, image, 11, compute_error=True)
    assert result["cost"].isna().all()
    assert result[["y_std", "x_std", "signal_std"]].isna().all().all()


def test_large_cluster_errors_match_dense_solve():
    """The sparse path (above 48 unknowns) reports the dense path's errors."""
    rng = np.random.default_rng(34)
    centres = np.array([[20.0 + 0.5 * k, 12.0 + 3.2 * k] for k in range(18)])
    image = draw((44, 80), centres, rng)
    guess = pd.DataFrame(dict(y=centres[:, 0] + 0.2, x=centres[:, 1] - 0.2,
                              signal=SIGNAL, size=SIZE))
    sparse = refinefit.refine_leastsq(guess, image, DIAMETER,
                                      compute_error=True)
    assert sparse["cluster_size"].max() == len(centres)
    with refinefit.config.override(solver=dict(dense_limit=1000)):
        dense = refinefit.refine_leastsq(guess, image, DIAMETER,
                                         compute_error=True)
    columns = ["background_std", "signal_std", "y_std", "x_std"]
    assert np.isfinite(sparse[columns]).all().all()
    np.testing.assert_allclose(sparse[columns], dense[columns], rtol=1e-5)


def test_errors_under_dimer_constraint_are_calibrated():
    """Constrained dimers: the sandwich with
    P = N^-1 - N^-1 A^T (A N^-1 A^T)^-1 A N^-1."""
    rng = np.random.default_rng(41)
    truth, guess, movie = grid_scene(1000, rng, dimer_distance=4.0)
    result = refinefit.refine_leastsq(guess, movie, DIAMETER,
                                      param_mode={"size": "var"},
                                      constraints=refinefit.dimer(4.0),
                                      compute_error=True)
    assert result["cost"].notna().all()
    free = refinefit.refine_leastsq(guess, movie, DIAMETER,
                                    param_mode={"size": "var"},
                                    compute_error=True)
    checks = {"y": truth["y"].to_numpy(), "x": truth["x"].to_numpy(),
              "signal": SIGNAL, "size": SIZE}
    for name, true_value in checks.items():
        spread = np.std(pulls(result, truth, name, true_value))
        assert 0.9 <= spread <= 1.1, f"{name}: std of pulls {spread:.3f}"
    # the constraint carries information: positions are better known
    assert (result["x_std"].median() < free["x_std"].median())
