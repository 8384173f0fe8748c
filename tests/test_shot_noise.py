"""compute_error under shot noise: least-squares errors that hold when the
noise differs between pixels.

The images are photon counts: a background plus spots of a given number of
photons, with Poisson noise, so that a spot's centre is several times
noisier than the background around it (an error bar that assumes the same
noise everywhere, s^2 (J^T J)^-1, comes out up to 3 times too small on
these images). They are drawn with plain NumPy in the model's own form
(``A exp(-d^2 / size^2)``), so the true signal and size are known exactly.
Over many fits the spread (standard deviation) of (estimate - truth) / std
must be 1 within 0.9-1.1 for the positions. The signal's and the size's
errors rest on a spot's few brightest pixels, whose squared residuals
estimate their variance only roughly; their spread is held within
0.9-1.25.
"""
import numpy as np
import pandas as pd
import pytest
import synth

import refinefit

SIZE = 2.0
DIAMETER = 15
SPACING = 24
PER_SIDE = 10  # cells per image side


def draw_counts(shape, centres, amplitude, background, rng):
    yy, xx = np.indices(shape, dtype=float)
    expected = np.full(shape, float(background))
    for cy, cx in centres:
        expected += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2)
                                       / SIZE ** 2)
    return rng.poisson(expected).astype(float)


def count_scene(n_cells, photons, background, rng, dimer_distance=None):
    """Spots (or dimers) of ``photons`` each on a grid of cells; returns the
    truth, the guesses, the movie and the true amplitude."""
    amplitude = photons / (np.pi * SIZE ** 2)  # sum over the plane: photons
    truths, guesses, images = [], [], []
    for frame in range(int(np.ceil(n_cells / PER_SIDE ** 2))):
        centres = synth.grid_centres(rng, PER_SIDE, SPACING, dimer_distance)
        images.append(draw_counts((PER_SIDE * SPACING,) * 2, centres,
                                  amplitude, background, rng))
        truths.append(pd.DataFrame(dict(frame=frame, y=centres[:, 0],
                                        x=centres[:, 1])))
        shift = rng.uniform(-0.3, 0.3, centres.shape)
        guesses.append(pd.DataFrame(dict(
            frame=frame, y=centres[:, 0] + shift[:, 0],
            x=centres[:, 1] + shift[:, 1], signal=0.9 * amplitude,
            size=1.1 * SIZE, background=background + 0.5)))
    return (pd.concat(truths, ignore_index=True),
            pd.concat(guesses, ignore_index=True), np.stack(images), amplitude)


def spread(result, truth, name, true_value):
    good = result["status"] == 0
    pulls = (result[name] - true_value) / result[name + "_std"]
    return float(np.std(pulls[good]))


@pytest.mark.parametrize("photons, background",
                         [(300, 1), (1000, 10), (5000, 1), (5000, 50)])
def test_errors_hold_under_shot_noise(photons, background):
    rng = np.random.default_rng(photons + background)
    truth, guess, movie, amplitude = count_scene(1000, photons, background,
                                                 rng)
    result = refinefit.refine_leastsq(guess, movie, DIAMETER,
                                      param_mode={"size": "var"},
                                      compute_error=True)
    assert (result["status"] == 0).mean() > 0.99
    for name in ("y", "x"):
        value = spread(result, truth, name, truth[name])
        assert 0.9 <= value <= 1.1, f"{name}: spread {value:.3f}"
    for name, true_value in (("signal", amplitude), ("size", SIZE)):
        value = spread(result, truth, name, true_value)
        assert 0.9 <= value <= 1.25, f"{name}: spread {value:.3f}"


JOINT = {
    "dimers": dict(),
    "dimer constraint": dict(constraints=refinefit.dimer(4.0)),
    "frame size": dict(param_mode={"size": "frame"}),
}


@pytest.mark.parametrize("options", JOINT.values(), ids=JOINT.keys())
def test_joint_fit_errors_hold_under_shot_noise(options):
    """Touching dimers (4 px apart, size 2): fitted together, under the
    dimer constraint, and with the size shared by all features of a frame
    (its errors then come from the whole problem's covariance)."""
    rng = np.random.default_rng(71)
    truth, guess, movie, amplitude = count_scene(600, 2000, 10, rng,
                                                 dimer_distance=4.0)
    options = dict(dict(param_mode={"size": "var"}), **options)
    result = refinefit.refine_leastsq(guess, movie, DIAMETER,
                                      compute_error=True, **options)
    assert (result["cluster_size"] == 2).all()
    assert (result["status"] == 0).mean() > 0.99
    for name in ("y", "x"):
        value = spread(result, truth, name, truth[name])
        assert 0.9 <= value <= 1.1, f"{name}: spread {value:.3f}"
    value = spread(result, truth, "signal", amplitude)
    assert 0.9 <= value <= 1.25, f"signal: spread {value:.3f}"


def test_scipy_path_errors_hold_under_shot_noise():
    """A named method: errors computed in NumPy on scipy's optimum, the
    same sandwich as the engine's."""
    rng = np.random.default_rng(72)
    truth, guess, movie, _ = count_scene(400, 2000, 10, rng)
    options = dict(param_mode={"size": "var"}, compute_error=True)
    result = refinefit.refine_leastsq(guess, movie, DIAMETER,
                                      method="L-BFGS-B", tol=1e-12,
                                      options=dict(maxiter=2000), **options)
    engine = refinefit.refine_leastsq(guess, movie, DIAMETER, **options)
    for name in ("y", "x"):
        value = spread(result, truth, name, truth[name])
        assert 0.9 <= value <= 1.1, f"{name}: spread {value:.3f}"
    both = (result["status"] == 0) & (engine["status"] == 0)
    assert both.mean() > 0.99
    np.testing.assert_allclose(result.loc[both, ["y_std", "x_std"]],
                               engine.loc[both, ["y_std", "x_std"]], rtol=0.02)
