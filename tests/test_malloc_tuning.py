"""glibc malloc settings of the processes refinefit drives
(refinefit/malloc_tuning.py): with Dask's worker setting, memory freed by
one chunk is faulted in anew by the next, unless they are raised."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc only")

# page faults of 20 rounds of allocating, touching and freeing 4 MB, before
# and after keep_freed_memory(), in a process started as Dask starts workers
_SCRIPT = """
import resource
import numpy as np
from refinefit.pipeline.memory import keep_freed_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        block = np.ones(500_000)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
print(faults(), keep_freed_memory(), keep_freed_memory())
faults()
print(faults())
"""


def test_freed_memory_is_reused_after_keep_freed_memory():
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
        env=dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536"), check=True)
    first, second = result.stdout.splitlines()
    before, applied, again = first.split()
    assert applied == "True" and again == "True"
    # 20 x 4 MB = about 20,000 pages faulted in before; almost none after
    assert int(before) > 15_000
    assert int(second) < 1_000
