"""How fits ended, as users read it: the ``status`` column's codes, counted
and described for the summary line.

The codes themselves live in :mod:`refinefit.kernels.codes`, the one table
the kernels and this layer share.
"""
import numpy as np

from .kernels.codes import STATUS_KINDS, STATUS_MESSAGES, STATUS_NAMES

__all__ = ["STATUS_NAMES", "STATUS_MESSAGES", "STATUS_KINDS", "count_status",
           "describe_status", "degenerate_hint"]

_N_CODES = max(STATUS_NAMES) + 1


def count_status(status):
    """Features per status code: an array indexed by code."""
    status = np.asarray(status, dtype=np.int64)
    return np.bincount(status, minlength=_N_CODES)[:_N_CODES]


def describe_status(counts):
    """``'950 converged, 0 stopped, 15 failed (10 rms_too_high, 5 no_pixels),
    30 degenerate (30 signal_at_floor)'`` from :func:`count_status`."""
    parts = []
    for kind in ("converged", "stopped", "failed", "degenerate"):
        codes = [code for code, k in STATUS_KINDS.items() if k == kind]
        total = int(sum(counts[code] for code in codes))
        text = f"{total:,} {kind}"
        if total and kind in ("failed", "degenerate"):
            text += " (" + ", ".join(f"{int(counts[code]):,} {STATUS_NAMES[code]}"
                                     for code in codes if counts[code]) + ")"
        parts.append(text)
    return ", ".join(parts)


def degenerate_hint(counts, inverted=False):
    """What to try when most fits ended degenerate (None otherwise): the
    usual causes are dark features refined as bright ones (or bright ones
    ``inverted``), and a mask diameter that does not fit the features."""
    degenerate = sum(int(counts[code]) for code, kind in STATUS_KINDS.items()
                     if kind == "degenerate")
    fitted = degenerate + sum(int(counts[code]) for code, kind
                              in STATUS_KINDS.items()
                              if kind in ("converged", "stopped"))
    if not fitted or degenerate <= fitted / 2:
        return None
    advice = ("bright features on a dark background need no --invert "
              "(invert=False)" if inverted else "dark features on a bright "
              "background need --invert (invert=True)")
    return (f"most fits ({degenerate:,} of {fitted:,}) are degenerate: their "
            f"signal vanished or their position ran to the edge of the mask. "
            f"{advice[0].upper() + advice[1:]}; check too that the diameter "
            "fits the features")
