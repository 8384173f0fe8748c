"""One line on stderr when a call compiles refinefit's kernels.

The first call in a fresh install (or with new options: another model,
dimensionality or image type) compiles Numba kernels for a while before
anything else happens; the machine code is cached on disk, so later calls
and runs load it. Without a word the first call looks hung. Numba reports
each compilation (not a load from its cache) as a ``numba:compile`` event;
the first one of a refinefit kernel in a process that lasts a second prints
the notice.
``REFINEFIT_COMPILE_NOTICE=0`` in the environment turns it off.
"""
import os
import sys
import threading

from numba.core import event

ENVIRONMENT = "REFINEFIT_COMPILE_NOTICE"
MESSAGE = ("refinefit: compiling the Numba kernels for this machine and these "
           "options, once: later calls and runs load them from the cache")
DELAY = 1.0  # seconds


class _Notice(event.Listener):
    """Prints :data:`MESSAGE` once, when a compilation of a refinefit kernel
    is still running after :data:`DELAY` seconds (small helpers compile in
    a fraction of a second, and a load from the cache is no compilation)."""

    def __init__(self):
        self._told = False
        self._depth = 0
        self._timer = None
        self._lock = threading.Lock()

    def on_start(self, ev):
        function = getattr(ev.data.get("dispatcher"), "py_func", None)
        if not getattr(function, "__module__", "").startswith("refinefit."):
            return
        with self._lock:
            self._depth += 1
            if self._told or self._timer is not None \
                    or os.environ.get(ENVIRONMENT, "1") == "0":
                return
            self._timer = threading.Timer(DELAY, self._tell)
            self._timer.daemon = True
            self._timer.start()

    def on_end(self, ev):
        function = getattr(ev.data.get("dispatcher"), "py_func", None)
        if not getattr(function, "__module__", "").startswith("refinefit."):
            return
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _tell(self):
        with self._lock:
            if self._told or self._timer is None:
                return
            self._told = True
        print(MESSAGE, file=sys.stderr, flush=True)


event.register("numba:compile", _Notice())
