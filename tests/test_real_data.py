"""Real and faint features, side by side with trackpy.refine_leastsq.

Two inputs, each located by ``trackpy.batch`` with a low ``minmass``, so
that faint features and false positives are in the table as a user's would
be: five real brightfield frames (``tests/data/brightfield``, licence
beside them; no ground truth) and a synthetic movie of spots at three times
the noise (ground truth). Both are refined by refinefit and by trackpy, and:

- refinefit fails no more fits than trackpy, counting trackpy's degenerate
  fits (signal at its floor, a position at the edge of its mask) as
  failures, as refinefit's ``status`` does;
- refinefit's cost is no higher than that of trackpy's answer on the same
  pixels: both parameter sets evaluated by the plain-NumPy model of
  ``naive.py`` on the masks refinefit's fit ended on. Costs as reported do
  not compare: each program re-centres its masks along its own path (trackpy
  restarting from the start values each time), so the two sums run over
  different pixels;
- solved once on the masks around the start (``max_iter=1``, the same
  least-squares problem for both), the positions agree and refinefit's
  cost is no higher than trackpy's;
- the sub-pixel bias of the positions is no worse than trackpy's;
- on the synthetic movie, every fit reported as converged is near its true
  feature, and refinefit's positions are closer to the truth than the
  located ones.
"""
from pathlib import Path

import naive
import numpy as np
import pandas as pd
import pims
import pytest
import synth
import trackpy
from side_by_side import ArrayFrames, run_both

from refinefit.kernels.codes import CONVERGED

DATA = Path(__file__).parent / "data" / "brightfield"
POS = ["y", "x"]
FLOOR = 1e-7             # the default lower bound of the signal
COST_RTOL = 1e-4         # the solvers' stopping tests, on faint features
AGREE = 0.05             # px


def locate(frames, diameter, minmass):
    return trackpy.batch(frames, diameter, minmass=minmass, processes=1)


def degenerate_in_trackpy(theirs, start, radius):
    """trackpy's fits that refinefit would mark degenerate."""
    shift = (theirs[POS] - start[POS]).abs().to_numpy()
    return (theirs["cost"].notna()
            & ((theirs["signal"] <= FLOOR * 1.001)
               | (shift >= radius - 1e-6).any(axis=1)))


def own_mask_costs(result, start, frames, radius):
    """Per cluster of ``result``: refinefit's cost of ``result``'s
    parameters on the masks around the ``start`` positions, by the NumPy
    model (background of the first feature, each feature's term inside its
    own mask; rms over the union of the masks / frame maximum)."""
    costs = {}
    for cluster, rows in result.groupby("cluster").groups.items():
        frame = np.asarray(frames[int(start.loc[rows[0], "frame"])], float)
        masks = [naive.mask_pixels(frame.shape, start.loc[r, POS], radius)
                 for r in rows]
        pixels = np.unique(np.concatenate(masks), axis=0)
        index = {tuple(p): i for i, p in enumerate(pixels)}
        model = np.full(len(pixels), result.loc[rows[0], "background"])
        for r, mask in zip(rows, masks):
            p = result.loc[r]
            d2 = ((mask - p[POS].to_numpy(float)) ** 2).sum(axis=1)
            at = [index[tuple(q)] for q in mask]
            model[at] += p["signal"] * np.exp(-d2 / p["size"] ** 2)
        residual = frame[pixels[:, 0], pixels[:, 1]] - model
        costs[cluster] = np.sqrt(np.mean(residual ** 2)) / np.nanmax(frame)
    return pd.Series(costs)


def subpixel_bias(result, rows):
    """Amplitude of the first Fourier component of the fractional parts of
    the positions (0 for uniform ones, about 1/sqrt(n) by chance)."""
    fractions = np.concatenate([np.mod(result.loc[rows, c], 1.0)
                                for c in POS])
    return abs(np.mean(np.exp(2j * np.pi * fractions))), len(fractions)


