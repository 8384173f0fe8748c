"""Fixtures shared by the test modules."""
import contextlib
import os

import pytest

# the compile notice (refinefit/compile_notice.py) would be one more line on
# the stderr the command-line tests read; tests of the notice turn it on
os.environ["REFINEFIT_COMPILE_NOTICE"] = "0"
# device="cuda" runs in Numba's CUDA simulator unless a run asks for the GPU
# (NUMBA_ENABLE_CUDASIM=0, tests marked gpu); read when numba is imported
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import refinefit


@pytest.fixture
def configure():
    """Change :mod:`refinefit.config` defaults for one test:
    ``configure(tables=dict(row_group=10))``; restored after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **groups: stack.enter_context(
            refinefit.config.override(**groups))
