"""The ``refinefit`` command line."""
import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _demo(args):
    from .refine import refine_leastsq
    from .synthetic import make_movie

    print(f"synthesizing {args.frames} frames of 512x512 uint8 (W1: 275 "
          "Gaussian features per frame, 150 singles, 40 dimers, 15 trimers, "
          "S/N 10)...", flush=True)
    frames, truth, guess = make_movie(args.frames, seed=args.seed)
    t0 = time.perf_counter()
    refine_leastsq(guess[guess["frame"] == 0], frames, 11)  # compile/load kernels
    t1 = time.perf_counter()
    refined = refine_leastsq(guess, frames, 11)
    t2 = time.perf_counter()
    error = np.hypot(refined["y"] - truth["y"], refined["x"] - truth["x"])
    start = np.hypot(guess["y"] - truth["y"], guess["x"] - truth["x"])
    failed = int(refined["cost"].isna().sum())
    print(f"first call (compile or load cached kernels): {t1 - t0:.2f} s")
    print(f"refined {len(refined)} features in {t2 - t1:.3f} s: "
          f"{len(refined) / (t2 - t1):,.0f} features/s, {failed} failed fits")
    for size, name in ((1, "singles"), (2, "dimers"), (3, "trimers")):
        sel = truth["group_size"] == size
        print(f"  {name:8s} rms position error {np.sqrt(np.mean(error[sel] ** 2)):.4f} px "
              f"(initial guess {np.sqrt(np.mean(start[sel] ** 2)):.4f} px)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    refined.to_csv(out, index=False)
    print(f"wrote the refined table to {out}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="refinefit",
        description="Fast least-squares refinement of feature positions.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="refine a synthetic movie with ground "
                          "truth and report accuracy and speed")
    demo.add_argument("--frames", type=int, default=40,
                      help="number of frames to synthesize (default 40)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="demo_output/refined.csv",
                      help="where to write the refined table")
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
