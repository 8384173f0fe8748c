"""Constrained clusters on noise-free images: every fit at the truth.

Dimers, trimers and tetramers held by ``dimer`` / ``trimer`` / ``tetramer``
at the distance they are drawn with (touching spheres: twice the size), at
random orientations and sub-pixel positions, with the signal free per
feature and the size fixed, each starting up to 0.5 px off per axis (and its
signal up to 20% off). The image holds every group in its own tile (so that
all of them are solved together, as in a real frame) and is drawn by
``synth.draw``, independently of the fitter. The masks reach 3.5 sizes out,
so that the image is the model to ~1e-5 of the signal: a fit that ends
farther than 0.01 px from the truth ended in a wrong place.
"""
import numpy as np
import pandas as pd
import pytest
from synth import POS_COLUMNS, draw

import refinefit

N_DRAWS = 200
TOLERANCE = 0.01  # px, parallel and perpendicular to the bonds


def _rotation(rng, ndim):
    q, r = np.linalg.qr(rng.normal(size=(ndim, ndim)))
    return q * np.sign(np.diag(r))


def _shape(n_members, ndim, rng):
    """Unit-bond offsets of a random orientation, centred on zero."""
    if n_members == 2:
        unit = np.array([[-0.5], [0.5]]) * np.eye(ndim)[0]
    elif n_members == 3:
        angles = np.array([0.0, 2.0, 4.0]) * np.pi / 3
        unit = np.zeros((3, ndim))
        unit[:, 0], unit[:, 1] = np.cos(angles), np.sin(angles)
        unit /= np.sqrt(3.0)
    elif ndim == 3:  # regular tetrahedron
        unit = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]],
                        dtype=np.float64) / np.sqrt(8.0)
    else:  # square
        unit = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
        unit -= unit.mean(axis=0)
    return unit @ _rotation(rng, ndim).T


def _scene(n_members, ndim, anisotropic, seed):
    rng = np.random.default_rng(seed)
    size = np.array([3.0, 2.0, 2.0]) if anisotropic else np.full(ndim, 2.0)
    bond = 2.0 * size  # per axis: the distance in units of size is 2
    radius = np.ceil(3.5 * size)
    tile = (2 * np.ceil(bond) + 2 * radius + 4).astype(int)
    per_axis = int(np.ceil(N_DRAWS ** (1.0 / ndim)))
    shape = tuple(tile * per_axis)
    cells = np.stack(np.unravel_index(np.arange(N_DRAWS),
                                      (per_axis,) * ndim), axis=1)
    centres = (cells + 0.5) * tile + rng.uniform(-0.5, 0.5, (N_DRAWS, ndim))
    offsets = np.stack([_shape(n_members, ndim, rng)
                        for _ in range(N_DRAWS)])
    truth = (centres[:, None, :] + offsets * bond).reshape(-1, ndim)
    signal = rng.uniform(150.0, 250.0, len(truth))
    image = np.zeros(shape)
    for k, cell in enumerate(cells):  # one tile at a time: fast to draw
        lo = cell * tile
        box = tuple(slice(a, a + t) for a, t in zip(lo, tile))
        rows = slice(k * n_members, (k + 1) * n_members)
        image[box] = draw(tuple(tile), truth[rows] - lo, size, signal[rows])
    columns = list(POS_COLUMNS[ndim])
    guess = pd.DataFrame(truth + rng.uniform(-0.5, 0.5, truth.shape),
                         columns=columns)
    guess["signal"] = signal * rng.uniform(0.8, 1.2, len(truth))
    if anisotropic:
        for col, value in zip(columns, size):
            guess["size_" + col] = value
    else:
        guess["size"] = size[0]
    guess["background"] = 0.0
    diameter = tuple(int(d) for d in 2 * radius + 1)
    return image, truth, guess, bond, diameter


CASES = [(n, ndim, aniso) for n in (2, 3, 4)
         for ndim, aniso in ((2, False), (3, False), (3, True))]


@pytest.mark.parametrize("n_members, ndim, anisotropic", CASES)
def test_constrained_fits_reach_the_truth(n_members, ndim, anisotropic):
    image, truth, guess, bond, diameter = _scene(n_members, ndim, anisotropic,
                                                 seed=100 * n_members + ndim
                                                 + 7 * anisotropic)
    helper = {2: refinefit.dimer, 3: refinefit.trimer,
              4: refinefit.tetramer}[n_members]
    dist = tuple(bond) if anisotropic else float(bond[0])
    out = refinefit.refine_leastsq(
        guess, image, diameter=diameter if anisotropic else diameter[0],
        separation=tuple(1.5 * bond) if anisotropic else 1.5 * bond[0],
        param_mode=dict(signal="var", size="const", background="const"),
        constraints=helper(dist, ndim))
    assert (out["cluster_size"] == n_members).all()
    assert out["cost"].notna().all()
    error = out[list(POS_COLUMNS[ndim])].to_numpy() - truth
    # along and across each group's first bond
    pos = truth.reshape(N_DRAWS, n_members, ndim)
    axis = pos[:, 1] - pos[:, 0]
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    err = error.reshape(N_DRAWS, n_members, ndim)
    along = np.einsum("gmd,gd->gm", err, axis)
    across = np.linalg.norm(err - along[..., None] * axis[:, None], axis=2)
    assert np.abs(along).max() < TOLERANCE
    assert across.max() < TOLERANCE
