"""device='cuda': the GPU backend (kernels/gpu.py) against the CPU backend.

Under ``NUMBA_ENABLE_CUDASIM=1`` (set by conftest unless a run sets it to
0) the CUDA kernel runs in Numba's simulator, in Python with NumPy's
float64: the fits must then be the CPU's to rounding. Tests marked ``gpu``
need a real GPU and run on a machine that has one.
"""
import os
import subprocess
import sys
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import tifffile
from test_accuracy import MODELS, cases, check_fit, refine, scene_for, seed_for
from test_shot_noise import DIAMETER, count_scene

import refinefit
from refinefit.solvers import cuda_backend
from refinefit.synthetic import make_movie

cuda = pytest.importorskip("numba.cuda")
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
needs_gpu = pytest.mark.skipif(SIMULATED or not cuda.is_available(),
                               reason="needs a real NVIDIA GPU")

POSITION_ATOL = 1e-6  # px: the agreement with the CPU in float64


def _same_fits(gpu, cpu, scene=None):
    """Every column of the two refinements: positions within 1e-6 px, the
    other values (standard errors among them) to rounding, the same
    status."""
    assert (gpu["status"] == cpu["status"]).all()
    positions = ["y", "x"] if scene is None else scene.pos_columns
    np.testing.assert_allclose(gpu[positions], cpu[positions], rtol=0,
                               atol=POSITION_ATOL)
    others = [c for c in cpu.columns
              if c not in positions and cpu[c].dtype.kind == "f"]
    np.testing.assert_allclose(gpu[others], cpu[others], rtol=1e-7,
                               atol=1e-12)


# every built-in model, 2D and 3D, isotropic or not; singles and dimers
GPU_CASES = cases(MODELS, ("2d", "3d-aniso"), (1, 2)) + cases(
    MODELS, ("2d-aniso", "3d"), (1,))


@pytest.mark.parametrize("model, geometry, group_size", GPU_CASES)
def test_least_squares_as_on_the_cpu(model, geometry, group_size):
    scene = scene_for(model, geometry, group_size, snr=10,
                      noise_model="gauss")
    options = dict(param_mode={"size": "var"}, compute_error=True)
    cpu = refine(scene, **options)
    gpu = refine(scene, device="cuda", **options)
    check_fit(gpu, scene, group_size)
    _same_fits(gpu, cpu, scene)


@pytest.mark.parametrize("model, geometry, group_size",
                         cases(MODELS, ("2d", "3d"), (1, 2)))
def test_poisson_as_on_the_cpu(model, geometry, group_size):
    scene = scene_for(model, geometry, group_size)
    rng = np.random.default_rng(seed_for("gpu", model, geometry))
    counts = replace(scene, image=rng.poisson(scene.image).astype(float))
    cpu = refine(counts, estimator="poisson", compute_error=True)
    gpu = refine(counts, estimator="poisson", compute_error=True,
                 device="cuda")
    check_fit(gpu, scene, group_size)
    _same_fits(gpu, cpu, scene)


@pytest.mark.parametrize("options", [
    dict(param_mode={"size": "cluster", "signal": "cluster"}),
    dict(param_mode={"signal": "cluster"}, bounds={"signal_rel": 2.0}),
    dict(param_mode={"size": "var"}, bounds={"size": (0.5, 1.9)}),
    dict(param_mode={"background": "const"}, compute_error=True),
    dict(estimator="poisson", read_noise=4.0, compute_error=True,
         param_mode={"size": "var"}),
], ids=["cluster-modes", "cluster-bounds", "size-at-bound", "errors",
        "poisson-read-noise"])
def test_modes_bounds_and_errors_as_on_the_cpu(options):
    """Cluster modes, an active bound, a constant background with errors,
    and the read noise's extra photons."""
    rng = np.random.default_rng(11)
    _, guess, movie, _ = count_scene(40, 2000, 10, rng, dimer_distance=4.0)
    # six dimers of the first frame (each frame lists the dimers' first
    # features, then their second)
    guess = guess.iloc[np.r_[0:6, 100:106]]
    # guesses that differ within a cluster: a 'cluster' unknown starts at
    # their mean, within the widest of their bounds (a dimer's second
    # signal guess, 3x the truth, bounded to 1.5-6x by signal_rel=2)
    guess = guess.assign(signal=guess["signal"] * np.repeat([0.5, 3.0], 6),
                         background=guess["background"]
                         * rng.uniform(0.5, 1.5, 12))
    cpu = refinefit.refine_leastsq(guess, movie, DIAMETER, **options)
    gpu = refinefit.refine_leastsq(guess, movie, DIAMETER, device="cuda",
                                   **options)
    assert (cpu["cluster_size"] == 2).all()
    assert (cpu["status"] == 0).mean() > 0.8
    if "size" in options.get("bounds", {}):
        assert (cpu["size"] == 1.9).any()
    _same_fits(gpu, cpu)


