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

# prints the entry kernels' signatures after the workloads, and the
# refinefit kernels that compiled (not loaded) on the way
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
for ndim in (2, 3):
    results.update(aot_workloads.run(ndim))
sys.stdout.buffer.write(pickle.dumps(
    (aot_workloads.entry_signatures(), compiled, results)))
"""


def _run_workloads(**env):
    """``(entry signatures, kernels compiled, results)`` of the workloads
    in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(TESTS), **env)
    done = subprocess.run([sys.executable, "-c", _RUN], env=env,
                          capture_output=True, check=True)
    return pickle.loads(done.stdout)


@pytest.fixture(scope="module")
def with_jit():
    """The workloads with the modules off, on the tests' compile cache (the
    first run compiles them, a minute; later runs load them)."""
    return _run_workloads(REFINEFIT_AOT="0")


def test_signature_text_round_trips():
    signature = (types.Array(types.uint16, 1, "C"),
                 types.Array(types.float64, 2, "C", readonly=True),
                 types.literal(3), types.literal(True), types.boolean,
                 types.float64, types.int64)
    text = aot.format_signature(signature)
    assert aot.parse_signature(text) == signature
    assert "literal(3)" in text and "literal(True)" in text


def test_signature_file_lists_what_the_workloads_compile(with_jit):
    """The file matches the entry kernels a default refinement calls: a
    change of the Python layer's argument types must rewrite it
    (``REFINEFIT_AOT=0 python tests/aot_workloads.py``)."""
    listed = {(name, arguments): result
              for _, name, arguments, result in aot.read_signatures()}
    found, _, _ = with_jit
    assert found == listed


@needs_modules
def test_workloads_compile_nothing_and_match_the_jit(tmp_path, with_jit):
    """With the modules, the workloads compile no refinefit kernel (an
    empty compile cache), and their results equal the JIT's bit for bit."""
    _, compiled, ahead = _run_workloads(NUMBA_CACHE_DIR=str(tmp_path))
    assert compiled == []
    _, _, jit = with_jit
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
