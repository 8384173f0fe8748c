"""What a newcomer trips over on the command line: an output that is an
input, a features file with an index, the flags users need most, a
diameter that does not fit, features outside the frames, dark features
without --invert."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import synth

import refinefit

SHAPE = (64, 64)
DIAMETER = 11


def command(*args):
    return subprocess.run([sys.executable, "-m", "refinefit", *map(str, args)],
                          capture_output=True, text=True)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    """Bright spots (S/N 20) in three uint8 frames, and starts near them;
    also the movie inverted (dark spots on a bright background)."""
    rng = np.random.default_rng(3)
    folder = tmp_path_factory.mktemp("guards")
    frames, starts = [], []
    for t in range(3):
        positions, _ = synth.place_groups(SHAPE, [1] * 5, 2.0, exclusion=13,
                                          margin=6, rng=rng)
        image = synth.draw(SHAPE, positions, 2.0, 120.0, 30.0, noise=20.0,
                           rng=rng)
        frames.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
        start = positions + rng.uniform(-0.4, 0.4, positions.shape)
        starts.append(pd.DataFrame({"frame": t, "y": start[:, 0],
                                    "x": start[:, 1], "size": 2.0,
                                    "signal": 100.0}))
    frames = np.array(frames)
    np.save(folder / "movie.npy", frames)
    np.save(folder / "dark.npy", 255 - frames)
    features = pd.concat(starts, ignore_index=True)
    features.to_csv(folder / "features.csv", index=False)
    features.to_csv(folder / "indexed.csv")  # with its index, as pandas does
    return folder, frames, features


@pytest.mark.parametrize("target", ["movie.npy", "features.csv", "link"])
def test_an_output_that_is_an_input_is_refused(movie, target):
    folder, _, _ = movie
    out = folder / target
    if target == "link":
        out = folder / "link.csv"
        if not out.exists():
            os.link(folder / "features.csv", out)
    before = {p.name: digest(p) for p in folder.iterdir()}
    result = command("refine", folder / "movie.npy", folder / "features.csv",
                     "-o", out, "--diameter", DIAMETER)
    assert result.returncode == 2
    assert "would be overwritten" in result.stderr
    assert {p.name: digest(p) for p in folder.iterdir()} == before


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_an_index_in_is_an_index_out(movie, tmp_path, suffix):
    folder, _, features = movie
    out = tmp_path / ("refined" + suffix)
    result = command("refine", folder / "movie.npy", folder / "indexed.csv",
                     "-o", out, "--diameter", DIAMETER, "--quiet")
    assert result.returncode == 0, result.stderr
    back = pd.read_csv(out, index_col=0) if suffix == ".csv" \
        else pd.read_parquet(out)
    read_in = pd.read_csv(folder / "indexed.csv", index_col=0)
    assert list(back.columns[:len(read_in.columns)]) == list(read_in.columns)
    pd.testing.assert_index_equal(back.index, read_in.index)
    # without an index in, none out
    plain = tmp_path / ("plain" + suffix)
    result = command("refine", folder / "movie.npy", folder / "features.csv",
                     "-o", plain, "--diameter", DIAMETER, "--quiet")
    assert result.returncode == 0, result.stderr
    if suffix == ".csv":
        assert pd.read_csv(plain).columns[0] == "frame"
    else:
        import pyarrow.parquet as pq

        assert pq.read_schema(plain).names[0] == "frame"
        assert "__index_level_0__" not in pq.read_schema(plain).names


def test_outputs_beside_a_glob_are_not_inputs(tmp_path):
    from refinefit.io.tables import check_not_an_input

    frames = tmp_path / "frames"
    (frames / "plots").mkdir(parents=True)
    (frames / "img_0.png").write_bytes(b"")
    (tmp_path / "feat[1].csv").write_text("frame,y,x\n")
    movie = str(frames / "img_*")
    check_not_an_input(frames / "plots" / "f0.png", {"movie": movie})
    check_not_an_input(tmp_path / "img_results" / "out.csv", {"movie": movie})
    with pytest.raises(ValueError, match="matched by the movie"):
        check_not_an_input(frames / "img_out.csv", {"movie": movie})
    with pytest.raises(ValueError, match="is the features file"):
        check_not_an_input(tmp_path / "feat[1].csv",
                           {"features file": str(tmp_path / "feat[1].csv")})


def test_flags_override_the_config(movie, tmp_path):
    """--grey replaces a config file's channel; --no-invert its invert."""
    folder, frames, features = movie
    rgb = np.stack([frames] * 3, axis=-1)
    np.save(tmp_path / "rgb.npy", rgb)
    (tmp_path / "fit.toml").write_text('channel = "g"\ninvert = true\n')
    out = tmp_path / "refined.csv"
    result = command("refine", tmp_path / "rgb.npy", folder / "features.csv",
                     "-o", out, "--diameter", DIAMETER, "--config",
                     tmp_path / "fit.toml", "--grey", "--no-invert",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    expected = refinefit.refine_movie(rgb, features, diameter=DIAMETER,
                                      grey=True, quiet=True)
    pd.testing.assert_frame_equal(pd.read_csv(out), expected,
                                  check_exact=False, rtol=1e-12)


def test_flags_users_need_most(movie, tmp_path):
    folder, frames, features = movie
    renamed = features.rename(columns={"frame": "t", "y": "row", "x": "col"})
    renamed.to_csv(tmp_path / "renamed.csv", index=False)
    out = tmp_path / "refined.csv"
    result = command("refine", folder / "movie.npy", tmp_path / "renamed.csv",
                     "-o", out, "--diameter", DIAMETER, "--pos-columns",
                     "row,col", "--t-column", "t", "--compute-error",
                     "--max-iter", 3, "--quiet")
    assert result.returncode == 0, result.stderr
    expected = refinefit.refine_leastsq(
        renamed, frames, DIAMETER, pos_columns=["row", "col"], t_column="t",
        compute_error=True, max_iter=3)
    pd.testing.assert_frame_equal(pd.read_csv(out), expected,
                                  check_exact=False, rtol=1e-12)
    assert {"row_std", "col_std"} <= set(expected)
    version = command("--version")
    assert version.stdout.strip() == f"refinefit {refinefit.__version__}"


def test_a_diameter_that_does_not_fit(movie, tmp_path):
    folder, _, _ = movie
    out = tmp_path / "refined.csv"
    huge = command("refine", folder / "movie.npy", folder / "features.csv",
                   "-o", out, "--diameter", 1000)
    assert huge.returncode == 2 and "larger than the frames" in huge.stderr
    assert not out.exists()
    small = command("refine", folder / "movie.npy", folder / "features.csv",
                    "-o", out, "--diameter", 3, "--quiet")
    assert small.returncode == 0
    assert "refinefit: warning: the mask radius (diameter // 2 = 1 px) is " \
        "far from the features' size (median 2 px)" in small.stderr
    assert small.stderr.count("warning") == 1


def test_features_outside_the_frames_are_counted(movie, tmp_path):
    folder, _, features = movie
    outside = features.copy()
    outside.loc[:3, "x"] += 500
    outside.to_csv(tmp_path / "outside.csv", index=False)
    result = command("refine", folder / "movie.npy", tmp_path / "outside.csv",
                     "-o", tmp_path / "refined.csv", "--diameter", DIAMETER)
    assert result.returncode == 0
    assert "4 failed (4 outside_frame)" in result.stdout


def test_dark_features_without_invert_get_a_hint(movie, tmp_path):
    folder, _, features = movie
    result = command("refine", folder / "dark.npy", folder / "features.csv",
                     "-o", tmp_path / "dark.csv", "--diameter", DIAMETER)
    assert result.returncode == 0
    assert "degenerate" in result.stdout
    assert "are degenerate" in result.stderr and "--invert" in result.stderr
    inverted = command("refine", folder / "dark.npy", folder / "features.csv",
                       "-o", tmp_path / "inverted.csv", "--diameter",
                       DIAMETER, "--invert")
    assert inverted.returncode == 0 and inverted.stderr == ""
    assert f"{len(features)} converged" in inverted.stdout
    # bright features inverted: the hint says so
    bright = command("refine", folder / "movie.npy", folder / "features.csv",
                     "-o", tmp_path / "bright.csv", "--diameter", DIAMETER,
                     "--invert")
    assert "need no --invert" in bright.stderr
