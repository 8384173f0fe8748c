"""``refinefit.locate_movie``: trackpy.locate over a movie, frame by frame.

Synthetic movies of Gaussian spots at known positions (tests/synth.py) are
written as .npy, TIFF and PNG sequences. The features must equal
``trackpy.batch`` value for value, find every spot, read back equal from
CSV and Parquet, and refine to the truth.
"""
import functools
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pandas as pd
import pims
import pytest
import synth
import tifffile
import trackpy

import refinefit
from refinefit.locate import locate_movie

SHAPE = (80, 96)
SIZE, SIGNAL, BACKGROUND, SNR = 2.0, 160.0, 20.0, 10.0
DIAMETER, MINMASS = 11, 500
POS = ["y", "x"]
SPOTS_PER_FRAME = (8, 6, 0, 7)  # frame 2 holds no spot: no rows, as batch


def draw_movie(seed=7):
    """uint8 frames of Gaussian spots (size 2, signal 160, background 20)
    at S/N 10 in trackpy's convention (Poisson noise of mean 16 added, as
    trackpy's test_leastsq.py), and the true positions."""
    rng = np.random.default_rng(seed)
    frames, truth = [], []
    for t, n in enumerate(SPOTS_PER_FRAME):
        positions, _ = synth.place_groups(SHAPE, [1] * n, SIZE, exclusion=14,
                                          margin=9, rng=rng)
        positions = positions.reshape(-1, 2)
        if n:
            image = synth.draw(SHAPE, positions, SIZE, SIGNAL, BACKGROUND,
                               noise=SNR, noise_model="poisson", rng=rng)
        else:  # noise only
            image = BACKGROUND + rng.poisson(SIGNAL / SNR, SHAPE)
        frames.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
        truth.append(pd.DataFrame({"y": positions[:, 0],
                                   "x": positions[:, 1], "frame": t}))
    return np.array(frames), pd.concat(truth, ignore_index=True)


@pytest.fixture(scope="module")
def movie():
    return draw_movie()


@pytest.fixture(scope="module")
def expected(movie):
    frames, _ = movie
    return trackpy.batch(frames, DIAMETER, minmass=MINMASS, processes=1)


def write_movie(frames, folder, kind):
    """``frames`` as a movie file (or glob) of ``kind`` in ``folder``."""
    folder = Path(folder)
    if kind == "npy":
        np.save(folder / "movie.npy", frames)
        return folder / "movie.npy"
    if kind == "tif":
        tifffile.imwrite(folder / "movie.tif", frames,
                         photometric="minisblack")
        return folder / "movie.tif"
    if kind == "tif-zlib":  # compressed: decoded page by page
        tifffile.imwrite(folder / "movie.tif", frames, compression="zlib",
                         photometric="minisblack")
        return folder / "movie.tif"
    if kind == "png":
        for t, frame in enumerate(frames):
            imageio.imwrite(folder / f"img_{t:03d}.png", frame)
        return str(folder / "img_*.png")
    raise ValueError(kind)


def nearest(located, truth):
    """Per true spot, the distance to the nearest located feature of its
    frame, and per located feature, the distance to the nearest spot."""
    to_spot, to_feature = [], []
    for t in sorted(set(truth["frame"]) | set(located["frame"])):
        spots = truth.loc[truth["frame"] == t, POS].to_numpy()
        found = located.loc[located["frame"] == t, POS].to_numpy()
        d = np.sqrt(((spots[:, None] - found[None]) ** 2).sum(axis=2))
        to_spot.extend(d.min(axis=1) if found.size else [np.inf] * len(spots))
        to_feature.extend(d.min(axis=0) if spots.size else
                          [np.inf] * len(found))
    return np.array(to_spot), np.array(to_feature)


