"""Pictures of a refinement (refinefit.plot): the numbers behind each panel.

A two-frame movie drawn by ``synth.draw`` (independent of the fitter) holds
singles and a touching dimer, a spot whose only start lies 7.5 px away with
mask radius 7 (a degenerate fit, position_at_bound) and a start with a NaN
position (a failed fit, invalid_start). It is refined once by
``refine_leastsq``; the panels of frame 1 are compared with what the test
computes itself: the model by the plain-NumPy reference of ``naive.py`` on
masks found by brute force, histograms by ``np.histogram``, status counts by
``value_counts``.
"""
import subprocess
import sys

import matplotlib.image
import naive
import numpy as np
import pandas as pd
import pytest
import synth

import refinefit
from refinefit import plot
from refinefit.kernels.codes import CONVERGED, STATUS_KINDS

SHAPE = (72, 112)
DIAMETER = 15          # mask radius 7
RADIUS = (7.0, 7.0)
SIZE = 2.0
SIGNAL = 150.0
BACKGROUND = 20.0
SNR = 10
# two singles, a touching dimer, and the spot fitted from a start 7.5 px off
SPOTS = np.array([(16.3, 18.6), (50.2, 20.4), (18.8, 56.2), (21.9, 59.7),
                  (48.2, 86.5)])
SHIFT_FRAME_1 = np.array([1.3, 2.7])  # frame 1: every spot moved
OFF_BY = np.array([0.0, -7.5])        # the last spot's start
NAN_START = (40.0, 60.0)
POS = ["y", "x"]
# the module's evaluation against the NumPy reference: rounding only
MODEL_RTOL = 1e-11
MODEL_ATOL = 1e-9


def _movie_and_features():
    rng = np.random.default_rng(8)
    frames, starts = [], []
    for frame_no in (0, 1):
        spots = SPOTS + frame_no * SHIFT_FRAME_1
        frames.append(synth.draw(SHAPE, spots, SIZE, SIGNAL, BACKGROUND,
                                 noise=SNR, rng=rng))
        start = spots + rng.uniform(-0.4, 0.4, spots.shape)
        start[-1] = spots[-1] + OFF_BY
        start = np.vstack([start, NAN_START])
        start[-1, 0] = np.nan
        starts.append(pd.DataFrame({"y": start[:, 0], "x": start[:, 1],
                                    "frame": frame_no}))
    features = pd.concat(starts, ignore_index=True)
    features["signal"] = SIGNAL * 0.8
    features["size"] = SIZE
    return np.stack(frames), features


@pytest.fixture(scope="module")
def refinement():
    movie, features = _movie_and_features()
    refined = refinefit.refine_leastsq(features, movie, DIAMETER,
                                       compute_error=True)
    return movie, features, refined


@pytest.fixture(scope="module")
def report(refinement, tmp_path_factory):
    movie, features, refined = refinement
    out = tmp_path_factory.mktemp("plot") / "report.png"
    figure, panels = plot.inspect_frame(movie[1], refined, DIAMETER,
                                        features=features, frame_no=1,
                                        out=out)
    return figure, panels, out


def test_the_scene_has_every_kind_of_ending(refinement):
    """The scene is what the other tests rely on: converged singles and a
    dimer, a degenerate and a failed fit in each frame."""
    _, _, refined = refinement
    kinds = refined["status"].map(STATUS_KINDS)
    assert kinds.value_counts().to_dict() == {
        "converged": 8, "degenerate": 2, "failed": 2}
    assert refined.loc[kinds == "failed", "status"].map(
        refinefit.STATUS_NAMES).eq("invalid_start").all()
    assert (refined.loc[refined["status"] == CONVERGED, "cluster_size"]
            .value_counts().to_dict() == {1: 4, 2: 4})


def _reference_model(image, rows):
    """The model of every cluster of ``rows`` on its masks (NaN outside),
    from naive.evaluate on masks found by naive.mask_pixels."""
    model = np.full(image.shape, np.nan)
    for _, members in rows.groupby("cluster", sort=False):
        centres = members[POS].to_numpy()
        masks = [naive.mask_pixels(image.shape, c, RADIUS, image)
                 for c in centres]
        pixels = np.unique(np.vstack(masks), axis=0)
        index = {tuple(p): i for i, p in enumerate(pixels)}
        entry_pix = np.array([index[tuple(p)] for mask in masks for p in mask])
        feat_entry_off = np.r_[0, np.cumsum([len(m) for m in masks])]
        params = members[["background", "signal", "y", "x", "size"]].to_numpy()
        values, excluded, _ = naive.evaluate(
            "gauss", pixels.astype(float), np.array([0, len(pixels)]),
            entry_pix, feat_entry_off, np.array([0, len(members)]), params,
            2, 1)
        assert not excluded.any()
        model[pixels[:, 0], pixels[:, 1]] = values
    return model


