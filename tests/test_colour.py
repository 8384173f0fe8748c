"""Colour and inverted movies: ``channel``, ``grey`` and ``invert`` in
refine_movie and the command, on a synthetic colour movie of dark spots on
a bright background (as brightfield colloids look) with ground truth."""
import re
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pandas as pd
import pytest
import synth
import tifffile
from trackpy.preprocessing import invert_image

import refinefit
from refinefit.io.movies import open_movie
from refinefit.kernels.codes import CONVERGED

SHAPE = (64, 80)
SIZE = 2.0
BRIGHT = 200.0   # background of the green channel
DEPTH = 120.0    # how much darker a spot's centre is
DIAMETER = 11
N_FRAMES = 3


@pytest.fixture(scope="module")
def colour_movie(tmp_path_factory):
    """RGBA PNG frames: green holds dark spots on a bright background (S/N
    30), red a bright gradient, blue noise, alpha opaque; the truth and
    starts up to 0.5 px off."""
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("colour")
    frames, truth, starts = [], [], []
    for t in range(N_FRAMES):
        positions, _ = synth.place_groups(SHAPE, [1] * 6, SIZE, exclusion=13,
                                          margin=6, rng=rng)
        spots = synth.draw(SHAPE, positions, SIZE, DEPTH, 0.0, noise=30.0,
                           rng=rng)
        green = np.clip(np.round(BRIGHT - spots), 0, 255)
        red = np.linspace(0, 255, SHAPE[1])[None].repeat(SHAPE[0], axis=0)
        blue = rng.integers(0, 256, SHAPE)
        frame = np.stack([red, green, blue, np.full(SHAPE, 255)],
                         axis=-1).astype(np.uint8)
        imageio.imwrite(folder / f"frame_{t:03d}.png", frame)
        frames.append(frame)
        truth.append(pd.DataFrame({"y": positions[:, 0],
                                   "x": positions[:, 1], "frame": t}))
        start = positions + rng.uniform(-0.5, 0.5, positions.shape)
        starts.append(pd.DataFrame({"y": start[:, 0], "x": start[:, 1],
                                    "frame": t, "signal": 100.0,
                                    "size": SIZE}))
    features = pd.concat(starts, ignore_index=True)
    features.to_csv(folder / "features.csv", index=False)
    return (folder, np.array(frames), pd.concat(truth, ignore_index=True),
            features)


def test_a_channel_inverted_as_trackpy_inverts(colour_movie):
    folder, frames, _, _ = colour_movie
    movie = open_movie(str(folder / "frame_*.png"), 2, channel="g",
                       invert=True)
    assert movie.frame_shape == SHAPE and len(movie) == N_FRAMES
    for got, frame in zip(movie.read(range(N_FRAMES)), frames):
        np.testing.assert_array_equal(got, invert_image(frame[..., 1]))
        assert got.dtype == np.uint8
    grey = open_movie(str(folder / "frame_*.png"), 2, grey=True)
    expected = (0.2125 * frames[0][..., 0] + 0.7154 * frames[0][..., 1]
                + 0.0721 * frames[0][..., 2])
    np.testing.assert_allclose(grey.read([0])[0], expected, rtol=1e-12)


@pytest.mark.parametrize("channel", ["g", 1])
def test_dark_spots_in_one_channel(colour_movie, channel):
    folder, _, truth, features = colour_movie
    refined = refinefit.refine_movie(str(folder / "frame_*.png"), features,
                                     diameter=DIAMETER, channel=channel,
                                     invert=True, quiet=True)
    assert (refined["status"] == CONVERGED).all()
    error = np.hypot(refined["y"] - truth["y"], refined["x"] - truth["x"])
    # about 0.04 px at S/N 30: a wrong channel or no inversion fails
    assert np.sqrt(np.mean(error ** 2)) < 0.08
    # background and signal refer to the inverted image
    np.testing.assert_allclose(refined["background"], 255 - BRIGHT, atol=3)
    np.testing.assert_allclose(refined["signal"], DEPTH, rtol=0.1)


def test_the_luminance(colour_movie):
    """The luminance of 8-bit frames, inverted against 255."""
    folder, _, truth, features = colour_movie
    refined = refinefit.refine_movie(
        str(folder / "frame_*.png"), features.assign(signal=80.0),
        diameter=DIAMETER, grey=True, invert=True, quiet=True)
    assert (refined["status"] == CONVERGED).all()
    error = np.hypot(refined["y"] - truth["y"], refined["x"] - truth["x"])
    assert np.sqrt(np.mean(error ** 2)) < 0.15


