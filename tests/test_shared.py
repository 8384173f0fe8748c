"""Parameters shared between clusters: 'global', 'frame' and 'particle'.

Images are drawn by ``synth.draw`` (plain NumPy). The shared solver
(variable projection with a Schur complement, refinefit/shared.py) is checked
against ground truth, against trackpy's 'global' mode, against a direct scan
of the total sum of squares, and for calibrated standard errors.
"""
import logging

import numpy as np
import pandas as pd
import pytest
import synth
import trackpy

import refinefit

DIAMETER = 11


def _scatter(rng, n, shape, spacing, margin=8):
    """``n`` positions at least ``spacing`` apart, at least ``margin`` from
    the edges (rejection sampling)."""
    points = []
    while len(points) < n:
        p = rng.uniform(margin, np.array(shape) - margin)
        if all(np.hypot(*(p - q)) >= spacing for q in points):
            points.append(p)
    return np.array(points)


def _guess(positions, rng, frame=0, **columns):
    out = pd.DataFrame(dict(frame=frame,
                            y=positions[:, 0] + rng.uniform(-0.4, 0.4, len(positions)),
                            x=positions[:, 1] + rng.uniform(-0.4, 0.4, len(positions))))
    for name, value in columns.items():
        out[name] = value
    return out


def _one_cluster_of_three(seed):
    """One cluster of three touching features (size 2, signal 100) at S/N
    10, and guesses off by up to 0.4 px with signal 90 and size 2.2."""
    rng = np.random.default_rng(seed)
    positions = np.array([[20.0, 18.0], [21.0, 22.5], [19.0, 27.0]])
    image = synth.draw((40, 46), positions, 2.0, 100.0, background=5.0,
                       noise=10, rng=rng)
    guess = _guess(positions, rng, signal=90.0, size=2.2)
    return image, guess


def test_global_signal_over_100_overlapping_features():
    """One cluster of 100 touching features, true signal 200, start 180."""
    rng = np.random.default_rng(51)
    lattice = np.indices((10, 10)).reshape(2, -1).T * 4.0 + 12.0
    positions = lattice + rng.uniform(-0.3, 0.3, lattice.shape)
    image = synth.draw((64, 64), positions, 2.0, 200.0, background=10.0,
                       noise=10, rng=rng)
    guess = _guess(positions, rng, signal=180.0, size=2.0)
    result = refinefit.refine_leastsq(guess, image, DIAMETER,
                                      param_mode={"signal": "global"})
    assert (result["cluster_size"] == 100).all()
    assert result["cost"].notna().all()
    assert result["signal"].nunique() == 1
    assert abs(result["signal"].iloc[0] - 200.0) < 5.0
    error = np.hypot(result["y"] - positions[:, 0], result["x"] - positions[:, 1])
    assert np.sqrt(np.mean(error ** 2)) < 0.2  # noise: about 0.11 for isolated ones


def test_global_size_side_by_side_with_trackpy():
    """Isolated features (equal mask sizes, so trackpy's per-cluster mean
    weighting and plain least squares have the same optimum)."""
    rng = np.random.default_rng(52)
    positions = _scatter(rng, 8, (80, 80), 14)
    signals = rng.uniform(80, 120, len(positions))
    image = synth.draw((80, 80), positions, 2.3, signals, background=5.0,
                       noise=10, rng=rng)
    guess = _guess(positions, rng, signal=100.0, size=2.0)
    kwargs = dict(param_mode={"size": "global"})
    ours = refinefit.refine_leastsq(guess, image, DIAMETER, **kwargs)
    logger = logging.getLogger("trackpy")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        theirs = trackpy.refine_leastsq(guess.copy(), image, DIAMETER,
                                        **kwargs)
    finally:
        logger.setLevel(level)
    assert ours["size"].nunique() == 1
    assert abs(ours["size"].iloc[0] - theirs["size"].iloc[0]) < 1e-3
    np.testing.assert_allclose(ours[["y", "x"]], theirs[["y", "x"]], atol=0.01)
    np.testing.assert_allclose(ours["signal"], theirs["signal"], rtol=1e-3)


