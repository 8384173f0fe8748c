"""refinefit.problem.constraints: ready-made constraints, validation and wrapping,
side by side with trackpy's on random inputs."""
import warnings

import numpy as np
import pytest

from refinefit import vect_from_params, vect_to_params
from refinefit.problem.constraints import (
    dimer,
    dimer_global,
    tetramer,
    trimer,
    validate_constraints,
    wrap_constraint,
)

tl = pytest.importorskip("trackpy.refine.least_squares")

SEEDS = range(8)


def _random_x(rng, n_clusters, n_features, ndim, n_extra=1):
    n_params = 2 + ndim + 1 + n_extra
    return rng.normal(scale=3.0, size=(n_clusters, n_features, n_params))


def _same_dict(ours, theirs):
    assert set(ours) == set(theirs)
    assert ours["type"] == theirs["type"]
    assert ours.get("cluster_size") == theirs.get("cluster_size")
    assert len(ours["args"]) == len(theirs["args"])
    for a, b in zip(ours["args"], theirs["args"]):
        np.testing.assert_array_equal(a, b)


def _same_values(ours, theirs):
    ours, theirs = np.asarray(ours), np.asarray(theirs, dtype=np.float64)
    assert ours.ndim == 1
    assert ours.dtype == np.float64
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------------------
# ready-made constraints
# --------------------------------------------------------------------------

CASES = [  # (ours, trackpy's, cluster size, ndim, dist)
    (dimer, tl.dimer, 2, 2, 2.5), (dimer, tl.dimer, 2, 2, (2.0, 3.5)),
    (dimer, tl.dimer, 2, 3, (1.5, 2.0, 3.0)),
    (trimer, tl.trimer, 3, 2, 2.5), (trimer, tl.trimer, 3, 2, (2.0, 3.5)),
    (trimer, tl.trimer, 3, 3, 4.0),
    (tetramer, tl.tetramer, 4, 2, 2.5), (tetramer, tl.tetramer, 4, 2, (2., 3.)),
    (tetramer, tl.tetramer, 4, 3, 2.5),
    (tetramer, tl.tetramer, 4, 3, (1.0, 2.0, 3.0)),
]


@pytest.mark.parametrize("ours, theirs, size, ndim, dist", CASES)
def test_cluster_constraints_match_trackpy(ours, theirs, size, ndim, dist):
    (c_ours,), (c_theirs,) = ours(dist, ndim), theirs(dist, ndim)
    _same_dict(c_ours, c_theirs)
    assert c_ours["cluster_size"] == size
    rng = np.random.default_rng(size * 10 + ndim)
    for n_clusters in (1, 2, 5):
        x = _random_x(rng, n_clusters, size, ndim)
        _same_values(c_ours["fun"](x, *c_ours["args"]),
                     c_theirs["fun"](x, *c_theirs["args"]))


def test_value_counts():
    x2 = _random_x(np.random.default_rng(1), 5, 4, 2)
    x3 = _random_x(np.random.default_rng(1), 5, 4, 3)
    for cons, x, per_cluster in ((dimer(2.), x2[:, :2], 1),
                                 (trimer(2.), x2[:, :3], 3),
                                 (tetramer(2.), x2, 4),
                                 (tetramer(2., 3), x3, 6)):
        (c,) = cons
        assert c["fun"](x, *c["args"]).shape == (5 * per_cluster,)


def test_exact_shapes_give_zero():
    # a dimer, a triangle, a square and a tetrahedron of side 2 satisfy them
    def embed(pos, ndim):
        x = np.zeros((1, len(pos), 2 + ndim + 1))
        x[0, :, 2:2 + ndim] = pos
        return x
    h = np.sqrt(3.0)
    cases = [(dimer(2.), embed([[0, 0], [0, 2]], 2)),
             (trimer(2.), embed([[0, 0], [0, 2], [h, 1]], 2)),
             (tetramer(2.), embed([[0, 0], [0, 2], [2, 2], [2, 0]], 2)),
             (tetramer(2., 3), embed(np.sqrt(0.5) * np.array(
                 [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]), 3)),
             (dimer((1., 2.)), embed([[0, 0], [0, 2]], 2))]
    for (c,), x in cases:
        np.testing.assert_allclose(c["fun"](x, *c["args"]), 0, atol=1e-12)