@pytest.mark.parametrize("kind", ["npy", "tif", "tif-zlib", "png"])
def test_a_movie_file_gives_trackpy_batch(movie, expected, tmp_path, kind):
    frames, truth = movie
    path = write_movie(frames, tmp_path, kind)
    located = locate_movie(path, diameter=DIAMETER, minmass=MINMASS,
                           quiet=True)
    pd.testing.assert_frame_equal(located, expected, check_exact=True)
    assert located.index.equals(pd.RangeIndex(len(located)))
    assert 2 not in set(located["frame"])  # a frame without features
    to_spot, to_feature = nearest(located, truth)
    assert to_spot.max() <= 0.5  # every spot found
    assert to_feature.max() <= 0.5  # and nothing else


def test_open_movies_and_small_chunks(movie, expected, configure):
    frames, _ = movie
    configure(movie=dict(max_frames=1))  # one frame per chunk
    for opened in (frames, pims.Frame(frames), list_reader(frames)):
        located = locate_movie(opened, diameter=DIAMETER, minmass=MINMASS,
                               quiet=True)
        pd.testing.assert_frame_equal(located, expected, check_exact=True)


def list_reader(frames):
    """A pims-like reader: frame_shape, len() and indexing."""
    class Reader:
        frame_shape = frames.shape[1:]

        def __len__(self):
            return len(frames)

        def __getitem__(self, i):
            return frames[i]

    return Reader()


def test_trackpy_options_pass_through(movie, tmp_path):
    frames, _ = movie
    path = write_movie(frames, tmp_path, "npy")
    options = dict(separation=9, percentile=50, noise_size=1.5, topn=5,
                   characterize=False, max_iterations=5)
    located = locate_movie(path, diameter=(11, 9), minmass=MINMASS,
                           quiet=True, **options)
    theirs = trackpy.batch(frames, (11, 9), minmass=MINMASS, processes=1,
                           **options)
    pd.testing.assert_frame_equal(located, theirs, check_exact=True)
    assert list(located.columns) == ["y", "x", "mass", "frame"]
    assert located.groupby("frame").size().max() <= 5


@pytest.mark.parametrize("name", ["features.csv", "features.csv.gz",
                                  "features.parquet"])
@pytest.mark.parametrize("return_table", [True, False])
def test_output_reads_back_equal(movie, expected, tmp_path, name,
                                 return_table):
    frames, _ = movie
    path = write_movie(frames, tmp_path, "npy")
    out = tmp_path / name
    located = locate_movie(path, out, diameter=DIAMETER, minmass=MINMASS,
                           quiet=True, return_table=return_table)
    assert (located is None) == (not return_table)
    if name.endswith(".parquet"):
        back = pd.read_parquet(out)
    else:
        back = pd.read_csv(out)
    pd.testing.assert_frame_equal(back, expected, check_exact=True)
    # only the output in the folder: the temporary file is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["movie.npy", name])


def test_streamed_csv_equals_csv_written_at_the_end(movie, tmp_path):
    frames, _ = movie
    path = write_movie(frames, tmp_path, "npy")
    locate_movie(path, tmp_path / "whole.csv", diameter=DIAMETER,
                 minmass=MINMASS, quiet=True)
    locate_movie(path, tmp_path / "streamed.csv", diameter=DIAMETER,
                 minmass=MINMASS, quiet=True, return_table=False)
    assert (tmp_path / "whole.csv").read_bytes() == \
        (tmp_path / "streamed.csv").read_bytes()


def test_located_features_refine_to_the_truth(movie, tmp_path):
    frames, truth = movie
    located = locate_movie(write_movie(frames, tmp_path, "tif"),
                           diameter=DIAMETER, minmass=MINMASS, quiet=True)
    refined = refinefit.refine_leastsq(located, frames, DIAMETER)
    assert (refined["status"] == 0).all()
    before, _ = nearest(located, truth)
    after, _ = nearest(refined, truth)
    assert np.sqrt(np.mean(after ** 2)) <= 0.05  # S/N 10 target
    assert np.sqrt(np.mean(after ** 2)) < np.sqrt(np.mean(before ** 2))


