"""The ``refinefit`` command line: ``refinefit locate``, ``refinefit refine``,
``refinefit inspect`` and ``refinefit demo``.

``refine`` is a thin wrapper over :func:`refinefit.refine_movie`. Options
come from a TOML file (``--config``) and flags, flags winning. Every error
the user can fix (missing or unreadable input, missing columns, frames
beyond the movie's end, an unwritable output, an unknown or bad option) is
one line ``refinefit: error: ...`` on stderr with exit status 2, and nothing
is written at OUT.
"""
import argparse
import gc
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .pipeline.checkpoint import Busy
from .solvers.cuda_backend import NoGPUError

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# refine_leastsq options a config file may set (constraints and custom fit
# functions are Python callables: use refinefit.refine_movie for those)
FIT_KEYS = ("diameter", "separation", "fit_function", "param_mode",
            "param_val", "bounds", "compute_error", "pos_columns", "t_column",
            "max_iter", "max_shift", "max_rms_dev", "residual_factor", "tol",
            "options", "method", "estimator", "gain", "offset", "read_noise",
            "device")
# camera values: a number, or a file holding a map (.npy, .tif)
_CAMERA = ("gain", "offset", "read_noise")
RUN_KEYS = ("threads", "chunk_frames", "lanes", "channel", "grey", "invert")
# what refine_movie raises for input the user can fix; any other exception
# is a bug and keeps its traceback
_USER_ERRORS = (ValueError, TypeError, KeyError, OSError, ImportError,
                NotImplementedError, Busy, NoGPUError)
_TABLES = ("param_mode", "param_val", "bounds", "options")

CONFIG_EXAMPLE = """\
example config file (TOML; flags override it):
  diameter = 11                 # or [11, 9] per axis
  separation = 14
  fit_function = "gauss"
  compute_error = true
  max_iter = 10
  tol = 1e-6
  chunk_frames = 64
  threads = 2
  lanes = 2                     # chunks refined at once (default 2)
  channel = "g"                 # colour movies: a channel, or grey = true
  invert = true                 # dark features on a bright background
  [param_mode]
  size = "var"
  [param_val]
  size = 2.5
  [bounds]
  size = [1.0, 6.0]             # nan for an open side: [0.5, nan]
  pos_abs = 2.0
  [options]
  maxiter = 100
"""


