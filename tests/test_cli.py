"""The ``refinefit`` command, run as a subprocess."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tifffile
from pandas.testing import assert_frame_equal
from same_refinement import assert_same_refinement

import refinefit
from refinefit.synthetic import make_movie

DIAMETER = 11
# rms position error of the fit at S/N 10 is about 0.12 px (README); the
# initial guesses are off by 0.35 px rms
RMS_LIMIT = 0.2


def refinefit_cmd(*args, timeout=300):
    """Run ``python -m refinefit ARGS``; stdout and stderr are pipes."""
    return subprocess.run([sys.executable, "-m", "refinefit", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def movie_files(tmp_path_factory):
    """6 frames of 128x128 uint16 (TIFF and .npy), features CSV, truth."""
    folder = tmp_path_factory.mktemp("movie")
    frames, truth, guess = make_movie(6, shape=(128, 128), n_single=10,
                                      n_dimer=3, n_trimer=2, seed=21)
    frames = frames.astype(np.uint16)
    tifffile.imwrite(folder / "movie.tif", frames,
                     photometric="minisblack")
    np.save(folder / "movie.npy", frames)
    guess = guess.assign(label=[f"f{i}" for i in range(len(guess))])
    guess.to_csv(folder / "features.csv", index=False)
    return folder, frames, truth, pd.read_csv(folder / "features.csv")


def rms_error(refined, truth, group_size):
    sel = (truth["group_size"] == group_size).to_numpy()
    d2 = (refined["y"] - truth["y"]) ** 2 + (refined["x"] - truth["x"]) ** 2
    return float(np.sqrt(np.mean(d2.to_numpy()[sel])))


def test_tiff_end_to_end(movie_files, tmp_path):
    folder, frames, truth, guess = movie_files
    out = tmp_path / "refined.parquet"
    result = refinefit_cmd("refine", folder / "movie.tif",
                           folder / "features.csv", "-o", out, "--diameter",
                           DIAMETER, "--chunk-frames", 2)
    assert result.returncode == 0, result.stderr
    refined = pd.read_parquet(out)
    assert list(refined.columns[:len(guess.columns)]) == list(guess.columns)
    assert {"background", "cluster", "cluster_size", "cost"} <= set(refined)
    assert (refined["label"] == guess["label"]).all()  # input row order
    for size in (1, 2, 3):
        assert rms_error(refined, truth, size) < RMS_LIMIT
    assert refined["cost"].notna().all()
    assert_frame_equal(refined, refinefit.refine_leastsq(guess, frames,
                                                         DIAMETER),
                       check_exact=True)
    # the summary line; no progress bar when stderr is not a terminal
    assert (f"{len(guess):,} features in 6 frames: {len(guess):,} converged, "
            "0 stopped, 0 failed, 0 degenerate;" in result.stdout)
    assert result.stderr == ""
    assert not (tmp_path / "refined.parquet.parts").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refined.parquet"]


def _stderr_on_a_terminal(args):
    """Run the command with stderr on a pseudo-terminal; returns what it
    wrote there."""
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ,
                struct.pack("HHHH", 24, 100, 0, 0))  # a 100-column terminal
    process = subprocess.Popen(
        [sys.executable, "-m", "refinefit", *map(str, args)],
        stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    written = b""
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not data:
            break
        written += data
    os.close(leader)
    assert process.wait(timeout=300) == 0
    return written.decode(errors="replace")


def test_progress_bar_on_a_terminal_only(movie_files, tmp_path):
    folder, _, _, _ = movie_files
    args = ("refine", folder / "movie.tif", folder / "features.csv",
            "--diameter", DIAMETER, "--chunk-frames", 2, "-o")
    shown = _stderr_on_a_terminal(args + (tmp_path / "a.csv",))
    assert "frame/s" in shown or "s/frame" in shown
    assert "features/s" in shown and "6/6" in shown
    assert _stderr_on_a_terminal(args + (tmp_path / "b.csv", "--quiet")) == ""


def test_npy_movie_to_csv(movie_files, tmp_path):
    folder, frames, truth, guess = movie_files
    out = tmp_path / "refined.csv"
    result = refinefit_cmd("refine", folder / "movie.npy",
                           folder / "features.csv", "-o", out,
                           "--diameter", DIAMETER, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    refined = pd.read_csv(out)
    assert len(refined) == len(guess)
    assert rms_error(refined, truth, 1) < RMS_LIMIT


@pytest.mark.parametrize("stdout", ["closed pipe", "closed"])
def test_a_reader_that_goes_away_is_not_an_error(movie_files, tmp_path,
                                                 stdout):
    # `refinefit refine ... | head -c 0`, and stdout closed (`>&-`)
    folder, _, _, guess = movie_files
    out = tmp_path / "refined.csv"
    command = [sys.executable, "-m", "refinefit", "refine",
               str(folder / "movie.npy"), str(folder / "features.csv"), "-o",
               str(out), "--diameter", str(DIAMETER)]
    if stdout == "closed pipe":
        reader, writer = os.pipe()
        os.close(reader)
        result = subprocess.run(command, stdout=writer, stderr=subprocess.PIPE,
                                text=True, timeout=300)
        os.close(writer)
    else:
        result = subprocess.run(command, stderr=subprocess.PIPE, text=True,
                                timeout=300, preexec_fn=lambda: os.close(1))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len(pd.read_csv(out)) == len(guess)


def test_config_file_and_flag_override(movie_files, tmp_path):
    folder, frames, _, guess = movie_files
    config = tmp_path / "refine.toml"
    config.write_text(
        'diameter = 9\nseparation = 13\ncompute_error = true\nmax_iter = 4\n'
        'chunk_frames = 4\nthreads = 1\n'
        '[param_mode]\nsize = "var"\n'
        '[bounds]\nsize = [1.0, nan]\nsignal = [1.0, 500.0]\n'
        '[options]\nmaxiter = 50\n')
    out = tmp_path / "refined.parquet"
    result = refinefit_cmd("refine", folder / "movie.tif",
                           folder / "features.csv", "-o", out, "--config",
                           config, "--diameter", DIAMETER, "--bounds",
                           "signal=10:400", "--param-val", "size=2.4")
    assert result.returncode == 0, result.stderr
    expected = refinefit.refine_leastsq(
        guess, frames, DIAMETER, separation=13, compute_error=True,
        max_iter=4, param_mode={"size": "var"}, param_val={"size": 2.4},
        bounds={"size": (1.0, None), "signal": (10, 400)},
        options={"maxiter": 50})
    assert_frame_equal(pd.read_parquet(out), expected, check_exact=True)


def _start(args):
    return subprocess.Popen(
        [sys.executable, "-m", "refinefit", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    frames, _, guess = make_movie(90, shape=(128, 128), n_single=10,
                                  n_dimer=3, n_trimer=2, seed=22)
    tifffile.imwrite(tmp_path / "movie.tif", frames,
                     photometric="minisblack")
    guess.to_csv(tmp_path / "features.csv", index=False)
    args = ("refine", tmp_path / "movie.tif", tmp_path / "features.csv",
            "--diameter", DIAMETER, "--chunk-frames", 1, "--threads", 1, "-o")
    whole = refinefit_cmd(*args, tmp_path / "whole.parquet")
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "resumed.parquet"
    parts = tmp_path / "resumed.parquet.parts"
    process = _start(args + (out,))
    deadline = time.monotonic() + 240
    while not list(parts.glob("chunk-*.npz")):
        assert process.poll() is None, "the run ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    committed = len(list(parts.glob("chunk-*.npz")))
    assert 1 <= committed < 90

    resumed = refinefit_cmd(*args, out)
    assert resumed.returncode == 0, resumed.stderr
    assert "chunks resumed" in resumed.stdout
    assert_same_refinement(pd.read_parquet(out),
                           pd.read_parquet(tmp_path / "whole.parquet"))
    assert not parts.exists()


def _bad_tiff(folder):
    path = folder / "broken.tif"
    path.write_bytes(b"II*\x00" + b"\x00" * 60)
    return path


ERRORS = {
    "missing movie": (lambda f: ("refine", f / "nope.tif", f / "features.csv"),
                      "movie .*nope.tif' does not exist"),
    "unreadable movie": (lambda f: ("refine", _bad_tiff(f),
                                    f / "features.csv"),
                         "cannot read movie .*broken.tif"),
    "missing features": (lambda f: ("refine", f / "movie.tif", f / "no.csv"),
                         "features file .*no.csv' does not exist"),
    "no x column": (lambda f: ("refine", f / "movie.tif", f / "no_x.csv"),
                    r"position column\(s\) \['x'\] not in"),
    "no frame column": (lambda f: ("refine", f / "movie.tif",
                                   f / "no_frame.csv"),
                        "no frame column 'frame'"),
    "frames beyond the end": (lambda f: ("refine", f / "movie.tif",
                                         f / "late.csv"),
                              r"frame\(s\) 6, 9 beyond the movie's end: .* "
                              "has 6 frames"),
    "unknown flag": (lambda f: ("refine", f / "movie.tif", f / "features.csv",
                                "--max-shift", "2"),
                     "unrecognized arguments: --max-shift"),
    "unknown config key": (lambda f: ("refine", f / "movie.tif",
                                      f / "features.csv", "--config",
                                      f / "bad.toml"),
                           r"unknown key\(s\) \['max_shfit'\]"),
    "bad mode": (lambda f: ("refine", f / "movie.tif", f / "features.csv",
                            "--param-mode", "size=wobbly"),
                 "unknown mode 'wobbly'"),
    "bad diameter": (lambda f: ("refine", f / "movie.tif", f / "features.csv",
                                "--diameter", "big"),
                     "argument --diameter: expected a number"),
    "bad bounds": (lambda f: ("refine", f / "movie.tif", f / "features.csv",
                              "--bounds", "size=1:2:3"),
                   "--bounds: cannot read 'size=1:2:3'"),
    "bad threads": (lambda f: ("refine", f / "movie.tif", f / "features.csv",
                               "--threads", "0"),
                    "threads must be an integer from 1"),
    "bad lanes": (lambda f: ("refine", f / "movie.tif", f / "features.csv",
                             "--config", f / "lanes.toml", "--threads", "1"),
                  r"lanes must be an integer from 1 to the run's Numba "
                  r"threads \(1\), got 2"),
    "unknown fit function": (lambda f: ("refine", f / "movie.tif",
                                        f / "features.csv", "--fit-function",
                                        "lorentz"), "lorentz"),
}


@pytest.fixture(scope="module")
def error_inputs(movie_files):
    folder, _, _, guess = movie_files
    guess.drop(columns="x").to_csv(folder / "no_x.csv", index=False)
    guess.drop(columns="frame").to_csv(folder / "no_frame.csv", index=False)
    late = guess.copy()
    late.loc[late.index[:3], "frame"] = [6, 9, 9]
    late.to_csv(folder / "late.csv", index=False)
    (folder / "bad.toml").write_text("diameter = 11\nmax_shfit = 2\n")
    (folder / "lanes.toml").write_text("diameter = 11\nlanes = 2\n")
    return folder


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_errors(error_inputs, tmp_path, case):
    make_args, message = ERRORS[case]
    args = make_args(error_inputs)
    out = tmp_path / "out.csv"
    extra = () if "--diameter" in args or "--config" in args else (
        "--diameter", DIAMETER)
    result = refinefit_cmd(*args, "-o", out, *extra)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("refinefit: error: ")
    assert re.search(message, lines[0]), lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing at OUT, no parts


@pytest.mark.parametrize("out", ["{file}/out.csv", "{folder}/out.txt",
                                 "{missing}/out.csv", "{folder}"])
def test_unwritable_output(movie_files, tmp_path, out):
    folder, _, _, _ = movie_files
    (tmp_path / "file").write_text("")
    out = out.format(file=tmp_path / "file", folder=tmp_path,
                     missing=tmp_path / "missing")
    result = refinefit_cmd("refine", folder / "movie.tif",
                           folder / "features.csv", "-o", out,
                           "--diameter", DIAMETER)
    assert result.returncode == 2
    assert result.stderr.startswith("refinefit: error: ")
    assert len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_read_only_directory(movie_files, tmp_path):
    folder, _, _, _ = movie_files
    if not os.path.isdir("/sys"):
        pytest.skip("no read-only directory to try")
    result = refinefit_cmd("refine", folder / "movie.tif",
                           folder / "features.csv", "-o", "/sys/out.csv",
                           "--diameter", DIAMETER)
    if result.returncode == 0:
        pytest.skip("/sys is writable here")
    assert result.returncode == 2
    assert "cannot be written" in result.stderr
    assert not os.path.exists("/sys/out.csv")


def test_demo(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "refinefit", "demo", "--frames", "2", "--out",
         str(tmp_path / "refined.csv")], capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("movie.tif", "features.csv", "refined.csv"):
        assert (tmp_path / name).exists()
    for line in ("singles  rms position error", "trimers  rms position error",
                 "features/s", "on the 550 features of frames 0-1, frame by "
                 "frame, in this run: refinefit "):
        assert line in result.stdout
    ratio = result.stdout.rsplit("features/s, ", 1)[1].split("x")[0]
    assert float(ratio.replace(",", "")) > 1
    assert len(pd.read_csv(tmp_path / "refined.csv")) == 2 * 275