def _total_sumsq(guess, image, size):
    """Sum of squared residuals over all masks with the size held fixed."""
    fixed = refinefit.refine_leastsq(guess, image, DIAMETER,
                                     param_val={"size": size})
    n_pix = np.pi * (DIAMETER // 2) ** 2  # only for relative comparisons
    per_cluster = fixed.groupby("cluster")["cost"].first() ** 2
    return per_cluster.sum() * n_pix, fixed


def test_global_size_minimises_the_total_sum_of_squares():
    """A scan of the fixed size brackets the global fit's value."""
    rng = np.random.default_rng(53)
    positions = _scatter(rng, 10, (90, 90), 15)
    image = synth.draw((90, 90), positions, 2.4, 100.0, background=5.0,
                       noise=10, rng=rng)
    guess = _guess(positions, rng, signal=100.0, size=2.0)
    result = refinefit.refine_leastsq(guess, image, DIAMETER,
                                      param_mode={"size": "global"})
    best = result["size"].iloc[0]
    at_best, fixed = _total_sumsq(guess, image, best)
    for delta in (-0.01, 0.01):
        assert _total_sumsq(guess, image, best + delta)[0] > at_best
    # the locals are those of a per-cluster fit at that size (both solves
    # stop when the cost changes by less than tol = 1e-6 of itself)
    np.testing.assert_allclose(result[["y", "x"]], fixed[["y", "x"]],
                               atol=2e-3)
    np.testing.assert_allclose(result["signal"], fixed["signal"], rtol=1e-3)


def _movie(rng, n_frames, per_frame, shape, sizes, signals, spacing=14):
    """Frames with their own size and signal; returns truth, guess, movie."""
    images, truths = [], []
    for frame in range(n_frames):
        positions = _scatter(rng, per_frame, shape, spacing)
        images.append(synth.draw(shape, positions, sizes[frame],
                                 signals[frame], background=5.0, noise=10,
                                 rng=rng))
        truths.append(pd.DataFrame(dict(frame=frame, y=positions[:, 0],
                                        x=positions[:, 1])))
    truth = pd.concat(truths, ignore_index=True)
    guess = truth.copy()
    guess[["y", "x"]] += rng.uniform(-0.4, 0.4, (len(truth), 2))
    guess["signal"] = 100.0
    guess["size"] = 2.5
    return truth, guess, np.stack(images)


def test_frame_mode_recovers_per_frame_truths():
    rng = np.random.default_rng(54)
    sizes = np.array([2.0, 2.4, 2.8, 3.2])
    signals = np.array([60.0, 90.0, 120.0, 150.0])
    truth, guess, movie = _movie(rng, 4, 12, (96, 96), sizes, signals)
    result = refinefit.refine_leastsq(
        guess, movie, 15, param_mode={"size": "frame", "signal": "frame"})
    assert result["cost"].notna().all()
    per_frame = result.groupby("frame")[["size", "signal"]]
    assert (per_frame.nunique() == 1).all().all()
    np.testing.assert_allclose(per_frame.first()["size"], sizes, rtol=0.02)
    np.testing.assert_allclose(per_frame.first()["signal"], signals, rtol=0.03)


def test_particle_mode_recovers_per_particle_truths():
    """Particles keep their own signal and size along their trajectories;
    some of them overlap (clusters couple the particles' unknowns)."""
    rng = np.random.default_rng(55)
    n_particles, n_frames, shape = 10, 5, (100, 100)
    signals = rng.uniform(60, 160, n_particles)
    sizes = rng.uniform(1.8, 3.0, n_particles)
    start = _scatter(rng, n_particles, shape, 18, margin=14)
    start[1] = start[0] + [0.0, 5.0]  # particles 0 and 1 touch
    rows, images = [], []
    for frame in range(n_frames):
        positions = start + frame * np.array([0.7, -0.5])
        images.append(synth.draw(shape, positions, sizes, signals,
                                 background=5.0, noise=30, rng=rng))
        rows.append(pd.DataFrame(dict(frame=frame, particle=np.arange(n_particles),
                                      y=positions[:, 0], x=positions[:, 1])))
    truth = pd.concat(rows, ignore_index=True)
    guess = truth.copy()
    guess[["y", "x"]] += rng.uniform(-0.4, 0.4, (len(truth), 2))
    guess["signal"] = 100.0
    guess["size"] = 2.4
    result = refinefit.refine_leastsq(
        guess, np.stack(images), 15,
        param_mode={"size": "particle", "signal": "particle"},
        compute_error=True)
    assert result["cost"].notna().all()
    assert (result.loc[result["particle"] <= 1, "cluster_size"] == 2).all()
    per_particle = result.groupby("particle")[["size", "signal", "size_std",
                                               "signal_std"]]
    assert (per_particle.nunique() == 1).all().all()
    first = per_particle.first()
    np.testing.assert_allclose(first["size"], sizes, rtol=0.03)
    np.testing.assert_allclose(first["signal"], signals, rtol=0.04)
    assert (np.abs(first["size"] - sizes) < 4 * first["size_std"]).all()
    assert (np.abs(first["signal"] - signals) < 4 * first["signal_std"]).all()


def test_particle_mode_needs_a_particle_column():
    image = synth.draw((40, 40), [[20.0, 20.0]], 2.0, 100.0)
    guess = pd.DataFrame(dict(y=[20.2], x=[19.8], signal=90.0, size=2.0))
    with pytest.raises(ValueError, match="'particle' column"):
        refinefit.refine_leastsq(guess, image, DIAMETER,
                                 param_mode={"size": "particle"})
    guess["particle"] = [np.nan]
    with pytest.raises(ValueError, match="particle"):
        refinefit.refine_leastsq(guess, image, DIAMETER,
                                 param_mode={"size": "particle"})


def test_shared_errors_are_calibrated():
    """'frame' size and signal over many frames: the spread of
    (estimate - truth) / std is 1 within 0.85-1.15 for the shared values
    (few hundred samples) and within 0.9-1.1 for positions."""
    rng = np.random.default_rng(56)
    n_frames = 300
    sizes = np.full(n_frames, 2.0)
    signals = np.full(n_frames, 100.0)
    truth, guess, movie = _movie(rng, n_frames, 4, (56, 56), sizes, signals,
                                 spacing=16)
    result = refinefit.refine_leastsq(
        guess, movie, 13, param_mode={"size": "frame", "signal": "frame"},
        compute_error=True)
    assert result["cost"].notna().all()
    first = result.groupby("frame").first()
    for name, value in (("size", 2.0), ("signal", 100.0)):
        spread = np.std((first[name] - value) / first[name + "_std"])
        assert 0.85 <= spread <= 1.15, f"{name}: {spread:.3f}"
    for name in ("y", "x"):
        spread = np.std((result[name] - truth[name]) / result[name + "_std"])
        assert 0.9 <= spread <= 1.1, f"{name}: {spread:.3f}"


def test_global_errors_match_one_cluster_solve():
    """With one cluster, 'global' and 'cluster' describe the same unknowns:
    the same fit and the same standard errors."""
    image, guess = _one_cluster_of_three(seed=57)
    shared = refinefit.refine_leastsq(guess, image, DIAMETER,
                                      param_mode={"size": "global"},
                                      compute_error=True)
    cluster = refinefit.refine_leastsq(guess, image, DIAMETER,
                                       param_mode={"size": "cluster"},
                                       compute_error=True)
    assert (shared["cluster_size"] == 3).all()
    columns = ["y", "x", "signal", "size"]
    stds = [c + "_std" for c in columns]
    # both stop when the cost changes by less than tol = 1e-6 of itself:
    # a small fraction of a standard error
    difference = np.abs(shared[columns].to_numpy() - cluster[columns].to_numpy())
    assert (difference < 0.05 * cluster[stds].to_numpy()).all()
    np.testing.assert_allclose(shared[stds], cluster[stds], rtol=2e-3)


def test_shared_bounds_are_respected():
    rng = np.random.default_rng(58)
    positions = _scatter(rng, 6, (70, 70), 14)
    image = synth.draw((70, 70), positions, 2.0, 100.0, noise=10, rng=rng)
    guess = _guess(positions, rng, signal=100.0, size=2.5)
    result = refinefit.refine_leastsq(guess, image, DIAMETER,
                                      param_mode={"size": "global"},
                                      bounds={"size": (2.3, 3.0)})
    np.testing.assert_allclose(result["size"], 2.3)


def test_shared_solution_does_not_depend_on_chunks():
    rng = np.random.default_rng(59)
    sizes = np.full(6, 2.2)
    truth, guess, movie = _movie(rng, 6, 8, (80, 80), sizes, np.full(6, 100.0))
    kwargs = dict(param_mode={"size": "global"}, compute_error=True)
    whole = refinefit.refine_leastsq(guess, movie, DIAMETER, **kwargs)
    with refinefit.config.override(chunking=dict(frames=2)):
        chunked = refinefit.refine_leastsq(guess, movie, DIAMETER, **kwargs)
    pd.testing.assert_frame_equal(whole, chunked, rtol=1e-7)


def test_failed_cluster_does_not_stop_the_shared_fit():
    rng = np.random.default_rng(60)
    positions = _scatter(rng, 6, (70, 55), 14)
    image = synth.draw((70, 70), positions, 2.4, 100.0, noise=10, rng=rng)
    image[:, 58:] = 0.0  # a blank strip: a feature there cannot be fitted
    guess = _guess(positions, rng, signal=100.0, size=2.0)
    guess.loc[len(guess)] = dict(frame=0, y=35.0, x=66.0, signal=100.0,
                                 size=2.0)
    result = refinefit.refine_leastsq(guess, image, DIAMETER,
                                      param_mode={"size": "global"})
    assert np.isnan(result["cost"].iloc[-1])
    fitted = result.iloc[:-1]
    assert fitted["cost"].notna().all()
    # the failed cluster takes no part: the others' fit is the same without it
    alone = refinefit.refine_leastsq(guess.iloc[:-1], image, DIAMETER,
                                     param_mode={"size": "global"})
    pd.testing.assert_frame_equal(fitted, alone)


def test_input_frame_is_not_modified():
    rng = np.random.default_rng(61)
    positions = _scatter(rng, 5, (60, 60), 14)
    image = synth.draw((60, 60), positions, 2.4, 100.0, noise=10, rng=rng)
    guess = _guess(positions, rng, signal=100.0, size=2.0)
    before = guess.copy()
    refinefit.refine_leastsq(guess, image, DIAMETER,
                             param_mode={"size": "global"},
                             compute_error=True)
    pd.testing.assert_frame_equal(guess, before)


def _dimers(rng, n_dimers, shape, distance, spacing=20):
    centres = _scatter(rng, n_dimers, shape, spacing, margin=10)
    angle = rng.uniform(0, np.pi, n_dimers)
    half = 0.5 * distance * np.column_stack([np.sin(angle), np.cos(angle)])
    return np.stack([centres - half, centres + half], axis=1).reshape(-1, 2)


def test_dimer_global_with_global_signal_and_size():
    """10 dimers on a noisy image, each drawn 5 px apart: one common
    distance for all, near the truth; one signal and one size."""
    rng = np.random.default_rng(62)
    positions = _dimers(rng, 10, (110, 110), 5.0)
    image = synth.draw((110, 110), positions, 2.2, 120.0, background=5.0,
                       noise=10, rng=rng)
    guess = _guess(positions, rng, signal=100.0, size=2.0)
    result = refinefit.refine_leastsq(
        guess, image, DIAMETER, param_mode={"signal": "global",
                                            "size": "global"},
        constraints=refinefit.dimer_global(1.0))
    assert result["cost"].notna().all()
    assert (result["cluster_size"] == 2).all()
    assert result["signal"].nunique() == 1 and result["size"].nunique() == 1
    pos = result[["y", "x"]].to_numpy().reshape(-1, 2, 2)
    distance = np.linalg.norm(pos[:, 0] - pos[:, 1], axis=1)
    np.testing.assert_allclose(distance, distance.mean(), rtol=1e-4)
    assert abs(distance.mean() - 5.0) < 0.1
    assert abs(result["size"].iloc[0] - 2.2) < 0.05
    assert abs(result["signal"].iloc[0] - 120.0) < 5.0
    # without the constraint the distances scatter
    free = refinefit.refine_leastsq(
        guess, image, DIAMETER, param_mode={"signal": "global",
                                            "size": "global"})
    pos = free[["y", "x"]].to_numpy().reshape(-1, 2, 2)
    assert np.std(np.linalg.norm(pos[:, 0] - pos[:, 1], axis=1)) > 1e-3


def test_dimer_global_alone_couples_all_dimers():
    rng = np.random.default_rng(63)
    positions = _dimers(rng, 6, (90, 90), 4.6)
    image = synth.draw((90, 90), positions, 2.0, 100.0, noise=10, rng=rng)
    guess = _guess(positions, rng, signal=100.0, size=2.0)
    result = refinefit.refine_leastsq(guess, image, DIAMETER,
                                      constraints=refinefit.dimer_global(1.0))
    assert result["cost"].notna().all()
    pos = result[["y", "x"]].to_numpy().reshape(-1, 2, 2)
    distance = np.linalg.norm(pos[:, 0] - pos[:, 1], axis=1)
    np.testing.assert_allclose(distance, distance.mean(), rtol=1e-4)
    assert abs(distance.mean() - 4.6) < 0.1


def test_global_size_with_dimer_constraint():
    """trackpy 0.7 cannot run this combination (its constraint wrapper
    indexes a list with a mask); checked against the truth instead."""
    rng = np.random.default_rng(64)
    positions = _dimers(rng, 4, (80, 80), 5.0)
    image = synth.draw((80, 80), positions, 2.3, 100.0, background=5.0,
                       noise=10, rng=rng)
    guess = _guess(positions, rng, signal=100.0, size=2.0)
    ours = refinefit.refine_leastsq(guess, image, DIAMETER,
                                    param_mode={"size": "global"},
                                    constraints=refinefit.dimer(5.0))
    assert ours["cost"].notna().all()
    assert ours["size"].nunique() == 1
    assert abs(ours["size"].iloc[0] - 2.3) < 0.05
    pos = ours[["y", "x"]].to_numpy().reshape(-1, 2, 2)
    np.testing.assert_allclose(np.linalg.norm(pos[:, 0] - pos[:, 1], axis=1),
                               5.0, atol=1e-3)
    error = np.hypot(ours["y"] - positions[:, 0], ours["x"] - positions[:, 1])
    assert np.sqrt(np.mean(error ** 2)) < 0.15


def test_global_size_with_a_method_matches_the_engine():
    """Isolated features (equal masks): L-BFGS-B over the whole problem and
    the variable-projection engine find the same optimum."""
    rng = np.random.default_rng(65)
    positions = _scatter(rng, 6, (70, 70), 14)
    image = synth.draw((70, 70), positions, 2.3, 100.0, background=5.0,
                       noise=10, rng=rng)
    guess = _guess(positions, rng, signal=100.0, size=2.0)
    engine_fit = refinefit.refine_leastsq(guess, image, DIAMETER,
                                          param_mode={"size": "global"})
    scipy_fit = refinefit.refine_leastsq(guess, image, DIAMETER,
                                         param_mode={"size": "global"},
                                         method="L-BFGS-B", tol=1e-12,
                                         options=dict(maxiter=2000))
    assert abs(engine_fit["size"].iloc[0] - scipy_fit["size"].iloc[0]) < 2e-3
    np.testing.assert_allclose(engine_fit[["y", "x"]], scipy_fit[["y", "x"]],
                               atol=0.01)


def test_joint_problem_ignores_nan_pixels_of_the_frame():
    """NaN pixels outside every mask change nothing on the joint scipy path
    (its frame maximum ignores them, as the engine's does)."""
    rng = np.random.default_rng(66)
    positions = _scatter(rng, 4, (60, 60), 14, margin=12)
    image = synth.draw((60, 60), positions, 2.3, 100.0, background=5.0,
                       noise=10, rng=rng)
    guess = _guess(positions, rng, signal=100.0, size=2.0)
    holed = image.copy()
    holed[:3, :] = np.nan  # farther than a mask radius from every feature
    options = dict(param_mode={"size": "global"}, method="L-BFGS-B")
    clean = refinefit.refine_leastsq(guess, image, DIAMETER, **options)
    ours = refinefit.refine_leastsq(guess, holed, DIAMETER, **options)
    assert np.nanmax(holed) == image[3:].max() == image.max()
    assert np.isfinite(ours["cost"]).all()
    pd.testing.assert_frame_equal(ours, clean)


def test_errors_with_a_named_method_match_the_engine():
    """compute_error with method=: the engine's covariance at scipy's
    optimum, equal to the engine's own errors at (nearly) the same fit."""
    rng = np.random.default_rng(66)
    positions = _scatter(rng, 6, (70, 70), 14)
    image = synth.draw((70, 70), positions, 2.3, 100.0, background=5.0,
                       noise=10, rng=rng)
    guess = _guess(positions, rng, signal=100.0, size=2.3)
    engine_fit = refinefit.refine_leastsq(guess, image, DIAMETER,
                                          compute_error=True)
    scipy_fit = refinefit.refine_leastsq(guess, image, DIAMETER,
                                         compute_error=True,
                                         method="L-BFGS-B", tol=1e-12,
                                         options=dict(maxiter=2000))
    stds = ["background_std", "signal_std", "y_std", "x_std"]
    assert np.isfinite(scipy_fit[stds]).all().all()
    np.testing.assert_allclose(scipy_fit[stds], engine_fit[stds], rtol=0.02)


def test_errors_on_the_joint_scipy_problem_match_the_engine():
    """One cluster, 'global' size with method=: the joint scipy problem's
    covariance equals the engine's for the same unknowns ('cluster')."""
    image, guess = _one_cluster_of_three(seed=67)
    joint = refinefit.refine_leastsq(guess, image, DIAMETER,
                                     param_mode={"size": "global"},
                                     method="L-BFGS-B", tol=1e-12,
                                     options=dict(maxiter=5000),
                                     compute_error=True)
    engine_fit = refinefit.refine_leastsq(guess, image, DIAMETER,
                                          param_mode={"size": "cluster"},
                                          compute_error=True)
    stds = ["y_std", "x_std", "signal_std", "size_std", "background_std"]
    assert np.isfinite(joint[stds]).all().all()
    np.testing.assert_allclose(joint[stds], engine_fit[stds], rtol=0.02)


def test_errors_under_an_active_inequality_match_the_equality():
    """A dimer held apart by an active inequality has the errors of the
    same dimer under the equivalent equality constraint."""
    rng = np.random.default_rng(68)
    positions = _dimers(rng, 4, (80, 80), 5.0)
    image = synth.draw((80, 80), positions, 2.0, 100.0, background=5.0,
                       noise=10, rng=rng)
    guess = _guess(positions, rng, signal=100.0, size=2.0)

    def apart(x, dist):
        gap = np.linalg.norm(x[:, 0, 2:4] - x[:, 1, 2:4], axis=1)
        return gap - dist

    ineq = refinefit.refine_leastsq(
        guess, image, DIAMETER, compute_error=True,
        constraints=({"type": "ineq", "fun": apart, "args": (5.5,),
                      "cluster_size": 2},))
    eq = refinefit.refine_leastsq(guess, image, DIAMETER, compute_error=True,
                                  constraints=refinefit.dimer(5.5))
    pos = ineq[["y", "x"]].to_numpy().reshape(-1, 2, 2)
    np.testing.assert_allclose(np.linalg.norm(pos[:, 0] - pos[:, 1], axis=1),
                               5.5, atol=1e-4)  # the inequality is active
    stds = ["y_std", "x_std", "signal_std"]
    assert np.isfinite(ineq[stds]).all().all()
    np.testing.assert_allclose(ineq[stds], eq[stds], rtol=0.02)