@pytest.mark.parametrize("ndim, mpp", [(2, 0.5), (2, (0.5, 0.25)),
                                       (3, (1.0, 0.5, 0.5))])
def test_dimer_global_matches_trackpy(ndim, mpp):
    (c_ours,), (c_theirs,) = dimer_global(mpp, ndim), tl.dimer_global(mpp,
                                                                      ndim)
    # ours applies to clusters of 2 (trackpy's, without a size, never
    # constrains anything); function and arguments are trackpy's
    assert c_ours.pop("cluster_size") == 2
    _same_dict(c_ours, c_theirs)
    rng = np.random.default_rng(ndim)
    for n_clusters in (1, 2, 6):
        x = _random_x(rng, n_clusters, 2, ndim)
        got = c_ours["fun"](x, *c_ours["args"])
        _same_values(got, c_theirs["fun"](x, *c_theirs["args"]))
        assert got.shape == (n_clusters - 1,)
    # a 2D array gives no values, as in trackpy
    _same_values(c_ours["fun"](x[0], *c_ours["args"]), [])


def test_dimer_global_squares_the_squared_distance():
    x = np.zeros((2, 2, 6))
    x[0, 1, 2] = 1.0  # distance 1
    x[1, 1, 2] = 2.0  # distance 2
    (c,) = dimer_global(1.0)
    np.testing.assert_allclose(c["fun"](x, *c["args"]), [2.0 ** 4 - 1.0])


@pytest.mark.parametrize("make, name", [(dimer, "dist"), (trimer, "dist"),
                                        (tetramer, "dist"),
                                        (dimer_global, "mpp")])
def test_wrong_length_tuple(make, name):
    with pytest.raises(ValueError, match=name):
        make((1.0, 2.0, 3.0), 2)
    with pytest.raises(ValueError, match=name):
        make((1.0,), 2)
    with pytest.raises(ValueError, match=name):
        make(0.0, 2)
    with pytest.raises(ValueError, match="ndim"):
        make(1.0, 0)


def test_tetramer_other_ndim():
    with pytest.raises(NotImplementedError):
        tetramer(1.0, 4)


def test_bad_parameter_array():
    (c,) = dimer(1.0)
    with pytest.raises(ValueError, match="3D"):
        c["fun"](np.zeros((2, 6)), *c["args"])
    with pytest.raises(ValueError, match="at least 2 features"):
        c["fun"](np.zeros((1, 1, 6)), *c["args"])


# --------------------------------------------------------------------------
# validate_constraints
# --------------------------------------------------------------------------

def _fun(x):
    return x[0, 0, 2]


def test_validate_normalises():
    assert validate_constraints(None) == ()
    assert validate_constraints(()) == ()
    assert validate_constraints([]) == ()
    (one,) = validate_constraints({"type": "ineq", "fun": _fun})
    assert one == {"type": "ineq", "fun": _fun, "args": (),
                   "cluster_size": None}
    extra = {"type": "eq", "fun": _fun, "args": [1, 2],
             "cluster_size": np.int64(3)}
    got = validate_constraints(list(dimer(2.0)) + [extra])
    assert len(got) == 2
    assert got[0]["cluster_size"] == 2 and got[0]["args"][1] == 2
    assert got[1]["args"] == (1, 2) and got[1]["cluster_size"] == 3
    assert type(got[1]["cluster_size"]) is int
    for c in got:
        assert set(c) == {"type", "fun", "args", "cluster_size"}


@pytest.mark.parametrize("cons, exc, match", [
    ({"type": "eq"}, ValueError, r"constraints\[0\]: missing 'fun'"),
    ({"type": "eq", "fun": 3}, TypeError, "callable"),
    ({"fun": _fun}, ValueError, "missing 'type'.*'eq', 'ineq'"),
    ({"type": "equal", "fun": _fun}, ValueError,
     "'equal'.*'eq', 'ineq'"),
    ({"type": "eq", "fun": _fun, "cluster_size": 0}, ValueError,
     "cluster_size"),
    ({"type": "eq", "fun": _fun, "cluster_size": 2.5}, ValueError,
     "cluster_size"),
    ({"type": "eq", "fun": _fun, "cluster_size": True}, ValueError,
     "cluster_size"),
    ({"type": "eq", "fun": _fun, "hess": None, "foo": 1}, ValueError,
     r"unknown key.*\['foo', 'hess'\]"),
    ({"type": "eq", "fun": _fun, "args": 2.0}, TypeError, "args"),
    ("eq", TypeError, "dict"),
])
def test_validate_errors(cons, exc, match):
    with pytest.raises(exc, match=match):
        validate_constraints(cons)


