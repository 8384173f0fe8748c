"""refinefit: fast least-squares refinement of feature positions.

A drop-in, much faster ``trackpy.refine_leastsq``: the same arguments and
output, computed by a Levenberg-Marquardt engine compiled with Numba.
"""
from .refine import refine_leastsq

__all__ = ["refine_leastsq"]
__version__ = "0.1.0"
