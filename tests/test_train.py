"""train_leastsq: shape parameters learnt from well-separated features."""
import numpy as np
import pandas as pd
import pytest
import synth

import refinefit
from refinefit.train import train_leastsq


def _scene(fit_function, size, extra, n=12, shape=(120, 120), seed=0,
           noise=None):
    rng = np.random.default_rng(seed)
    cells = np.indices((4, 3)).reshape(2, -1).T[:n]
    positions = (cells + 0.5) * np.array(shape) / np.array([4, 3]) \
        + rng.uniform(-2, 2, (n, 2))
    signals = rng.uniform(80, 120, n)
    image = synth.draw(shape, positions, size, signals, background=10.0,
                       fit_function=fit_function, extra=extra, noise=noise,
                       rng=rng)
    guess = pd.DataFrame(dict(y=positions[:, 0] + rng.uniform(-0.5, 0.5, n),
                              x=positions[:, 1] + rng.uniform(-0.5, 0.5, n)))
    return image, guess


def test_gauss_size_from_scratch():
    """No signal, background or size columns: starting values are made."""
    image, guess = _scene("gauss", 2.7, None, noise=10, seed=1)
    result = train_leastsq(guess, image, 15)
    assert set(result) == {"size"}
    assert abs(result["size"] - 2.7) < 0.03


def test_disc_shape_parameters():
    image, guess = _scene("disc", 4.0, {"disc_size": 0.3}, seed=2)
    result = train_leastsq(guess, image, 15, fit_function="disc",
                           param_val={"size": 3.5, "disc_size": 0.5})
    assert set(result) == {"size", "disc_size"}
    assert abs(result["size"] - 4.0) < 0.01
    assert abs(result["disc_size"] - 0.3) < 0.01


def test_ring_thickness_then_refine():
    image, guess = _scene("ring", 4.0, {"thickness": 0.35}, seed=3)
    shape = train_leastsq(guess, image, 17, fit_function="ring",
                          param_val={"size": 3.6, "thickness": 0.25})
    assert abs(shape["thickness"] - 0.35) < 0.01
    assert abs(shape["size"] - 4.0) < 0.02
    refined = refinefit.refine_leastsq(guess.assign(signal=100.0), image, 17,
                                       fit_function="ring", param_val=shape)
    assert refined["cost"].notna().all()


def test_input_is_not_modified_and_bad_input_raises():
    image, guess = _scene("gauss", 2.5, None, seed=4)
    before = guess.copy()
    train_leastsq(guess, image, 15)
    pd.testing.assert_frame_equal(guess, before)
    with pytest.raises(TypeError, match="DataFrame"):
        train_leastsq(guess.to_numpy(), image, 15)
    with pytest.raises(ValueError, match="tol"):
        train_leastsq(guess, image, 15, tol=-1)
    with pytest.raises(ValueError, match=r"did not converge \(0 converged, "
                       r"0 stopped, \d+ failed \(\d+ blank\)"):
        train_leastsq(guess, np.zeros_like(image), 15)
