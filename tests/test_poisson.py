"""estimator='poisson': maximum likelihood on photon counts.

The images are spots (or touching dimers) of a given number of photons on
a background, with Poisson noise, drawn with plain NumPy in the model's own
form (``A exp(-d^2 / size^2)`` at the pixel centres; ``shot_noise`` tests).
The Cramer-Rao bound is computed here, independently of the fitter: the
inverse of the Fisher information ``sum_q grad(mu_q) grad(mu_q)^T / mu_q``
at the true parameters over the mask's pixels. So is the precision that
least squares can reach on the same images, ``(J^T J)^-1 J^T diag(mu) J
(J^T J)^-1``: Poisson noise's variance is its mean.
"""
import re
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import synth
import tifffile
from synth import position_errors, rms
from test_accuracy import cases, check_fit, refine, scene_for, seed_for
from test_shot_noise import DIAMETER, SIZE, SPACING, count_scene, draw_counts

import refinefit

RADIUS = DIAMETER // 2
FITTED = {"param_mode": {"size": "var"}, "compute_error": True}


def _jacobian(centres, amplitude, background, mask_centres):
    """Expected photons and their derivatives (background, then signal, y,
    x, size of each spot) over the pixels within the mask radius of
    ``mask_centres``."""
    lo = np.floor(mask_centres.min(axis=0)).astype(int) - RADIUS - 1
    hi = np.ceil(mask_centres.max(axis=0)).astype(int) + RADIUS + 2
    yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1]].astype(float)
    inside = np.zeros(yy.shape, bool)
    for cy, cx in mask_centres:
        inside |= (yy - cy) ** 2 + (xx - cx) ** 2 <= RADIUS ** 2
    yy, xx = yy[inside], xx[inside]
    mu = np.full(len(yy), float(background))
    columns = [np.ones(len(yy))]
    for cy, cx in centres:
        u = ((yy - cy) ** 2 + (xx - cx) ** 2) / SIZE ** 2
        e = np.exp(-u)
        mu += amplitude * e
        columns += [e, amplitude * e * 2 * (yy - cy) / SIZE ** 2,
                    amplitude * e * 2 * (xx - cx) / SIZE ** 2,
                    amplitude * e * 2 * u / SIZE]
    return mu, np.column_stack(columns)


def bounds_of(truth, amplitude, background, per_cluster=1):
    """Mean Cramer-Rao variance of a position, and least squares' variance
    on the same images, over the clusters of ``truth`` (rows in clusters of
    ``per_cluster`` consecutive... see :func:`count_scene`)."""
    crb, lsq = [], []
    for frame, rows in truth.groupby("frame"):
        pos = rows[["y", "x"]].to_numpy()
        n = len(pos) // per_cluster
        for i in range(min(n, 100)):
            centres = pos[[i + k * n for k in range(per_cluster)]]
            mu, jac = _jacobian(centres, amplitude, background, centres)
            fisher_inv = np.linalg.inv((jac / mu[:, None]).T @ jac)
            bread = np.linalg.inv(jac.T @ jac)
            lsq_cov = bread @ (jac.T * mu) @ jac @ bread
            for k in range(per_cluster):
                at = 2 + 4 * k  # y; x follows
                crb.append(fisher_inv[at, at] + fisher_inv[at + 1, at + 1])
                lsq.append(lsq_cov[at, at] + lsq_cov[at + 1, at + 1])
        break  # the bounds hardly vary between frames
    return np.mean(crb) / 2, np.mean(lsq) / 2


def position_rms(result, truth):
    ok = result["status"] == 0
    err = np.concatenate([(result["y"] - truth["y"])[ok],
                          (result["x"] - truth["x"])[ok]])
    return np.sqrt(np.mean(err ** 2))


def spreads(result, truth, amplitude):
    ok = result["status"] == 0
    values = {}
    for name, true_value in (("y", truth["y"]), ("x", truth["x"]),
                             ("signal", amplitude), ("size", SIZE)):
        pulls = (result[name] - true_value) / result[name + "_std"]
        values[name] = float(np.std(pulls[ok]))
    return values