def test_validate_error_names_the_index():
    good = {"type": "eq", "fun": _fun}
    with pytest.raises(ValueError, match=r"constraints\[1\]: missing 'fun'"):
        validate_constraints([good, {"type": "eq"}])
    with pytest.raises(TypeError, match=r"constraints\[1\]: expected a dict"):
        validate_constraints([good, 1])


def test_validate_jac_warns_once_and_is_dropped():
    cons = [{"type": "eq", "fun": _fun, "jac": _fun}] * 3
    with pytest.warns(UserWarning, match="jacobian") as record:
        got = validate_constraints(cons)
    assert len([w for w in record if "jacobian" in str(w.message)]) == 1
    assert all("jac" not in c for c in got)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_constraints(got)  # already normalised: silent


# --------------------------------------------------------------------------
# wrap_constraint, side by side with trackpy's _wrap_constraints
# --------------------------------------------------------------------------

def _problem(seed, cluster_sizes=(2, 2, 2, 3), ndim=2):
    """Random params and groups: clusters of the given sizes over shuffled
    feature indices; modes background 'cluster', signal and positions 'var',
    size 'const' or 'global', one extra parameter in custom mode 4."""
    rng = np.random.default_rng(seed)
    n = sum(cluster_sizes)
    order = rng.permutation(n)
    clusters, at = [], 0
    for size in cluster_sizes:
        clusters.append(sorted(int(i) for i in order[at:at + size]))
        at += size
    labels = rng.integers(0, 2, n)
    custom = [list(np.nonzero(labels == g)[0]) for g in np.unique(labels)]
    params = rng.normal(scale=3.0, size=(n, 2 + ndim + 2))
    modes = [3, 1] + [1] * ndim + [int(rng.choice([0, 2])), 4]
    groups = [clusters, custom]
    vect = vect_from_params(params, modes, groups, np.mean)
    vect = vect + rng.normal(size=vect.shape)
    return params, modes, groups, vect


def _trackpy_groups(groups):
    # trackpy indexes groups[0] with a boolean mask: it must be an array
    clusters = np.empty(len(groups[0]), dtype=object)
    clusters[:] = [list(g) for g in groups[0]]
    return [clusters] + list(groups[1:])


def _custom_constraint():
    def fun(x, scale):  # no cluster_size: all features as one group
        return scale * x[:, :, 2].sum(axis=1) - x[0, 0, 1]
    return {"type": "ineq", "fun": fun, "args": (0.5,)}


@pytest.mark.parametrize("seed", SEEDS)
def test_wrap_matches_trackpy(seed):
    params, modes, groups, vect = _problem(seed)
    tp_groups = _trackpy_groups(groups)
    constraints = (dimer(2.0) + dimer((1.5, 2.5)) + trimer(2.0)
                   + dimer_global(0.5) + (_custom_constraint(),))
    for cons in constraints:
        ours = wrap_constraint(validate_constraints(cons)[0], params, modes,
                               groups)
        # one constraint at a time: trackpy's closures bind late, see below
        (theirs,) = tl._wrap_constraints([cons], params, modes, tp_groups)
        assert ours["type"] == theirs["type"]
        assert set(ours) == {"type", "fun", "args"}
        _same_values(ours["fun"](vect, *ours["args"]),
                     theirs["fun"](vect, *theirs["args"]))


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_wrap_shapes_and_clusters(seed):
    params, modes, groups, vect = _problem(seed)
    seen = []

    def spy(x):
        seen.append(x.copy())
        return x[:, 0, 2]

    wrapped = wrap_constraint({"type": "eq", "fun": spy, "cluster_size": 2,
                               "args": ()}, params, modes, groups)
    wrapped["fun"](vect)
    full = vect_to_params(vect, params, modes, groups)
    dimers = [g for g in groups[0] if len(g) == 2]
    assert seen[-1].shape == (3, 2, params.shape[1])
    np.testing.assert_array_equal(seen[-1], full[np.array(dimers)])
    # no cluster size: all features as one group
    wrapped = wrap_constraint(validate_constraints(
        {"type": "eq", "fun": spy})[0], params, modes, groups)
    wrapped["fun"](vect)
    np.testing.assert_array_equal(seen[-1], full[np.newaxis])
    # constant parameters come from params, which is not modified
    before = params.copy()
    wrapped["fun"](vect)
    np.testing.assert_array_equal(params, before)