def test_no_features_gives_trackpy_columns(movie, tmp_path):
    frames, _ = movie
    path = write_movie(frames, tmp_path, "npy")
    out = tmp_path / "none.csv"
    with pytest.warns(UserWarning):  # trackpy: blank or featureless frames
        located = locate_movie(path, out, diameter=DIAMETER, minmass=1e12,
                               quiet=True)
        locate_movie(path, tmp_path / "none.parquet", diameter=DIAMETER,
                     minmass=1e12, quiet=True, return_table=False)
    assert len(located) == 0
    assert list(located.columns) == ["y", "x", "mass", "size", "ecc",
                                     "signal", "raw_mass", "frame"]
    assert located["frame"].dtype == np.int64
    assert list(pd.read_csv(out).columns) == list(located.columns)
    assert len(pd.read_parquet(tmp_path / "none.parquet")) == 0


def test_a_movie_without_frames(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0,) + SHAPE, np.uint8))
    located = locate_movie(tmp_path / "empty.npy", tmp_path / "out.parquet",
                           diameter=DIAMETER, quiet=True)
    assert len(located) == 0
    assert list(located.columns) == ["y", "x", "mass", "size", "ecc",
                                     "signal", "raw_mass", "frame"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "out.parquet"),
                                  located)


def test_three_dimensional_frames():
    rng = np.random.default_rng(3)
    shape = (24, 40, 40)
    frames, truth = [], []
    for t in range(2):
        positions, _ = synth.place_groups(shape, [1] * 3, 2.0, exclusion=12,
                                          margin=(6, 8, 8), rng=rng)
        frames.append(synth.draw(shape, positions, 2.0, 1000.0, 100.0))
        truth.append(pd.DataFrame(positions, columns=["z", "y", "x"])
                     .assign(frame=t))
    frames = np.rint(np.array(frames)).astype(np.uint16)
    located = locate_movie(frames, diameter=(7, 9, 9), minmass=1000,
                           quiet=True)
    theirs = trackpy.batch(frames, (7, 9, 9), minmass=1000, processes=1)
    pd.testing.assert_frame_equal(located, theirs, check_exact=True)
    assert len(located) == 6


def test_summary_line_and_progress_bar(movie, capsys):
    frames, _ = movie
    located = locate_movie(frames, diameter=DIAMETER, minmass=MINMASS,
                           progress=True)
    captured = capsys.readouterr()
    assert re.fullmatch(rf"refinefit: {len(located)} features in 4 frames; "
                        r"\d+\.\d\d s, [\d,]+\.\d frames/s\n", captured.out)
    assert "locating" in captured.err and "frame" in captured.err
    locate_movie(frames, diameter=DIAMETER, minmass=MINMASS, quiet=True,
                 progress=True)
    assert capsys.readouterr() == ("", "")


# --- colour and inverted frames (open_movie's channel, grey, invert) ---

def test_invert_locates_dark_spots(movie, expected, tmp_path):
    frames, _ = movie
    dark = np.iinfo(np.uint8).max - frames
    path = write_movie(dark, tmp_path, "tif")
    located = locate_movie(path, diameter=DIAMETER, minmass=MINMASS,
                           invert=True, quiet=True)
    pd.testing.assert_frame_equal(located, expected, check_exact=True)


def test_one_channel_or_the_luminance_of_colour_frames(movie, expected,
                                                      tmp_path):
    frames, _ = movie
    rng = np.random.default_rng(5)
    colour = rng.integers(0, 60, frames.shape + (3,)).astype(np.uint8)
    colour[..., 1] = frames  # the spots are in green
    path = tmp_path / "colour.npy"
    np.save(path, colour)
    green = locate_movie(path, diameter=DIAMETER, minmass=MINMASS,
                         channel="g", quiet=True)
    pd.testing.assert_frame_equal(green, expected, check_exact=True)
    pd.testing.assert_frame_equal(
        locate_movie(path, diameter=DIAMETER, minmass=MINMASS, channel=1,
                     quiet=True), expected, check_exact=True)
    grey = locate_movie(path, diameter=DIAMETER, minmass=0.5 * MINMASS,
                        grey=True, quiet=True)
    luminance = np.array([pims.as_grey(frame) for frame in colour])
    theirs = trackpy.batch(luminance, DIAMETER,
                           minmass=0.5 * MINMASS, processes=1)
    pd.testing.assert_frame_equal(grey, theirs, rtol=1e-9)
    with pytest.raises(ValueError, match="channel"):
        locate_movie(path, diameter=DIAMETER, quiet=True)


