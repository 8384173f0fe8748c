"""The calls the ahead-of-time kernels are built for (``kernels/aot.py``).

A default refinement with every built-in model, in 2D and in 3D, and the
usual image types; in 2D, a Gaussian's size shared by a frame's features,
and a Gaussian under the Poisson estimator.
``tests/test_aot.py`` checks that these calls compile nothing where the
install built the modules. Run as a script, this file rewrites
``kernels/aot_signatures.txt`` from the entry kernels these calls compile
(a fresh process with the modules off)::

    REFINEFIT_AOT=0 python tests/aot_workloads.py
"""
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

MODELS = ("gauss", "disc", "ring", "inv_series_2")
IMAGE_TYPES = (np.uint8, np.uint16, np.float32, np.float64)


def image_and_features(ndim, dtype):
    """A small image with an isolated spot and a touching pair, and start
    positions near them."""
    shape = (48, 48) if ndim == 2 else (24, 32, 32)
    centres = np.array([[16.3, 14.6], [30.2, 30.9], [33.4, 35.1]])
    if ndim == 3:
        centres = np.column_stack([[11.6, 12.2, 12.5], centres / 1.6])
    grid = np.indices(shape, dtype=float)
    image = np.full(shape, 10.0)
    for c in centres:
        image += 120 * np.exp(-sum((g - x) ** 2 for g, x in zip(grid, c)) / 4)
    image = image.astype(dtype)
    columns = ["z", "y", "x"][3 - ndim:]
    features = pd.DataFrame(centres + 0.3, columns=columns)
    features["signal"] = 120.0
    features["size"] = 2.0
    return image, features


def run(ndim, models=MODELS, image_types=IMAGE_TYPES):
    """The calls for ``ndim``-dimensional images (or some of them): their
    results by ``(ndim, image type, model)``."""
    import refinefit
    results = {}
    for dtype in map(np.dtype, image_types):
        image, features = image_and_features(ndim, dtype)
        for model in models if dtype == np.float64 else ("gauss",):
            results[ndim, dtype.name, model] = \
                refinefit.refine_leastsq(features, image, 9,
                                         fit_function=model)
    if ndim == 2 and "gauss" in models and any(
            np.dtype(t) == np.float64 for t in image_types):
        # a size shared by a frame's features (the shared solver)
        image, features = image_and_features(ndim, np.float64)
        results[ndim, "float64", "gauss", "shared"] = \
            refinefit.refine_leastsq(features, image, 9,
                                     param_mode={"size": "frame"})
        # the Poisson estimator (the solver's other dense path)
        results[ndim, "float64", "gauss", "poisson"] = \
            refinefit.refine_leastsq(features, image, 9, estimator="poisson")
    return results


def entry_signatures():
    """``{(kernel name, arguments text): return type text}`` of what the
    entry kernels have compiled (or loaded) in this process."""
    from refinefit.kernels import aot
    from refinefit.kernels.jit import ENTRY_KERNELS
    found = {}
    for dispatcher in ENTRY_KERNELS:
        for cres in dispatcher.overloads.values():
            found[aot.kernel_name(dispatcher), aot.format_signature(
                cres.signature.args)] = repr(cres.signature.return_type)
    return found


def main():
    if os.environ.get("REFINEFIT_AOT") != "0":
        sys.exit("run with REFINEFIT_AOT=0: the signatures come from the JIT")
    from refinefit.kernels import aot
    lines = ["# Entry kernel signatures compiled ahead of time (kernels/aot.py):",
             "# group kernel: arguments -> return type. Written by",
             "# tests/aot_workloads.py, not by hand."]
    for ndim in (2, 3):
        run(ndim)
    # two groups, built in parallel: the solver (most of the build) in one,
    # the other kernels in the other
    found = sorted(entry_signatures().items())
    for (name, arguments), result in found:
        group = 0 if name.startswith("lm.") else 1
        lines.append(f"{group} {name}: {arguments} -> {result}")
    Path(aot.SIGNATURES).write_text("\n".join(lines) + "\n")
    print(f"{len(found)} signatures written to {aot.SIGNATURES}")


if __name__ == "__main__":
    main()
