"""Entry kernels compiled ahead of time at install (kernels/aot.py)."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba.core import types

from refinefit.kernels import aot

TESTS = Path(__file__).parent

needs_modules = pytest.mark.skipif(
    aot.available() == 0,
    reason="no ahead-of-time kernels for these sources in this install "
           "(REFINEFIT_AOT=0, or kernels edited since: pip install -e . "
           "builds them)")

# runs workloads (all, or those named by argv: ndim, model, image type),
# then prints the entry kernels' signatures, the refinefit kernels that
# compiled (not loaded) on the way and the results
_RUN = """
import pickle, sys
from numba.core import event
import aot_workloads
compiled = []
class Listen(event.Listener):
    def on_start(self, ev):
        function = getattr(ev.data.get("dispatcher"), "py_func", None)
        if getattr(function, "__module__", "").startswith("refinefit."):
            compiled.append(function.__qualname__)
    def on_end(self, ev):
        pass
event.register("numba:compile", Listen())
results = {}
if len(sys.argv) > 1:
    ndim, model, image_type = sys.argv[1:]
    results = aot_workloads.run(int(ndim), [model], [image_type])
else:
    for ndim in (2, 3):
        results.update(aot_workloads.run(ndim))
sys.stdout.buffer.write(pickle.dumps(
    (aot_workloads.entry_signatures(), compiled, results)))
"""


def _run_workloads(*which, **env):
    """``(entry signatures, kernels compiled, results)`` of the workloads
    in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(TESTS), **env)
    done = subprocess.run([sys.executable, "-c", _RUN, *which], env=env,
                          capture_output=True, check=True)
    return pickle.loads(done.stdout)


def test_signature_text_round_trips():
    signature = (types.Array(types.uint16, 1, "C"),
                 types.Array(types.float64, 2, "C", readonly=True),
                 types.literal(3), types.literal(True), types.boolean,
                 types.float64, types.int64)
    text = aot.format_signature(signature)
    assert aot.parse_signature(text) == signature
    assert "literal(3)" in text and "literal(True)" in text


@needs_modules
def test_workloads_compile_nothing(tmp_path):
    """With the modules and an empty compile cache, the workloads compile
    no refinefit kernel: the signature file lists what they call (after a
    change of the Python layer's argument types, rewrite it with
    ``REFINEFIT_AOT=0 python tests/aot_workloads.py``)."""
    found, compiled, _ = _run_workloads(NUMBA_CACHE_DIR=str(tmp_path))
    assert compiled == []
    listed = {(name, arguments): result
              for _, name, arguments, result in aot.read_signatures()}
    assert set(found) <= set(listed)


# (with the first-call benchmark, which compiles the same kernels on the
# tests' cache: on one worker, one of them compiles and the other loads)
@pytest.mark.xdist_group("jit-on-the-tests-cache")
@needs_modules
def test_results_equal_the_jit_bit_for_bit(tmp_path):
    """Ahead of time and compiled on first use (on the tests' cache), the
    same refinement gives the same bits. (One call, a 3D ring: the flags
    are those of every kernel.)"""
    which = ("3", "ring", "float64")
    _, compiled, ahead = _run_workloads(*which, NUMBA_CACHE_DIR=str(tmp_path))
    assert compiled == []
    _, _, jit = _run_workloads(*which, REFINEFIT_AOT="0")
    assert ahead.keys() == jit.keys()
    for key in jit:
        assert ahead[key].equals(jit[key]), key


@needs_modules
def test_a_stale_module_is_not_used(monkeypatch):
    """A module built from other sources (another stamp) serves nothing."""
    monkeypatch.setattr(aot, "stamp", lambda root=None: 12345)
    aot._table.cache_clear()
    try:
        assert aot.available() == 0
    finally:
        monkeypatch.undo()
        aot._table.cache_clear()
    assert aot.available() == len(aot.read_signatures())


def test_stamp_follows_the_sources(tmp_path):
    kernels = Path(aot.__file__).parent
    copy = tmp_path / "kernels"
    copy.mkdir()
    for path in list(kernels.glob("*.py")) + [aot.SIGNATURES]:
        (copy / path.name).write_bytes(path.read_bytes())
    assert aot.stamp(copy) == aot.stamp()
    lm = copy / "lm.py"
    lm.write_text(lm.read_text() + "\n# edited\n")
    assert aot.stamp(copy) != aot.stamp()


def test_switched_off_by_the_environment(tmp_path):
    env = dict(os.environ, REFINEFIT_AOT="0")
    done = subprocess.run(
        [sys.executable, "-c",
         "from refinefit.kernels import aot; print(aot.available())"],
        env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "0"
    assert np.isfinite(aot.stamp())
