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

# How a fit ended, one code per cluster.
CONVERGED = 0
MAX_ITER = 1
NOT_FINITE = 2
NO_PIXELS = 3
BLANK = 4
CONSTRAINT_UNMET = 5

STATUS_MESSAGES = {
    CONVERGED: "converged",
    MAX_ITER: "stopped at the evaluation limit before converging",
    NOT_FINITE: "the cost became NaN or infinite",
    NO_PIXELS: "a feature's mask holds no valid pixel",
    BLANK: "every pixel of the cluster's mask has the same value",
    CONSTRAINT_UNMET: "no positions near the start satisfy the constraints",
}
