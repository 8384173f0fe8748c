"""The numbers the kernels and the Python layer share: parameter modes and
the codes that say how a fit ended.

Plain integers, so that kernels read them as compile-time constants.
"""

# Parameter modes: trackpy's numbers (const, var, global, cluster), then
# refinefit's 'particle' and 'frame'.
MODE_CONST = 0      # held at its start value
MODE_VAR = 1        # one value per feature
MODE_GLOBAL = 2     # one value for all features
MODE_CLUSTER = 3    # one value per cluster
MODE_PARTICLE = 4   # one value per trajectory ('particle' column)
MODE_FRAME = 5      # one value per frame

MODE_NUMBERS = {"const": MODE_CONST, "var": MODE_VAR, "global": MODE_GLOBAL,
                "cluster": MODE_CLUSTER, "particle": MODE_PARTICLE,
                "frame": MODE_FRAME}
# modes whose values are shared between clusters
SHARED_MODES = (MODE_GLOBAL, MODE_PARTICLE, MODE_FRAME)

# How a fit ended: one code per feature in the ``status`` column of every
# output (the kernels give one per cluster). Only CONVERGED fits carry
# refined values; every other code keeps the start values with a NaN cost.
CONVERGED = 0
MAX_ITER = 1
NOT_FINITE = 2
NO_PIXELS = 3
BLANK = 4
CONSTRAINT_UNMET = 5
SINGULAR = 6
RMS_TOO_HIGH = 7
INVALID_START = 8
SIGNAL_AT_FLOOR = 9
POSITION_AT_BOUND = 10
OUTSIDE_FRAME = 11

STATUS_NAMES = {
    CONVERGED: "converged",
    MAX_ITER: "max_iter",
    NOT_FINITE: "not_finite",
    NO_PIXELS: "no_pixels",
    BLANK: "blank",
    CONSTRAINT_UNMET: "constraint_unmet",
    SINGULAR: "singular",
    RMS_TOO_HIGH: "rms_too_high",
    INVALID_START: "invalid_start",
    SIGNAL_AT_FLOOR: "signal_at_floor",
    POSITION_AT_BOUND: "position_at_bound",
    OUTSIDE_FRAME: "outside_frame",
}

STATUS_MESSAGES = {
    CONVERGED: "converged",
    MAX_ITER: "stopped at the evaluation limit before converging",
    NOT_FINITE: "the cost became NaN or infinite",
    NO_PIXELS: "a feature's mask holds no valid pixel",
    BLANK: "every pixel of the cluster's mask has the same value",
    CONSTRAINT_UNMET: "no positions near the start satisfy the constraints",
    SINGULAR: "the normal equations stayed singular however damped",
    RMS_TOO_HIGH: "the rms residual of the fit exceeds max_rms_dev",
    INVALID_START: "a start parameter is NaN or infinite",
    SIGNAL_AT_FLOOR: ("degenerate: the signal collapsed to its floor (or "
                      "below a thousandth of its start), so the data do not "
                      "determine the position"),
    POSITION_AT_BOUND: ("degenerate: a position ended at a bound at the edge "
                        "of the mask or beyond, so the data do not "
                        "determine it"),
    OUTSIDE_FRAME: "the feature's mask lies entirely outside the frame",
}

# The kinds the summary line counts: a fit converged, stopped at the
# evaluation limit, failed, or ended degenerate.
STATUS_KINDS = {
    CONVERGED: "converged",
    MAX_ITER: "stopped",
    NOT_FINITE: "failed",
    NO_PIXELS: "failed",
    BLANK: "failed",
    CONSTRAINT_UNMET: "failed",
    SINGULAR: "failed",
    RMS_TOO_HIGH: "failed",
    INVALID_START: "failed",
    SIGNAL_AT_FLOOR: "degenerate",
    POSITION_AT_BOUND: "degenerate",
    OUTSIDE_FRAME: "failed",
}
