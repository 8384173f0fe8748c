"""Throughput and memory of the ``refinefit refine`` command on W1.

Full mode: a 1200-frame 512x512 uint16 TIFF of workload W1 (about 630 MB,
330,000 features; the issue's memory case), features and output in Parquet.
The command runs as a subprocess, end to end (interpreter start, imports,
reading, refining, writing); its peak resident memory is ``ru_maxrss`` seen
by a small launcher process. In the same run, interleaved: ``refine_leastsq``
on the same frames in this process (frames memory-mapped, kernels already
loaded: what the command should lose less than 10% against), and the same
job as a script in a fresh process (read, one ``refine_leastsq`` call,
write), and ``refine_movie`` file to file in this process (the command's
pipeline without the fixed costs of a new process: interpreter, imports,
loading the kernels), also with one lane (one chunk at a time on all the
Numba threads; see ``refinefit.pipeline.lanes``). The command also runs on the first
half of the movie: the time the second half adds is another view of its
rate without those fixed costs.

A second test runs the command and ``refine_leastsq`` on a long movie, the
W1 movie repeated five times (6000 frames, 3 GB, 1.65 million features),
where the fixed costs of a new process weigh less, and the command on the
features of one frame: those fixed costs alone. Quick mode: a few small
frames (repeated twice), to keep the benchmarks alive.
"""
import re
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import FULL

import refinefit
from refinefit.synthetic import make_movie

N_FRAMES = 1200 if FULL else 4
SHAPE = (512, 512) if FULL else (128, 128)
# W1 per frame: 150 singles, 40 dimers, 15 trimers (quick: a few of each)
GROUPS = dict(n_single=150, n_dimer=40, n_trimer=15) if FULL else dict(
    n_single=10, n_dimer=3, n_trimer=2)
BLOCK = 50  # frames synthesized at a time
ROUNDS = 3 if FULL else 1
LONG_REPEATS = 5 if FULL else 2  # the long movie: the W1 movie repeated
LONG_ROUNDS = 2 if FULL else 1
RSS_LIMIT_MB = 600


