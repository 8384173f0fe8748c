"""The one-line notice a compiling first call prints on stderr."""
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd

import refinefit
from refinefit.compile_notice import ENVIRONMENT, MESSAGE

SCRIPT = """
import numpy as np, pandas as pd, refinefit
yy, xx = np.mgrid[:32, :32]
image = 10 + 100 * np.exp(-((yy - 15.3) ** 2 + (xx - 16.6) ** 2) / 4.0)
f = pd.DataFrame({"y": [15.0], "x": [16.4], "signal": [90.0], "size": [2.0]})
print(refinefit.refine_leastsq(f, image, 11)["status"].iloc[0])
"""


def _environment(**extra):
    env = dict(os.environ, **extra)
    env.pop(ENVIRONMENT)  # on, as for a user
    return env


def test_a_compiling_call_says_so_once(tmp_path):
    """An empty compile cache: the notice comes a second into the first
    compilation (the test stops the process there: compiling takes a
    while)."""
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stderr=subprocess.PIPE, text=True,
        env=_environment(NUMBA_CACHE_DIR=str(tmp_path), REFINEFIT_AOT="0"))
    try:
        started = time.perf_counter()
        line = process.stderr.readline()
        assert line.strip() == MESSAGE
        assert time.perf_counter() - started < 60
    finally:
        process.kill()
        process.wait()


def test_a_call_that_loads_the_cache_says_nothing():
    """The kernels this call needs are in the cache once this process has
    run it: a new process loads them, silently."""
    yy, xx = np.mgrid[:32, :32]
    image = 10 + 100 * np.exp(-((yy - 15.3) ** 2 + (xx - 16.6) ** 2) / 4.0)
    f = pd.DataFrame({"y": [15.0], "x": [16.4], "signal": [90.0],
                      "size": [2.0]})
    refinefit.refine_leastsq(f, image, 11)
    result = subprocess.run([sys.executable, "-c", SCRIPT],
                            capture_output=True, text=True,
                            env=_environment())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    assert result.stderr == ""
