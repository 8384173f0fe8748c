"""refinefit: fast least-squares refinement of feature positions.

A drop-in, much faster ``trackpy.refine_leastsq``: the same arguments and
output, computed by a Levenberg-Marquardt engine compiled with Numba.
"""
from . import compile_notice, config  # noqa: F401 (the notice listens)
from .fit_functions import FitFunctions
from .locate import locate_movie
from .pipeline.dask import ClusterError
from .pipeline.movie import refine_movie
from .problem.constraints import dimer, dimer_global, tetramer, trimer, wrap_constraint
from .problem.params import vect_from_params, vect_to_params
from .refine import refine_leastsq
from .status import STATUS_MESSAGES, STATUS_NAMES
from .train import train_leastsq

__all__ = ["refine_leastsq", "train_leastsq", "refine_movie", "vect_from_params",
           "vect_to_params", "dimer", "trimer", "tetramer", "dimer_global",
           "wrap_constraint", "FitFunctions", "ClusterError", "config", "locate_movie",
           "STATUS_NAMES", "STATUS_MESSAGES"]
__version__ = "0.2.0"
