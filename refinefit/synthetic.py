"""Synthetic movies with ground truth, for the demo and the benchmarks.

The default is workload W1: 2D Gaussian features (size 2.5) in 512x512
uint8 frames at S/N 10, 275 features per frame (150 singles, 40 dimers,
15 trimers), initial positions off by up to 0.6 px.
"""
import numpy as np
import pandas as pd


def group_offsets(n_members, distance, rng):
    """Member offsets of a touching group: a dimer or an equilateral trimer."""
    angle = rng.uniform(0, 2 * np.pi)
    if n_members == 1:
        return np.zeros((1, 2))
    turns = angle + 2 * np.pi * np.arange(n_members) / n_members
    # circumradius that puts neighbours ``distance`` apart
    radius = distance / (2 * np.sin(np.pi / n_members))
    return radius * np.column_stack([np.sin(turns), np.cos(turns)])


def draw_gaussians(shape, positions, size, signal, background, window=4.0):
    """Float image: background + signal * exp(-r^2 / size^2) per feature.

    Each feature is drawn within ``window * size`` of its centre.
    """
    image = np.full(shape, float(background))
    reach = int(np.ceil(window * size))
    for (cy, cx), amp in zip(positions, np.broadcast_to(signal, len(positions))):
        y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, shape[0])
        x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, shape[1])
        yy = np.arange(y0, y1)[:, None] - cy
        xx = np.arange(x0, x1)[None, :] - cx
        image[y0:y1, x0:x1] += amp * np.exp(-(yy ** 2 + xx ** 2) / size ** 2)
    return image


def make_movie(n_frames=10, shape=(512, 512), n_single=150, n_dimer=40,
               n_trimer=15, size=2.5, signal=100.0, background=10.0, snr=10.0,
               distance=5.0, max_offset=0.6, seed=0):
    """Synthesize a uint8 movie with ground truth and initial guesses.

    Groups sit on a jittered grid so that only the members of a dimer or
    trimer overlap.

    Returns
    -------
    frames : ndarray (n_frames, *shape) of uint8
    truth : DataFrame
        ``frame, y, x, signal, size, group, group_size`` of every feature.
    guess : DataFrame
        ``frame, y, x, signal, size`` with positions off by up to
        ``max_offset`` px and signal off by up to 20%.
    """
    rng = np.random.default_rng(seed)
    kinds = np.repeat([1, 2, 3], [n_single, n_dimer, n_trimer])
    n_groups = len(kinds)
    cols = int(np.ceil(np.sqrt(n_groups * shape[1] / shape[0])))
    rows = int(np.ceil(n_groups / cols))
    pitch = np.array(shape) / (rows, cols)
    margin = distance + 6.0
    frames = np.empty((n_frames,) + tuple(shape), dtype=np.uint8)
    truth = []
    for t in range(n_frames):
        cells = rng.permutation(rows * cols)[:n_groups]
        centre = (np.column_stack([cells // cols, cells % cols]) + 0.5) * pitch
        jitter = np.maximum(pitch / 2 - margin, 0)
        centre += rng.uniform(-1, 1, centre.shape) * jitter
        positions, group, group_size = [], [], []
        for g, (c, k) in enumerate(zip(centre, kinds)):
            positions.append(c + group_offsets(k, distance, rng))
            group += [g] * k
            group_size += [k] * k
        positions = np.concatenate(positions)
        image = draw_gaussians(shape, positions, size, signal, background)
        image += rng.normal(0, signal / snr, shape)
        frames[t] = np.clip(np.round(image), 0, 255)
        truth.append(pd.DataFrame(dict(
            frame=t, y=positions[:, 0], x=positions[:, 1], signal=signal,
            size=size, group=np.array(group) + t * n_groups,
            group_size=group_size)))
    truth = pd.concat(truth, ignore_index=True)
    angle = rng.uniform(0, 2 * np.pi, len(truth))
    shift = rng.uniform(0, max_offset, len(truth))
    guess = pd.DataFrame(dict(
        frame=truth["frame"],
        y=truth["y"] + shift * np.sin(angle),
        x=truth["x"] + shift * np.cos(angle),
        signal=truth["signal"] * rng.uniform(0.8, 1.2, len(truth)),
        size=truth["size"]))
    return frames, truth, guess
