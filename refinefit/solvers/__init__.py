"""Solvers over flattened cluster masks: the Numba Levenberg-Marquardt
backend, equality constraints in lockstep, the scipy path, shared parameters
by variable projection, and standard errors. They call ``refinefit.kernels``
and know nothing of DataFrames or files."""