@pytest.mark.parametrize("photons, background", [
    (100, 0), (100, 1), (300, 10), (1000, 0), (1000, 10), (1000, 50),
    (10000, 0), (10000, 50)])
def test_isolated_spots_reach_the_bound(photons, background):
    """The rms position error within 1.05 of the Cramer-Rao bound; the
    reported errors calibrated (spread 0.9-1.1 for y, x, signal, size);
    least squares on the same images worse by the ratio theory predicts
    (within 6%); the deviance per degree of freedom near 1."""
    rng = np.random.default_rng(photons * 7 + background)
    truth, guess, movie, amplitude = count_scene(2000, photons, background,
                                                 rng)
    guess["background"] = max(background, 0.5)
    mle = refinefit.refine_leastsq(guess, movie, DIAMETER,
                                   estimator="poisson", **FITTED)
    lsq = refinefit.refine_leastsq(guess, movie, DIAMETER, **FITTED)
    assert (mle["status"] == 0).mean() > 0.99
    crb, lsq_bound = bounds_of(truth, amplitude, background)
    ratio = position_rms(mle, truth) / np.sqrt(crb)
    assert ratio <= 1.05, f"rms / Cramer-Rao bound {ratio:.3f}"
    for name, value in spreads(mle, truth, amplitude).items():
        assert 0.9 <= value <= 1.1, f"{name}: spread {value:.3f}"
    measured = position_rms(lsq, truth) / position_rms(mle, truth)
    predicted = np.sqrt(lsq_bound / crb)
    assert abs(measured / predicted - 1) <= 0.06, \
        f"least squares / Poisson {measured:.3f}, theory {predicted:.3f}"
    if background >= 10:  # (at few counts a pixel, the deviance is not
        # chi-square distributed, and its mean per pixel is below 1)
        assert 0.97 <= mle["deviance_dof"].mean() <= 1.05


def test_touching_dimers_reach_the_bound():
    """Pairs 4 px apart (size 2) fitted jointly: the bound from the pair's
    Fisher information (both spots' unknowns and the background)."""
    rng = np.random.default_rng(81)
    truth, guess, movie, amplitude = count_scene(1000, 2000, 10, rng,
                                                 dimer_distance=4.0)
    mle = refinefit.refine_leastsq(guess, movie, DIAMETER,
                                   estimator="poisson", **FITTED)
    assert (mle["cluster_size"] == 2).all()
    assert (mle["status"] == 0).mean() > 0.99
    crb, _ = bounds_of(truth, amplitude, 10, per_cluster=2)
    ratio = position_rms(mle, truth) / np.sqrt(crb)
    assert ratio <= 1.05, f"rms / Cramer-Rao bound {ratio:.3f}"
    for name, value in spreads(mle, truth, amplitude).items():
        assert 0.9 <= value <= 1.1, f"{name}: spread {value:.3f}"


def _truth_and_guess(truths, amplitude, rng, jitter):
    """The truth of a movie (one table per frame) and guesses whose
    positions are off by up to ``jitter`` px, signal and size 10 % off."""
    truth = pd.concat(truths, ignore_index=True)
    guess = truth.assign(
        y=truth["y"] + rng.uniform(-jitter, jitter, len(truth)),
        x=truth["x"] + rng.uniform(-jitter, jitter, len(truth)),
        signal=0.9 * amplitude, size=1.1 * SIZE)
    return truth, guess


def _frames_of_four(rng, n_frames, photons=2000, background=10):
    """Frames of 4 spots each (2 x 2 cells): truth, guesses, movie and the
    true amplitude."""
    amplitude = photons / (np.pi * SIZE ** 2)
    truths, images = [], []
    for frame in range(n_frames):
        centres = synth.grid_centres(rng, 2, SPACING)
        images.append(draw_counts((2 * SPACING,) * 2, centres, amplitude,
                                  background, rng))
        truths.append(pd.DataFrame(dict(frame=frame, y=centres[:, 0],
                                        x=centres[:, 1])))
    truth, guess = _truth_and_guess(truths, amplitude, rng, 0.3)
    guess["background"] = background + 0.5
    return truth, guess, np.stack(images), amplitude