def test_wrap_no_cluster_of_that_size():
    params, modes, groups, vect = _problem(0)
    assert wrap_constraint(validate_constraints(tetramer(2.0))[0], params,
                           modes, groups) is None
    # trackpy raises instead of skipping
    with pytest.raises(ValueError, match="could not be wrapped"):
        tl._wrap_constraints(tetramer(2.0), params, modes,
                             _trackpy_groups(groups))


def test_wrap_without_groups():
    rng = np.random.default_rng(3)
    params = rng.normal(size=(2, 5))
    modes = [3, 1, 1, 1, 0]
    vect = vect_from_params(params, modes) + 0.1
    (cons,) = dimer(2.0)
    ours = wrap_constraint(cons, params, modes)
    (theirs,) = tl._wrap_constraints([cons], params, modes)
    _same_values(ours["fun"](vect, *ours["args"]),
                 theirs["fun"](vect, *theirs["args"]))
    # three features, no groups: not one dimer
    params3 = rng.normal(size=(3, 5))
    with pytest.raises(ValueError, match="cluster_size=2"):
        wrap_constraint(cons, params3, modes)
    with pytest.raises(ValueError, match="groups"):
        tl._wrap_constraints([cons], params3, modes)


def test_wrap_binds_each_constraint():
    # trackpy's _wrap_constraints closures bind 'cons' late: every wrapped
    # function calls the last constraint. Ours do not.
    params, modes, groups, vect = _problem(1)
    both = dimer(2.0) + trimer(2.0)
    tp = tl._wrap_constraints(both, params, modes, _trackpy_groups(groups))
    np.testing.assert_array_equal(tp[0]["fun"](vect, *tp[0]["args"]),
                                  tp[1]["fun"](vect, *tp[1]["args"]))
    ours = [wrap_constraint(c, params, modes, groups)
            for c in validate_constraints(both)]
    assert ours[0]["fun"](vect, *ours[0]["args"]).shape == (3,)  # 3 dimers
    assert ours[1]["fun"](vect, *ours[1]["args"]).shape == (3,)  # 1 trimer
    (alone,) = tl._wrap_constraints(dimer(2.0), params, modes,
                                    _trackpy_groups(groups))
    _same_values(ours[0]["fun"](vect, *ours[0]["args"]),
                 alone["fun"](vect, *alone["args"]))


def test_wrap_dimer_global_stacks_the_dimers():
    params, modes, groups, vect = _problem(2)
    n_dimers = sum(len(g) == 2 for g in groups[0])
    wrapped = wrap_constraint(dimer_global(1.0)[0], params, modes, groups)
    assert wrapped["fun"](vect, *wrapped["args"]).shape == (n_dimers - 1,)


def test_wrap_errors():
    params, modes, groups, vect = _problem(0)
    with pytest.raises(ValueError, match="out of range"):
        wrap_constraint(dimer(1.0)[0], params, modes,
                        [[[0, 100]]] + groups[1:])
    with pytest.raises(ValueError, match="modes"):
        wrap_constraint(dimer(1.0)[0], params, modes[:-1], groups)
    with pytest.raises(ValueError, match="missing 'fun'"):
        wrap_constraint({"type": "eq"}, params, modes, groups)
    wrapped = wrap_constraint(dimer(1.0)[0], params, modes, groups)
    with pytest.raises(ValueError, match="vect"):
        wrapped["fun"](vect[:-1], *wrapped["args"])