def test_residual_is_frame_minus_the_reference_model_on_the_masks(
        refinement, report):
    movie, _, refined = refinement
    _, panels, _ = report
    rows = refined[(refined["frame"] == 1) & (refined["status"] == CONVERGED)]
    expected = _reference_model(movie[1], rows)
    assert np.isfinite(expected).sum() > 500
    np.testing.assert_array_equal(np.isnan(panels["residual"]),
                                  np.isnan(expected))
    np.testing.assert_array_equal(panels["inside_masks"], np.isfinite(expected))
    np.testing.assert_allclose(panels["model"], expected, rtol=MODEL_RTOL,
                               atol=MODEL_ATOL)
    np.testing.assert_allclose(panels["residual"], movie[1] - expected,
                               rtol=MODEL_RTOL, atol=MODEL_ATOL)
    # the degenerate fit is not modelled: no mask at its start
    y, x = np.round(SPOTS[-1] + SHIFT_FRAME_1 + OFF_BY).astype(int)
    assert np.isnan(panels["residual"][y, x])


def test_model_image_alone_equals_the_panels(refinement, report):
    movie, _, refined = refinement
    _, panels, _ = report
    model, residual, inside = plot.model_image(movie[1], refined, DIAMETER,
                                               frame_no=1)
    np.testing.assert_array_equal(model, panels["model"])
    np.testing.assert_array_equal(residual, panels["residual"])
    np.testing.assert_array_equal(inside, panels["inside_masks"])


def test_figure_shows_the_numbers(report):
    figure, panels, _ = report

    def axes(title):
        return next(ax for ax in figure.axes if ax.get_title().startswith(title))

    for title, key in (("residual", "residual"), ("model", "model")):
        shown = axes(title).images[0].get_array()
        np.testing.assert_array_equal(shown.filled(np.nan), panels[key])
    assert "converged fits only" in axes("model").get_title()
    assert "converged fits only" in axes("residual").get_title()
    bars = axes("how the fits ended").patches
    assert sorted(int(bar.get_width()) for bar in bars) == sorted(
        panels["status"].tolist())


def test_positions_of_the_frame_shown(refinement, report):
    _, features, refined = refinement
    _, panels, _ = report
    positions = panels["positions"]
    on_frame = refined["frame"] == 1
    pd.testing.assert_frame_equal(positions[POS], refined.loc[on_frame, POS])
    np.testing.assert_array_equal(positions["y_initial"],
                                  features.loc[on_frame, "y"])
    assert positions["kind"].tolist() == [
        STATUS_KINDS[s] for s in refined.loc[on_frame, "status"]]


def test_histograms_count_all_frames(refinement, report):
    _, features, refined = refinement
    _, panels, _ = report
    converged = refined["status"] == CONVERGED

    def fractional(table):
        values = table.loc[converged, POS].to_numpy().ravel()
        return values - np.floor(values)

    edges = np.linspace(0, 1, plot.BIAS_BINS + 1)
    bias = panels["bias"]
    np.testing.assert_array_equal(bias["edges"], edges)
    np.testing.assert_array_equal(bias["after"],
                                  np.histogram(fractional(refined), edges)[0])
    np.testing.assert_array_equal(bias["before"],
                                  np.histogram(fractional(features), edges)[0])

    cost = refined.loc[converged, "cost"].to_numpy()
    assert panels["cost"]["counts"].sum() == converged.sum() == len(cost)
    np.testing.assert_array_equal(panels["cost"]["counts"],
                                  np.histogram(cost, panels["cost"]["edges"])[0])
    assert panels["cost"]["median"] == np.median(cost)

    for col in ("y_std", "x_std"):
        std = panels["std"][col]
        np.testing.assert_array_equal(
            std["counts"], np.histogram(refined.loc[converged, col],
                                        std["edges"])[0])


def test_status_counts_equal_value_counts(refinement, report):
    _, _, refined = refinement
    _, panels, _ = report
    assert panels["status"].to_dict() == (
        refined["status"].map(refinefit.STATUS_NAMES).value_counts().to_dict())
    summary = panels["summary"]["status"]
    for words in ("8 converged", "0 stopped", "2 failed (2 invalid_start)",
                  "2 degenerate ("):
        assert words in summary