class UsageError(Exception):
    """A problem with the command line or the config file."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message):
        raise UsageError(message)


def run():
    """The console script: :func:`main`, then a quick exit.

    The objects of the imported libraries (Numba's type system above all)
    are frozen out of the garbage collector's passes, and the process ends
    without the interpreter's teardown, which only frees memory the system
    takes back anyway, slowly after a long run. Every file
    is closed, and standard output and error are flushed first (an error
    there other than a reader that went away gives status 120, as Python's
    own exit does).
    """
    gc.freeze()
    status = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: started with the stream closed
                stream.flush()
        except BrokenPipeError:  # the reader went away (| head): not an error
            pass
        except (OSError, ValueError):  # as Python's own exit does
            status = status or 120
    os._exit(status)


def main(argv=None):
    """Run the command; returns the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        return args.run(args)
    except UsageError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        print("refinefit: interrupted; run the same command again to resume "
              "from the committed chunks", file=sys.stderr)
        return EXIT_INTERRUPTED


def _build_parser():
    parser = _Parser(prog="refinefit", description="Fast least-squares "
                     "refinement of feature positions.")
    from . import __version__

    parser.add_argument("--version", action="version",
                        version=f"refinefit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=_Parser)
    refine = sub.add_parser(
        "refine", help="refine the features of a movie (streamed, resumable)",
        description="Refine the features of MOVIE (TIFF, .npy or anything "
        "pims opens)\nlisted in FEATURES (CSV, Parquet or HDF5) and write OUT "
        "(CSV or Parquet,\nby extension). Results are committed per chunk in "
        "OUT.parts/; a killed run\ncontinues when the same command is run "
        "again, and OUT appears only when\ncomplete.",
        epilog=CONFIG_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    refine.add_argument("movie", metavar="MOVIE")
    refine.add_argument("features", metavar="FEATURES")
    refine.add_argument("-o", "--out", metavar="OUT", required=True,
                        help="output table, .csv or .parquet")
    refine.add_argument("--diameter", metavar="D", type=_number_or_tuple,
                        help="mask diameter, a number or one per axis "
                        "(11 or 11,9)")
    refine.add_argument("--separation", metavar="S", type=_number_or_tuple,
                        help="features closer than this are fitted together "
                        "(default: the diameter)")
    refine.add_argument("--fit-function", metavar="NAME",
                        help="gauss (default), disc, hat, ring, "
                        "inv_series_<n>")
    refine.add_argument("--pos-columns", metavar="COLS", type=_names,
                        help="position columns, comma-separated (default "
                        "z,y,x when FEATURES has a z column, else y,x)")
    refine.add_argument("--t-column", metavar="NAME",
                        help="frame column (default frame)")
    refine.add_argument("--compute-error",
                        action=argparse.BooleanOptionalAction, default=None,
                        help="add <param>_std standard errors")
    refine.add_argument("--estimator", choices=("lsq", "poisson"),
                        help="lsq: least squares (default); poisson: "
                        "maximum likelihood on photon counts")
    refine.add_argument("--gain", metavar="G",
                        help="camera counts per photon (--estimator "
                        "poisson): a number or a map file (.npy, .tif)")
    refine.add_argument("--offset", metavar="O",
                        help="camera offset in counts: a number or a map "
                        "file (.npy, .tif)")
    refine.add_argument("--read-noise", metavar="VAR",
                        help="read-noise variance in counts^2: a number or "
                        "a map file (.npy, .tif)")
    refine.add_argument("--device", choices=("cpu", "cuda"),
                        help="cpu (default) or cuda: each cluster's solve on "
                        "an NVIDIA GPU (pip install 'refinefit[cuda]')")
    refine.add_argument("--max-iter", metavar="N", type=int,
                        help="at most N solves while re-centring the masks "
                        "(default 10)")
    refine.add_argument("--param-mode", metavar="NAME=MODE", action="append",
                        default=[], help="var, const, cluster, global, "
                        "particle or frame; repeatable")
    refine.add_argument("--param-val", metavar="NAME=VALUE", action="append",
                        default=[], help="set a parameter for every "
                        "feature; repeatable")
    refine.add_argument("--bounds", metavar="NAME=LOW:HIGH", action="append",
                        default=[], help="absolute bounds (an empty side is "
                        "open), or NAME_abs=D / NAME_rel=F; repeatable")
    _add_frame_options(refine)
    refine.add_argument("--config", metavar="FILE",
                        help="TOML file with any refine_leastsq option")
    refine.add_argument("--threads", metavar="N", type=int,
                        help="Numba threads (default: all cores)")
    refine.add_argument("--chunk-frames", metavar="N", type=int,
                        help="frames per chunk (default: as many as fit in "
                        "16 MiB and hold at most 10,000 features, at most 64, "
                        "per two threads)")
    refine.add_argument("--quiet", action="store_true",
                        help="no progress bar and no summary line")
    refine.add_argument("--scheduler", metavar="ADDRESS",
                        help="run the chunks on the Dask scheduler at ADDRESS "
                        "(tcp://host:8786); MOVIE must be a path every "
                        "worker can open. Needs: pip install "
                        "'refinefit[dask]'")
    refine.add_argument("--scheduler-timeout", metavar="SECONDS", type=float,
                        default=10.0, help="give up connecting to the "
                        "scheduler after this long (default 10)")
    refine.set_defaults(run=_refine)

    locate = sub.add_parser(
        "locate", help="find features with trackpy.locate, frame by frame",
        description="Locate the features of every frame of MOVIE with "
        "trackpy.locate and write\nFEATURES (CSV or Parquet), ready for "
        "'refinefit refine'. Needs:\npip install 'refinefit[locate]'.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    locate.add_argument("movie", metavar="MOVIE")
    locate.add_argument("-o", "--out", metavar="FEATURES", required=True,
                        help="output table, .csv or .parquet")
    locate.add_argument("--diameter", metavar="D", required=True,
                        type=_number_or_tuple, help="feature diameter in "
                        "pixels, odd (11, or 5,11,11 for 3D frames)")
    for flag, metavar, kind, text in (
            ("--minmass", "M", float, "minimum integrated brightness"),
            ("--separation", "S", _number_or_tuple, "minimum distance "
             "between features (default: diameter + 1)"),
            ("--percentile", "P", float, "features must be brighter than "
             "this percentile of the frame (default 64)"),
            ("--topn", "N", int, "keep the N brightest features"),
            ("--noise-size", "S", float, "band-pass: width of the Gaussian "
             "blur (default 1)"),
            ("--smoothing-size", "S", float, "band-pass: size of the "
             "boxcar (default: the diameter)"),
            ("--threshold", "T", float, "band-pass: clip below this"),
            ("--maxsize", "S", float, "maximum radius of gyration"),
            ("--max-iterations", "N", int, "centroid iterations "
             "(default 10)")):
        locate.add_argument(flag, metavar=metavar, type=kind, help=text)
    locate.add_argument("--no-preprocess", dest="preprocess",
                        action="store_false", default=None,
                        help="no band-pass filter before locating")
    locate.add_argument("--no-characterize", dest="characterize",
                        action="store_false", default=None,
                        help="no size, ecc and signal columns")
    locate.add_argument("--engine", choices=("auto", "python", "numba"))
    _add_frame_options(locate)
    locate.add_argument("--quiet", action="store_true",
                        help="no progress bar and no summary line")
    locate.set_defaults(run=_locate)

    inspect = sub.add_parser(
        "inspect", help="a picture of the fit on one frame",
        description="Draw one frame of MOVIE with the refined positions of "
        "REFINED (the output\nof 'refinefit refine'), the model and the "
        "residual on its masks, histograms\nof the cost, of the sub-pixel "
        "positions and of the standard errors, and\nthe counts by status; "
        "write it to OUT (.png, .pdf or .svg). Needs:\npip install "
        "'refinefit[plot]'.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    inspect.add_argument("movie", metavar="MOVIE")
    inspect.add_argument("refined", metavar="REFINED")
    inspect.add_argument("--frame", metavar="N", type=int, required=True,
                         help="the frame to draw")
    inspect.add_argument("-o", "--out", metavar="OUT", required=True,
                         help="the picture, .png, .pdf or .svg")
    inspect.add_argument("--diameter", metavar="D", type=_number_or_tuple,
                         required=True, help="the mask diameter of the "
                         "refinement")
    inspect.add_argument("--features", metavar="FEATURES",
                         help="the features refined, for their initial "
                         "positions")
    inspect.add_argument("--fit-function", metavar="NAME", default="gauss")
    inspect.add_argument("--pos-columns", metavar="COLS", type=_names)
    inspect.add_argument("--t-column", metavar="NAME", default="frame")
    inspect.add_argument("--region", metavar="Y0:Y1,X0:X1", type=_region,
                         help="zoom the image panels to this region")
    _add_frame_options(inspect)
    inspect.set_defaults(run=_inspect)

    demo = sub.add_parser("demo", help="refine a synthetic movie with ground "
                          "truth and report accuracy and speed")
    demo.add_argument("--frames", type=int, default=40,
                      help="number of frames to synthesize (default 40)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="demo_output/refined.csv",
                      help="where to write the refined table; the movie and "
                      "the features go to the same folder")
    demo.set_defaults(run=_demo)
    return parser


def _locate(args):
    from .locate import locate_movie

    options = {name: getattr(args, name) for name in (
        "minmass", "separation", "percentile", "topn", "noise_size",
        "smoothing_size", "threshold", "maxsize", "max_iterations",
        "preprocess", "characterize", "engine")
        if getattr(args, name, None) is not None}
    selection = {name: getattr(args, name) for name in (
        "channel", "grey", "invert") if getattr(args, name) is not None}
    return _run_quietly(lambda: locate_movie(
        args.movie, args.out, diameter=args.diameter, quiet=args.quiet,
        return_table=False, **selection, **options))


def _inspect(args):
    from .io.movies import open_movie
    from .io.tables import check_not_an_input, read_features
    from .plot import inspect_frame
    from .status import count_status, describe_status

    def draw():
        out = Path(args.out)
        if out.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise ValueError(f"output {args.out!r}: use .png, .pdf or .svg")
        check_not_an_input(out, {"movie": args.movie,
                                 "refined table": args.refined,
                                 "features file": args.features})
        if not out.parent.is_dir():
            raise FileNotFoundError(f"output directory {str(out.parent)!r} "
                                    "does not exist")
        refined = read_features(args.refined)
        features = None if args.features is None else read_features(
            args.features)
        movie = open_movie(args.movie, frame_ndim=2, channel=args.channel,
                           grey=bool(args.grey), invert=bool(args.invert))
        try:
            if not 0 <= args.frame < len(movie):
                raise ValueError(f"--frame {args.frame}: the movie has "
                                 f"{len(movie)} frames")
            frame = movie.read([args.frame])[0]
        finally:
            movie.close()
        temporary = out.with_name(f".{out.name}.tmp{out.suffix}")
        try:
            _, panels = inspect_frame(
                frame, refined, args.diameter, features=features,
                frame_no=args.frame, fit_function=args.fit_function,
                pos_columns=args.pos_columns, t_column=args.t_column,
                region=args.region, out=temporary)
            os.replace(temporary, out)
        finally:
            if temporary.exists():
                temporary.unlink()
        summary = panels["summary"]
        on_frame = refined[refined[args.t_column] == args.frame]
        print(f"refinefit: frame {args.frame}: "
              f"{describe_status(count_status(on_frame['status']))}; "
              f"median cost {summary['median_cost']:.3g}, pixel noise / "
              f"maximum {summary['noise_ratio']:.3g}; wrote {out}")

    return _run_quietly(draw)


def _run_quietly(work):
    """Run ``work``: a user's error is one line and exit status 2; warnings
    are printed once each, after it (not the libraries' deprecation
    notices, which are for their callers' developers)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for category in (DeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", category)
        try:
            work()
        except _USER_ERRORS as exc:
            return _fail(exc)
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"refinefit: warning: {' '.join(message.split())}",
              file=sys.stderr)
    return 0


def _region(text):
    try:
        rows, columns = text.split(",")
        return tuple(_number(v) for part in (rows, columns)
                     for v in part.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected Y0:Y1,X0:X1, got {text!r}") from None


def _add_frame_options(parser):
    """--channel, --grey and --invert: what of each frame is used."""
    parser.add_argument("--channel", metavar="C", type=_channel,
                        help="colour frames: the channel to use, an index "
                        "(0, 1, ...) or r, g, b")
    parser.add_argument("--grey", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="colour frames: use the luminance "
                        "(0.2125 R + 0.7154 G + 0.0721 B)")
    parser.add_argument("--invert", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="dark features on a bright background: use the "
                        "inverted frames (as trackpy.locate's invert)")


def _names(text):
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated column names, got {text!r}")
    return names


def _channel(text):
    return int(text) if text.strip().lstrip("-").isdigit() else text.strip()


def _refine(args):
    from .pipeline.memory import keep_freed_memory
    from .pipeline.movie import refine_movie

    keep_freed_memory()
    options = _options(args)
    run = {key: options.pop(key) for key in RUN_KEYS if key in options}
    if "diameter" not in options:
        raise UsageError("the mask diameter is required: pass --diameter or "
                         "set diameter in the config file")
    if not args.scheduler_timeout > 0:
        raise UsageError("--scheduler-timeout must be a positive number of "
                         f"seconds, got {args.scheduler_timeout:g}")
    # library warnings and log lines are held back: an error is one line
    logging.getLogger("tifffile").setLevel(logging.ERROR)
    logging.getLogger("distributed").setLevel(logging.ERROR)

    def work():
        client = None
        try:
            if args.scheduler:
                from .pipeline.dask import connect

                client = connect(args.scheduler, args.scheduler_timeout)
            refine_movie(args.movie, args.features, args.out,
                         quiet=args.quiet, client=client, return_table=False,
                         **run, **options)
        finally:
            if client is not None:
                client.close()

    return _run_quietly(work)


def _fail(exc):
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args \
        else str(exc)
    message = " ".join(message.split()) or type(exc).__name__
    print(f"refinefit: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _options(args):
    """refine_movie's options from the config file, then the flags."""
    options = _read_config(args.config) if args.config else {}
    flags = dict(diameter=args.diameter, separation=args.separation,
                 fit_function=args.fit_function, threads=args.threads,
                 chunk_frames=args.chunk_frames, channel=args.channel,
                 grey=args.grey, invert=args.invert,
                 pos_columns=args.pos_columns, t_column=args.t_column,
                 compute_error=args.compute_error, max_iter=args.max_iter,
                 estimator=args.estimator, gain=args.gain, offset=args.offset,
                 read_noise=args.read_noise, device=args.device)
    if args.channel is not None or args.grey:  # one replaces the other
        options.pop("channel", None)
        options.pop("grey", None)
    options.update({k: v for k, v in flags.items() if v is not None})
    for key in _CAMERA:
        if key in options:
            options[key] = _camera_value(key, options[key])
    for key, entries, parse in (("param_mode", args.param_mode, str),
                                ("param_val", args.param_val, _number),
                                ("bounds", args.bounds, _bound)):
        if entries:
            table = dict(options.get(key, {}))
            for entry in entries:
                name, value = _assignment(key, entry)
                table[name] = _parse_value(key, entry, parse, value)
            options[key] = table
    return options


def _read_config(path):
    try:
        with open(path, "rb") as handle:
            config = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read config file {path!r}: "
                         f"{exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path!r} is not valid TOML: {exc}") \
            from None
    if "constraints" in config:
        raise UsageError(f"config file {path!r}: constraints are Python "
                         "functions and cannot be set in a config file; use "
                         "refinefit.refine_movie from Python")
    unknown = sorted(set(config) - set(FIT_KEYS) - set(RUN_KEYS))
    if unknown:
        raise UsageError(f"config file {path!r}: unknown key(s) {unknown}; "
                         f"known keys: {', '.join(FIT_KEYS + RUN_KEYS)}")
    for key in _TABLES:
        if key in config and not isinstance(config[key], dict):
            raise UsageError(f"config file {path!r}: {key} must be a table, "
                             f"e.g. [{key}]")
    for key in ("diameter", "separation"):
        if isinstance(config.get(key), list):
            config[key] = tuple(config[key])
    if "bounds" in config:
        config["bounds"] = {name: tuple(v) if isinstance(v, list) else v
                            for name, v in config["bounds"].items()}
    return config


def _camera_value(key, value):
    """A camera value: a number as it is, text as a number or the path of a
    map (.npy, or a TIFF image)."""
    if not isinstance(value, str):
        return value
    try:
        return _number(value)
    except ValueError:
        pass
    flag = "--" + key.replace("_", "-")
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"{flag}: {value!r} is neither a number nor a map "
                         "file (.npy, .tif)")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path)
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile
            return tifffile.imread(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{flag}: cannot read the map {value!r}: {exc}") \
            from None
    raise UsageError(f"{flag}: a map file must be .npy or .tif, got "
                     f"{value!r}")


def _assignment(flag, entry):
    name, sep, value = entry.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise UsageError(f"--{flag.replace('_', '-')}: expected NAME=VALUE, "
                         f"got {entry!r}")
    return name.strip(), value.strip()


def _parse_value(flag, entry, parse, value):
    try:
        return parse(value)
    except ValueError:
        raise UsageError(f"--{flag.replace('_', '-')}: cannot read {entry!r}"
                         + (" (expected NAME=LOW:HIGH or NAME=VALUE)"
                            if flag == "bounds" else "")) from None


def _number(text):
    value = float(text)
    return int(value) if value.is_integer() and "." not in text \
        and "e" not in text.lower() else value


def _number_or_tuple(text):
    try:
        parts = [_number(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers, got {text!r}") \
            from None
    return parts[0] if len(parts) == 1 else tuple(parts)


def _bound(text):
    """'LOW:HIGH' (either side may be empty: open) or one number."""
    if ":" not in text:
        return _number(text)
    low, high = text.split(":")
    return tuple(None if not side.strip() else _number(side)
                 for side in (low, high))


def _demo(args):
    import tifffile

    from .kernels import aot
    from .pipeline.movie import refine_movie
    from .refine import refine_leastsq
    from .synthetic import make_movie

    out_path = Path(args.out)
    folder = out_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    print(f"synthesizing {args.frames} frames of 512x512 uint8 (W1: 275 "
          "Gaussian features per frame, 150 singles, 40 dimers, 15 trimers, "
          "S/N 10)...", flush=True)
    frames, truth, guess = make_movie(args.frames, seed=args.seed)
    movie_path, features_path = folder / "movie.tif", folder / "features.csv"
    tifffile.imwrite(movie_path, frames, photometric="minisblack")
    guess.to_csv(features_path, index=False)
    print(f"wrote {movie_path} and {features_path}")

    t0 = time.perf_counter()
    refine_leastsq(guess[guess["frame"] == 0], frames, 11)  # load or compile
    how = ("kernels compiled at install" if aot.available()
           else "kernels compiled now or loaded from the cache")
    print(f"first call ({how}): {time.perf_counter() - t0:.2f} s")
    print(f"the pipeline of: refinefit refine {movie_path} {features_path} "
          f"-o {out_path} --diameter 11", flush=True)
    refined = refine_movie(movie_path, features_path, out_path, diameter=11)
    error = np.hypot(refined["y"] - truth["y"], refined["x"] - truth["x"])
    start = np.hypot(guess["y"] - truth["y"], guess["x"] - truth["x"])
    for size, name in ((1, "singles"), (2, "dimers"), (3, "trimers")):
        sel = truth["group_size"] == size
        print(f"  {name:8s} rms position error "
              f"{np.sqrt(np.mean(error[sel] ** 2)):.4f} px (initial guess "
              f"{np.sqrt(np.mean(start[sel] ** 2)):.4f} px)")
    print(f"wrote the refined table to {out_path}")
    _demo_ratio(frames, guess, refine_leastsq)
    return 0


def _demo_ratio(frames, features, refine_leastsq, n_frames=3):
    """refinefit's rate beside trackpy's on the features of the first
    ``n_frames`` frames, refined frame by frame (one call per frame), both
    warm (compiling and loading apart), in this run; refinefit's best of
    three passes."""
    by_frame = [(frames[t], features[features["frame"] == t])
                for t in range(min(n_frames, len(frames)))]
    n = sum(len(f) for _, f in by_frame)

    def rate(refine, rounds):
        best = np.inf
        for _ in range(rounds):
            start = time.perf_counter()
            for frame, f in by_frame:
                refine(f.copy(), frame, 11)
            best = min(best, time.perf_counter() - start)
        return n / best

    ours = rate(refine_leastsq, 3)
    where = f"the {n} features of frames 0-{len(by_frame) - 1}, frame by frame"
    try:
        import trackpy
    except ImportError:
        print(f"refinefit: {ours:,.0f} features/s on {where}; trackpy is not "
              "installed to compare (pip install 'refinefit[locate]')")
        return
    logging.getLogger("trackpy").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = rate(trackpy.refine_leastsq, 1)
    print(f"on {where}, in this run: refinefit {ours:,.0f} features/s, "
          f"trackpy.refine_leastsq {theirs:,.0f} features/s, "
          f"{ours / theirs:,.0f}x")


if __name__ == "__main__":
    run()
