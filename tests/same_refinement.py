"""Comparing refined tables from different runs."""
from pandas.testing import assert_frame_equal


def assert_same_refinement(got, expected):
    """Equal tables: every column bitwise except ``cost`` and the standard
    errors (``*_std``), which must agree to 1e-12.

    Those columns are sums of squared residuals (and functions of them).
    They have been seen to differ in the last bit between two runs on the
    same inputs: ``cost`` in about 1 call in 13 on a 6-frame movie, and
    ``background_std`` in 1.5% of the rows once in a fresh clone. The
    refined parameters were identical. The cause is not found yet, so the
    tests do not claim bitwise equality for these columns.
    """
    loose = [c for c in expected.columns
             if c == "cost" or str(c).endswith("_std")]
    assert_frame_equal(got.drop(columns=loose), expected.drop(columns=loose),
                       check_exact=True)
    assert_frame_equal(got[loose], expected[loose], check_exact=False,
                       rtol=1e-12, atol=0)