def test_noise_ratio_is_what_a_good_cost_looks_like(refinement, report):
    """On noise of known level, the estimate is close, and so is the cost
    of fits that leave only noise."""
    movie, _, _ = refinement
    _, panels, _ = report
    summary = panels["summary"]
    noise = SIGNAL / SNR
    assert summary["frame_max"] == movie[1].max()
    assert summary["noise"] == pytest.approx(noise, rel=0.1)
    assert summary["median_cost"] == pytest.approx(summary["noise_ratio"],
                                                   rel=0.15)


def test_png_is_written_at_its_size(report):
    _, _, out = report
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (plot.FIGSIZE[1] * plot.DPI,
                                plot.FIGSIZE[0] * plot.DPI)


def test_without_standard_errors_or_features(refinement):
    movie, _, refined = refinement
    plain = refined.drop(columns=[c for c in refined if c.endswith("_std")])
    _, panels = plot.inspect_frame(movie[0], plain, DIAMETER, frame_no=0)
    assert panels["std"] == {}
    assert panels["bias"]["before"] is None
    assert "y_initial" not in panels["positions"]


def test_region_zooms_the_image_panels_only(refinement, report):
    movie, features, refined = refinement
    figure, panels = plot.inspect_frame(movie[1], refined, DIAMETER,
                                        features=features, frame_no=1,
                                        region=(10, 40, 40, 80))
    image_axes = [ax for ax in figure.axes if ax.images]
    assert len(image_axes) == 3
    for ax in image_axes:
        assert ax.get_ylim() == (39.5, 9.5)
        assert ax.get_xlim() == (39.5, 79.5)
    np.testing.assert_array_equal(panels["residual"], report[1]["residual"])


def test_importing_refinefit_does_not_import_matplotlib():
    code = ("import sys, refinefit, refinefit.plot; "
            "assert not [m for m in sys.modules if m.startswith('matplotlib')]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_matplotlib_says_what_to_install(refinement, monkeypatch):
    movie, _, refined = refinement
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'refinefit\[plot\]'"):
        plot.inspect_frame(movie[1], refined, DIAMETER, frame_no=1)
    # the numbers alone need no matplotlib
    plot.model_image(movie[1], refined, DIAMETER, frame_no=1)


@pytest.mark.parametrize("change,error,match", [
    (dict(frame=np.zeros((2,) + SHAPE)), ValueError, "inspect shows 2D"),
    (dict(frame_no=5), ValueError, "frame_no: frame 5 is not in refined"),
    (dict(frame_no=None), ValueError, "frame_no: refined holds 2 frames"),
    (dict(refined="drop signal"), KeyError, r"refined has no column.*'signal'"),
    (dict(refined="drop cluster"), KeyError, r"refined has no column.*'cluster'"),
    (dict(refined="not a table"), TypeError, "refined must be a pandas"),
    (dict(features="other index"), ValueError, "same index as refined"),
    (dict(features="drop x"), KeyError, r"features has no column.*'x'"),
    (dict(diameter=1), ValueError, "diameter"),
    (dict(diameter=(11, 11, 11)), ValueError, "diameter"),
    (dict(pos_columns=["z", "y", "x"]), ValueError, "pos_columns"),
    (dict(fit_function="spline"), ValueError, "fit_function"),
    (dict(region=(0, 10, 20)), ValueError, "region"),
    (dict(region=(10, 5, 0, 20)), ValueError, "region"),
    (dict(region=(0, 10, 0, SHAPE[1] + 1)), ValueError, "region"),
])
def test_input_errors_name_the_argument(refinement, change, error, match):
    movie, features, refined = refinement
    args = dict(frame=movie[1], refined=refined, diameter=DIAMETER,
                features=features, frame_no=1)
    edits = {"drop signal": lambda: refined.drop(columns="signal"),
             "drop cluster": lambda: refined.drop(columns="cluster"),
             "not a table": lambda: refined.to_numpy(),
             "other index": lambda: features.set_index(features.index + 100),
             "drop x": lambda: features.drop(columns="x")}
    for key, value in change.items():
        args[key] = edits[value]() if isinstance(value, str) and \
            value in edits else value
    with pytest.raises(error, match=match):
        plot.inspect_frame(args.pop("frame"), args.pop("refined"),
                           args.pop("diameter"), **args)
