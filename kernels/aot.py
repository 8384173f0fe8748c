"""Entry kernels compiled ahead of time, when the package was installed.

A first call that compiles its kernels takes most of half a minute; an
install that has built ``refinefit.kernels._aot*`` (see :mod:`.aot_build`,
run by ``setup.py``) starts at once for the signatures listed in
``aot_signatures.txt``: the calls of a default refinement, for every
built-in model in 2D and 3D and the usual image types. Other signatures
compile on first use, as without the module.

The modules are used only when they were built from these very sources, by
this Numba version, for this CPU: :func:`stamp` hashes all three, and each
module returns the stamp of its build. Anything else (a kernel edited after
the install, a wheel built on another machine, an upgraded Numba) falls back
to the JIT, silently. ``REFINEFIT_AOT=0`` in the environment turns the
modules off.

An ahead-of-time function checks no argument types: it is only ever called
for the exact signature it was compiled for (:func:`lookup`, from
:class:`.jit.Specialized`, which derives the signature from the arguments).
"""
import functools
import hashlib
import importlib
import os
from pathlib import Path

import numba
from numba.core import types

ENVIRONMENT = "REFINEFIT_AOT"
SIGNATURES = Path(__file__).with_name("aot_signatures.txt")
MODULE = "_aot{}"  # the modules' names: _aot0, _aot1, ...
STAMP_FUNCTION = "stamp"


def kernel_name(dispatcher):
    """``module.function`` of an entry kernel, as the signature file names
    it (without the package, which differs between build and install)."""
    function = dispatcher.py_func
    return f"{function.__module__.rsplit('.', 1)[-1]}.{function.__qualname__}"


def format_signature(signature):
    """One line of text for a tuple of Numba argument types."""
    return ", ".join(f"literal({t.literal_value!r})"
                     if isinstance(t, types.Literal) else repr(t)
                     for t in signature)


def parse_signature(text):
    """The tuple of Numba types :func:`format_signature` wrote."""
    namespace = dict(vars(types), literal=types.literal, bool=types.boolean)
    return tuple(eval(f"({text},)", {"__builtins__": {}}, namespace))


def read_signatures(path=SIGNATURES):
    """``[(group, kernel name, arguments text, return type text)]`` from the
    signature file.

    Each line is ``group kernel: arguments -> return type``; a group is built
    into one module (the build compiles the groups in parallel)."""
    entries = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, signature = line.split(":", 1)
        group, name = head.split()
        arguments, result = signature.rsplit("->", 1)
        entries.append((int(group), name, arguments.strip(), result.strip()))
    return entries


def export_name(index):
    """The exported name of the signature file's ``index``-th entry."""
    return f"entry_{index}"


def stamp(root=None):
    """A 63-bit hash of the kernels' sources and signature file, the Numba
    version and this CPU (name and features): what an ahead-of-time module
    must have been built from to be used here."""
    root = Path(__file__).parent if root is None else Path(root)
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.py")) + [root / SIGNATURES.name]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    from llvmlite import binding
    digest.update(numba.__version__.encode())
    digest.update(binding.get_host_cpu_name().encode())
    digest.update(binding.get_host_cpu_features().flatten().encode())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


@functools.lru_cache(maxsize=None)
def _table():
    """``{(kernel name, signature text): compiled function}`` from the
    modules that match :func:`stamp`; empty if none does."""
    if os.environ.get(ENVIRONMENT, "1") == "0":
        return {}
    try:
        entries = read_signatures()
        expected = stamp()
    except OSError:
        return {}
    table = {}
    modules = {}
    for index, (group, name, signature, _) in enumerate(entries):
        if group not in modules:
            modules[group] = _load(group, expected)
        if modules[group] is not None:
            table[name, signature] = getattr(modules[group], export_name(index))
    return table


def _load(group, expected):
    try:
        module = importlib.import_module(f"{__package__}.{MODULE.format(group)}")
    except ImportError:
        return None
    if getattr(module, STAMP_FUNCTION)() != expected:
        return None
    return module


def lookup(dispatcher, signature):
    """The ahead-of-time function of ``dispatcher`` for ``signature`` (a tuple
    of Numba types), or None."""
    table = _table()
    if not table:
        return None
    return table.get((kernel_name(dispatcher), format_signature(signature)))


def available():
    """How many entry signatures are served ahead of time in this process."""
    return len(_table())
