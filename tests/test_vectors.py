"""vect_from_params / vect_to_params against trackpy's, on random inputs."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import refinefit

trackpy_ls = pytest.importorskip("trackpy.refine.least_squares")


@st.composite
def problems(draw):
    n_features = draw(st.integers(1, 6))
    n_params = draw(st.integers(1, 6))
    modes = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4]),
                          min_size=n_params, max_size=n_params))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    params = rng.normal(size=(n_features, n_params))
    # two groupings (modes 3 and 4): random partitions of the features
    groups = []
    for _ in range(2):
        labels = rng.integers(0, 3, n_features)
        groups.append([list(np.nonzero(labels == g)[0])
                       for g in np.unique(labels)])
    return params, modes, groups


@settings(max_examples=200, deadline=None)
@given(problems(), st.sampled_from([None, np.mean, np.max]),
       st.booleans())
def test_same_as_trackpy(problem, operation, with_groups):
    params, modes, groups = problem
    groups = groups if with_groups else None
    ours = refinefit.vect_from_params(params, modes, groups, operation)
    theirs = trackpy_ls.vect_from_params(params, modes, groups, operation)
    np.testing.assert_array_equal(ours, theirs)
    vect = ours + 1.5
    np.testing.assert_array_equal(
        refinefit.vect_to_params(vect, params, modes, groups),
        trackpy_ls.vect_to_params(vect, params, modes, groups))


def test_round_trip_keeps_constants():
    params = np.arange(12.0).reshape(3, 4)
    modes = [0, 1, 2, 3]
    groups = [[[0, 2], [1]]]
    vect = refinefit.vect_from_params(params, modes, groups)
    np.testing.assert_array_equal(vect, [1, 5, 9, 2, 3, 7])
    back = refinefit.vect_to_params(vect, params, modes, groups)
    np.testing.assert_array_equal(back[:, :2], params[:, :2])
    np.testing.assert_array_equal(back[:, 2], 2.0)
    np.testing.assert_array_equal(back[:, 3], [3, 7, 3])


@pytest.mark.parametrize("call, match", [
    (lambda: refinefit.vect_from_params(np.ones((2, 3)), [1, 1]), "modes"),
    (lambda: refinefit.vect_from_params(np.ones((2, 2)), [1, -1]), "non-negative"),
    (lambda: refinefit.vect_from_params(np.ones((2, 2)), [4, 1], [[[0, 1]]]),
     "groups"),
    (lambda: refinefit.vect_to_params(np.ones(3), np.ones((2, 2)), [1, 0]),
     "vect has 3"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
