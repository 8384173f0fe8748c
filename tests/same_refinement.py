"""Comparing refined tables from different runs."""
from pandas.testing import assert_frame_equal


def assert_same_refinement(got, expected):
    """Equal tables, every column bit for bit (``cost`` and the standard
    errors ``*_std`` included).

    Each cluster is solved by the same compiled code on the same pixels in
    the same order, whatever the chunking, the number of threads or lanes,
    or the machine in a Dask cluster, so nothing may differ in the last bit.
    """
    assert_frame_equal(got, expected, check_exact=True)