# --- errors ---

def test_without_trackpy_an_import_error_says_what_to_install(
        movie, tmp_path, monkeypatch):
    frames, _ = movie
    monkeypatch.setitem(sys.modules, "trackpy", None)
    out = tmp_path / "features.csv"
    with pytest.raises(ImportError, match=re.escape(
            "pip install 'refinefit[locate]'")):
        locate_movie(frames, out, diameter=DIAMETER)
    assert not out.exists()


def test_importing_refinefit_locate_does_not_import_trackpy():
    code = ("import sys, refinefit, refinefit.locate; "
            "print('trackpy' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], check=True,
                            capture_output=True, text=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("option", ["seperation", "filter_before", "invert_",
                                    "raw_image"])
def test_an_unknown_option_is_a_type_error(movie, option):
    frames, _ = movie
    with pytest.raises(TypeError, match=re.escape(repr(option))):
        locate_movie(frames, diameter=DIAMETER, **{option: 1})


@pytest.mark.parametrize("diameter", [10, 0, -11, 10.5, 11.5, True, "11",
                                      (11,), (11, 10), (11, 11, 11, 11),
                                      float("nan")])
def test_a_bad_diameter_is_a_value_error(movie, diameter):
    frames, _ = movie
    with pytest.raises(ValueError, match="diameter"):
        locate_movie(frames, diameter=diameter, quiet=True)


def test_a_diameter_per_axis_must_match_the_frames(movie):
    frames, _ = movie
    with pytest.raises(ValueError, match="diameter"):
        locate_movie(list_reader(frames), diameter=(5, 11, 11), quiet=True)


def test_whole_number_diameters_are_accepted(movie, expected):
    frames, _ = movie
    located = locate_movie(frames, diameter=11.0, minmass=MINMASS,
                           quiet=True)
    pd.testing.assert_frame_equal(located, expected, check_exact=True)


def test_return_table_false_needs_out(movie):
    frames, _ = movie
    with pytest.raises(ValueError, match="out"):
        locate_movie(frames, diameter=DIAMETER, return_table=False)


def test_out_that_is_the_movie_is_refused(movie, tmp_path):
    frames, _ = movie
    path = write_movie(frames, tmp_path, "npy")
    renamed = path.rename(tmp_path / "movie.csv")  # a movie named like out
    np.save(tmp_path / "other.npy", frames)
    os.link(renamed, tmp_path / "linked.csv")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match="is the movie"):
        locate_movie(renamed, renamed, diameter=DIAMETER)
    with pytest.raises(ValueError, match="is the movie"):  # same inode
        locate_movie(renamed, tmp_path / "linked.csv", diameter=DIAMETER)
    with pytest.raises(ValueError, match="matched by the movie"):  # a glob
        locate_movie(str(tmp_path / "*"), tmp_path / "out.csv",
                     diameter=DIAMETER)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_an_interrupted_run_leaves_nothing(movie, tmp_path, monkeypatch):
    frames, _ = movie
    calls = []

    @functools.wraps(trackpy.locate)
    def locate_until_frame_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_locate(*args, **kwargs)

    real_locate = trackpy.locate
    monkeypatch.setattr(trackpy, "locate", locate_until_frame_3)
    for name, return_table in [("streamed.csv", False),
                               ("streamed.parquet", False),
                               ("whole.csv", True)]:
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            locate_movie(frames, tmp_path / name, diameter=DIAMETER,
                         minmass=MINMASS, quiet=True,
                         return_table=return_table)
    assert list(tmp_path.iterdir()) == []
