"""Fixtures shared by the test modules."""
import contextlib

import pytest

import refinefit


@pytest.fixture
def configure():
    """Change :mod:`refinefit.config` defaults for one test:
    ``configure(tables=dict(row_group=10))``; restored after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **groups: stack.enter_context(
            refinefit.config.override(**groups))
