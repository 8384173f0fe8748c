"""Build one ahead-of-time module of entry kernels (see :mod:`.aot`).

Run by ``setup.py`` as a script, one process per group of signatures (the
groups compile in parallel)::

    python kernels/aot_build.py SOURCE_ROOT GROUP OUTPUT_DIR

``SOURCE_ROOT`` holds the ``kernels`` package, imported here under that
name: nothing of the rest of refinefit is needed to build. The module is
compiled for this CPU with Numba's ``pycc``, each kernel with the options
its JIT dispatcher compiles it with (fastmath, error model, ``nogil``), so
that the machine code does the same arithmetic as the JIT's.
"""
import importlib
import sys
import time


def _flags_of(dispatcher, given):
    """Compile flags of ``dispatcher``'s JIT compilation, for pycc."""
    from numba.core import compiler
    flags = compiler.Flags()
    dispatcher.targetdescr.options.parse_as_flags(flags, dispatcher.targetoptions)
    flags.no_compile = given.no_compile
    flags.no_cpython_wrapper = given.no_cpython_wrapper
    flags.no_cfunc_wrapper = given.no_cfunc_wrapper
    flags.nrt = True
    return flags


def _use_kernel_flags(dispatchers):
    """Make pycc compile each function of ``dispatchers`` (keyed by Python
    function) with its dispatcher's flags; pycc would use one default set."""
    import numba.pycc.compiler as pycc_compiler
    compile_extra = pycc_compiler.compile_extra

    def compile_with_kernel_flags(typingctx, targetctx, func, args,
                                  return_type, flags, locals, **kws):
        dispatcher = dispatchers.get(func)
        if dispatcher is not None:
            flags = _flags_of(dispatcher, flags)
        return compile_extra(typingctx, targetctx, func, args, return_type,
                             flags, locals, **kws)

    pycc_compiler.compile_extra = compile_with_kernel_flags


def _stamp_function(value):
    def stamp():
        return value
    return stamp


def build(root, group, output_dir):
    sys.path.insert(0, root)
    aot = importlib.import_module("kernels.aot")
    from numba.pycc import CC

    cc = CC(aot.MODULE.format(group), source_module=aot)
    cc.output_dir = output_dir
    cc.target_cpu = "host"
    dispatchers = {}
    n_exports = 0
    for index, (g, name, arguments, result) in enumerate(
            aot.read_signatures()):
        if g != group:
            continue
        module, function = name.split(".", 1)
        dispatcher = getattr(importlib.import_module(f"kernels.{module}"),
                             function)
        dispatchers[dispatcher.py_func] = dispatcher
        signature = aot.parse_signature(result)[0](
            *aot.parse_signature(arguments))
        cc.export(aot.export_name(index), signature)(dispatcher.py_func)
        n_exports += 1
    cc.export(aot.STAMP_FUNCTION, "int64()")(
        _stamp_function(aot.stamp(f"{root}/kernels")))
    _use_kernel_flags(dispatchers)
    started = time.perf_counter()
    cc.compile()
    print(f"refinefit: compiled {n_exports} kernel signatures ahead of time "
          f"({cc.name}, {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    build(sys.argv[1], int(sys.argv[2]), sys.argv[3])