def test_shared_size_errors_are_the_bound():
    """A size and a signal shared by each frame's features ('frame'): the
    shared values' and the positions' errors calibrated (spread 0.85-1.15
    from 300 frames for the shared values, 0.9-1.1 for positions)."""
    rng = np.random.default_rng(94)
    truth, guess, movie, amplitude = _frames_of_four(rng, 300)
    result = refinefit.refine_leastsq(
        guess, movie, DIAMETER, estimator="poisson", compute_error=True,
        param_mode={"size": "frame", "signal": "frame"})
    assert (result["status"] == 0).all()
    first = result.groupby("frame").first()
    for name, value in (("size", SIZE), ("signal", amplitude)):
        spread = np.std((first[name] - value) / first[name + "_std"])
        assert 0.85 <= spread <= 1.15, f"{name}: {spread:.3f}"
    for name in ("y", "x"):
        spread = np.std((result[name] - truth[name]) / result[name + "_std"])
        assert 0.9 <= spread <= 1.1, f"{name}: {spread:.3f}"
    assert 0.9 <= result["deviance_dof"].mean() <= 1.1


def test_global_size_of_one_cluster_is_its_cluster_size():
    """One cluster of three touching spots: 'global' (the shared solver)
    and 'cluster' (the engine) are the same unknowns under the Poisson
    estimator too: the same fit and the same errors."""
    rng = np.random.default_rng(95)
    amplitude = 2000 / (np.pi * SIZE ** 2)
    centres = np.array([[30.2, 28.1], [31.0, 32.4], [34.6, 30.3]])
    image = draw_counts((60, 60), centres, amplitude, 10, rng)
    guess = pd.DataFrame(dict(y=centres[:, 0] + 0.2, x=centres[:, 1] - 0.2,
                              signal=amplitude, size=2.2))
    options = dict(estimator="poisson", compute_error=True)
    shared = refinefit.refine_leastsq(guess, image, DIAMETER,
                                      param_mode={"size": "global"}, **options)
    cluster = refinefit.refine_leastsq(guess, image, DIAMETER,
                                       param_mode={"size": "cluster"},
                                       **options)
    assert (shared["cluster_size"] == 3).all()
    columns = ["y", "x", "signal", "size"]
    stds = [c + "_std" for c in columns]
    difference = np.abs(shared[columns].to_numpy()
                        - cluster[columns].to_numpy())
    assert (difference < 0.05 * cluster[stds].to_numpy()).all()
    np.testing.assert_allclose(shared[stds], cluster[stds], rtol=2e-3)


def _counts_scene(seed=91):
    rng = np.random.default_rng(seed)
    truth, guess, movie, _ = count_scene(200, 2000, 10, rng)
    return guess, movie


def test_camera_counts_give_the_photons_fit():
    """Counts = offset + gain * photons, with scalars and with maps: the
    same fit as on the photons themselves."""
    guess, photons = _counts_scene()
    expected = refinefit.refine_leastsq(guess, photons, DIAMETER,
                                        estimator="poisson", **FITTED)
    shape = photons.shape[1:]
    gain = np.random.default_rng(1).uniform(1.5, 3.0, shape)
    offset = np.random.default_rng(2).uniform(90, 110, shape)
    for g, o in ((2.5, 100.0), (gain, offset)):
        counts = o + g * photons
        got = refinefit.refine_leastsq(guess, counts, DIAMETER,
                                       estimator="poisson", gain=g, offset=o,
                                       **FITTED)
        columns = ["y", "x", "signal", "size", "y_std", "x_std",
                   "deviance_dof"]
        np.testing.assert_allclose(got[columns], expected[columns],
                                   rtol=1e-9, atol=1e-9)


