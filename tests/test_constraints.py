"""Constraints and scipy methods (the scipy path of the engine)."""
import itertools
import warnings

import numpy as np
import pandas as pd
import pytest

import refinefit

SIZE = 2.0
SIGNAL = 100.0
BACKGROUND = 10.0


def regular_group(n, distance, ndim, rng):
    """Vertices of a segment, triangle or tetrahedron with edges ``distance``,
    randomly rotated (triangles lie in a random plane in 3D)."""
    if n == 2:
        base = np.array([[0.0, 0, 0], [1, 0, 0]])
    elif n == 3:
        base = np.array([[0.0, 0, 0], [1, 0, 0], [0.5, np.sqrt(3) / 2, 0]])
    else:
        base = np.array([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
        base /= np.sqrt(8)
    base = (base - base.mean(axis=0)) * distance
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotated = base @ q
    if ndim == 2:
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        rotated = base[:, :2] @ np.array([[c, -s], [s, c]])
    return rotated


def draw(shape, centres):
    grids = np.indices(shape, dtype=float)
    image = np.full(shape, BACKGROUND)
    for c in centres:
        r2 = sum((g - x) ** 2 for g, x in zip(grids, c))
        image += SIGNAL * np.exp(-0.5 * len(shape) * r2 / SIZE ** 2)
    return image


def scene(n_members, n_groups, distance, ndim, seed):
    rng = np.random.default_rng(seed)
    spacing = 24 if ndim == 2 else 20
    per_axis = int(np.ceil(n_groups ** (1 / ndim)))
    shape = (per_axis * spacing,) * ndim
    cells = list(itertools.product(range(per_axis), repeat=ndim))[:n_groups]
    truth = np.concatenate([(np.array(cell) + 0.5) * spacing
                            + regular_group(n_members, distance, ndim, rng)
                            for cell in cells])
    guess = truth + rng.uniform(-0.4, 0.4, truth.shape)
    cols = ["z", "y", "x"][-ndim:]
    f = pd.DataFrame(guess, columns=cols)
    f["signal"] = SIGNAL * 0.9
    f["size"] = SIZE
    return draw(shape, truth), truth, f, cols


def distances(result, cols, n_members):
    pos = result[cols].to_numpy().reshape(-1, n_members, len(cols))
    pairs = itertools.combinations(range(n_members), 2)
    return np.array([np.linalg.norm(pos[:, a] - pos[:, b], axis=1)
                     for a, b in pairs])


@pytest.mark.parametrize("n_members, helper, ndim", [
    (2, refinefit.dimer, 2), (3, refinefit.trimer, 2),
    (2, refinefit.dimer, 3), (3, refinefit.trimer, 3),
    (4, refinefit.tetramer, 3)])
def test_constrained_groups_keep_their_distance(n_members, helper, ndim):
    distance = 1.9 * SIZE
    image, truth, f, cols = scene(n_members, 4 if ndim == 2 else 2,
                                  distance, ndim, seed=n_members * 10 + ndim)
    result = refinefit.refine_leastsq(
        f, image, 15 if ndim == 2 else 13,
        constraints=helper(distance, ndim=ndim))
    assert result["cost"].notna().all()
    assert (result["cluster_size"] == n_members).all()
    np.testing.assert_allclose(distances(result, cols, n_members), distance,
                               atol=1e-3 * SIZE)
    error = np.sqrt(np.mean(np.sum((result[cols].to_numpy() - truth) ** 2,
                                   axis=1)))
    assert error < 0.01


def test_constraint_only_applies_to_its_cluster_size():
    """Singles next to constrained dimers stay on the Numba engine."""
    image, truth, f, cols = scene(2, 4, 1.9 * SIZE, 2, seed=5)
    single = pd.DataFrame([[5.3, 5.2]], columns=cols).assign(signal=90.0,
                                                             size=SIZE)
    image = image + draw(image.shape, [[5.0, 5.0]]) - BACKGROUND
    f = pd.concat([f, single], ignore_index=True)
    result = refinefit.refine_leastsq(f, image, 15,
                                      constraints=refinefit.dimer(1.9 * SIZE))
    assert result["cost"].notna().all()
    np.testing.assert_allclose(result[cols].iloc[-1], [5.0, 5.0], atol=1e-3)


@pytest.mark.parametrize("method", ["L-BFGS-B", "SLSQP", "trust-constr",
                                    "TNC"])
def test_scipy_methods_find_the_same_positions(method):
    image, truth, f, cols = scene(2, 4, 2.2 * SIZE, 2, seed=7)
    engine = refinefit.refine_leastsq(f, image, 15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = refinefit.refine_leastsq(f, image, 15, method=method,
                                         options={"maxiter": 1000})
    assert other["cost"].notna().all()
    np.testing.assert_allclose(other[cols], engine[cols], atol=0.01)


def test_dimers_side_by_side_with_trackpy():
    trackpy = pytest.importorskip("trackpy")
    distance = 1.9 * SIZE
    image, truth, f, cols = scene(2, 4, distance, 2, seed=8)
    rng = np.random.default_rng(9)
    noisy = image + rng.normal(0, SIGNAL / 10, image.shape)
    ours = refinefit.refine_leastsq(f, noisy, 15,
                                    constraints=refinefit.dimer(distance))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = trackpy.refine_leastsq(
            f.copy(), noisy, 15,
            constraints=trackpy.refine.least_squares.dimer(distance))
    both = ours["cost"].notna() & theirs["cost"].notna()
    assert ours["cost"].notna().sum() >= theirs["cost"].notna().sum()
    assert both.mean() > 0.7
    np.testing.assert_allclose(ours.loc[both, cols], theirs.loc[both, cols],
                               atol=0.01)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"method": "no-such-method"}, ValueError, "no-such-method"),
    ({"method": "Nelder-Mead"}, ValueError, "bounds and a gradient"),
    ({"method": "L-BFGS-B", "constraints": refinefit.dimer(4.0)}, ValueError,
     "constraints"),
    ({"constraints": ({"type": "eq"},)}, ValueError, "fun"),
    ({"constraints": ({"type": "equal", "fun": lambda x: x}, )}, ValueError,
     "equal"),
])
def test_bad_scipy_input(kwargs, error, match):
    image, _, f, _ = scene(2, 1, 4.0, 2, seed=1)
    with pytest.raises(error, match=match):
        refinefit.refine_leastsq(f, image, 15, **kwargs)