@pytest.fixture(scope="module")
def w1_movie(tmp_path_factory):
    """W1 movie as a uint16 TIFF written block by block (one contiguous
    series), the features as Parquet, and the ground truth."""
    folder = tmp_path_factory.mktemp("w1_cli")
    guesses, truths = [], []
    with tifffile.TiffWriter(folder / "movie.tif") as tif:
        for start in range(0, N_FRAMES, BLOCK):
            n = min(BLOCK, N_FRAMES - start)
            frames, truth, guess = make_movie(n, shape=SHAPE, seed=start,
                                              **GROUPS)
            tif.write(frames.astype(np.uint16), contiguous=True,
                      photometric="minisblack")
            for table in (truth, guess):
                table["frame"] += start
            truths.append(truth.drop(columns="group"))
            guesses.append(guess)
    guess = pd.concat(guesses, ignore_index=True)
    truth = pd.concat(truths, ignore_index=True)
    guess.to_parquet(folder / "features.parquet")
    guess[guess["frame"] < N_FRAMES // 2].to_parquet(folder / "half.parquet")
    return folder, guess, truth


# runs a command and writes its peak RSS (kB), wall time and CPU time; the
# launcher is small, so the RSS it passes on through fork is negligible
_LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as report:
    report.write(f"{usage.ru_maxrss} {seconds} "
                 f"{usage.ru_utime + usage.ru_stime}")
sys.exit(code)
"""

# the same job as a Python script in a fresh process: files in and out,
# the whole movie memory-mapped and refined by one refine_leastsq call
_SCRIPT = """
import sys
import pandas as pd, tifffile, refinefit
features = pd.read_parquet(sys.argv[1])
frames = tifffile.memmap(sys.argv[2], mode="r")
frames = frames.reshape((-1,) + frames.shape[-2:])
refinefit.refine_leastsq(features, frames, 11).to_parquet(sys.argv[3])
"""


def measure(command, folder):
    """Wall seconds, peak RSS (MB) and CPU seconds of ``command``, and its
    stdout."""
    report = folder / "report"
    result = subprocess.run([sys.executable, "-c", _LAUNCHER, str(report),
                             *map(str, command)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    rss_kb, seconds, cpu = map(float, report.read_text().split())
    return seconds, rss_kb / 1024, cpu, result.stdout


def report_rates(results, key, rate):
    """The command's end-to-end and the in-process rates, and their
    ratio."""
    results[f"{key} refinefit refine features/s (end to end)"] = round(
        rate["command"])
    results[f"{key} in-process refine_leastsq features/s (warm)"] = round(
        rate["in-process"])
    results[f"{key} command / in-process warm (end to end)"] = round(
        rate["command"] / rate["in-process"], 3)


def cpu_seconds():
    """CPU time of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_command_throughput_and_memory(benchmark, w1_movie, results):
    folder, guess, truth = w1_movie
    out = folder / "refined.parquet"
    command = (sys.executable, "-m", "refinefit", "refine",
               folder / "movie.tif", folder / "features.parquet", "-o", out,
               "--diameter", "11")
    half = command[:5] + (folder / "half.parquet",) + command[6:]
    script = (sys.executable, "-c", _SCRIPT, folder / "features.parquet",
              folder / "movie.tif", folder / "script.parquet")
    # written in blocks: the file's series is (blocks, frames, Y, X)
    frames = tifffile.memmap(folder / "movie.tif", mode="r").reshape(
        (-1,) + SHAPE)
    refinefit.refine_leastsq(guess[guess["frame"] == 0], frames, 11)  # warm

    times = {"command": [], "half": [], "script": [], "in-process": [],
             "pipeline": [], "one lane": []}
    cpu = {"command": [], "half": [], "in-process": []}
    peak_mb = {"command": [], "script": []}
    summary_rates = []
    for i in range(ROUNDS):  # interleaved: all see the same machine load
        start, start_cpu = time.perf_counter(), cpu_seconds()
        expected = refinefit.refine_leastsq(guess, frames, 11)
        times["in-process"].append(time.perf_counter() - start)
        cpu["in-process"].append(cpu_seconds() - start_cpu)
        start = time.perf_counter()  # the command's pipeline, warm
        refinefit.refine_movie(folder / "movie.tif",
                               folder / "features.parquet", out, diameter=11,
                               quiet=True)
        times["pipeline"].append(time.perf_counter() - start)
        out.unlink()
        start = time.perf_counter()  # the same, one chunk at a time
        refinefit.refine_movie(folder / "movie.tif",
                               folder / "features.parquet", out, diameter=11,
                               quiet=True, lanes=1)
        times["one lane"].append(time.perf_counter() - start)
        out.unlink()
        if i == 0:
            seconds, rss, used, summary = benchmark.pedantic(
                measure, args=(command, folder), rounds=1, iterations=1)
        else:
            seconds, rss, used, summary = measure(command, folder)
        times["command"].append(seconds)
        cpu["command"].append(used)
        peak_mb["command"].append(rss)
        summary_rates.append(float(re.search(
            r"s, ([\d,]+) features/s", summary).group(1).replace(",", "")))
        out.unlink()
        if FULL:
            seconds, _, used, _ = measure(half, folder)
            times["half"].append(seconds)
            cpu["half"].append(used)
            out.unlink()
        seconds, rss, _, _ = measure(script, folder)
        times["script"].append(seconds)
        peak_mb["script"].append(rss)
    del frames

    n = len(guess)
    rate = {name: n / min(values) for name, values in times.items()
            if values}
    summary_rate = max(summary_rates)
    movie_mb = (folder / "movie.tif").stat().st_size / 2 ** 20
    error = np.hypot(expected["y"] - truth["y"], expected["x"] - truth["x"])
    key = "CLI W1"
    results[f"{key} movie (frames, MB, features)"] = (
        f"{N_FRAMES}, {movie_mb:.0f}, {n}")
    report_rates(results, key, rate)
    results[f"{key} refinefit refine features/s (its summary line)"] = round(
        summary_rate)
    results[f"{key} script in a fresh process features/s"] = round(
        rate["script"])
    results[f"{key} command / in-process warm (summary line)"] = round(
        summary_rate / rate["in-process"], 3)
    results[f"{key} refine_movie file to file, warm, features/s"] = round(
        rate["pipeline"])
    results[f"{key} refine_movie file to file / in-process warm"] = round(
        rate["pipeline"] / rate["in-process"], 3)
    results[f"{key} refine_movie file to file, one lane / in-process warm"] = \
        round(rate["one lane"] / rate["in-process"], 3)
    if FULL:
        # what the second half of the movie adds to the command's time: its
        # rate without the fixed costs (interpreter, imports, kernel loading)
        n_half = int((guess["frame"] < N_FRAMES // 2).sum())
        marginal = (n - n_half) / (min(times["command"]) - min(times["half"]))
        results[f"{key} refinefit refine features/s (second half only)"] = \
            round(marginal)
        results[f"{key} command / in-process warm (second half only)"] = \
            round(marginal / rate["in-process"], 3)
        # CPU time is less sensitive than wall time to a shared machine
        cpu_marginal = (min(cpu["command"]) - min(cpu["half"])) / (n - n_half)
        cpu_in_process = min(cpu["in-process"]) / n
        results[f"{key} CPU us/feature, in-process warm"] = round(
            cpu_in_process * 1e6, 2)
        results[f"{key} CPU us/feature, command (second half only)"] = round(
            cpu_marginal * 1e6, 2)
        results[f"{key} CPU us/feature, command end to end"] = round(
            min(cpu["command"]) / n * 1e6, 2)
    results[f"{key} command / script in a fresh process"] = round(
        rate["command"] / rate["script"], 3)
    results[f"{key} command peak RSS (MB)"] = round(max(peak_mb["command"]))
    results[f"{key} script peak RSS (MB)"] = round(max(peak_mb["script"]))
    results[f"{key} rms position error (px)"] = round(
        float(np.sqrt(np.mean(error ** 2))), 4)
    benchmark.extra_info.update(features_per_s=rate["command"],
                                peak_rss_mb=max(peak_mb["command"]))
    assert expected["cost"].notna().mean() > 0.99
    if FULL:  # the memory case
        assert max(peak_mb["command"]) < RSS_LIMIT_MB


@pytest.fixture(scope="module")
def long_movie(w1_movie):
    """The W1 movie repeated LONG_REPEATS times (a TIFF of one series) and
    its features, the frame numbers shifted on each repeat."""
    folder, guess, _ = w1_movie
    frames = tifffile.memmap(folder / "movie.tif", mode="r").reshape(
        (-1,) + SHAPE)
    with tifffile.TiffWriter(folder / "long.tif") as tif:
        for _ in range(LONG_REPEATS):
            for start in range(0, N_FRAMES, BLOCK):
                tif.write(frames[start:start + BLOCK], contiguous=True,
                          photometric="minisblack")
    features = pd.concat([guess.assign(frame=guess["frame"] + r * N_FRAMES)
                          for r in range(LONG_REPEATS)], ignore_index=True)
    features.to_parquet(folder / "long.parquet")
    features[features["frame"] == 0].to_parquet(folder / "one_frame.parquet")
    return folder, features


def test_command_on_a_long_movie(long_movie, results):
    folder, features = long_movie
    out = folder / "long_refined.parquet"
    command = (sys.executable, "-m", "refinefit", "refine",
               folder / "long.tif", folder / "long.parquet", "-o", out,
               "--diameter", "11", "--quiet")
    one_frame = command[:5] + (folder / "one_frame.parquet",) + command[6:]
    frames = tifffile.memmap(folder / "long.tif", mode="r").reshape(
        (-1,) + SHAPE)
    refinefit.refine_leastsq(features[features["frame"] == 0], frames, 11)

    times = {"command": [], "in-process": [], "one frame": []}
    peak_mb = []
    for _ in range(LONG_ROUNDS):  # interleaved
        start = time.perf_counter()
        expected = refinefit.refine_leastsq(features, frames, 11)
        times["in-process"].append(time.perf_counter() - start)
        seconds, rss, _, _ = measure(command, folder)
        times["command"].append(seconds)
        peak_mb.append(rss)
        refined = pd.read_parquet(out)
        out.unlink()
        seconds, _, _, _ = measure(one_frame, folder)
        times["one frame"].append(seconds)
        out.unlink()
    del frames

    n = len(features)
    key = f"CLI W1 long ({len(features['frame'].unique())} frames)"
    rate = {name: n / min(values) for name, values in times.items()}
    report_rates(results, key, rate)
    # without the fixed costs of a new process (as measured on one frame)
    results[f"{key} command / in-process warm (less its one-frame time)"] = \
        round(min(times["in-process"]) / (min(times["command"])
                                          - min(times["one frame"])), 3)
    results["CLI W1 command on one frame (s): a new process's fixed costs"] = \
        round(min(times["one frame"]), 3)
    results[f"{key} command peak RSS (MB)"] = round(max(peak_mb))
    # the command's table is the in-process one (chunks hold whole frames)
    for column in ("y", "x", "signal", "size", "cluster"):
        np.testing.assert_array_equal(refined[column], expected[column])