def test_the_command_equals_the_api(colour_movie, tmp_path):
    folder, _, _, features = colour_movie
    out = tmp_path / "refined.csv"
    result = subprocess.run(
        [sys.executable, "-m", "refinefit", "refine",
         str(folder / "frame_*.png"), str(folder / "features.csv"), "-o",
         str(out), "--diameter", str(DIAMETER), "--channel", "g", "--invert"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    expected = refinefit.refine_movie(str(folder / "frame_*.png"), features,
                                      diameter=DIAMETER, channel="g",
                                      invert=True, quiet=True)
    pd.testing.assert_frame_equal(pd.read_csv(out), expected,
                                  check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("flags, message", [
    ([], "frames are colour .* --channel / channel="),
    (["--channel", "5"], "channel=5: the frames have 4 channels"),
    (["--channel", "x"], "channel='x': use a channel index"),
    (["--channel", "r", "--grey"], "channel and grey exclude each other"),
])
def test_bad_channel_options_exit_2_and_write_nothing(colour_movie, tmp_path,
                                                       flags, message):
    folder, _, _, _ = colour_movie
    out = tmp_path / "refined.csv"
    result = subprocess.run(
        [sys.executable, "-m", "refinefit", "refine",
         str(folder / "frame_*.png"), str(folder / "features.csv"), "-o",
         str(out), "--diameter", str(DIAMETER)] + flags,
        capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("refinefit: error: ")
    assert len(result.stderr.splitlines()) == 1
    assert re.search(message, result.stderr), result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_selection_is_part_of_the_movies_identity(colour_movie):
    """A run resumed with another channel or inversion starts afresh: the
    checkpoint's fingerprint holds the movie's identity."""
    folder, _, _, _ = colour_movie
    pattern = str(folder / "frame_*.png")
    identities = {str(open_movie(pattern, 2, **selection).identity())
                  for selection in (dict(channel="g"), dict(channel=0),
                                    dict(channel="g", invert=True),
                                    dict(grey=True))}
    assert len(identities) == 4


def test_a_channel_of_a_grey_movie_is_refused(tmp_path):
    movie = np.zeros((2,) + SHAPE, dtype=np.uint16)
    with pytest.raises(ValueError, match="greyscale .* drop --channel"):
        open_movie(movie, 2, channel=0)
    with pytest.raises(ValueError, match="greyscale .* drop --grey"):
        open_movie(movie, 2, grey=True)
    inverted = open_movie(movie, 2, invert=True).read([0])[0]
    assert inverted.dtype == np.uint16 and (inverted == 65535).all()


def test_refine_leastsq_names_the_way_out(colour_movie):
    _, frames, _, features = colour_movie
    with pytest.raises(ValueError, match="colour .* channel= or grey=True"):
        refinefit.refine_leastsq(features, frames, DIAMETER)
    with pytest.raises(ValueError, match="colour"):
        refinefit.refine_leastsq(features[features["frame"] == 0], frames[0],
                                 DIAMETER)


@pytest.mark.parametrize("writer", ["tiff", "npy"])
def test_colour_files(colour_movie, tmp_path, writer):
    """An uncompressed RGB TIFF and a .npy of shape (frames, Y, X, 3)."""
    _, frames, _, features = colour_movie
    rgb = np.ascontiguousarray(frames[..., :3])
    path = tmp_path / ("movie.tif" if writer == "tiff" else "movie.npy")
    if writer == "tiff":
        tifffile.imwrite(path, rgb, photometric="rgb")
    else:
        np.save(path, rgb)
    movie = open_movie(path, 2, channel="g")
    assert movie.frame_shape == SHAPE and len(movie) == N_FRAMES
    np.testing.assert_array_equal(movie.read([2])[0], frames[2][..., 1])
    refined = refinefit.refine_movie(path, features, diameter=DIAMETER,
                                     channel="g", invert=True, quiet=True)
    expected = refinefit.refine_leastsq(
        features, 255 - frames[..., 1], DIAMETER)
    pd.testing.assert_frame_equal(refined, expected, check_exact=True)


def test_locate_refine_inspect_a_colour_movie(colour_movie, tmp_path):
    """The whole path on the dark spots of the green channel."""
    folder, _, truth, _ = colour_movie
    frames = str(folder / "frame_*.png")
    steps = [
        ["locate", frames, "-o", tmp_path / "found.csv", "--diameter", 9,
         "--minmass", 300, "--channel", "g", "--invert"],
        ["refine", frames, tmp_path / "found.csv", "-o",
         tmp_path / "refined.csv", "--diameter", DIAMETER, "--channel", "g",
         "--invert"],
        ["inspect", frames, tmp_path / "refined.csv", "--frame", 1, "-o",
         tmp_path / "report.png", "--diameter", DIAMETER, "--features",
         tmp_path / "found.csv", "--channel", "g", "--invert"],
    ]
    for step in steps:
        result = subprocess.run([sys.executable, "-m", "refinefit",
                                 *map(str, step)], capture_output=True,
                                text=True)
        assert result.returncode == 0, (step[0], result.stderr)
    refined = pd.read_csv(tmp_path / "refined.csv")
    # every true spot found once, and refined near the truth
    assert len(refined) == len(truth)
    errors = []
    for t, spots in truth.groupby("frame"):
        found = refined[refined["frame"] == t]
        d2 = ((found[["y", "x"]].to_numpy()[:, None]
               - spots[["y", "x"]].to_numpy()[None]) ** 2).sum(axis=2)
        errors.append(np.sqrt(d2.min(axis=0)))
    errors = np.concatenate(errors)
    assert (refined["status"] == CONVERGED).all()
    assert np.sqrt(np.mean(errors ** 2)) < 0.08
    assert (tmp_path / "report.png").stat().st_size > 10_000
