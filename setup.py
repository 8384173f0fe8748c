"""Build hook: compile the entry kernels ahead of time (kernels/aot.py).

Everything else about the package is in pyproject.toml. The kernels are
compiled for the installing machine, the groups of kernels/aot_signatures.txt
in parallel processes (kernels/aot_build.py). If that fails (no C compiler,
a Numba without pycc), the install goes on: the kernels then compile on
first use, as they always can.
"""
import importlib.util
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
SIGNATURES = ROOT / "kernels" / "aot_signatures.txt"
PACKAGE = "refinefit.kernels"


def _groups():
    """The groups of the signature file, read by kernels/aot.py (which needs
    only Numba, a build requirement)."""
    spec = importlib.util.spec_from_file_location(
        "refinefit_aot", ROOT / "kernels" / "aot.py")
    aot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aot)
    return sorted({group for group, *_ in aot.read_signatures(SIGNATURES)})


class BuildKernels(build_ext):
    """Builds the ``_aot<group>`` modules with Numba's pycc, not a C
    compiler's sources."""

    def build_extensions(self):
        if os.environ.get("REFINEFIT_AOT") == "0":
            print("refinefit: REFINEFIT_AOT=0, kernels left to compile on "
                  "first use")
            self.extensions = []
            return
        targets = [Path(self.get_ext_fullpath(ext.name))
                   for ext in self.extensions]
        with tempfile.TemporaryDirectory() as cache, ThreadPoolExecutor(
                max_workers=max(os.cpu_count() or 1, 1)) as pool:
            failures = list(pool.map(
                lambda target: self._build(target, cache), targets))
        for message in filter(None, failures):
            print(message, file=sys.stderr)
        # what was not built is not installed (setuptools would look for it)
        self.extensions = [ext for ext, failure in zip(self.extensions,
                                                        failures)
                           if failure is None]

    def _build(self, target, cache):
        group = int(target.name.split(".")[0][len("_aot"):])
        target.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        done = subprocess.run(
            [sys.executable, str(ROOT / "kernels" / "aot_build.py"),
             str(ROOT), str(group), str(target.parent)],
            env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return ("refinefit: the kernels could not be compiled ahead of "
                    f"time ({target.name}); they will compile on first use.\n"
                    + done.stderr[-2000:])
        print(done.stdout.strip())
        return None


setup(ext_modules=[Extension(f"{PACKAGE}._aot{group}", sources=[])
                   for group in _groups()],
      cmdclass={"build_ext": BuildKernels})