def test_counts_below_the_offset_are_zero_photons_and_counted():
    guess, photons = _counts_scene()
    counts = 100.0 + photons
    counts[0, :3, :4] = 95.0  # 12 pixels below the offset, far from spots
    with pytest.warns(UserWarning, match="12 pixel"):
        got = refinefit.refine_leastsq(guess, counts, DIAMETER,
                                       estimator="poisson", offset=100.0)
    photons[0, :3, :4] = 0.0
    expected = refinefit.refine_leastsq(guess, photons, DIAMETER,
                                        estimator="poisson")
    pd.testing.assert_frame_equal(got, expected)


def test_photons_below_zero_are_counted_and_the_frames_kept():
    """Frames that are photons already (float64, no camera): used as they
    are, except negative pixels, which are zero photons in a copy; the
    caller's frames are never changed."""
    guess, photons = _counts_scene()
    given = photons.copy()
    given[0, :2, :5] = -3.0  # 10 pixels, far from spots
    before = given.copy()
    with pytest.warns(UserWarning, match="10 pixel"):
        got = refinefit.refine_leastsq(guess, given, DIAMETER,
                                       estimator="poisson")
    np.testing.assert_array_equal(given, before)
    photons[0, :2, :5] = 0.0
    expected = refinefit.refine_leastsq(guess, photons, DIAMETER,
                                        estimator="poisson")
    pd.testing.assert_frame_equal(got, expected)


