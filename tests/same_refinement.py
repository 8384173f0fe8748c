"""Comparing refined tables from different runs."""
from pandas.testing import assert_frame_equal, assert_series_equal


def assert_same_refinement(got, expected):
    """Equal tables: every column bitwise except ``cost``, to 1e-12.

    The engine's ``cost`` can differ by an ulp between two identical
    ``refine_leastsq`` calls, even in one process with one thread (seen in
    about 1 call in 13 on a 6-frame movie; the refined parameters were
    identical), so one call over the whole movie does not reproduce its own
    ``cost`` bit for bit either.
    """
    assert_frame_equal(got.drop(columns="cost"),
                       expected.drop(columns="cost"), check_exact=True)
    assert_series_equal(got["cost"], expected["cost"], check_exact=False,
                        rtol=1e-12, atol=0)