def test_large_clusters_and_custom_models_fall_back_to_the_cpu():
    """A chain of 20 touching spots (61 unknowns) and a custom shape: on
    the CPU, with one warning that says so, and the CPU's fits."""
    rng = np.random.default_rng(12)
    centres = np.array([[20.0 + 0.5 * k, 12.0 + 3.2 * k] for k in range(20)])
    yy, xx = np.indices((44, 90), dtype=float)
    image = 10 + sum(100 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0)
                     for y, x in centres) + rng.normal(0, 2, yy.shape)
    guess = pd.DataFrame(dict(y=centres[:, 0] + 0.2, x=centres[:, 1] - 0.2,
                              signal=90.0, size=2.0))
    cpu = refinefit.refine_leastsq(guess, image, 11)
    with pytest.warns(cuda_backend.CPUFallbackWarning, match="1 cluster"):
        gpu = refinefit.refine_leastsq(guess, image, 11, device="cuda")
    _same_fits(gpu, cpu)

    def shape(r2, p, ndim):
        return np.exp(-r2)

    custom = dict(params=[], fun=shape)
    cpu = refinefit.refine_leastsq(guess.iloc[:1], image, 11,
                                   fit_function=custom)
    with pytest.warns(cuda_backend.CPUFallbackWarning):
        gpu = refinefit.refine_leastsq(guess.iloc[:1], image, 11,
                                       fit_function=custom, device="cuda")
    _same_fits(gpu, cpu)


def test_refine_movie_on_the_gpu(tmp_path):
    """``device`` reaches each chunk's refinement."""
    frames, _, guess = make_movie(4, shape=(64, 64), n_single=4, n_dimer=1,
                                  n_trimer=0, seed=5)
    cpu = refinefit.refine_movie(frames, guess, diameter=11, quiet=True)
    gpu = refinefit.refine_movie(frames, guess, diameter=11, quiet=True,
                                 device="cuda")
    _same_fits(gpu, cpu)


def test_bad_device_is_a_value_error():
    rng = np.random.default_rng(13)
    _, guess, movie, _ = count_scene(4, 2000, 10, rng)
    with pytest.raises(ValueError, match="device must be one of"):
        refinefit.refine_leastsq(guess, movie, DIAMETER, device="gpu")


def test_no_usable_gpu_is_a_clear_error(monkeypatch):
    """Without a GPU or driver, device='cuda' fails before any work and
    says what is missing and what to use instead."""
    monkeypatch.setattr(cuda, "is_available", lambda: False)

    def no_driver():
        raise RuntimeError("CUDA driver library cannot be found")

    monkeypatch.setattr(cuda, "detect", no_driver)
    rng = np.random.default_rng(14)
    _, guess, movie, _ = count_scene(4, 2000, 10, rng)
    with pytest.raises(RuntimeError, match="no usable NVIDIA GPU or driver "
                       r"\(RuntimeError: CUDA driver library.*device='cpu'"):
        refinefit.refine_leastsq(guess, movie, DIAMETER, device="cuda")


@needs_gpu
@pytest.mark.gpu
def test_w1_on_a_real_gpu():
    """W1 frames on the GPU: the CPU's fits within 1e-6 px."""
    frames, _, guess = make_movie(4, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", cuda_backend.CPUFallbackWarning)
        gpu = refinefit.refine_leastsq(guess, frames, 11, device="cuda")
    cpu = refinefit.refine_leastsq(guess, frames, 11)
    _same_fits(gpu, cpu)


def _cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "refinefit", *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **env))


@pytest.fixture(scope="module")
def small_movie(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu")
    frames, _, guess = make_movie(3, shape=(64, 64), n_single=4, n_dimer=1,
                                  n_trimer=0, seed=6)
    tifffile.imwrite(folder / "movie.tif", frames, photometric="minisblack")
    guess.to_csv(folder / "features.csv", index=False)
    return folder


def test_the_command_on_the_gpu(small_movie, tmp_path):
    """``--device cuda`` (the simulator here): the CPU's table."""
    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.csv"
        done = _cli("refine", small_movie / "movie.tif",
                    small_movie / "features.csv", "-o", out, "--diameter", 11,
                    "--device", device)
        assert done.returncode == 0, done.stderr
        runs[device] = pd.read_csv(out)
    _same_fits(runs["cuda"], runs["cpu"])


@pytest.mark.skipif(not SIMULATED and cuda.is_available(),
                    reason="this machine has a GPU")
def test_the_command_without_a_gpu_exits_2(small_movie, tmp_path):
    """Without the simulator on a machine with no GPU: exit 2, one line
    that names what is missing, nothing written."""
    out = tmp_path / "out.csv"
    done = _cli("refine", small_movie / "movie.tif",
                small_movie / "features.csv", "-o", out, "--diameter", 11,
                "--device", "cuda", NUMBA_ENABLE_CUDASIM="0")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("refinefit: error: device='cuda': no usable "
                               "NVIDIA GPU or driver")
    assert not out.exists()