def compare(f, frames, diameter):
    """Refine with both and check the module's rules; returns the figures
    (printed with ``pytest -s``)."""
    radius = diameter // 2
    ours, theirs = run_both(f, frames, diameter)
    start = f.loc[ours.index]
    theirs_failed = theirs["cost"].isna() | degenerate_in_trackpy(
        theirs, start, radius)
    ours_ok = ours["status"] == CONVERGED
    assert (~ours_ok).sum() <= theirs_failed.sum()
    both = ours_ok & ~theirs_failed

    # the same pixels: clusters whose masks refinefit never moved (its
    # reported cost is then the NumPy cost on the start masks)
    clusters = ours["cluster"]
    both_cl = both.groupby(clusters).all()
    ours_cost = own_mask_costs(ours, start, frames, radius)
    theirs_cost = own_mask_costs(theirs.assign(cluster=clusters), start,
                                 frames, radius)
    reported = ours.groupby("cluster")["cost"].first()
    on_start = both_cl & np.isclose(reported, ours_cost, rtol=1e-9, atol=0)
    assert on_start.sum() >= 0.5 * both_cl.sum()
    excess = ours_cost[on_start] / theirs_cost[on_start] - 1
    assert excess.max() <= COST_RTOL, excess.sort_values().tail()

    ours_bias, n = subpixel_bias(ours, both)
    theirs_bias, _ = subpixel_bias(theirs, both)
    located_bias, _ = subpixel_bias(start, both)
    assert ours_bias <= theirs_bias + 2 / np.sqrt(n)

    # one solve on the start masks: the same problem for both
    once, once_theirs = run_both(f, frames, diameter, max_iter=1)
    once_both = (once["status"] == CONVERGED) & ~(
        once_theirs["cost"].isna()
        | degenerate_in_trackpy(once_theirs, start, radius))
    distance = np.hypot(*(once.loc[once_both, c] - once_theirs.loc[once_both, c]
                          for c in POS))
    agree = (distance <= AGREE).mean()
    once_excess = (once.loc[once_both, "cost"]
                   / once_theirs.loc[once_both, "cost"] - 1)
    assert once_excess.max() <= COST_RTOL, once_excess.sort_values().tail()
    figures = dict(
        features=len(f), failed_ours=int((~ours_ok).sum()),
        failed_theirs=int(theirs["cost"].isna().sum()),
        degenerate_theirs=int(theirs_failed.sum()
                              - theirs["cost"].isna().sum()),
        both=int(both.sum()), same_pixels=int(on_start.sum()),
        max_excess=float(excess.max()), median_excess=float(excess.median()),
        above=int((excess > 1e-6).sum()),
        once_both=int(once_both.sum()), agree=float(agree),
        once_max_excess=float(once_excess.max()),
        once_above=int((once_excess > 1e-6).sum()),
        bias=(round(float(located_bias), 4), round(float(ours_bias), 4),
              round(float(theirs_bias), 4)))
    print(figures)
    return ours, theirs, figures


@pytest.fixture(scope="module")
def brightfield():
    frames = pims.open(str(DATA / "bf_*.png"))
    assert len(frames) == 5 and frames.frame_shape == (500, 500)
    return frames


def test_brightfield_against_trackpy(brightfield):
    """Bright centres of real colloids, faint ones included."""
    f = locate(brightfield, 11, minmass=100)
    assert len(f) > 150
    _, _, figures = compare(f, brightfield, 11)
    assert figures["agree"] >= 0.9


@pytest.fixture(scope="module")
def faint_movie():
    """Three frames of 40 spots (size 2, signal 40) on a background of 50
    with white noise of standard deviation 13.3 (S/N 3), and the truth."""
    rng = np.random.default_rng(2024)
    frames, truth = [], []
    for t in range(3):
        positions, _ = synth.place_groups((160, 160), [1] * 40, 2.0,
                                          exclusion=13, margin=6, rng=rng)
        frames.append(synth.draw((160, 160), positions, 2.0, 40.0, 50.0,
                                 noise=3.0, rng=rng))
        truth.append(pd.DataFrame({"y": positions[:, 0],
                                   "x": positions[:, 1], "frame": t}))
    return np.array(frames), pd.concat(truth, ignore_index=True)


def test_faint_features_against_trackpy_and_the_truth(faint_movie):
    frames, truth = faint_movie
    f = locate(frames, 11, minmass=60)
    ours, theirs, figures = compare(f, ArrayFrames(frames), 11)
    assert figures["agree"] >= 0.8
    # each located feature's true spot, if one is within 2.5 px
    nearest = np.full(len(f), -1)
    for t, rows in f.groupby("frame").groups.items():
        spots = truth[truth["frame"] == t]
        d2 = ((f.loc[rows, POS].to_numpy()[:, None]
               - spots[POS].to_numpy()[None]) ** 2).sum(axis=2)
        closest = d2.argmin(axis=1)
        nearest[f.index.get_indexer(rows)] = np.where(
            d2.min(axis=1) <= 2.5 ** 2, spots.index[closest], -1)
    real = pd.Series(nearest >= 0, index=f.index)
    assert real.sum() >= 0.95 * len(truth)
    true_pos = truth.loc[nearest[real.to_numpy()], POS].set_axis(
        f.index[real])

    def error(result, rows):
        return np.hypot(*(result.loc[rows, c] - true_pos.loc[rows, c]
                          for c in POS))

    converged = real & (ours["status"] == CONVERGED)
    # nearly every true spot is fitted, and no converged fit is far off
    assert converged.sum() >= 0.97 * real.sum()
    assert error(ours, converged).max() <= 1.5
    located = np.sqrt(np.mean(error(f, converged) ** 2))
    refined = np.sqrt(np.mean(error(ours, converged) ** 2))
    assert refined <= 0.9 * located
    print(dict(real=int(real.sum()), converged=int(converged.sum()),
               rms_located=round(located, 4), rms_refined=round(refined, 4)))