def test_read_noise_enters_as_extra_photons():
    """A read-noise variance s2 adds s2 / gain^2 to the photons and their
    expectation: with the image drawn so (Poisson noise of mu + v, minus
    v), the errors stay calibrated; without it they are too small."""
    rng = np.random.default_rng(92)
    truth, guess, movie, amplitude = count_scene(1500, 1000, 1, rng)
    gain, read_noise = 2.0, 64.0  # v = 16 photons^2
    v = read_noise / gain ** 2
    noisy = movie + rng.normal(0.0, np.sqrt(v), movie.shape)
    counts = 100.0 + gain * noisy
    options = dict(estimator="poisson", gain=gain, offset=100.0, **FITTED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # dark pixels < offset
        with_noise = refinefit.refine_leastsq(guess, counts, DIAMETER,
                                              read_noise=read_noise, **options)
        without = refinefit.refine_leastsq(guess, counts, DIAMETER, **options)
    assert 0.9 <= spreads(with_noise, truth, amplitude)["x"] <= 1.1
    assert spreads(without, truth, amplitude)["x"] > 1.15


def test_nan_pixels_are_left_out():
    guess, photons = _counts_scene()
    holed = photons.copy()
    holed[0, 20, 20] = np.nan  # within the first spot's mask
    got = refinefit.refine_leastsq(guess, holed, DIAMETER,
                                   estimator="poisson")
    assert (got["status"] == 0).all()
    assert np.isfinite(got["deviance_dof"]).all()


def _uncompiled(r2, p, ndim):
    """A Gaussian shape Numba cannot compile (id() of an object)."""
    return np.exp(-r2) + 0.0 * id(p)


@pytest.mark.parametrize("kwargs, match", [
    (dict(estimator="mle"), "estimator must be one of"),
    (dict(estimator="poisson", gain=0.0), "gain must be positive"),
    (dict(estimator="poisson", gain=-2.0), "gain must be positive"),
    (dict(estimator="poisson", gain=np.nan), "gain must be finite"),
    (dict(estimator="poisson", offset=np.inf), "offset must be finite"),
    (dict(estimator="poisson", gain=np.ones((3, 3))), "gain: a map must"),
    (dict(estimator="poisson", read_noise=-1.0), "read_noise"),
    (dict(gain=2.0), "gain: the camera model applies"),
])
@pytest.mark.filterwarnings("ignore:fit_function")
def test_bad_poisson_input_is_a_value_error(kwargs, match):
    guess, photons = _counts_scene()
    with pytest.raises(ValueError, match=match):
        refinefit.refine_leastsq(guess, photons, DIAMETER, **kwargs)


@pytest.mark.filterwarnings("ignore:fit_function")
def test_a_custom_model_numba_cannot_compile_fits_by_scipy():
    """A Gaussian shape Numba cannot compile: scipy minimises the deviance
    computed in NumPy, to the built-in Gaussian's fit, Cramer-Rao errors,
    cost and deviance."""
    rng = np.random.default_rng(106)
    truth, guess, movie, _ = count_scene(100, 2000, 10, rng)
    options = dict(estimator="poisson", compute_error=True, tol=1e-12,
                   options=dict(maxiter=2000))
    custom = refinefit.refine_leastsq(
        guess, movie, DIAMETER, fit_function=dict(params=[], fun=_uncompiled),
        **options)
    builtin = refinefit.refine_leastsq(guess, movie, DIAMETER, **options)
    both = (custom["status"] == 0) & (builtin["status"] == 0)
    assert both.mean() > 0.95
    for name in ("y", "x", "signal"):
        difference = np.abs(custom.loc[both, name] - builtin.loc[both, name])
        assert (difference < 0.05 * builtin.loc[both, name + "_std"]).all()
    columns = ["y_std", "x_std", "signal_std", "cost", "deviance_dof"]
    np.testing.assert_allclose(custom.loc[both, columns],
                               builtin.loc[both, columns], rtol=0.01)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "refinefit", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def counts_movie(tmp_path_factory):
    """A TIFF of camera counts (per-pixel gain and offset, maps in .npy),
    the features, and the photons."""
    folder = tmp_path_factory.mktemp("counts")
    guess, photons = _counts_scene(seed=93)
    shape = photons.shape[1:]
    gain = np.random.default_rng(3).uniform(1.5, 3.0, shape)
    offset = np.random.default_rng(4).uniform(90, 110, shape)
    tifffile.imwrite(folder / "movie.tif",
                     (offset + gain * photons).astype(np.float32),
                     photometric="minisblack")
    np.save(folder / "gain.npy", gain)
    np.save(folder / "offset.npy", offset)
    np.save(folder / "small.npy", gain[:10])
    guess.to_csv(folder / "features.csv", index=False)
    return folder, guess, photons


def test_the_command_fits_camera_counts(counts_movie, tmp_path):
    folder, guess, photons = counts_movie
    out = tmp_path / "out.csv"
    done = _cli("refine", folder / "movie.tif", folder / "features.csv",
                "-o", out, "--diameter", DIAMETER, "--estimator", "poisson",
                "--gain", folder / "gain.npy", "--offset",
                folder / "offset.npy", "--compute-error")
    assert done.returncode == 0, done.stderr
    got = pd.read_csv(out)
    counts = tifffile.imread(folder / "movie.tif")
    expected = refinefit.refine_leastsq(
        guess, counts, DIAMETER, estimator="poisson", compute_error=True,
        gain=np.load(folder / "gain.npy"),
        offset=np.load(folder / "offset.npy"))
    columns = ["y", "x", "signal", "y_std", "deviance_dof", "status"]
    np.testing.assert_allclose(got[columns], expected[columns], rtol=1e-6)


@pytest.mark.parametrize("flags, message", [
    (("--estimator", "mle"), "argument --estimator: invalid choice"),
    (("--estimator", "poisson", "--gain", "0"), "gain must be positive"),
    (("--estimator", "poisson", "--gain", "{folder}/small.npy"),
     "gain: a map must have the shape of a frame"),
    (("--estimator", "poisson", "--offset", "{folder}/none.npy"),
     "--offset: '.*none.npy' is neither a number nor a map file"),
    (("--gain", "2"), "the camera model applies to estimator='poisson'"),
])
def test_bad_camera_flags_exit_2_and_write_nothing(counts_movie, tmp_path,
                                                   flags, message):
    folder, _, _ = counts_movie
    out = tmp_path / "out.csv"
    done = _cli("refine", folder / "movie.tif", folder / "features.csv",
                "-o", out, "--diameter", DIAMETER,
                *(f.format(folder=folder) for f in flags))
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinefit: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_movie_run_warns_once_of_pixels_below_the_offset(tmp_path):
    """refine_movie in chunks of one frame: one warning for the run, with
    the pixels of every chunk."""
    guess, photons = _counts_scene()
    counts = 100.0 + np.concatenate([photons, photons])
    counts[:, :2, :3] = 95.0  # 6 pixels below the offset in each frame
    guess = pd.concat([guess, guess.assign(frame=1)], ignore_index=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refinefit.refine_movie(counts, guess, diameter=DIAMETER,
                               chunk_frames=1, quiet=True,
                               estimator="poisson", offset=100.0)
    below = [w for w in caught if "below the camera offset" in str(w.message)]
    assert len(below) == 1
    assert str(below[0].message).startswith("12 pixel(s)")


def test_dimer_constraint_errors_are_the_bound():
    """Touching dimers under the ``dimer`` constraint (the engine's
    constrained solver): positions and signal calibrated; the constraint
    makes the positions better known than the free pair's."""
    rng = np.random.default_rng(96)
    truth, guess, movie, amplitude = count_scene(600, 2000, 10, rng,
                                                 dimer_distance=4.0)
    options = dict(estimator="poisson", **FITTED)
    held = refinefit.refine_leastsq(guess, movie, DIAMETER,
                                    constraints=refinefit.dimer(4.0),
                                    **options)
    free = refinefit.refine_leastsq(guess, movie, DIAMETER, **options)
    assert (held["status"] == 0).mean() > 0.99
    values = spreads(held, truth, amplitude)
    for name in ("y", "x", "signal"):
        assert 0.9 <= values[name] <= 1.1, f"{name}: {values[name]:.3f}"
    assert held["x_std"].median() < free["x_std"].median()
    assert position_rms(held, truth) < position_rms(free, truth)
    # cost and deviance as the engine reports them: the constraint costs
    # the fit a little of both
    assert np.isfinite(held["deviance_dof"]).all()
    assert (held["deviance_dof"].mean() - free["deviance_dof"].mean()) \
        == pytest.approx(0.0, abs=0.02)
    np.testing.assert_allclose(held["cost"].median(), free["cost"].median(),
                               rtol=0.02)


def test_scipy_paths_under_poisson_match_the_engine():
    """A named method, and a dimer held apart by an active inequality
    (scipy's SLSQP): the engine's Poisson fit and Cramer-Rao errors."""
    rng = np.random.default_rng(97)
    truth, guess, movie, _ = count_scene(100, 2000, 10, rng)
    options = dict(estimator="poisson", **FITTED)
    engine = refinefit.refine_leastsq(guess, movie, DIAMETER, **options)
    named = refinefit.refine_leastsq(guess, movie, DIAMETER,
                                     method="L-BFGS-B", tol=1e-12,
                                     options=dict(maxiter=2000), **options)
    both = (engine["status"] == 0) & (named["status"] == 0)
    assert both.mean() > 0.95
    columns = ["y", "x", "y_std", "x_std", "signal_std", "cost",
               "deviance_dof"]
    np.testing.assert_allclose(named.loc[both, columns],
                               engine.loc[both, columns], rtol=0.02,
                               atol=2e-3)

    dimers = count_scene(100, 2000, 10, rng, dimer_distance=5.0)
    truth, guess, movie, _ = dimers

    def apart(x, dist):
        gap = np.linalg.norm(x[:, 0, 2:4] - x[:, 1, 2:4], axis=1)
        return gap - dist

    ineq = refinefit.refine_leastsq(
        guess, movie, DIAMETER, constraints=({
            "type": "ineq", "fun": apart, "args": (5.5,),
            "cluster_size": 2},), **options)
    eq = refinefit.refine_leastsq(guess, movie, DIAMETER,
                                  constraints=refinefit.dimer(5.5), **options)
    ok = (ineq["status"] == 0) & (eq["status"] == 0)
    assert ok.mean() > 0.95
    np.testing.assert_allclose(ineq.loc[ok, ["y", "x"]],
                               eq.loc[ok, ["y", "x"]], atol=2e-3)
    np.testing.assert_allclose(ineq.loc[ok, ["y_std", "x_std"]],
                               eq.loc[ok, ["y_std", "x_std"]], rtol=0.02)


def _chains(rng, n_frames, length=14):
    """Frames of one chain of ``length`` touching spots (one cluster):
    truth, guesses, movie."""
    amplitude = 2000 / (np.pi * SIZE ** 2)
    truths, images = [], []
    for frame in range(n_frames):
        centres = np.array([[20.0 + 0.4 * k, 12.0 + 3.3 * k]
                            for k in range(length)])
        centres += rng.uniform(-0.3, 0.3, centres.shape)
        images.append(draw_counts((46, 24 + 34 * length // 10), centres,
                                  amplitude, 10, rng))
        truths.append(pd.DataFrame(dict(frame=frame, y=centres[:, 0],
                                        x=centres[:, 1])))
    truth, guess = _truth_and_guess(truths, amplitude, rng, 0.3)
    return truth, guess, np.stack(images)


@pytest.mark.parametrize("seed, param_mode", [
    (101, {"size": "var"}), (102, {"size": "cluster", "signal": "cluster"}),
    (103, {"size": "global"}), (104, {"size": "frame", "signal": "frame"}),
], ids=["var", "cluster", "global", "frame"])
def test_large_clusters_take_the_sparse_solver_to_the_dense_fit(seed,
                                                                 param_mode):
    """Clusters above the dense solver's limit of unknowns go to conjugate
    gradients on the Fisher information (J held per mask entry, not
    whole): the fit, the Cramer-Rao errors, cost and deviance of the dense
    solver."""
    rng = np.random.default_rng(seed)
    truth, guess, movie = _chains(rng, 3)
    options = dict(estimator="poisson", compute_error=True,
                   param_mode=param_mode)
    with refinefit.config.override(solver=dict(dense_limit=8)):
        sparse = refinefit.refine_leastsq(guess, movie, DIAMETER, **options)
    assert (sparse["cluster_size"] == 14).all()
    with refinefit.config.override(solver=dict(dense_limit=10_000)):
        dense = refinefit.refine_leastsq(guess, movie, DIAMETER, **options)
    assert (sparse["status"] == 0).all() and (dense["status"] == 0).all()
    stds = [c for c in dense.columns if c.endswith("_std")]
    assert np.isfinite(sparse[stds]).all().all()
    np.testing.assert_allclose(sparse[stds], dense[stds], rtol=1e-6)
    for name in ("y", "x", "signal", "size", "background"):
        difference = np.abs(sparse[name] - dense[name])
        assert (difference <= 1e-5 * dense[name + "_std"]).all(), name
    np.testing.assert_allclose(sparse[["cost", "deviance_dof"]],
                               dense[["cost", "deviance_dof"]], rtol=1e-9)
    assert np.abs(sparse["y"] - truth["y"]).max() < 6 * sparse["y_std"].max()


def test_joint_fits_report_cost_and_deviance_as_the_engine():
    """A size per frame under the ``dimer`` constraint takes the joint
    solver (every cluster one problem); with one dimer per frame it is the
    engine's constrained fit with a size per cluster: the same fit, cost,
    deviance and errors. (SLSQP, which the joint solver runs, needs more
    than its default 100 iterations for these 96 unknowns: the solver
    gives it three per unknown.)"""
    rng = np.random.default_rng(105)
    amplitude = 2000 / (np.pi * SIZE ** 2)
    truths, images = [], []
    for frame in range(12):
        middle = rng.uniform(14.0, 16.0, 2)
        angle = rng.uniform(0, np.pi)
        half = 2.0 * np.array([np.sin(angle), np.cos(angle)])
        centres = np.array([middle - half, middle + half])
        images.append(draw_counts((30, 30), centres, amplitude, 10, rng))
        truths.append(pd.DataFrame(dict(frame=frame, y=centres[:, 0],
                                        x=centres[:, 1])))
    truth, guess = _truth_and_guess(truths, amplitude, rng, 0.2)
    options = dict(estimator="poisson", compute_error=True,
                   constraints=refinefit.dimer(4.0), tol=1e-10)
    joint = refinefit.refine_leastsq(guess, np.stack(images), DIAMETER,
                                     param_mode={"size": "frame"}, **options)
    engine = refinefit.refine_leastsq(guess, np.stack(images), DIAMETER,
                                      param_mode={"size": "cluster"},
                                      **options)
    assert (joint["status"] == 0).all() and (engine["status"] == 0).all()
    assert 0.85 <= joint["deviance_dof"].mean() <= 1.15
    np.testing.assert_allclose(joint["cost"], engine["cost"], rtol=2e-3)
    # (a size per frame is not among a cluster's own unknowns: one degree
    # of freedom more)
    np.testing.assert_allclose(joint["deviance_dof"], engine["deviance_dof"],
                               rtol=0.01)
    for name in ("y", "x", "size", "signal"):
        difference = np.abs(joint[name] - engine[name])
        assert (difference < 0.1 * engine[name + "_std"]).all(), name
        np.testing.assert_allclose(joint[name + "_std"],
                                   engine[name + "_std"], rtol=0.01)


MODEL_CASES = cases(group_sizes=(1, 2)) + cases(("hat", "inv_series_3"),
                                                 ("2d",), (1,))


@pytest.mark.parametrize("model, geometry, group_size", MODEL_CASES)
def test_every_model_fits_photons(model, geometry, group_size):
    """Every built-in model, 2D and 3D, isotropic and not, single features
    and touching dimers, under the Poisson estimator (images of
    test_accuracy, drawn by synth in plain NumPy, in photons): the truth
    exactly from the noise-free image (where the deviance is 0 at the
    truth), and from four draws of Poisson counts from it, every fit
    converged with its positions within their Cramer-Rao errors (the rms
    of the pulls, 72 to 128 of them, within 0.7-1.4)."""
    scene = scene_for(model, geometry, group_size)
    exact = refine(scene, estimator="poisson")
    check_fit(exact, scene, group_size)
    assert rms(position_errors(exact, scene)) < 0.01
    np.testing.assert_allclose(exact["signal"], scene.signal, rtol=1e-3)
    assert (exact["deviance_dof"] < 1e-6).all()

    rng = np.random.default_rng(seed_for(model, geometry, group_size))
    pulls, deviance = [], []
    for _ in range(4):
        counts = replace(scene, image=rng.poisson(scene.image).astype(float))
        noisy = refine(counts, estimator="poisson", compute_error=True)
        check_fit(noisy, scene, group_size)
        std = noisy[[c + "_std" for c in scene.pos_columns]].to_numpy()
        pulls.append(position_errors(noisy, scene) / std)
        deviance.append(noisy["deviance_dof"].mean())
    pulls = np.concatenate(pulls)
    assert np.isfinite(pulls).all()
    assert np.abs(pulls).max() < 5 and 0.7 < rms(pulls) < 1.4, \
        f"pulls: rms {rms(pulls):.2f}, largest {np.abs(pulls).max():.2f}"
    assert 0.8 < np.mean(deviance) < 1.2


def test_compiled_custom_model_fits_photons():
    """A custom Gaussian that Numba compiles: the built-in Gaussian's
    Poisson fit and Cramer-Rao errors."""
    rng = np.random.default_rng(107)
    truth, guess, movie, _ = count_scene(100, 2000, 10, rng)

    def shape(r2, p, ndim):
        return np.exp(-r2)

    options = dict(estimator="poisson", compute_error=True)
    custom = refinefit.refine_leastsq(
        guess, movie, DIAMETER, fit_function=dict(params=[], fun=shape),
        **options)
    builtin = refinefit.refine_leastsq(guess, movie, DIAMETER, **options)
    assert (custom["status"] == 0).all()
    columns = ["y", "x", "signal", "y_std", "x_std", "signal_std",
               "deviance_dof"]
    np.testing.assert_allclose(custom[columns], builtin[columns], rtol=1e-6,
                               atol=1e-9)