def _x_gap(x, gap):
    """Per cluster: x of feature 1 minus x of feature 0 equals ``gap``."""
    return x[:, 1, 3] - x[:, 0, 3] - gap


def test_inequality_constraints_go_to_scipy(monkeypatch):
    from refinefit.solvers import engine
    used = []
    original = engine.solve_groups
    monkeypatch.setattr(engine, "solve_groups",
                        lambda *a, **k: used.append(1) or original(*a, **k))
    image, truth, f, cols = scene(2, 2, 1.9 * SIZE, 2, seed=11)
    # x1 - x0 >= -100 always holds: the fit is the unconstrained one
    result = refinefit.refine_leastsq(
        f, image, 15, constraints=({"type": "ineq", "fun": _x_gap,
                                    "args": (-100.0,), "cluster_size": 2},))
    assert used and result["cost"].notna().all()
    np.testing.assert_allclose(result[cols], truth, atol=0.01)


def test_constraint_mixing_clusters_is_one_problem(monkeypatch):
    """Values that are not one block per cluster couple the clusters: all
    of them are solved together by scipy (see refinefit/joint.py)."""
    from refinefit.solvers import joint
    used = []
    original = joint.solve_groups
    monkeypatch.setattr(joint, "solve_groups",
                        lambda *a, **k: used.append(len(a[0][0])) or original(*a, **k))
    image, truth, f, cols = scene(2, 4, 1.9 * SIZE, 2, seed=12)

    def mixed(x):
        gaps = np.linalg.norm(x[:, 0, 2:4] - x[:, 1, 2:4], axis=1)
        return np.diff(gaps)  # equal distances across clusters

    result = refinefit.refine_leastsq(
        f, image, 15, constraints=({"type": "eq", "fun": mixed,
                                    "cluster_size": 2},))
    assert used and used[0] == result["cluster"].nunique()
    assert result["cost"].notna().all()
    np.testing.assert_allclose(result[cols], truth, atol=0.01)
    pos = result[cols].to_numpy().reshape(-1, 2, 2)
    gaps = np.linalg.norm(pos[:, 0] - pos[:, 1], axis=1)
    np.testing.assert_allclose(gaps, gaps.mean(), rtol=1e-5)


def test_custom_equality_constraint_in_lockstep():
    image, truth, f, cols = scene(2, 4, 1.9 * SIZE, 2, seed=13)
    gap = 1.0
    result = refinefit.refine_leastsq(
        f, image, 15, constraints=({"type": "eq", "fun": _x_gap,
                                    "args": (gap,), "cluster_size": 2},))
    assert result["cost"].notna().all()
    x = result["x"].to_numpy().reshape(-1, 2)
    np.testing.assert_allclose(x[:, 1] - x[:, 0], gap, atol=1e-6)
