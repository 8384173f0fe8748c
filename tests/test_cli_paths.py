"""The whole path on the command line, locate -> refine -> inspect, on the
real brightfield frames as a PNG sequence: each step equals the API."""
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pandas as pd
import pims
import pytest
import trackpy

import refinefit

FRAMES = str(Path(__file__).parent / "data" / "brightfield" / "bf_*.png")
DIAMETER = 11
MINMASS = 100


def command(*args):
    return subprocess.run([sys.executable, "-m", "refinefit", *map(str, args)],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """The three commands a user types, in a folder of their own."""
    folder = tmp_path_factory.mktemp("walk")
    steps = [
        command("locate", FRAMES, "-o", folder / "features.csv",
                "--diameter", DIAMETER, "--minmass", MINMASS),
        command("refine", FRAMES, folder / "features.csv", "-o",
                folder / "refined.csv", "--diameter", DIAMETER),
        command("inspect", FRAMES, folder / "refined.csv", "--frame", 2, "-o",
                folder / "report.png", "--diameter", DIAMETER, "--features",
                folder / "features.csv"),
    ]
    return folder, steps


def test_locate_equals_trackpy_batch(walked):
    folder, (located, _, _) = walked
    assert located.returncode == 0, located.stderr
    assert located.stderr == ""
    assert located.stdout.startswith("refinefit: ")
    expected = trackpy.batch(pims.open(FRAMES), DIAMETER, minmass=MINMASS,
                             processes=1)
    pd.testing.assert_frame_equal(
        pd.read_csv(folder / "features.csv"),
        expected.reset_index(drop=True), check_exact=False, rtol=1e-12,
        check_dtype=False)


def test_refine_equals_the_api(walked):
    folder, (_, refined, _) = walked
    assert refined.returncode == 0, refined.stderr
    features = pd.read_csv(folder / "features.csv")
    expected = refinefit.refine_leastsq(features, pims.open(FRAMES), DIAMETER)
    pd.testing.assert_frame_equal(pd.read_csv(folder / "refined.csv"),
                                  expected, check_exact=False, rtol=1e-12)
    counts = refinefit.STATUS_NAMES
    assert f"{(expected['status'] == 0).sum()} {counts[0]}" in refined.stdout


def test_inspect_draws_the_frame(walked):
    folder, (_, _, inspected) = walked
    assert inspected.returncode == 0, inspected.stderr
    refined = pd.read_csv(folder / "refined.csv")
    on_frame = refined[refined["frame"] == 2]
    assert f"refinefit: frame 2: {(on_frame['status'] == 0).sum()} " \
        "converged" in inspected.stdout
    assert "median cost" in inspected.stdout
    picture = matplotlib.image.imread(folder / "report.png")
    assert picture.shape[:2] == (900, 1400)


@pytest.mark.parametrize("flags, message", [
    (["--frame", 9, "-o", "r.png"], "--frame 9: the movie has 5 frames"),
    (["--frame", 0, "-o", "r.txt"], "use .png, .pdf or .svg"),
    (["--frame", 0, "-o", "r.png", "--channel", 0], "greyscale"),
])
def test_inspect_errors_write_nothing(walked, tmp_path, flags, message):
    folder, _ = walked
    flags = [tmp_path / f if isinstance(f, str) and f.startswith("r.")
             else f for f in flags]
    result = command("inspect", FRAMES, folder / "refined.csv",
                     "--diameter", DIAMETER, *flags)
    assert result.returncode == 2
    assert result.stderr.startswith("refinefit: error: ")
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []
