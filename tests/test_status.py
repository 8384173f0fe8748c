"""The ``status`` column: how every fit ended, degenerate fits included."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import refinefit
from refinefit.kernels.codes import (
    CONVERGED,
    POSITION_AT_BOUND,
    RMS_TOO_HIGH,
    SIGNAL_AT_FLOOR,
    STATUS_KINDS,
)
from refinefit.problem.bounds import degenerate
from refinefit.problem.models import resolve_model
from refinefit.problem.params import make_layout
from refinefit.status import count_status, describe_status

ROOT = Path(__file__).parents[1]
SIZE = 2.0
BACKGROUND = 20.0
DIAMETER = 15  # mask radius 7


def spots(shape, centres, amplitudes):
    """``BACKGROUND + sum a exp(-d^2 / SIZE^2)``, drawn here."""
    yy, xx = np.indices(shape, dtype=float)
    image = np.full(shape, BACKGROUND)
    for (y, x), a in zip(centres, amplitudes):
        image += a * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / SIZE ** 2)
    return image


def guesses(centres, signal=120.0):
    centres = np.asarray(centres, dtype=float)
    return pd.DataFrame({"y": centres[:, 0], "x": centres[:, 1],
                         "signal": signal, "size": SIZE})


def test_one_table_of_codes():
    codes = sorted(refinefit.STATUS_NAMES)
    assert codes == list(range(len(codes)))
    assert sorted(refinefit.STATUS_MESSAGES) == codes == sorted(STATUS_KINDS)
    assert len(set(refinefit.STATUS_NAMES.values())) == len(codes)
    assert set(STATUS_KINDS.values()) == {"converged", "stopped", "failed",
                                          "degenerate"}


def test_every_code_is_documented():
    """docs/errors.md lists every code with its name; the docstring too."""
    table = (ROOT / "docs" / "errors.md").read_text()
    docstring = refinefit.refine_leastsq.__doc__
    for code, name in refinefit.STATUS_NAMES.items():
        assert re.search(rf"\| {code} \| `{name}` \| {STATUS_KINDS[code]} \|",
                         table), name
        assert re.search(rf"\s{code}\s+{name}\s", docstring), name


def test_a_fit_that_runs_off_its_feature_is_degenerate():
    """A start 7.5 px from a spot, mask radius 7: the fit follows the
    spot's tail to the edge of its bound and is marked, keeping its start
    values; the spot fitted from a good start in the same image converges."""
    image = spots((64, 64), [(20.3, 20.6), (44.0, 50.2)], [150.0, 150.0])
    f = guesses([(20.6, 20.4), (44.0, 42.7)])
    out = refinefit.refine_leastsq(f, image, DIAMETER, compute_error=True)
    assert out["status"].tolist() == [CONVERGED, POSITION_AT_BOUND]
    np.testing.assert_allclose(out.loc[0, ["y", "x"]], [20.3, 20.6],
                               atol=0.01)
    assert np.isnan(out.loc[1, "cost"]) and np.isnan(out.loc[1, "x_std"])
    assert out.loc[1, ["y", "x", "signal"]].tolist() == [44.0, 42.7, 120.0]


def test_a_vanishing_signal_is_degenerate():
    """A dark spot fitted with positions held: the signal can only fall
    towards its floor. Without the held positions the fit runs to the edge
    of the mask."""
    image = spots((48, 64), [(12.3, 14.6), (30.7, 40.2)], [150.0, -15.0])
    f = guesses([(12.5, 14.4), (30.9, 40.0)])
    held = refinefit.refine_leastsq(f, image, DIAMETER,
                                    param_mode={"pos": "const"})
    assert held["status"].tolist() == [CONVERGED, SIGNAL_AT_FLOOR]
    assert np.isnan(held.loc[1, "cost"]) and held.loc[1, "signal"] == 120.0
    free = refinefit.refine_leastsq(f, image, DIAMETER,
                                    param_mode={"size": "var"})
    assert free["status"].tolist() == [CONVERGED, POSITION_AT_BOUND]


def test_degenerate_marks_only_converged_fits_at_their_limits():
    layout = make_layout(resolve_model("gauss"), ["y", "x"], True)
    start = np.array([[10.0, 100.0, 5.0, 5.0, 2.0]] * 5)
    lower = start - [np.inf, 0.0, 3.0, 3.0, 0.0]
    lower[:, [1, 4]] = 1e-7  # the default floor of signal and size
    upper = start + [np.inf, np.inf, 3.0, 3.0, np.inf]
    params = start.copy()
    params[1, 1] = 1e-7            # at the floor
    params[2, 1] = 0.09            # below a thousandth of the start
    params[3, 3] = 8.0             # x at its upper bound
    params[4, 1] = 1e-7            # at the floor, but the fit had failed
    status = np.array([CONVERGED] * 4 + [RMS_TOO_HIGH])
    radius = (3.0, 3.0)
    assert degenerate(status, params, start, lower, upper, layout,
                      radius).tolist() \
        == [CONVERGED, SIGNAL_AT_FLOOR, SIGNAL_AT_FLOOR, POSITION_AT_BOUND,
            RMS_TOO_HIGH]
    # bounds of the user's own, narrower than the defaults, hold the fit
    # deliberately: a signal at 2e-7, x at 0.5 px from its start
    own_lower, own_upper = lower.copy(), upper.copy()
    own_lower[:, 1] = 0.0
    own_upper[:, 3] = start[:, 3] + 0.5
    params[1, 1] = 0.0
    params[3, 3] = start[3, 3] + 0.5
    assert degenerate(status, params, start, own_lower, own_upper, layout,
                      radius)[:4].tolist() == [CONVERGED] * 4
    # a wider one is the edge of the mask or beyond
    own_upper[:, 3] = start[:, 3] + 5.0
    params[3, 3] = start[3, 3] + 5.0
    assert degenerate(status, params, start, own_lower, own_upper, layout,
                      radius)[3] == POSITION_AT_BOUND


def test_rms_above_max_rms_dev_is_a_status():
    image = spots((48, 48), [(20.3, 24.6)], [150.0])
    image += np.random.default_rng(1).normal(0, 5, image.shape)
    out = refinefit.refine_leastsq(guesses([(20.5, 24.4)]), image, DIAMETER,
                                   max_rms_dev=1e-4)
    assert out["status"].tolist() == [RMS_TOO_HIGH]
    assert out["cost"].isna().all()


@pytest.mark.parametrize("counts, text", [
    ({0: 5}, "5 converged, 0 stopped, 0 failed, 0 degenerate"),
    ({0: 1200, 1: 2, 3: 1, 7: 4, 10: 3},
     "1,200 converged, 2 stopped, 5 failed (1 no_pixels, 4 rms_too_high), "
     "3 degenerate (3 position_at_bound)"),
])
def test_summary_counts_each_kind(counts, text):
    status = np.concatenate([np.full(n, code) for code, n in counts.items()])
    assert describe_status(count_status(status)) == text
